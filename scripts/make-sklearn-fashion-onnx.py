#!/usr/bin/env python3
"""A Fashion-MNIST classifier made by another tool: scikit-learn's MLPClassifier
(784-64-10, ReLU, Adam), trained on the 55,000 training images that squeeze also trains
on (the last 5,000 are squeeze's validation split), converted to ONNX by skl2onnx with
its default post-processing (ArgMax label output, ZipMap probabilities).

Input: pixels / 255 as float32 [N, 784], the same scale squeeze's data loader gives.

    pip install onnx==1.17.0 onnxruntime==1.20.1 numpy scikit-learn==1.5.2 skl2onnx==1.17.0
    python3 scripts/make-sklearn-fashion-onnx.py   # writes tests/fixtures/onnx/sklearn_fashion_mlp.onnx

Prints the model's test accuracy in scikit-learn and in ONNX Runtime.
"""
import gzip
import os
import sys

import numpy as np
import onnxruntime as ort
from skl2onnx import to_onnx
from sklearn.neural_network import MLPClassifier

DATA = os.environ.get("SQUEEZE_DATA", "/usr/share/datasets/fashion-mnist")
OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "onnx", "sklearn_fashion_mlp.onnx")


def idx(name):
    with gzip.open(os.path.join(DATA, name)) as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def main():
    x_train = idx("train-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32) / 255.0
    y_train = idx("train-labels-idx1-ubyte.gz")
    x_test = idx("t10k-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32) / 255.0
    y_test = idx("t10k-labels-idx1-ubyte.gz")
    clf = MLPClassifier(hidden_layer_sizes=(64,), activation="relu", solver="adam", batch_size=128,
                        learning_rate_init=1e-3, max_iter=15, random_state=0, verbose=False)
    clf.fit(x_train[:55000], y_train[:55000])
    acc = (clf.predict(x_test) == y_test).mean()
    print(f"scikit-learn test accuracy: {acc:.4f}")
    onx = to_onnx(clf, x_train[:1], target_opset={"": 15, "ai.onnx.ml": 3})
    with open(OUT, "wb") as f:
        f.write(onx.SerializeToString())
    sess = ort.InferenceSession(OUT, providers=["CPUExecutionProvider"])
    label = sess.run([sess.get_outputs()[0].name], {sess.get_inputs()[0].name: x_test})[0]
    print(f"onnxruntime test accuracy:  {(label == y_test).mean():.4f}")
    print(f"{OUT}: {os.path.getsize(OUT)} bytes; outputs {[o.name for o in sess.get_outputs()]}; ops {sorted({n.op_type for n in onx.graph.node})}")


if __name__ == "__main__":
    sys.exit(main())
