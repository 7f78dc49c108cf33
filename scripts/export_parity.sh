#!/usr/bin/env bash
# Proof that `mpo export --format peft` is the policy mpo trained: a short demo-shaped run on
# the real SmolLM2 (two PPO updates at a learning rate that moves the adapter visibly), its
# last checkpoint exported with mpo's own log-probs of 8 rollouts (and as a merged folder), and
# PyTorch + transformers + peft (scripts/setup_torch.sh's venv) recomputing them on the base GGUF
# + the exported adapter, and on the merged folder alone.
# Prints the JSON of scripts/peft_parity.py.
# Usage: scripts/export_parity.sh [OUT_DIR [OVERRIDES...]], e.g. 'policy.lora.targets=[q,v,lm_head]'
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-$(mktemp -d /tmp/mpo-export-parity.XXXXXX)}
shift || true
PY=$(scripts/setup_torch.sh)
cargo build --release --quiet
MPO=target/release/mpo
"$MPO" fetch smollm2-135m-instruct >&2
"$MPO" run specs/math.yaml output.root="$OUT" ppo.total_episodes=16 ppo.learning_rate=2.0e-3 \
    eval.every=never meta.every=never runtime.checkpoint_every=2 "$@" --quiet >&2
RUN=$(ls -d "$OUT"/math/*/ | head -1)
[ -d "$OUT/peft" ] || "$MPO" export "$RUN" --format peft --logprobs 8 --out "$OUT/peft" >&2
[ -d "$OUT/merged" ] || "$MPO" export "$RUN" --format merged --out "$OUT/merged" >&2
GGUF=${MPO_CACHE_DIR:-$HOME/.cache/mpo}/models/smollm2-135m-instruct.gguf
OMP_NUM_THREADS=2 "$PY" scripts/peft_parity.py "$GGUF" "$OUT/peft" "$OUT/merged"
