#!/usr/bin/env bash
# Unpack what `loadtest/gpu/run.sh` left in $OUT (fetched here: the device tool's files_at) into
# results/gpu-<card>/, the card named by the archive (gpu-h100.tar.gz, gpu-h200.tar.gz...):
# the sweeps' run directories (Locust's HTML pages left out), kernels.md/json, bench.txt/json,
# machine.txt, gpu-samples.csv, compare/ and run.log, with the GPU machine's paths written as
# <tmp>/..., <home>/... (results/README.md), and every report re-rendered here.
#
#   bash loadtest/gpu/commit.sh FETCHED_DIR            # -> results/gpu-<card>/
#   DEST=results/gpu-h200-cudnn bash loadtest/gpu/commit.sh FETCHED_DIR
#
# It refuses a destination that exists (a card's first run is already there: name another with
# DEST). Then add the folder to results/README.md and commit it.
set -euo pipefail

cd "$(dirname "$0")/../.." || exit 2
FETCHED=${1:?usage: commit.sh FETCHED_DIR}
PYTHON=${PYTHON:-.venv/bin/python}

archives=("$FETCHED"/gpu-*.tar.gz)
if [[ ! -f ${archives[0]} ]]; then
    echo "no gpu-<card>.tar.gz in $FETCHED" >&2
    exit 2
fi
name=$(basename "${archives[0]}" .tar.gz)
DEST=${DEST:-results/$name}
if [[ -e $DEST ]]; then
    echo "$DEST exists: set DEST to another folder (e.g. DEST=$DEST-cudnn)" >&2
    exit 2
fi
mkdir -p "$DEST"
tar -xzf "${archives[0]}" -C "$DEST" --exclude='*.html'
[[ -f $FETCHED/run.log ]] && cp "$FETCHED/run.log" "$DEST/"
if [[ -d $DEST/reports ]]; then
    mv "$DEST"/reports/* "$DEST"/
    rmdir "$DEST/reports"
fi
rm -f "$DEST/card.txt"

# The GPU machine's absolute paths, as results/README.md writes them.
"$PYTHON" - "$DEST" <<'PY'
import re
import sys
from pathlib import Path

from loadtest.run.portable import portable

patterns = [
    (re.compile(r"(?<![\w.:/<>-])/tmp(?=/|\b)"), "<tmp>"),
    (re.compile(r"(?<![\w.:/<>-])/root(?=/|\b)"), "<home>"),
    (re.compile(r"(?<![\w.:/<>-])/home/[\w.-]+"), "<home>"),
    (re.compile(r"(?<![\w.:/<>-])/work(?=/|\b)"), "<work>"),
]
for path in sorted(Path(sys.argv[1]).rglob("*")):
    if not path.is_file():
        continue
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        continue
    new = portable(text)
    for pattern, name in patterns:
        new = pattern.sub(name, new)
    if new != text:
        path.write_text(new, encoding="utf-8")
PY

for run in "$DEST"/*/; do
    [[ -f $run/results.csv ]] && "$PYTHON" -m loadtest.report "${run%/}"
done
echo "unpacked into $DEST: $(cd "$DEST" && echo *)"
echo "next: name $DEST in results/README.md, link it from docs/gpu.md, and commit it"
