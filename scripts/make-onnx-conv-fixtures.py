#!/usr/bin/env python3
"""Grouped, depthwise and dilated convolutions and padded max pooling, written with
onnx.helper (not by squeeze) and run by ONNX Runtime; inputs and ONNX Runtime's outputs
go next to the model as JSON (the layout of scripts/make-onnx-fixtures.py), so
`cargo test` checks squeeze's import, training forward and export against them.

    pip install onnx==1.17.0 onnxruntime==1.20.1 numpy
    python3 scripts/make-onnx-conv-fixtures.py     # writes tests/fixtures/onnx/grouped_dilated.*
"""
import importlib.util
import os

import numpy as np
from onnx import helper

spec = importlib.util.spec_from_file_location("fixtures", os.path.join(os.path.dirname(__file__), "make-onnx-fixtures.py"))
fixtures = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fixtures)
# Own generator: the other fixtures' values do not move when this script changes.
fixtures.rng = np.random.default_rng(20261126)
w, init, save = fixtures.w, fixtures.init, fixtures.save


def grouped_dilated():
    """[4, 11, 11] → Conv group 2 (4→6, 3×3, pad 1) + BatchNormalization → Relu →
    depthwise Conv (group 6, 3×3, dilation 2, pad 2, stride 1) → MaxPool 3×3 stride 2
    pads 1 → Conv 6→4 3×3 dilation 2 (no padding, no bias) → Relu → Flatten → Gemm; opset 13."""
    g1, gb1 = w(6, 2, 3, 3), w(6)
    gamma, beta = fixtures.rng.uniform(0.5, 1.5, 6).astype(np.float32), fixtures.rng.uniform(-0.2, 0.2, 6).astype(np.float32)
    mean, var = fixtures.rng.uniform(-0.1, 0.1, 6).astype(np.float32), fixtures.rng.uniform(0.5, 2.0, 6).astype(np.float32)
    dw, dwb = w(6, 1, 3, 3), w(6)
    d3 = w(4, 6, 3, 3)
    fc, fcb = w(5, 4 * 2 * 2), w(5)
    nodes = [
        helper.make_node("Conv", ["x", "g1", "gb1"], ["a"], name="grouped", kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=2),
        helper.make_node("BatchNormalization", ["a", "gamma", "beta", "mean", "var"], ["bn"], name="bn1"),
        helper.make_node("Relu", ["bn"], ["r"], name="relu1"),
        helper.make_node("Conv", ["r", "dw", "dwb"], ["d"], name="depthwise", kernel_shape=[3, 3], pads=[2, 2, 2, 2], dilations=[2, 2], group=6),
        helper.make_node("MaxPool", ["d"], ["p"], name="pool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["p", "d3"], ["c"], name="dilated", kernel_shape=[3, 3], dilations=[2, 2]),
        helper.make_node("Relu", ["c"], ["r2"], name="relu2"),
        helper.make_node("Flatten", ["r2"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], name="fc", transB=1),
    ]
    inits = [init(n, v) for n, v in [("g1", g1), ("gb1", gb1), ("gamma", gamma), ("beta", beta), ("mean", mean), ("var", var), ("dw", dw), ("dwb", dwb), ("d3", d3), ("fc", fc), ("fcb", fcb)]]
    # Inputs centred on 0: the padded max pool then sees negative maxima, where padding
    # read as 0 would give a different answer.
    x = fixtures.rng.uniform(-1.0, 1.0, size=[4, 4, 11, 11]).astype(np.float32)
    save("grouped_dilated", nodes, inits, [4, 11, 11], [5], 13, inputs=x)


if __name__ == "__main__":
    grouped_dilated()
