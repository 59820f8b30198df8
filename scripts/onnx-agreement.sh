#!/usr/bin/env bash
# Exports every model file of the given run directories (what `squeeze run` wrote:
# baseline.safetensors and each stage's .sqz) or the given model files to ONNX (QDQ
# int8 where the model is quantized, else fp32 decoded from any stored encoding) and
# measures ONNX Runtime against squeeze on the whole Fashion-MNIST test set with
# examples/onnx_agreement.rs (needs python3 with onnxruntime and numpy). One line per
# file; exits 1 if any file misses issue 8's bar.
#   scripts/onnx-agreement.sh out/deep-compression-mlp out/seed out/lenet5/model.sqz
set -uo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin squeeze --example onnx_agreement || exit 2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
for arg in "$@"; do
  if [ -d "$arg" ]; then files=("$arg"/*.safetensors "$arg"/*.sqz); else files=("$arg"); fi
  for m in "${files[@]}"; do
    [ -e "$m" ] || continue
    onnx="$tmp/$(basename "$(dirname "$m")")-$(basename "${m%.*}").onnx"
    if ! ./target/release/squeeze export "$m" --format onnx --out "$onnx" > "$tmp/export.log" 2>&1; then
      echo "$m: export failed: $(cat "$tmp/export.log")"; status=1; continue
    fi
    ./target/release/examples/onnx_agreement "$m" "$onnx" || status=1
  done
done
exit $status
