#!/usr/bin/env python3
"""Compares the reports of two runs of the same recipes (scripts/compare-recipes.sh).

For each recipe: the exit code, the stage names, every measured figure that does not
depend on timing (accuracies, bytes, ratios, parameter counts, bits per weight, cosine
fidelity, per-task accuracies, ...) wherever it sits in the stage (typed field or
`extra`), and the sha256 of every stage file. Timing figures (latency, throughput, wall
time, memory, training speed) are skipped: they differ run to run.

    python3 scripts/compare-reports.py out/compare/before out/compare/after [recipe ...]

Prints one line per recipe (`same` or the differences) and exits 1 if any differ.
"""
import json
import pathlib
import sys

# `kernel` names per-layer kernel choices with their measured speed-ups (timing).
TIMING = ("latency", "throughput", "wall_s", "peak_rss", "samples_per_s", "sentences_per_s", "spread", "_ms", "_us", "machine", "kernel")


# Containers whose name is left out of a figure's key, so that a figure moved between
# `extra` and a typed field of the stage still matches.
CONTAINERS = ("extra", "metrics", "quality", "fidelity")


def leaves(value, path=()):
    """Every number, string and bool under `value`, keyed by its path (list indices
    included, the CONTAINERS names left out); timing figures are skipped."""
    out = {}
    if isinstance(value, dict):
        for k, v in value.items():
            if any(t in k for t in TIMING):
                continue
            out.update(leaves(v, path if k in CONTAINERS else path + (k,)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.update(leaves(v, path + (f"[{i}]",)))
    else:
        out[".".join(path)] = value
    return out


def load(run_dir):
    report = run_dir / "report.json"
    exit_code = (run_dir / "exit-code").read_text().strip() if (run_dir / "exit-code").exists() else "?"
    files = {}
    if (run_dir / "files.sha256").exists():
        for line in (run_dir / "files.sha256").read_text().splitlines():
            digest, name = line.split(maxsplit=1)
            files[name.lstrip("./")] = digest
    if not report.exists():
        return exit_code, None, files
    return exit_code, json.loads(report.read_text()), files


def close(a, b):
    if isinstance(a, float) or isinstance(b, float):
        try:
            return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(a)))
        except (TypeError, ValueError):
            return False
    return a == b


def compare(name, before_dir, after_dir):
    ea, ra, fa = load(before_dir / name)
    eb, rb, fb = load(after_dir / name)
    diffs = []
    if ea != eb:
        diffs.append(f"exit code {ea} -> {eb}")
    if fa != fb:
        for f in sorted(set(fa) | set(fb)):
            if fa.get(f) != fb.get(f):
                diffs.append(f"file {f}: {'missing' if f not in fa else fa[f][:12]} -> {'missing' if f not in fb else fb[f][:12]}")
    if ra is None or rb is None:
        if (ra is None) != (rb is None):
            diffs.append("report.json only on one side")
        return diffs
    for key in ("result", "failed_stage", "dataset"):
        if ra.get(key) != rb.get(key):
            diffs.append(f"{key}: {ra.get(key)!r} -> {rb.get(key)!r}")
    sa = [s["name"] for s in ra["stages"]]
    sb = [s["name"] for s in rb["stages"]]
    if sa != sb:
        diffs.append(f"stages {sa} -> {sb}")
    for a, b in zip(ra["stages"], rb["stages"]):
        la, lb = leaves(a), leaves(b)
        for k in sorted(set(la) & set(lb)):
            if not close(la[k], lb[k]):
                diffs.append(f"{a['name']}.{k}: {la[k]!r} -> {lb[k]!r}")
        for k in sorted(set(la) - set(lb)):
            diffs.append(f"{a['name']}.{k}: only before ({la[k]!r})")
        for k in sorted(set(lb) - set(la)):
            diffs.append(f"{a['name']}.{k}: only after ({lb[k]!r})")
    return diffs


def main():
    before, after = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    names = sys.argv[3:] or sorted(p.name for p in before.iterdir() if p.is_dir())
    differ = 0
    for name in names:
        diffs = compare(name, before, after)
        if diffs:
            differ += 1
            print(f"{name}: {len(diffs)} difference(s)")
            for d in diffs:
                print(f"    {d}")
        else:
            print(f"{name}: same")
    print(f"{len(names) - differ} of {len(names)} recipes the same")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
