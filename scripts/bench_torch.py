"""The PyTorch baseline of `mpo bench train --torch`: the same shapes, weights and tokens as
mpo's own measurement, in PyTorch eager + transformers + peft on the CPU.

Reads one JSON request on stdin (written by mpo: the GGUF path, the training batch's token
rows, the generation prompts, thread count, LoRA settings) and prints one JSON object with
the timings on stdout. Run it through scripts/setup_torch.sh's venv; mpo does.

Cores busy = process CPU time (all threads, user + system) over wall time of the phase.
"""

import json
import os
import sys
import time


def phase(fn, repeat):
    """Mean wall seconds and cores busy of `repeat` calls of fn (after one warm-up call)."""
    fn()
    c0, t0 = time.process_time(), time.perf_counter()
    out = None
    for _ in range(repeat):
        out = fn()
    wall = (time.perf_counter() - t0) / repeat
    cpu = (time.process_time() - c0) / repeat
    return wall, cpu / wall if wall > 0 else 0.0, out


def main():
    req = json.load(sys.stdin)
    threads = int(req["threads"])
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch
    import transformers
    import peft
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    gguf = req.get("gguf")
    t0 = time.perf_counter()
    if gguf:
        # transformers dequantizes the GGUF to f32 (llama.cpp's q/k permutation undone), as mpo does.
        base = AutoModelForCausalLM.from_pretrained(
            os.path.dirname(gguf), gguf_file=os.path.basename(gguf), dtype=torch.float32
        )
    else:
        # A config.json alone: the model's shapes with transformers' own random initialisation.
        import tempfile
        from transformers import AutoConfig

        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "config.json"), "w") as f:
                json.dump(req["config"], f)
            config = AutoConfig.from_pretrained(d)
        base = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    base.eval()
    params = sum(p.numel() for p in base.parameters())
    load_s = time.perf_counter() - t0
    res = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "threads": torch.get_num_threads(),
        "load_s": load_s,
    }

    rows = torch.tensor(req["train_rows"], dtype=torch.long)
    targets = rows[:, 1:]

    # Generation first, on the base model (mpo's generate bench loads no adapter).
    gen = []
    pad = int(req["pad_id"])
    n_new = int(req["new_tokens"])
    for b in req["generate_batches"]:
        prompts = req["prompts"][:b]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long)

        def run():
            with torch.inference_mode():
                out = base.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=n_new,
                    min_new_tokens=n_new,  # EOS suppressed: every prompt gets n_new tokens, as in mpo
                    do_sample=False,
                    pad_token_id=pad,
                )
            return int((out.shape[1] - width) * out.shape[0])

        wall, busy, n = phase(run, 1)
        gen.append({"batch": b, "tokens": n, "secs": wall, "cores_busy": busy})
    res["generate"] = gen

    # The forward baseline: full-vocabulary logits of the batch, no autograd, base weights
    # plus adapters (zero B: the same numbers as the base, the same work as mpo's forward).
    lora = req["lora"]
    model = peft.get_peft_model(
        base,
        peft.LoraConfig(r=lora["rank"], lora_alpha=lora["alpha"], target_modules=lora["targets"], lora_dropout=0.0, bias="none"),
    )
    steps = int(req["steps"])
    res["params"] = params
    res["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def forward():
        with torch.inference_mode():
            return model(input_ids=rows).logits[0, 0, 0].item()

    fwd_s, fwd_busy, _ = phase(forward, steps)
    res["forward"] = {"secs": fwd_s, "cores_busy": fwd_busy}

    # The train step: mean log-prob of the next tokens over every position (full-vocabulary
    # log-softmax), backward, AdamW on the LoRA parameters only.
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    losses = []

    def step():
        logits = model(input_ids=rows).logits[:, :-1]
        lp = torch.log_softmax(logits, dim=-1).gather(2, targets.unsqueeze(2)).squeeze(2)
        loss = -lp.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())

    step_s, step_busy, _ = phase(step, steps)
    res["train_step"] = {"secs": step_s, "cores_busy": step_busy, "losses": losses}
    json.dump(res, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
