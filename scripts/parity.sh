#!/usr/bin/env bash
# Parity of mpo's model code against an independent implementation: builds llama-server
# (cached), starts it on the demo GGUF and on an F32 copy of it, and compares next-token
# log-probs on 24 prompts (`mpo bench parity`). Prints the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
MPO_LLAMA_SERVER=$(scripts/setup_llama_server.sh)
export MPO_LLAMA_SERVER
cargo build --release --quiet
target/release/mpo bench parity "$@"
