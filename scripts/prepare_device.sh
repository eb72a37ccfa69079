#!/usr/bin/env bash
# Prepares .device/ (ignored by git, carried to the lent GPU machine by the device call):
#   .device/pack  the VCIP 2020 training and validation pairs as a checksummed lossless-WebP
#                 pack (pyg-lecc pack-data), about 49 MB instead of 63 MB of PNG;
#   .device/site  pytest and its pure-Python dependencies, for the CUDA tests there, and
#                 safetensors for the weights files.
# Usage (from the repository root, in the project's virtual environment):
#   bash scripts/prepare_device.sh [DATA_DIR]        # default ../shared/data/vcip2020
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/data/vcip2020}"
if [ ! -f .device/pack/pyg_lecc_pack.json ]; then
    rm -rf .device/pack
    pyg-lecc pack-data --data "$data" --out .device/pack
fi
if [ ! -d .device/site/pytest ]; then
    python -m pip install --quiet --no-deps --target .device/site \
        pytest pluggy iniconfig packaging
fi
# safetensors (a dependency the GPU machine's Python may lack): its abi3 wheel for that
# machine's x86_64 Linux and Python 3.12.
if [ ! -d .device/site/safetensors ]; then
    python -m pip install --quiet --no-deps --target .device/site --only-binary=:all: \
        --platform manylinux2014_x86_64 --python-version 3.12 "safetensors>=0.4"
fi
du -sh .device/pack .device/site
