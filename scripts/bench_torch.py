"""The PyTorch baseline of `mpo bench train --torch`: the same shapes, weights and tokens as
mpo's own measurement, in PyTorch eager + transformers + peft, on the CPU or (mpo on cuda) on
the GPU, in f32, tf32 (f32 weights, TensorFloat-32 products) or bf16 (weights in bf16, LoRA
adapters in f32 as peft keeps them, the log-softmax in f32 as mpo computes it).

Reads one JSON request on stdin (written by mpo: the GGUF path, the training batch's token
rows, the generation prompts, thread count, LoRA settings) and prints one JSON object with
the timings on stdout. Run it through scripts/setup_torch.sh's venv; mpo does.

Cores busy = process CPU time (all threads, user + system) over wall time of the phase. On a
GPU every timed call ends with a synchronisation, so wall time is the device's time.
"""

import json
import os
import sys
import time


SYNC = lambda: None  # noqa: E731 (torch.cuda.synchronize once the device is a GPU)


def phase(fn, repeat):
    """Mean wall seconds and cores busy of `repeat` calls of fn (after one warm-up call)."""
    fn()
    SYNC()
    c0, t0 = time.process_time(), time.perf_counter()
    out = None
    for _ in range(repeat):
        out = fn()
    SYNC()
    wall = (time.perf_counter() - t0) / repeat
    cpu = (time.process_time() - c0) / repeat
    return wall, cpu / wall if wall > 0 else 0.0, out


# The ops that run PyTorch's matrix products (MKL's sgemm on the CPU).
PRODUCT_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}


def products(fn):
    """One call of fn under torch.profiler: the flops and time of its matrix products, and the
    call's own wall time (profiler overhead included), for mpo's products table."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        t0 = time.perf_counter()
        fn()
        call = time.perf_counter() - t0
    flops = secs = 0.0
    for e in prof.key_averages():
        if e.key in PRODUCT_OPS:
            flops += e.flops
            secs += e.self_cpu_time_total / 1e6
    return {"flops": flops, "secs": secs, "call_secs": call}


def main():
    req = json.load(sys.stdin)
    threads = int(req["threads"])
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch
    import transformers
    import peft
    from transformers import AutoModelForCausalLM

    global SYNC
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = req.get("device", "cpu")
    dtype_name = req.get("dtype", "f32")
    if device == "cuda":
        SYNC = torch.cuda.synchronize
    # tf32: f32 tensors, TensorFloat-32 matrix products (PyTorch's default is strict f32)
    torch.backends.cuda.matmul.allow_tf32 = dtype_name == "tf32"
    torch.backends.cudnn.allow_tf32 = dtype_name == "tf32"
    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    gguf = req.get("gguf")
    t0 = time.perf_counter()
    if gguf:
        # transformers dequantizes the GGUF to f32 (llama.cpp's q/k permutation undone), as mpo does.
        base = AutoModelForCausalLM.from_pretrained(
            os.path.dirname(gguf), gguf_file=os.path.basename(gguf), dtype=dtype
        )
    else:
        # A config.json alone: the model's shapes with transformers' own random initialisation.
        import tempfile
        from transformers import AutoConfig

        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "config.json"), "w") as f:
                json.dump(req["config"], f)
            config = AutoConfig.from_pretrained(d)
        base = AutoModelForCausalLM.from_config(config, dtype=dtype)
    base.to(device)
    base.eval()
    params = sum(p.numel() for p in base.parameters())
    load_s = time.perf_counter() - t0
    res = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "threads": torch.get_num_threads(),
        "load_s": load_s,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "dtype": dtype_name,
    }

    rows = torch.tensor(req["train_rows"], dtype=torch.long, device=device)
    targets = rows[:, 1:]

    # Generation first, on the base model (mpo's generate bench loads no adapter).
    gen = []
    pad = int(req["pad_id"])
    n_new = int(req["new_tokens"])
    for b in req["generate_batches"]:
        prompts = req["prompts"][:b]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], dtype=torch.long, device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long, device=device)

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
    if req.get("ppo"):
        res["ppo_update"] = ppo_update(torch, peft, model, rows, lora, steps)
        if device == "cuda":
            res["peak_memory"] = torch.cuda.max_memory_allocated()
        json.dump(res, sys.stdout)
        sys.stdout.write("\n")
        return

    def forward():
        with torch.inference_mode():
            return model(input_ids=rows).logits[0, 0, 0].item()

    fwd_s, fwd_busy, _ = phase(forward, steps)
    res["forward"] = {"secs": fwd_s, "cores_busy": fwd_busy}
    if device == "cpu":
        res["forward"]["products"] = products(forward)

    # The train step: mean log-prob of the next tokens over every position (full-vocabulary
    # log-softmax), backward, AdamW on the LoRA parameters only.
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    losses = []

    def step():
        logits = model(input_ids=rows).logits[:, :-1].float()
        lp = torch.log_softmax(logits, dim=-1).gather(2, targets.unsqueeze(2)).squeeze(2)
        loss = -lp.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())

    step_s, step_busy, _ = phase(step, steps)
    # A copy: the profiled call below appends one more loss.
    res["train_step"] = {"secs": step_s, "cores_busy": step_busy, "losses": losses[: steps + 1]}
    if device == "cpu":
        res["train_step"]["products"] = products(step)
    if device == "cuda":
        res["peak_memory"] = torch.cuda.max_memory_allocated()
    json.dump(res, sys.stdout)
    sys.stdout.write("\n")


def ppo_update(torch, peft, model, rows, lora, steps):
    """One PPO update as mpo's `bench train --ppo` times it: the rows as rollouts (the first
    quarter the prompt, random scores), the reference pass (adapters off), the old log-prob
    pass and a separate critic's value pass (no grad), then one optimizer step of the policy
    (clipped ratio loss) and of the critic (its own LoRA adapter and an f32 value head; clipped
    value loss). Log-softmax in f32 on the response positions, as mpo computes it."""
    device = rows.device
    q = max(rows.shape[1] // 4, 1)
    targets = rows[:, q:]
    model.add_adapter("critic", peft.LoraConfig(r=lora["rank"], lora_alpha=lora["alpha"], target_modules=lora["targets"],
                                                lora_dropout=0.0, bias="none"))
    hidden = model.get_base_model().config.hidden_size
    head = torch.nn.Linear(hidden, 1, bias=False, device=device, dtype=torch.float32)
    gen = torch.Generator().manual_seed(3)
    scores = (torch.rand(rows.shape[0], generator=gen) * 2 - 1).to(device)
    inner = model.get_base_model().model  # the decoder without the LM head

    def params(name):
        return [p for n, p in model.named_parameters() if f".{name}." in n]

    policy_params, critic_params = params("default"), params("critic")
    for p in policy_params + critic_params:
        p.requires_grad_(True)
    opt_p = torch.optim.AdamW(policy_params, lr=1e-4, eps=1e-8, weight_decay=0.0)
    opt_c = torch.optim.AdamW(critic_params + list(head.parameters()), lr=1e-4, eps=1e-8, weight_decay=0.0)

    def logprobs():
        logits = model(input_ids=rows).logits[:, q - 1:-1].float()
        return torch.log_softmax(logits, dim=-1).gather(2, targets.unsqueeze(2)).squeeze(2)

    def values():
        return head(inner(input_ids=rows).last_hidden_state[:, q - 1:-1].float()).squeeze(2)

    def update():
        with torch.no_grad():
            with model.disable_adapter():
                ref = logprobs()
            model.set_adapter("default")
            old = logprobs()
            model.set_adapter("critic")
            old_v = values()
        reward = -0.05 * (old - ref)
        reward[:, -1] += scores
        returns = reward.flip(1).cumsum(1).flip(1)
        adv = returns - old_v
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        model.set_adapter("default")
        for p in policy_params + critic_params:
            p.requires_grad_(True)
        ratio = torch.exp(logprobs() - old)
        pg = torch.max(-adv * ratio, -adv * ratio.clamp(0.8, 1.2)).mean()
        opt_p.zero_grad(set_to_none=True)
        pg.backward()
        opt_p.step()
        model.set_adapter("critic")
        for p in policy_params + critic_params:
            p.requires_grad_(True)
        v = values()
        vc = old_v + (v - old_v).clamp(-0.2, 0.2)
        vf = 0.5 * torch.max((v - returns) ** 2, (vc - returns) ** 2).mean()
        opt_c.zero_grad(set_to_none=True)
        vf.backward()
        opt_c.step()
        return pg.item() + vf.item()

    model.train()
    secs, busy, _ = phase(update, steps)
    return {"secs": secs, "cores_busy": busy}


if __name__ == "__main__":
    main()
