#!/usr/bin/env bash
# Download the wheels benchmarks/gpu_check.sh installs on a GPU machine without network.
#
#     benchmarks/gpu_wheels.sh [DEST]        # DEST: .whl (default), git-ignored
#
# Run on a machine that reaches the package index (any OS: pip fetches wheels for the
# target, CPython 3.12 on manylinux x86-64). The target already has torch, torchvision,
# numpy, scipy, pillow, pyyaml, matplotlib, pandas, timm, huggingface_hub, safetensors,
# regex and tqdm; these are the packages of ours it lacks (the versions this project is
# tested with), each without its dependencies: the list is complete by itself.
set -euo pipefail

DEST="${1:-.whl}"
PYTHON="${PYTHON:-python3}"
WHEELS=(
    open_clip_torch==3.3.0     # FC-CLIP's CLIP backbone and tokenizer
    ftfy==6.3.1                # open_clip's tokenizer
    wcwidth==0.9.4             # ftfy
    cityscapesScripts==2.3.0   # synthetic city rasterisation, prepare
    pyquaternion==0.9.9        # imported by cityscapesscripts' annotation helpers
    zlib-ng==1.1.0             # panoptic PNG codec (binary wheel)
)

mkdir -p "$DEST"
for wheel in "${WHEELS[@]}"; do
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$DEST" "$wheel"
done
ls -1 "$DEST"
