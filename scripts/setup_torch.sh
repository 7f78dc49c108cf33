#!/usr/bin/env bash
# The PyTorch baseline for `mpo bench train --torch`: a venv with torch, transformers, peft and gguf
# from PyPI (the default Linux torch wheel, which runs on the CPU; ~3 GB with its
# dependencies). Idempotent: cached under ${MPO_CACHE_DIR:-~/.cache/mpo}/torch-venv; a second run
# returns at once. Prints the venv's python on its last line.
set -euo pipefail
CACHE=${MPO_CACHE_DIR:-$HOME/.cache/mpo}
# Pinned so that figures recorded in BENCHMARKS.md name the versions they were measured with.
PINS="torch==2.15.0 transformers==5.24.0 peft==0.21.2 gguf==0.19.0"
# transformers 5.25 needs Python 3.12 (its `kernels` dependency); 5.24 runs on 3.11.
# gguf: transformers reads the demo GGUF through it (the same dequantized weights mpo runs).
VENV=$CACHE/torch-venv
STAMP=$VENV/.mpo-pins
PY=$VENV/bin/python
if [ -x "$PY" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$PINS" ]; then
    echo "$PY"
    exit 0
fi
command -v python3 >/dev/null || { echo "error: python3 (3.10 or newer, with venv) is needed for the PyTorch baseline" >&2; exit 1; }
log() { echo "[setup_torch] $*" >&2; }
mkdir -p "$CACHE"
if [ ! -x "$PY" ]; then
    log "creating a venv at $VENV"
    python3 -m venv "$VENV" >&2 || { echo "error: 'python3 -m venv' failed; install your distribution's python3-venv package" >&2; exit 1; }
fi
log "installing $PINS from PyPI (about 3 GB the first time)"
"$PY" -m pip install --quiet --disable-pip-version-check $PINS >&2
echo "$PINS" > "$STAMP"
echo "$PY"
