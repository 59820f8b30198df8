#!/usr/bin/env python3
"""Runs an ONNX file in ONNX Runtime: the independent check of squeeze's exports.

    python3 scripts/onnxruntime-check.py eval MODEL.onnx [DATA_DIR]
        top-1 accuracy on the Fashion-MNIST test set (pixels / 255, the scale squeeze
        uses), with the input reshaped to the model's input shape.
    python3 scripts/onnxruntime-check.py run MODEL.onnx INPUT.f32 N OUTPUT.f32 [NAME]
        runs N samples (raw little-endian float32), fed by the model's input name, and
        writes the first output (or the output called NAME).
    python3 scripts/onnxruntime-check.py names MODEL.onnx
        prints the input names, then the output names, one line each, tab-separated.

Used by the test suite (tests/onnx.rs) when onnxruntime is installed (CI installs it).
"""
import gzip
import os
import sys

import numpy as np
import onnxruntime as ort


def session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def run(sess, x, output=None):
    inp = sess.get_inputs()[0]
    shape = [x.shape[0]] + [int(d) for d in inp.shape[1:]]
    return sess.run([output or sess.get_outputs()[0].name], {inp.name: x.reshape(shape).astype(np.float32)})[0]


def idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def find(data, stem):
    for name in (stem + ".gz", stem):
        p = os.path.join(data, name)
        if os.path.exists(p):
            return p
    raise SystemExit(f"{stem} not found in {data}")


def main(argv):
    if len(argv) >= 3 and argv[1] == "eval":
        data = argv[3] if len(argv) > 3 else os.environ.get("SQUEEZE_DATA", "/usr/share/datasets/fashion-mnist")
        x = idx(find(data, "t10k-images-idx3-ubyte")).reshape(-1, 784).astype(np.float32) / 255.0
        y = idx(find(data, "t10k-labels-idx1-ubyte"))
        sess = session(argv[2])
        preds = np.concatenate([run(sess, x[i:i + 1000]).argmax(axis=1) for i in range(0, len(x), 1000)])
        print(f"onnxruntime {ort.__version__}: {argv[2]}: test accuracy {(preds == y).mean() * 100:.2f}% ({len(y)} images)")
    elif len(argv) in (6, 7) and argv[1] == "run":
        n = int(argv[4])
        x = np.fromfile(argv[3], dtype="<f4").reshape(n, -1)
        run(session(argv[2]), x, argv[6] if len(argv) == 7 else None).astype("<f4").tofile(argv[5])
    elif len(argv) == 3 and argv[1] == "names":
        sess = session(argv[2])
        print("\t".join(i.name for i in sess.get_inputs()))
        print("\t".join(o.name for o in sess.get_outputs()))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
