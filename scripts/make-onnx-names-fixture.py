#!/usr/bin/env python3
"""A third-party-style Fashion-MNIST MLP with its own input/output names and three outputs.

    pip install onnx onnxruntime==1.20.1 numpy
    python3 scripts/make-onnx-names-fixture.py [FASHION_MNIST_DIR]   # writes tests/fixtures/onnx/named_outputs.onnx

The graph, built with onnx.helper (not by squeeze):

    pixels [batch, 784] -> Gemm (node "probabilities") -> Relu (node "relu") = features
                        -> Gemm (node "classifier.2") = logits -> Softmax = probabilities

- the input is `pixels` and the outputs `features` (a hidden value, also read by the
  next layer), `logits` and `probabilities`: none of them squeeze's own names;
- the first Gemm's *node* is named `probabilities`, which squeeze uses as that value's
  name, so an exporter restoring the output name `probabilities` must move it aside.

Weights: a fixed random hidden layer (64 ReLU features of the pixels / 255) and a
ridge-regression read-out fitted on 10 000 Fashion-MNIST training images (about 80%
test accuracy), so top-1 comparisons on real images mean something. tests/onnx.rs
imports it, quantizes it (weights-only and dynamic), exports it and runs the exports
in ONNX Runtime by the original names.
"""
import gzip
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "onnx", "named_outputs.onnx")
DATA = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist"
HIDDEN = 64


def idx(name):
    with gzip.open(os.path.join(DATA, name + ".gz"), "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def main():
    rng = np.random.default_rng(20261206)
    x = idx("train-images-idx3-ubyte")[:10000].reshape(-1, 784).astype(np.float32) / 255.0
    y = idx("train-labels-idx1-ubyte")[:10000]
    w1 = (rng.standard_normal((HIDDEN, 784)) / np.sqrt(784 / 4)).astype(np.float32)
    b1 = (rng.standard_normal(HIDDEN) * 0.1).astype(np.float32)
    h = np.maximum(x @ w1.T + b1, 0)
    hb = np.hstack([h, np.ones((len(h), 1), np.float32)])
    targets = np.eye(10, dtype=np.float32)[y] * 10 - 1
    sol = np.linalg.solve(hb.T @ hb + 1e-1 * np.eye(HIDDEN + 1), hb.T @ targets)
    w2, b2 = sol[:HIDDEN].T.astype(np.float32).copy(), sol[HIDDEN].astype(np.float32)

    nodes = [
        helper.make_node("Gemm", ["pixels", "w1", "b1"], ["/fc1/Gemm_output_0"], name="probabilities", transB=1),
        helper.make_node("Relu", ["/fc1/Gemm_output_0"], ["features"], name="relu"),
        helper.make_node("Gemm", ["features", "w2", "b2"], ["logits"], name="classifier.2", transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=1),
    ]
    inits = [numpy_helper.from_array(a, n) for n, a in [("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)]]
    graph = helper.make_graph(
        nodes,
        "third_party_mlp",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 784])],
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", HIDDEN]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="make-onnx-names-fixture")
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, OUT)

    xt = idx("t10k-images-idx3-ubyte").reshape(-1, 784).astype(np.float32) / 255.0
    yt = idx("t10k-labels-idx1-ubyte")
    sess = ort.InferenceSession(OUT, providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"pixels": xt})[0]
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes): test accuracy {(logits.argmax(1) == yt).mean() * 100:.2f}%")


if __name__ == "__main__":
    main()
