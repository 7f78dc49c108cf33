"""Proof that `mpo export --format peft` is the policy mpo trained: PyTorch + transformers + peft
load the base model and the exported adapter and recompute the per-token log-probs that mpo
wrote beside the export (`mpo export RUN --format peft --logprobs N`: `mpo_logprobs.jsonl`,
token ids, so no tokenizer stands between the two sides).

Usage (scripts/export_parity.sh runs it):
    python scripts/peft_parity.py BASE.gguf EXPORT_DIR [MERGED_DIR]

With MERGED_DIR (`mpo export --format merged`), transformers loads that folder on its own and
the same log-probs are recomputed from it too.

Prints one JSON object: the largest and mean absolute log-prob difference over every response
token, the same for the base model without the adapter (how far the adapter moved the policy:
the difference is only meaningful when it is far below that), and the versions.
"""

import json
import os
import sys


def main():
    gguf, export = sys.argv[1], sys.argv[2]
    import torch
    import transformers
    import peft
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    # transformers dequantizes the GGUF to f32 (llama.cpp's q/k permutation undone), as mpo does.
    base = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(gguf), gguf_file=os.path.basename(gguf), dtype=torch.float32
    )
    base.eval()
    model = peft.PeftModel.from_pretrained(base, export)
    model.eval()
    rows = [json.loads(l) for l in open(os.path.join(export, "mpo_logprobs.jsonl")) if l.strip()]

    def logprobs(m, row):
        p, r = row["prompt_ids"], row["response_ids"]
        ids = torch.tensor([p + r], dtype=torch.long)
        with torch.no_grad():
            logits = m(input_ids=ids).logits[0].float()
        lp = torch.log_softmax(logits[len(p) - 1 : len(p) + len(r) - 1], dim=-1)
        return lp.gather(1, torch.tensor(r).unsqueeze(1)).squeeze(1)

    diffs, moved = [], []
    for row in rows:
        mpo = torch.tensor(row["logprobs"], dtype=torch.float32)
        diffs.append((logprobs(model, row) - mpo).abs())
        with model.disable_adapter():
            moved.append((logprobs(model, row) - mpo).abs())
    d, b = torch.cat(diffs), torch.cat(moved)
    merged = {}
    if len(sys.argv) > 3:
        m = AutoModelForCausalLM.from_pretrained(sys.argv[3], dtype=torch.float32)
        m.eval()
        md = torch.cat([(logprobs(m, row) - torch.tensor(row["logprobs"])).abs() for row in rows])
        merged = {"merged_max_abs_diff": float(md.max()), "merged_mean_abs_diff": float(md.mean())}
    print(
        json.dumps(
            {
                **merged,
                "rows": len(rows),
                "tokens": int(d.numel()),
                "max_abs_diff": float(d.max()),
                "mean_abs_diff": float(d.mean()),
                "without_adapter_max_abs_diff": float(b.max()),
                "without_adapter_mean_abs_diff": float(b.mean()),
                "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
            }
        )
    )


if __name__ == "__main__":
    main()
