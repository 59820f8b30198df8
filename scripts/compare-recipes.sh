#!/usr/bin/env bash
# Runs shipped recipes with two squeeze binaries and compares their reports: the stages,
# accuracies, bytes and the sha256 of every stage file (scripts/compare-reports.py).
# Used to show that a refactor changed no result.
#   BEFORE=/path/to/old/squeeze scripts/compare-recipes.sh              # every recipe
#   BEFORE=... scripts/compare-recipes.sh seed lenet300                 # some
#   BEFORE=... SIDE=before scripts/compare-recipes.sh                   # only run one side
# Fashion-MNIST recipes run on TRAIN_LIMIT training and TEST_LIMIT test images (default
# 6000 / 2000: the full validation split is kept, so the gate reads what it always does);
# text recipes run as shipped. Output: out/compare/{before,after}/<recipe>/.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${BEFORE:?set BEFORE to the squeeze binary to compare against}"
AFTER="${AFTER:-target/release/squeeze}"
TRAIN_LIMIT="${TRAIN_LIMIT:-6000}"
TEST_LIMIT="${TEST_LIMIT:-2000}"
SIDE="${SIDE:-both}"
OUT="${OUT:-out/compare}"
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  for f in recipes/*.toml; do names+=("$(basename "$f" .toml)"); done
fi
run_one() { # side binary recipe
  local dir="$OUT/$1/$3" limits=()
  grep -q '^hf_dir' "recipes/$3.toml" || limits=(--train-limit "$TRAIN_LIMIT" --test-limit "$TEST_LIMIT")
  rm -rf "$dir"; mkdir -p "$dir"
  "$2" run --recipe "recipes/$3.toml" --out-dir "$dir" "${limits[@]}" >"$dir/stdout.txt" 2>"$dir/stderr.txt"
  echo "$?" >"$dir/exit-code"
  (cd "$dir" && sha256sum ./*.sqz ./*.safetensors 2>/dev/null >files.sha256)
}
for n in "${names[@]}"; do
  echo "== $n" >&2
  [ "$SIDE" = after ] || run_one before "$BEFORE" "$n"
  [ "$SIDE" = before ] || run_one after "$AFTER" "$n"
done
[ "$SIDE" = both ] || exit 0
python3 scripts/compare-reports.py "$OUT/before" "$OUT/after" "${names[@]}"
