#!/usr/bin/env python3
"""Markdown results tables from the runs' report.json (the figures are never typed by hand).

    scripts/results-tables.py                         # a table of every out/<recipe>/report.json found
    scripts/results-tables.py seed out/deep-compression-lenet300   # recipe names or run directories
    scripts/results-tables.py --rewrite docs/results-fashion-mnist.md   # regenerate marked blocks
    scripts/results-tables.py --rewrite --check docs/*.md             # exit 1 if a block is stale
    scripts/results-tables.py --check-links README.md docs            # every relative link resolves

A marked block in a Markdown file is

    <!-- results:begin seed,deep-compression-lenet300 -->
    ...generated text, replaced on every --rewrite...
    <!-- results:end seed,deep-compression-lenet300 -->

where the name is a comma-separated list of runs: recipe names (read from
<out-root>/<name>/report.json, default out/) or paths of run directories. The block gets
one line of provenance per report (squeeze version = crate version + commit, when the
report file was written, machine) and one table:

    model | stage | test acc | Δ pts | file bytes | ratio | latency b1 | throughput b256 | kernel

Embedding reports (stages with mean_cosine / min_cosine) get mean cosine and min cosine
instead of test accuracy and Δ. The report schema is documented on
squeeze::report::Report (src/report/mod.rs); per-stage facts are read from the stage
itself or from its free-form `extra`, so either place works.

Python is used only here, in scripts; the squeeze tool never runs it.
"""

import argparse
import datetime
import json
import math
import os
import re
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
BEGIN = re.compile(r"^<!-- results:begin (\S+) -->[ \t]*$", re.M)  # on a line of its own (not in prose)
MINUS = "\u2212"


def known_recipes():
    """The shipped recipes' names (recipes/*.toml), in sorted order."""
    d = os.path.join(ROOT, "recipes")
    return sorted(f[:-5] for f in os.listdir(d) if f.endswith(".toml"))


def run_dir(name, out_root):
    """A run directory from a recipe name or a path."""
    if os.path.isdir(name) and os.path.exists(os.path.join(name, "report.json")):
        return name
    return os.path.join(out_root, name)


def load(directory):
    path = os.path.join(directory, "report.json")
    if not os.path.exists(path):
        sys.exit(f"no {path}: run the recipe first (squeeze run --recipe recipes/<name>.toml --out-dir {directory})")
    with open(path, encoding="utf-8") as f:
        report = json.load(f)
    written = datetime.datetime.fromtimestamp(os.path.getmtime(path), datetime.timezone.utc)
    return report, path, written


def field(stage, key):
    """A stage fact from the stage itself or from its `extra` (fields may move between them)."""
    if key in stage and stage[key] is not None:
        return stage[key]
    extra = stage.get("extra") or {}
    return extra.get(key)


def number(x):
    """A finite float, else None (the report writes NaN as null)."""
    if x is None or isinstance(x, bool):
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def signed(x, decimals):
    s = f"{x:+.{decimals}f}"
    return s.replace("-", MINUS)


def thousands(n):
    return f"{int(n):,}"


def human(x):
    """A rate with a k / M / G suffix, as report.md writes it."""
    if x >= 1e9:
        return f"{x / 1e9:.2f} G"
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e3:
        return f"{x / 1e3:.1f} k"
    return f"{x:.0f}"


def cell(s):
    return str(s).replace("|", "\\|").replace("\n", " ")


def is_embedding(report):
    return any(field(s, "mean_cosine") is not None or field(s, "min_cosine") is not None for s in report["stages"])


def reference(report):
    """The stage Δ is measured against: the gate's `against`, else the first."""
    against = (report.get("gate") or {}).get("against")
    for s in report["stages"]:
        if s.get("name") == against:
            return s
    return report["stages"][0] if report["stages"] else None


def model_name(report, directory):
    recipe = report.get("recipe") or ""
    stem = os.path.splitext(os.path.basename(recipe))[0]
    return stem or os.path.basename(os.path.normpath(directory))


def rows(report, directory):
    ref = reference(report)
    embedding = is_embedding(report)
    out = []
    for i, s in enumerate(report["stages"]):
        acc = number(s.get("accuracy"))
        if embedding:
            mean, low = number(field(s, "mean_cosine")), number(field(s, "min_cosine"))
            quality = [f"{mean:.6f}" if mean is not None else "", f"{low:.6f}" if low is not None else ""]
        else:
            ref_acc = number(ref.get("accuracy")) if ref is not None else None
            delta = ""
            if s is not ref and acc is not None and ref_acc is not None:
                delta = signed(100.0 * (acc - ref_acc), 2)
            quality = [f"{100.0 * acc:.2f}%" if acc is not None else "—", delta]
        size = s.get("bytes")
        ratio = number(s.get("ratio"))
        lat, spread = number(s.get("latency_us_b1")), number(s.get("latency_us_b1_spread"))
        if lat is None:
            latency = "—"
        elif spread is None:
            latency = f"{lat:.2f} µs"
        else:
            latency = f"{lat:.2f} ± {spread:.2f} µs"
        tput = number(s.get("throughput_b256"))
        out.append(
            [
                model_name(report, directory) if i == 0 else "",
                cell(s.get("name", "")),
                *quality,
                thousands(size) if isinstance(size, int) else "—",
                f"{ratio:.2f}×" if ratio is not None else "—",
                latency,
                f"{human(tput)}/s" if tput is not None else "—",
                cell(s.get("kernel", "")),
            ]
        )
    return out


def table(reports):
    """One Markdown table of several reports (classifiers and embedders kept apart)."""
    parts = []
    for embedding in (False, True):
        group = [(r, d) for r, d in reports if is_embedding(r) == embedding]
        if not group:
            continue
        quality = ["mean cosine", "min cosine"] if embedding else ["test acc", "Δ pts"]
        head = ["model", "stage", *quality, "file bytes", "ratio", "latency b1", "throughput b256", "kernel"]
        align = ["---", "---", "--:", "--:", "--:", "--:", "--:", "--:", "---"]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
        for r, d in group:
            lines += ["| " + " | ".join(row) + " |" for row in rows(r, d)]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def provenance(report, path, written):
    result = report.get("result", "?")
    failed = f" at `{report['failed_stage']}`" if report.get("failed_stage") else ""
    full = os.path.abspath(path)
    rel = os.path.relpath(full, ROOT) if full.startswith(ROOT + os.sep) else full
    return (
        f"- `{rel}`: squeeze `{report.get('squeeze_version', '?')}`, report written "
        f"{written:%Y-%m-%d %H:%M} UTC, machine: {report.get('machine', '?')}; seed {report.get('seed', '?')}, "
        f"gate {result}{failed}"
    )


def block(name, out_root):
    """The generated text of a marked block."""
    loaded = []
    for n in name.split(","):
        d = run_dir(n, out_root)
        loaded.append((d, *load(d)))
    lines = [
        "Generated by `scripts/results-tables.py` from these reports (do not edit by hand; re-run",
        "the recipes and the script):",
        "",
    ]
    lines += [provenance(r, p, w) for d, r, p, w in loaded]
    legend = [
        "Test acc on the recipe's test set; Δ in points against the run's baseline; ratio = 4 ×",
        "parameters of the uncompressed model / file bytes; latency b1 = median of batch-1 runs ±",
        "half the inter-quartile range; throughput = inputs/s at batch 256.",
    ]
    if any(is_embedding(r) for d, r, p, w in loaded):
        legend.append("Embedders: mean and min cosine to the fp32 embeddings over the held-out sentences.")
    lines += ["", *legend, "", table([(r, d) for d, r, p, w in loaded])]
    return "\n".join(lines)


def rewrite(path, out_root, check):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    out, pos, names = [], 0, []
    for m in BEGIN.finditer(text):
        if m.start() < pos:
            continue
        name = m.group(1)
        end = f"<!-- results:end {name} -->"
        e = re.compile("^" + re.escape(end) + r"[ \t]*$", re.M).search(text, m.end())
        j = e.start() if e else -1
        if j < 0:
            sys.exit(f"{path}: '{m.group(0)}' has no matching '{end}'")
        out.append(text[pos : m.end()])
        out.append("\n" + block(name, out_root) + "\n")
        pos = j
        names.append(name)
    out.append(text[pos:])
    new = "".join(out)
    if not names:
        print(f"{path}: no <!-- results:begin NAME --> blocks", file=sys.stderr)
    if new == text:
        print(f"{path}: {len(names)} block(s) up to date")
        return True
    if check:
        print(f"{path}: stale block(s) among {', '.join(names)}", file=sys.stderr)
        return False
    with open(path, "w", encoding="utf-8") as f:
        f.write(new)
    print(f"{path}: rewrote {', '.join(names)}")
    return True


# --- relative links -----------------------------------------------------------------

LINK = re.compile(r"(?<!\!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    h = re.sub(r"`", "", heading.strip().lower())
    h = re.sub(r"[^\w\- ]", "", h)
    return h.replace(" ", "-")


def anchors(path):
    seen, out = {}, set()
    fence = False
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.lstrip().startswith("```"):
                fence = not fence
                continue
            m = re.match(r"(#{1,6}) (.*)", line)
            if m and not fence:
                s = slug(m.group(2))
                k = seen.get(s, 0)
                seen[s] = k + 1
                out.add(s if k == 0 else f"{s}-{k}")
    return out


def markdown_files(targets):
    for t in targets:
        if os.path.isdir(t):
            for dirpath, _, files in os.walk(t):
                yield from (os.path.join(dirpath, f) for f in sorted(files) if f.endswith(".md"))
        else:
            yield t


def check_links(targets):
    bad = 0
    count = 0
    for path in markdown_files(targets):
        fence = False
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
        for no, line in enumerate(lines, 1):
            if line.lstrip().startswith("```"):
                fence = not fence
                continue
            if fence:
                continue
            text = re.sub(r"`[^`]*`", "", line)  # links inside code spans are not links
            for m in LINK.finditer(text):
                target = m.group(1) or m.group(2)
                if re.match(r"[a-z]+:", target):
                    continue  # http:, https:, mailto:
                count += 1
                file, _, anchor = target.partition("#")
                dest = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
                if not os.path.exists(dest):
                    print(f"{path}:{no}: {target}: no such file {dest}")
                    bad += 1
                elif anchor and dest.endswith(".md") and anchor not in anchors(dest):
                    print(f"{path}:{no}: {target}: no heading #{anchor} in {dest}")
                    bad += 1
    print(f"{count} relative links checked, {bad} broken")
    return bad == 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", help="recipe names or run directories (default: every out/<recipe> found)")
    ap.add_argument("--out-root", default=os.path.join(ROOT, "out"), help="where recipe runs live (default out/)")
    ap.add_argument("--rewrite", action="store_true", help="the arguments are Markdown files: regenerate their marked blocks")
    ap.add_argument("--check", action="store_true", help="with --rewrite: change nothing, exit 1 if a block is stale")
    ap.add_argument("--check-links", action="store_true", help="the arguments are Markdown files or directories: check relative links")
    a = ap.parse_args()
    if a.check_links:
        sys.exit(0 if check_links(a.runs or [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "docs")]) else 1)
    if a.rewrite:
        if not a.runs:
            sys.exit("--rewrite needs the Markdown files to rewrite")
        ok = all([rewrite(p, a.out_root, a.check) for p in a.runs])
        sys.exit(0 if ok else 1)
    names = a.runs or [n for n in known_recipes() if os.path.exists(os.path.join(a.out_root, n, "report.json"))]
    if not names:
        sys.exit(f"no report.json under {a.out_root} for the shipped recipes; run scripts/run-recipes.sh first")
    print(block(",".join(names), a.out_root))


if __name__ == "__main__":
    main()
