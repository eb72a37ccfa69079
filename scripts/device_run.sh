#!/usr/bin/env bash
# The device runbook, as run on a lent GPU machine (see scripts/device_run.py):
#   bash scripts/device_run.sh            # writes its results into $OUT
# DEADLINE (seconds, default 520) bounds the whole run; the device call's limit must exceed it.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="src:.device/site:.${PYTHONPATH:+:$PYTHONPATH}"
exec python3 scripts/device_run.py run --pack .device/pack --out "${OUT:?set OUT}" \
    --deadline "${DEADLINE:-520}" "$@"
