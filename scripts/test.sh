#!/usr/bin/env bash
# The test command: everything CI checks, runnable on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked "$@"
