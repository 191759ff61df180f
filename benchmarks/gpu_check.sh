#!/usr/bin/env bash
# Run the GPU check on a machine whose Python has torch and torchvision but nothing of ours.
#
#     benchmarks/gpu_check.sh OUT [gpu_check.py options]     # e.g. --device cpu --small
#
# Installs the wheels of WHEELS (default .whl/, made by benchmarks/gpu_wheels.sh) into a
# temporary folder with --no-index --no-deps, puts it and src/ on PYTHONPATH (our package
# is imported from the checkout, its dependencies are not installed) and runs
# benchmarks/gpu_check.py --out OUT: report in OUT/gpu_check.json and OUT/gpu_check.txt.
# Exit status: gpu_check.py's (0 when every step passed).
set -euo pipefail

if [[ $# -lt 1 || "$1" == -* ]]; then
    echo "usage: $0 OUT [gpu_check.py options]" >&2
    exit 2
fi
OUT="$1"
shift
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
WHEELS="${WHEELS:-.whl}"

SITE="$(mktemp -d "${TMPDIR:-/tmp}/vocabseg-gpu-site.XXXXXX")"
trap 'rm -rf "$SITE"' EXIT
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if [[ ${#wheels[@]} -gt 0 ]]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "${wheels[@]}"
else
    echo "gpu_check.sh: no wheels in $WHEELS/ (benchmarks/gpu_wheels.sh makes them); using what $PYTHON has" >&2
fi
export PYTHONPATH="$PWD/src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
"$PYTHON" -c 'import open_clip, cityscapesscripts, zlib_ng, ftfy, vocabseg' || {
    echo "gpu_check.sh: a package is missing (above); run benchmarks/gpu_wheels.sh where the index is reachable" >&2
    exit 1
}
"$PYTHON" benchmarks/gpu_check.py --out "$OUT" "$@"  # not exec: the trap removes $SITE afterwards
