#!/bin/sh
# Runs the coverage-guided fuzz targets in fuzz/ (libFuzzer, AddressSanitizer) on one
# core at the lowest priority.
#
#   scripts/fuzz.sh TARGET SECONDS     one target (sqz, sqz_crc, onnx, safetensors,
#                                      pytorch_zip, pytorch_legacy, pickle, npy)
#   scripts/fuzz.sh all SECONDS        every target in turn, SECONDS each
#
# Needs `cargo install cargo-fuzz` and a nightly toolchain. The corpus of each target
# (fuzz/corpus/TARGET, not in git) starts from fuzz/seeds/TARGET and the fixtures in
# tests/fixtures; crashes go to fuzz/artifacts/TARGET; the libFuzzer log to
# fuzz/logs/TARGET.log, whose last lines give the executions and coverage (cov, ft).
# Limits: 2 GB RSS and no single allocation above 2 GB (-rss_limit_mb, -malloc_limit_mb),
# 10 s per input (-timeout): an input over a limit is a finding like a crash.
set -eu
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { sed -n '2,15p' "$0"; exit 2; }
target=$1
seconds=$2
all="sqz sqz_crc onnx safetensors pytorch_zip pytorch_legacy pickle npy"

seed() {
    t=$1
    c=fuzz/corpus/$t
    mkdir -p "$c"
    [ -d "fuzz/seeds/$t" ] && cp -n fuzz/seeds/"$t"/* "$c"/ 2>/dev/null || true
    case $t in
        sqz|sqz_crc) cp -n fuzz/seeds/sqz/* "$c"/ ;;
        onnx) cp -n tests/fixtures/onnx/*.onnx "$c"/ ;;
        safetensors) cp -n tests/fixtures/pytorch/*.safetensors "$c"/ ;;
        pytorch_zip) cp -n tests/fixtures/pytorch/tiny_mlp*.pth tests/fixtures/pytorch/checkpoint.pt tests/fixtures/pytorch/*.safetensors "$c"/ ;;
        pytorch_legacy) cp -n tests/fixtures/pytorch/lpips-alex-v0.1.pth "$c"/ ;;
    esac
    # Crash inputs kept as regression fixtures are seeds too.
    [ -d "tests/fixtures/fuzz/$t" ] && cp -n tests/fixtures/fuzz/"$t"/* "$c"/ 2>/dev/null || true
}

run() {
    t=$1
    seed "$t"
    mkdir -p fuzz/logs "fuzz/artifacts/$t"
    echo "== $t for ${seconds}s (log fuzz/logs/$t.log)"
    status=0
    # Run from fuzz/: libFuzzer writes fuzz-0.log into the working directory, and a file
    # appearing and vanishing in the main package would make cargo rebuild squeeze.
    (cd fuzz && nice -n 19 cargo +nightly fuzz run --fuzz-dir . -O "$t" "corpus/$t" -- \
        -max_total_time="$seconds" -jobs=1 -workers=1 -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10 \
        -max_len=65536 -print_final_stats=1 -artifact_prefix="artifacts/$t/" \
        > "logs/$t.log" 2>&1) || status=$?
    # With -jobs, libFuzzer writes the run's own output to fuzz-0.log.
    [ -f fuzz/fuzz-0.log ] && { cat fuzz/fuzz-0.log >> "fuzz/logs/$t.log"; rm -f fuzz/fuzz-0.log; }
    grep -E "^#[0-9]+.*(DONE|cov:)" "fuzz/logs/$t.log" | tail -1
    grep -E "stat::number_of_executed_units|SUMMARY|ERROR: libFuzzer" "fuzz/logs/$t.log" || true
    return $status
}

(cd fuzz && cargo +nightly fuzz build --fuzz-dir . -O >/dev/null)
if [ "$target" = all ]; then
    failed=""
    for t in $all; do run "$t" || failed="$failed $t"; done
    [ -z "$failed" ] || { echo "findings in:$failed"; exit 1; }
else
    run "$target"
fi
