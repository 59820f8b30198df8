#!/usr/bin/env bash
# Runs every shipped recipe (or the ones named) into out/<recipe>/, for the results tables in
# docs/ (scripts/results-tables.py --rewrite regenerates them from the report.json files).
# Each run writes report.json and report.md; a failed gate does not stop the rest.
#   scripts/run-recipes.sh                 # all
#   scripts/run-recipes.sh seed lenet300   # some
set -uo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  for f in recipes/*.toml; do names+=("$(basename "$f" .toml)"); done
fi
status=0
for n in "${names[@]}"; do
  echo "== $n"
  ./target/release/squeeze run --recipe "recipes/$n.toml" --out-dir "out/$n" 2>/dev/null || status=1
done
exit $status
