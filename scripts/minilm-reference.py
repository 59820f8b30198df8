#!/usr/bin/env python3
"""An independent float64 computation of a Hugging Face BERT sentence embedder (NumPy only,
plus the Python `tokenizers` package for the token ids), to check squeeze's embeddings.

It reads config.json, model.safetensors (parsed here, no safetensors package) and
tokenizer.json from the model directory, runs every sentence at its own length (no
padding, so no mask is involved), mean-pools the last hidden states and, when the
sentence-transformers modules.json lists a Normalize module, L2-normalises them.

    python3 scripts/minilm-reference.py models/all-MiniLM-L6-v2 data/shakespeare/heldout.txt \
        --squeeze out/minilm-fp32/heldout.npy [--max-len 128] [--min-cosine 0.99999] [--limit N] [--save ref.npy | --load ref.npy]

`--squeeze` is the `[n, dim]` float32 .npy that `squeeze embed MODEL --file SENTENCES
--out FILE.npy` writes. Prints the mean and minimum cosine per sentence and exits 1
when the minimum is below --min-cosine. Test-time only: squeeze never runs Python.
"""
import argparse, json, math, struct, sys
from pathlib import Path

import numpy as np


def read_safetensors(path):
    raw = Path(path).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    kinds = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(raw[base + a:base + b], dtype=kinds[info["dtype"]]).reshape(info["shape"]).astype(np.float64)
    return out


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


try:
    from scipy.special import erf as _erf  # vectorised, double precision
except ImportError:  # slow but exact
    _erf = np.vectorize(math.erf)


def gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def embed(ids, w, cfg):
    eps = cfg["layer_norm_eps"]
    heads = cfg["num_attention_heads"]
    seq = len(ids)
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:seq] \
        + w["embeddings.token_type_embeddings.weight"][0]
    x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    dim = x.shape[1]
    hd = dim // heads
    lin = lambda v, p: v @ w[p + ".weight.T"] + w[p + ".bias"]
    for l in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{l}."
        q = lin(x, p + "attention.self.query").reshape(seq, heads, hd).transpose(1, 0, 2)
        k = lin(x, p + "attention.self.key").reshape(seq, heads, hd).transpose(1, 0, 2)
        v = lin(x, p + "attention.self.value").reshape(seq, heads, hd).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(1, 0, 2).reshape(seq, dim)
        x = layer_norm(lin(ctx, p + "attention.output.dense") + x,
                       w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], eps)
        h = gelu(lin(x, p + "intermediate.dense"))
        x = layer_norm(lin(h, p + "output.dense") + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)
    return x.mean(0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("sentences")
    ap.add_argument("--squeeze", help=".npy of squeeze's embeddings, one row per sentence")
    ap.add_argument("--save", help="also write the reference embeddings (float64 .npy)")
    ap.add_argument("--load", help="reuse reference embeddings written by --save instead of recomputing")
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--min-cosine", type=float, default=0.99999)
    ap.add_argument("--limit", type=int, default=0, help="only the first N sentences (0 = all)")
    a = ap.parse_args()
    from tokenizers import Tokenizer

    d = Path(a.model_dir)
    cfg = json.loads((d / "config.json").read_text())
    w = read_safetensors(d / "model.safetensors")
    # Transposed, contiguous copies once: `x @ W.T` on a view would copy W every call.
    for name in [k for k in w if k.endswith(".weight") and w[k].ndim == 2]:
        w[name + ".T"] = np.ascontiguousarray(w[name].T)
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(a.max_len)
    normalise = False
    if (d / "modules.json").exists():
        normalise = any(m["type"].endswith("Normalize") for m in json.loads((d / "modules.json").read_text()))
    sentences = [s for s in Path(a.sentences).read_text().splitlines() if s.strip()]
    if a.limit:
        sentences = sentences[:a.limit]
    if a.load:
        refs = np.load(a.load)[: len(sentences)]
    else:
        refs = []
        for s in sentences:
            e = embed(tok.encode(s).ids, w, cfg)
            refs.append(e / np.linalg.norm(e) if normalise else e)
        refs = np.array(refs)
    if a.save:
        np.save(a.save, refs)
    if not a.squeeze:
        print(f"computed {len(refs)} reference embeddings (normalised {normalise}, max_len {a.max_len})")
        return
    ours = np.load(a.squeeze).astype(np.float64)
    if ours.shape[0] < len(sentences):
        sys.exit(f"{a.squeeze} has {ours.shape[0]} rows, {len(sentences)} sentences")
    ours = ours[: len(sentences)]
    cos = (refs * ours).sum(1) / (np.linalg.norm(refs, axis=1) * np.linalg.norm(ours, axis=1))
    worst = int(cos.argmin())
    print(f"sentences {len(cos)}  mean cosine {cos.mean():.8f}  min cosine {cos.min():.8f} (sentence {worst + 1})  "
          f"normalised {normalise}  max_len {a.max_len}")
    sys.exit(0 if cos.min() >= a.min_cosine else 1)


if __name__ == "__main__":
    main()
