#!/usr/bin/env python3
"""Small ONNX test models written independently of squeeze, with reference outputs.

Each model is built with onnx.helper (not by squeeze), checked with onnx.checker, and
run by ONNX Runtime on a fixed batch of inputs; the inputs and ONNX Runtime's outputs
go next to the model as JSON, so `cargo test` compares squeeze's import against ONNX
Runtime without Python at test time.

    pip install onnx==1.17.0 onnxruntime==1.20.1 numpy
    python3 scripts/make-onnx-fixtures.py        # writes tests/fixtures/onnx/

The Fashion-MNIST classifier made by scikit-learn + skl2onnx is written by
scripts/make-sklearn-fashion-onnx.py (it trains on the full data set); grouped, depthwise
and dilated convolutions and padded max pooling by scripts/make-onnx-conv-fixtures.py.
"""
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "onnx")
rng = np.random.default_rng(20261125)


def w(*shape, scale=None):
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    s = scale if scale is not None else 1.0 / np.sqrt(fan_in)
    return rng.uniform(-s, s, size=shape).astype(np.float32)


def init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def const_node(name, array):
    """A Constant node (weights stored in the graph, not as initializers)."""
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(array), name + "_value"))


def save(name, nodes, inits, input_shape, output_shape, opset, extra_outputs=(), batch=4, inputs=None):
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"] + list(input_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"] + list(output_shape))] + list(extra_outputs),
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="onnx.helper (make-onnx-fixtures.py)")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    path = os.path.join(OUT, name + ".onnx")
    onnx.save_model(model, path)
    if inputs is None:
        inputs = rng.uniform(0.0, 1.0, size=[batch] + list(input_shape)).astype(np.float32)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    y = sess.run(["y"], {"x": inputs})[0]
    with open(os.path.join(OUT, name + ".json"), "w") as f:
        json.dump(
            {
                "model": name + ".onnx",
                "opset": opset,
                "onnxruntime": ort.__version__,
                "batch": int(inputs.shape[0]),
                "input": [float(v) for v in inputs.reshape(-1)],
                "output": [float(v) for v in y.reshape(-1)],
                "output_per_sample": int(np.prod(y.shape[1:])),
            },
            f,
        )
    print(f"{path}: {os.path.getsize(path)} bytes, output {y.shape}")


def mlp_gemm():
    """Gemm (transB=1, then transB=0 with alpha/beta), Relu, Softmax; opset 13."""
    w1, b1 = w(16, 20), w(16)
    w2, b2 = w(16, 5), w(5)  # [K, N]: transB = 0
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="relu1"),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"], name="fc2", alpha=0.5, beta=2.0),
        helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=1),
    ]
    save("mlp_gemm", nodes, [init("w1", w1), init("b1", b1), init("w2", w2), init("b2", b2)], [20], [5], 13)


def cnn_bn():
    """Conv (no bias) + BatchNormalization + Relu + MaxPool + strided Conv + Flatten + Gemm; opset 17."""
    c1 = w(4, 2, 3, 3)
    gamma, beta = rng.uniform(0.5, 1.5, 4).astype(np.float32), rng.uniform(-0.2, 0.2, 4).astype(np.float32)
    mean, var = rng.uniform(-0.1, 0.1, 4).astype(np.float32), rng.uniform(0.5, 2.0, 4).astype(np.float32)
    c2, cb2 = w(6, 4, 2, 2), w(6)
    fc, fcb = w(3, 6 * 2 * 2), w(3)
    nodes = [
        helper.make_node("Conv", ["x", "c1"], ["a"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["a", "gamma", "beta", "mean", "var"], ["bn"], name="bn1", epsilon=1e-3),
        helper.make_node("Relu", ["bn"], ["r"], name="relu1"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p", "c2", "cb2"], ["b"], name="conv2", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Relu", ["b"], ["r2"], name="relu2"),
        helper.make_node("Flatten", ["r2"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], name="fc", transB=1),
    ]
    inits = [init("c1", c1), init("gamma", gamma), init("beta", beta), init("mean", mean), init("var", var), init("c2", c2), init("cb2", cb2), init("fc", fc), init("fcb", fcb)]
    save("cnn_bn", nodes, inits, [2, 9, 9], [3], 17)


def matmul_constants():
    """MatMul + Add as bias, Sigmoid, Tanh, Mul by a constant, weights in Constant nodes,
    Identity and Dropout; opset 11."""
    m1, a1 = w(12, 10, scale=0.5), w(10)
    m2, a2 = w(10, 6, scale=0.5), w(6)
    nodes = [
        const_node("m1", m1),
        const_node("a1", a1),
        helper.make_node("MatMul", ["x", "m1"], ["h"], name="mm1"),
        helper.make_node("Add", ["h", "a1"], ["hb"], name="bias1"),
        helper.make_node("Sigmoid", ["hb"], ["s"], name="sig"),
        helper.make_node("Identity", ["s"], ["s2"], name="ident"),
        helper.make_node("Dropout", ["s2"], ["d"], name="drop"),
        helper.make_node("MatMul", ["d", "m2"], ["g"], name="mm2"),
        helper.make_node("Add", ["g", "a2"], ["gb"], name="bias2"),
        helper.make_node("Mul", ["gb", "k"], ["gm"], name="scale"),
        helper.make_node("Tanh", ["gm"], ["y"], name="tanh"),
    ]
    save("matmul_constants", nodes, [init("m2", m2), init("a2", a2), init("k", np.array(1.7, dtype=np.float32))], [12], [6], 11)


def pools_normalize():
    """Input scaling as Sub/Div by per-channel constants (folded into a Normalize node),
    Conv + Relu + AveragePool (padded, count_include_pad) + Conv + GlobalAveragePool +
    Flatten + Gemm; opset 21."""
    mean = np.array([0.4, 0.5, 0.6], dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.array([0.2, 0.25, 0.3], dtype=np.float32).reshape(1, 3, 1, 1)
    c1, cb1 = w(5, 3, 3, 3), w(5)
    c2, cb2 = w(4, 5, 3, 3), w(4)
    fc, fcb = w(2, 4), w(2)
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["xs"], name="sub_mean"),
        helper.make_node("Div", ["xs", "std"], ["xn"], name="div_std"),
        helper.make_node("Conv", ["xn", "c1", "cb1"], ["a"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"], name="relu1"),
        helper.make_node("AveragePool", ["r"], ["p"], name="avg", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
        helper.make_node("Conv", ["p", "c2", "cb2"], ["b"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["b"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], name="fc", transB=1),
    ]
    inits = [init("mean", mean), init("std", std), init("c1", c1), init("cb1", cb1), init("c2", c2), init("cb2", cb2), init("fc", fc), init("fcb", fcb)]
    save("pools_normalize", nodes, inits, [3, 8, 8], [2], 21)


def reshape_layout():
    """A flat [N, 64] input reshaped to [N, 1, 8, 8], Conv, a layout-only Transpose of a
    [N, 4, 1, 1] value, Reshape to [N, -1] and a Gemm; opset 15."""
    c1, cb1 = w(4, 1, 8, 8), w(4)
    fc, fcb = w(3, 4), w(3)
    nodes = [
        helper.make_node("Reshape", ["x", "shape_img"], ["img"], name="to_image"),
        helper.make_node("Conv", ["img", "c1", "cb1"], ["a"], name="conv1", kernel_shape=[8, 8]),
        helper.make_node("Transpose", ["a"], ["t"], name="swap", perm=[0, 1, 3, 2]),
        helper.make_node("Reshape", ["t", "shape_flat"], ["f"], name="to_flat"),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], name="fc", transB=1),
    ]
    inits = [init("shape_img", np.array([-1, 1, 8, 8], dtype=np.int64)), init("shape_flat", np.array([0, -1], dtype=np.int64)), init("c1", c1), init("cb1", cb1), init("fc", fc), init("fcb", fcb)]
    save("reshape_layout", nodes, inits, [64], [3], 15)


def view_flatten():
    """PyTorch's `x.view(x.size(0), -1)` as its exporter writes it (Shape, Gather,
    Unsqueeze, Concat, Reshape) after a Conv + MaxPool; opset 12 (Unsqueeze axes as an
    attribute)."""
    c1, cb1 = w(3, 1, 3, 3), w(3)
    fc, fcb = w(4, 3 * 3 * 3), w(4)
    nodes = [
        helper.make_node("Conv", ["x", "c1", "cb1"], ["a"], name="/conv1/Conv", kernel_shape=[3, 3]),
        helper.make_node("MaxPool", ["a"], ["p"], name="/pool/MaxPool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Shape", ["p"], ["s"], name="/Shape"),
        helper.make_node("Gather", ["s", "zero"], ["b"], name="/Gather", axis=0),
        helper.make_node("Unsqueeze", ["b"], ["bu"], name="/Unsqueeze", axes=[0]),
        helper.make_node("Concat", ["bu", "minus_one"], ["target"], name="/Concat", axis=0),
        helper.make_node("Reshape", ["p", "target"], ["f"], name="/Reshape"),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], name="/fc/Gemm", transB=1),
    ]
    inits = [init("c1", c1), init("cb1", cb1), init("zero", np.array(0, dtype=np.int64)), init("minus_one", np.array([-1], dtype=np.int64)), init("fc", fc), init("fcb", fcb)]
    save("view_flatten", nodes, inits, [1, 8, 8], [4], 12)


def bad_models():
    """Files that must fail with one clear error."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    g = helper.make_graph([helper.make_node("LeakyRelu", ["x"], ["y"], name="leaky", alpha=0.1)], "unsupported", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save_model(m, os.path.join(OUT, "unsupported_op.onnx"))
    # The per-sample shape is symbolic: it cannot be resolved.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "features"])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "symbolic", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save_model(m, os.path.join(OUT, "symbolic_input.onnx"))


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    mlp_gemm()
    cnn_bn()
    matmul_constants()
    pools_normalize()
    reshape_layout()
    view_flatten()
    bad_models()
