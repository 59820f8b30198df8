#!/usr/bin/env python3
"""Trains a model outside squeeze and saves it as a PyTorch state dict, to show and test
`squeeze import` on weights squeeze did not make.

A scikit-learn MLPClassifier (784-64-10, ReLU, Adam) is trained on the first 55,000
Fashion-MNIST training images (the last 5,000 are squeeze's default validation split,
so they stay held out) with inputs standardised as torchvision would (ToTensor, then Normalize(0.2860, 0.3530)).
Its weights are written, transposed to nn.Linear's [out, in] layout, under the keys of
`nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))`:
`net.1.weight`, `net.1.bias`, `net.3.weight`, `net.3.bias`, as

  recipes/models/fmnist-mlp-sklearn.pth          torch.save zip layout, by scripts/torch_zip.py (not by torch)
  recipes/models/fmnist-mlp-sklearn.safetensors  the same tensors as safetensors
  recipes/models/fmnist-mlp-sklearn.json         scikit-learn's own test accuracy and the
                                                 logits of the first test images (numpy)

With --npz DIR it also writes the data set as NumPy archives (x: uint8 [N, 1, 28, 28],
y: uint8 [N]): DIR/fmnist-train.npz and DIR/fmnist-test.npz.

Needs numpy and scikit-learn (not torch). Usage:
  python3 scripts/train_sklearn_mlp.py [--data /usr/share/datasets/fashion-mnist] [--npz out/npz]
"""

import argparse
import gzip
import json
import os
import struct
import sys
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_zip  # noqa: E402

MEAN, STD = 0.2860, 0.3530


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find(d, name):
    for p in (os.path.join(d, name + ".gz"), os.path.join(d, name)):
        if os.path.exists(p):
            return p
    sys.exit(f"{name} not found in {d}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "recipes", "models"))
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--npz", help="also write the data set as .npz archives into this directory")
    args = ap.parse_args()

    xtr = read_idx(find(args.data, "train-images-idx3-ubyte"))
    ytr = read_idx(find(args.data, "train-labels-idx1-ubyte"))
    xte = read_idx(find(args.data, "t10k-images-idx3-ubyte"))
    yte = read_idx(find(args.data, "t10k-labels-idx1-ubyte"))
    prep = lambda x: ((x.reshape(len(x), -1).astype(np.float32) / 255.0) - MEAN) / STD

    clf = MLPClassifier(hidden_layer_sizes=(64,), activation="relu", solver="adam", batch_size=128,
                        learning_rate_init=1e-3, alpha=1e-4, max_iter=args.epochs, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(prep(xtr[:55000]), ytr[:55000])
    acc = float((clf.predict(prep(xte)) == yte).mean())
    print(f"scikit-learn MLPClassifier test accuracy: {acc * 100:.2f}% ({len(yte)} images, {clf.n_iter_} epochs)")

    w1, w2 = clf.coefs_[0].T.astype(np.float32), clf.coefs_[1].T.astype(np.float32)
    b1, b2 = clf.intercepts_[0].astype(np.float32), clf.intercepts_[1].astype(np.float32)
    # Logits as PyTorch would compute them (f32), to check the layout.
    h = np.maximum(prep(xte) @ w1.T + b1, 0)
    logits = h @ w2.T + b2
    assert (logits.argmax(1) == clf.predict(prep(xte))).mean() > 0.999

    t = lambda a: torch_zip.Tensor.dense("float32", a.shape, [float(v) for v in a.reshape(-1)])
    sd = torch_zip.state_dict(
        [("net.1.weight", t(w1)), ("net.1.bias", t(b1)), ("net.3.weight", t(w2)), ("net.3.bias", t(b2))], ["net", "net.1", "net.3"]
    )
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, "fmnist-mlp-sklearn")
    torch_zip.save(sd, base + ".pth")
    torch_zip.save_safetensors(sd, base + ".safetensors")
    with open(base + ".json", "w") as f:
        json.dump({"origin": "scikit-learn MLPClassifier(64,), scripts/train_sklearn_mlp.py",
                   "test_accuracy": acc, "epochs": int(clf.n_iter_),
                   "first_test_logits": logits[:8].astype(float).round(6).tolist()}, f, indent=1)
    print("wrote", base + ".pth", base + ".safetensors", base + ".json")

    if args.npz:
        os.makedirs(args.npz, exist_ok=True)
        np.savez(os.path.join(args.npz, "fmnist-train.npz"), x=xtr.reshape(-1, 1, 28, 28), y=ytr)
        np.savez(os.path.join(args.npz, "fmnist-test.npz"), x=xte.reshape(-1, 1, 28, 28), y=yte)
        print("wrote", os.path.join(args.npz, "fmnist-train.npz"), os.path.join(args.npz, "fmnist-test.npz"))


if __name__ == "__main__":
    main()
