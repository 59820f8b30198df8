#!/usr/bin/env python3
"""A Fashion-MNIST CNN with BatchNorm, written as ONNX by a different exporter: this
script trains it in plain numpy (im2col convolutions, batch-statistics BatchNorm with
running mean/variance kept for inference, Adam) and writes it with onnx.helper. squeeze
has no part in it; tests/onnx.rs checks that squeeze imports it and reproduces the
accuracy ONNX Runtime gives.

Graph (opset 13), input float32 [N, 1, 28, 28] = pixels / 255 (squeeze's scale):
    Sub(mean) -> Div(std) -> Conv 1->8 5x5 pad 2 -> BatchNormalization -> Relu
    -> MaxPool 2x2 -> Conv 8->16 5x5 -> BatchNormalization -> Relu -> MaxPool 2x2
    -> Flatten -> Gemm 400->10 (logits)
Trained on the first 55,000 training images (the last 5,000 are squeeze's validation
split), 2 epochs, batch 64, Adam lr 1e-3, seed 0.

    pip install onnx==1.17.0 onnxruntime==1.20.1 numpy
    python3 scripts/make-bn-cnn-onnx.py
        # writes tests/fixtures/onnx/fashion_bn_cnn.onnx and fashion_bn_cnn.json

Prints numpy's and ONNX Runtime's test accuracy; the JSON records ONNX Runtime's.
"""
import gzip
import json
import os
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

DATA = os.environ.get("SQUEEZE_DATA", "/usr/share/datasets/fashion-mnist")
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "onnx")
MEAN, STD, EPS, MOMENTUM = 0.2860, 0.3530, 1e-5, 0.1


def idx(name):
    with gzip.open(os.path.join(DATA, name)) as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def im2col(x, k, pad):
    """x [N, C, H, W] -> columns [N*H'*W', C*k*k] (rows in N, H', W' order)."""
    if pad:
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))  # N C H' W' k k
    n, c, h, w = win.shape[:4]
    return np.ascontiguousarray(win.transpose(0, 2, 3, 1, 4, 5)).reshape(n * h * w, c * k * k), (n, h, w)


def col2im(dcols, shape, k, pad, out_hw):
    n, c, hin, win_ = shape
    h, w = out_hw
    d = dcols.reshape(n, h, w, c, k, k)
    dx = np.zeros((n, c, hin + 2 * pad, win_ + 2 * pad), np.float32)
    for i in range(k):
        for j in range(k):
            dx[:, :, i:i + h, j:j + w] += d[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    return dx[:, :, pad:pad + hin, pad:pad + win_] if pad else dx


class Net:
    def __init__(self, rng):
        def he(shape, fan_in):
            return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        self.p = {
            "conv1.w": he((8, 1, 5, 5), 25), "conv1.b": np.zeros(8, np.float32),
            "bn1.g": np.ones(8, np.float32), "bn1.b": np.zeros(8, np.float32),
            "conv2.w": he((16, 8, 5, 5), 200), "conv2.b": np.zeros(16, np.float32),
            "bn2.g": np.ones(16, np.float32), "bn2.b": np.zeros(16, np.float32),
            "fc.w": he((10, 400), 400), "fc.b": np.zeros(10, np.float32),
        }
        self.running = {"bn1": [np.zeros(8, np.float32), np.ones(8, np.float32)],
                        "bn2": [np.zeros(16, np.float32), np.ones(16, np.float32)]}

    def block(self, x, conv, bn, pad, train, cache):
        """Conv -> BN -> ReLU -> MaxPool 2x2 on NCHW x; returns NCHW."""
        w, b = self.p[conv + ".w"], self.p[conv + ".b"]
        cols, (n, h, wd) = im2col(x, 5, pad)
        z = cols @ w.reshape(w.shape[0], -1).T + b  # [N*h*w, O]
        if train:
            mu, var = z.mean(0), z.var(0)
            m = z.shape[0]
            r = self.running[bn]
            r[0] = (1 - MOMENTUM) * r[0] + MOMENTUM * mu
            r[1] = (1 - MOMENTUM) * r[1] + MOMENTUM * var * m / (m - 1)
        else:
            mu, var = self.running[bn]
        inv = 1.0 / np.sqrt(var + EPS)
        zhat = (z - mu) * inv
        y = np.maximum(zhat * self.p[bn + ".g"] + self.p[bn + ".b"], 0)
        o = y.shape[1]
        y4 = y.reshape(n, h // 2, 2, wd // 2, 2, o)
        pooled = y4.max(axis=(2, 4))
        if train:
            cache[conv] = (x.shape, cols, zhat, inv, y4, pooled, (n, h, wd, o), pad)
        return np.ascontiguousarray(pooled.transpose(0, 3, 1, 2))

    def block_back(self, dout, conv, bn, cache, grads, need_dx):
        xshape, cols, zhat, inv, y4, pooled, (n, h, wd, o), pad = cache[conv]
        dp = dout.transpose(0, 2, 3, 1)  # N h/2 w/2 O
        mask = (y4 == pooled[:, :, None, :, None, :]).astype(np.float32)
        mask /= mask.sum(axis=(2, 4), keepdims=True)
        dy = (mask * dp[:, :, None, :, None, :]).reshape(-1, o)
        dy *= (zhat * self.p[bn + ".g"] + self.p[bn + ".b"]) > 0
        grads[bn + ".g"] = (dy * zhat).sum(0)
        grads[bn + ".b"] = dy.sum(0)
        dzhat = dy * self.p[bn + ".g"]
        dz = inv * (dzhat - dzhat.mean(0) - zhat * (dzhat * zhat).mean(0))
        w = self.p[conv + ".w"]
        grads[conv + ".w"] = (dz.T @ cols).reshape(w.shape)
        grads[conv + ".b"] = dz.sum(0)
        if need_dx:
            return col2im(dz @ w.reshape(o, -1), xshape, 5, pad, (h, wd))
        return None

    def forward(self, x, train=False, cache=None):
        x = (x - MEAN) / STD
        a = self.block(x, "conv1", "bn1", 2, train, cache)
        a = self.block(a, "conv2", "bn2", 0, train, cache)
        flat = a.reshape(a.shape[0], -1)
        if train:
            cache["flat"] = flat
        return flat @ self.p["fc.w"].T + self.p["fc.b"]

    def loss_grads(self, x, y):
        cache, grads = {}, {}
        logits = self.forward(x, True, cache)
        z = logits - logits.max(1, keepdims=True)
        prob = np.exp(z)
        prob /= prob.sum(1, keepdims=True)
        loss = -np.log(prob[np.arange(len(y)), y] + 1e-12).mean()
        d = prob
        d[np.arange(len(y)), y] -= 1
        d /= len(y)
        grads["fc.w"] = d.T @ cache["flat"]
        grads["fc.b"] = d.sum(0)
        da = (d @ self.p["fc.w"]).reshape(-1, 16, 5, 5)
        da = self.block_back(da, "conv2", "bn2", cache, grads, True)
        self.block_back(da, "conv1", "bn1", cache, grads, False)
        return loss, grads


def to_onnx(net, path):
    p = {k: v.astype(np.float32) for k, v in net.p.items()}
    inits = [numpy_helper.from_array(np.array(MEAN, np.float32), "mean"),
             numpy_helper.from_array(np.array(STD, np.float32), "std")]
    for name, v in p.items():
        inits.append(numpy_helper.from_array(v, name))
    for bn, (mu, var) in net.running.items():
        inits.append(numpy_helper.from_array(mu.astype(np.float32), bn + ".running_mean"))
        inits.append(numpy_helper.from_array(var.astype(np.float32), bn + ".running_var"))
    inits.append(numpy_helper.from_array(np.array([-1, 400], np.int64), "flat_shape"))
    n = helper.make_node
    nodes = [
        n("Sub", ["image", "mean"], ["centred"], name="sub_mean"),
        n("Div", ["centred", "std"], ["normalised"], name="div_std"),
        n("Conv", ["normalised", "conv1.w", "conv1.b"], ["c1"], name="conv1", kernel_shape=[5, 5], pads=[2, 2, 2, 2]),
        n("BatchNormalization", ["c1", "bn1.g", "bn1.b", "bn1.running_mean", "bn1.running_var"], ["b1"], name="bn1", epsilon=EPS, momentum=1 - MOMENTUM),
        n("Relu", ["b1"], ["r1"], name="relu1"),
        n("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        n("Conv", ["p1", "conv2.w", "conv2.b"], ["c2"], name="conv2", kernel_shape=[5, 5]),
        n("BatchNormalization", ["c2", "bn2.g", "bn2.b", "bn2.running_mean", "bn2.running_var"], ["b2"], name="bn2", epsilon=EPS, momentum=1 - MOMENTUM),
        n("Relu", ["b2"], ["r2"], name="relu2"),
        n("MaxPool", ["r2"], ["p2"], name="pool2", kernel_shape=[2, 2], strides=[2, 2]),
        n("Flatten", ["p2"], ["flat"], name="flatten", axis=1),
        n("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "fashion_bn_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [i for i in inits if i.name != "flat_shape"])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="make-bn-cnn-onnx.py (numpy)", producer_version="1")
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, path)


def main():
    t0 = time.time()
    x_train = idx("train-images-idx3-ubyte.gz")[:55000].reshape(-1, 1, 28, 28).astype(np.float32) / 255.0
    y_train = idx("train-labels-idx1-ubyte.gz")[:55000].astype(np.int64)
    x_test = idx("t10k-images-idx3-ubyte.gz").reshape(-1, 1, 28, 28).astype(np.float32) / 255.0
    y_test = idx("t10k-labels-idx1-ubyte.gz").astype(np.int64)
    rng = np.random.default_rng(0)
    net = Net(rng)
    m = {k: np.zeros_like(v) for k, v in net.p.items()}
    v = {k: np.zeros_like(val) for k, val in net.p.items()}
    lr, b1, b2, step, batch = 1e-3, 0.9, 0.999, 0, 64
    epochs = int(os.environ.get("EPOCHS", "2"))
    for epoch in range(epochs):
        order = rng.permutation(len(x_train))
        total = 0.0
        for i in range(0, len(order), batch):
            sel = order[i:i + batch]
            loss, grads = net.loss_grads(x_train[sel], y_train[sel])
            total += loss * len(sel)
            step += 1
            for k, g in grads.items():
                m[k] = b1 * m[k] + (1 - b1) * g
                v[k] = b2 * v[k] + (1 - b2) * g * g
                mhat, vhat = m[k] / (1 - b1 ** step), v[k] / (1 - b2 ** step)
                net.p[k] -= (lr * mhat / (np.sqrt(vhat) + 1e-8)).astype(np.float32)
        print(f"epoch {epoch + 1}: loss {total / len(order):.4f} ({time.time() - t0:.0f}s)", flush=True)
    preds = np.concatenate([net.forward(x_test[i:i + 1000]).argmax(1) for i in range(0, 10000, 1000)])
    numpy_acc = (preds == y_test).mean()
    print(f"numpy test accuracy: {numpy_acc * 100:.2f}%")

    path = os.path.join(FIXTURES, "fashion_bn_cnn.onnx")
    to_onnx(net, path)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    logits = np.concatenate([sess.run(["logits"], {"image": x_test[i:i + 1000]})[0] for i in range(0, 10000, 1000)])
    ort_acc = (logits.argmax(1) == y_test).mean()
    print(f"onnxruntime {ort.__version__} test accuracy: {ort_acc * 100:.2f}% ({len(y_test)} images)")
    print(f"{path}: {os.path.getsize(path)} bytes")
    with open(os.path.join(FIXTURES, "fashion_bn_cnn.json"), "w") as f:
        json.dump({"model": "fashion_bn_cnn.onnx", "made_by": "scripts/make-bn-cnn-onnx.py",
                   "onnxruntime": ort.__version__, "test_images": int(len(y_test)),
                   "onnxruntime_test_accuracy": round(float(ort_acc), 6),
                   "numpy_test_accuracy": round(float(numpy_acc), 6), "epochs": epochs}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    sys.exit(main())
