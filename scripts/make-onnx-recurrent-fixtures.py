#!/usr/bin/env python3
"""Small ONNX LSTM/GRU test models written independently of squeeze, with reference outputs.

As scripts/make-onnx-fixtures.py: each model is built with onnx.helper (not by squeeze),
checked with onnx.checker and run by ONNX Runtime on a fixed batch; inputs and ONNX
Runtime's outputs go next to the model as JSON for `cargo test` (src/format/onnx/recurrent_tests.rs).

    pip install onnx==1.17.0 onnxruntime==1.20.1 numpy
    python3 scripts/make-onnx-recurrent-fixtures.py     # writes tests/fixtures/onnx/{lstm,gru}_*.onnx
"""
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "onnx")
rng = np.random.default_rng(20261126)


def w(*shape, scale=0.5):
    return rng.uniform(-scale, scale, size=shape).astype(np.float32)


def init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def axes(name, values):
    return init(name, np.array(values, dtype=np.int64))


def save(name, nodes, inits, input_shape, output_shape, opset, batch=3):
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"] + list(input_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"] + list(output_shape))],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="onnx.helper (make-onnx-recurrent-fixtures.py)")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    path = os.path.join(OUT, name + ".onnx")
    onnx.save_model(model, path)
    inputs = rng.uniform(-1.0, 1.0, size=[batch] + list(input_shape)).astype(np.float32)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    y = sess.run(["y"], {"x": inputs})[0]
    with open(os.path.join(OUT, name + ".json"), "w") as f:
        json.dump(
            {
                "batch": batch,
                "input": [float(v) for v in inputs.ravel()],
                "output": [float(v) for v in y.ravel()],
                "output_per_sample": int(np.prod(y.shape[1:])),
                "made_by": f"onnxruntime {ort.__version__}, onnx {onnx.__version__}",
            },
            f,
        )
    print(f"{name}: input {list(inputs.shape)} -> output {list(y.shape)}")


def lstm_stack():
    """Two stacked LSTMs as PyTorch writes batch-first ones at opset 13: Transpose to
    time-major, LSTM (the whole sequence Y, with an explicit zero initial state),
    Squeeze of the direction axis, Transpose back; then an LSTM whose last state Y_h
    feeds a Gemm."""
    steps, i, h1, h2, classes = 6, 5, 4, 3, 2
    nodes = [
        helper.make_node("Transpose", ["x"], ["x_tm"], perm=[1, 0, 2]),
        helper.make_node("LSTM", ["x_tm", "W1", "R1", "B1", "", "h0"], ["y1"], hidden_size=h1),
        helper.make_node("Squeeze", ["y1", "ax1"], ["y1s"]),
        helper.make_node("Transpose", ["y1s"], ["y1b"], perm=[1, 0, 2]),
        helper.make_node("Transpose", ["y1b"], ["y1tm"], perm=[1, 0, 2]),
        helper.make_node("LSTM", ["y1tm", "W2", "R2", "B2"], ["", "h2"], hidden_size=h2),
        helper.make_node("Squeeze", ["h2", "ax0"], ["last"]),
        helper.make_node("Gemm", ["last", "Wc", "bc"], ["y"], transB=1),
    ]
    inits = [
        init("W1", w(1, 4 * h1, i)), init("R1", w(1, 4 * h1, h1)), init("B1", w(1, 8 * h1)),
        init("h0", np.zeros((1, 3, h1), dtype=np.float32)),
        init("W2", w(1, 4 * h2, h1)), init("R2", w(1, 4 * h2, h2)), init("B2", w(1, 8 * h2)),
        init("Wc", w(classes, h2)), init("bc", w(classes)),
        axes("ax0", [0]), axes("ax1", [1]),
    ]
    save("lstm_stack", nodes, inits, [steps, i], [classes], 13)


def gru_no_bias():
    """A GRU without bias, PyTorch's reset-gate placement (linear_before_reset = 1); the
    last state through a Squeeze without axes (all size-1 dimensions) into a Gemm.
    (ONNX Runtime 1.20 refuses batch-first layout = 1, so the input is transposed.)"""
    steps, i, h, classes = 5, 4, 6, 3
    nodes = [
        helper.make_node("Transpose", ["x"], ["x_tm"], perm=[1, 0, 2]),
        helper.make_node("GRU", ["x_tm", "W", "R"], ["", "h"], hidden_size=h, linear_before_reset=1),
        helper.make_node("Squeeze", ["h"], ["last"]),
        helper.make_node("Gemm", ["last", "Wc", "bc"], ["y"], transB=1),
    ]
    inits = [init("W", w(1, 3 * h, i)), init("R", w(1, 3 * h, h)), init("Wc", w(classes, h)), init("bc", w(classes))]
    save("gru_no_bias", nodes, inits, [steps, i], [classes], 13)


def gru_sequence():
    """A GRU with bias at opset 13 whose whole output sequence is the result, brought
    back to [N, steps, H]."""
    steps, i, h = 4, 3, 5
    nodes = [
        helper.make_node("Transpose", ["x"], ["x_tm"], perm=[1, 0, 2]),
        helper.make_node("GRU", ["x_tm", "W", "R", "B"], ["seq"], hidden_size=h, linear_before_reset=1),
        helper.make_node("Squeeze", ["seq", "ax1"], ["seq_s"]),
        helper.make_node("Transpose", ["seq_s"], ["y"], perm=[1, 0, 2]),
    ]
    inits = [init("W", w(1, 3 * h, i)), init("R", w(1, 3 * h, h)), init("B", w(1, 6 * h)), axes("ax1", [1])]
    save("gru_sequence", nodes, inits, [steps, i], [steps, h], 13)


def bad_recurrent():
    """Recurrent models squeeze refuses with a clear error (no reference outputs)."""
    for name, attrs in [("gru_reset_before", dict(linear_before_reset=0)), ("lstm_bidirectional", dict(direction="bidirectional"))]:
        cell = "GRU" if name.startswith("gru") else "LSTM"
        g, dirs, h, i = (3 if cell == "GRU" else 4), (2 if "bidirectional" in name else 1), 2, 3
        nodes = [
            helper.make_node("Transpose", ["x"], ["x_tm"], perm=[1, 0, 2]),
            helper.make_node(cell, ["x_tm", "W", "R"], ["", "h"], hidden_size=h, **attrs),
            helper.make_node("Reshape", ["h", "shape"], ["y"]),
        ]
        inits = [init("W", w(dirs, g * h, i)), init("R", w(dirs, g * h, h)), axes("shape", [-1, dirs * h])]
        graph = helper.make_graph(
            nodes, name,
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, i])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", dirs * h])],
            initializer=inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        onnx.save_model(model, os.path.join(OUT, name + ".onnx"))
        print(f"{name}: written (expected to be refused)")


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    lstm_stack()
    gru_no_bias()
    gru_sequence()
    bad_recurrent()
