#!/usr/bin/env bash
# The GPU checks of the models and run issues, as one prepared script for a lent GPU machine
# (no registry, no Rust, ~15 minutes of device time in all). Three steps:
#
#   scripts/gpu_check.sh prepare   # here, on the CPU machine: build mpo with cuda + wgpu,
#                                  # strip + xz it, split the demo GGUF in two, fetch the
#                                  # Vulkan loader packages; all into .devbin/ (git-ignored)
#   # then two device calls at most 30 s apart (a machine stays warm 30 s after a call;
#   # the GGUF is 94 MiB and one call carries at most 64 MiB):
#   run carry=[.devbin/mpo.xz, .devbin/gguf.a, .devbin/gl]  command="scripts/gpu_check.sh stage"
#   run carry=[.devbin/gguf.b]  timeout_s=600              command="scripts/gpu_check.sh measure"
#
# `measure` runs, most important first, each under a timeout capped by a deadline
# (GPU_CHECK_BUDGET_S, default 540 s): correctness first (`mpo kernels` on each backend: every
# matmul kernel autotune can pick, forced; the tiny spec with adapters on every projection
# against the CPU, cold and warm autotune cache; GPU_CHECK_ONLY_CORRECTNESS=1 stops there, and
# needs no GGUF). GPU_CHECK_PAPER=1 (issue 35) runs instead, in this order: the tiny parity on
# cuda with an empty autotune cache and with the one a previous machine left (.devbin/cubecl,
# carried; this run's cache is saved to $OUT/cubecl.tar.xz for the next), the demo spec on cuda
# against the same spec on the device's CPU cores (same numbers within tolerance), a
# Qwen2.5-1.5B-shaped PPO update (`bench train --ppo`: reference, old log-prob and value passes,
# one step of the policy and of a separate critic; the paper's adapters, random weights from the
# shipped config; PAPER_BATCH rollouts of PAPER_SEQ tokens, default 4 x 1024) in f32 and bf16
# against the same update in PyTorch eager on
# the same GPU in tf32 and bf16 (the image's python: MPO_TORCH_PYTHON), and generation on cuda
# at the paper's rollout batch (PAPER_ROLLOUT_BATCH, default 64; the demo model). Otherwise,
# after correctness: the generation and training benchmarks, the demo spec on cuda
# (6 updates), the same on wgpu, and a CPU baseline of the demo on the device's own cores (2
# updates) so the step-time ratio comes from one machine. Everything is tee'd to
# $OUT/gpu_check.log; $OUT/summary.txt has the figures for BENCHMARKS.md. burn compiles and
# autotunes kernels on first use (minutes on cuda); the cache goes to $MPO_CACHE_DIR/cubecl, so
# later steps reuse what the first one paid for.
#
# Dry runs here (CPU only, tiny shapes; mpo from target/release, or GPU_CHECK_BIN):
#   GPU_CHECK_BACKENDS=cpu OUT=/tmp/gc scripts/gpu_check.sh measure
#   GPU_CHECK_PAPER=1 GPU_CHECK_DRY_RUN=1 OUT=/tmp/gc scripts/gpu_check.sh measure
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
DEV=.devbin
STAGE=${GPU_CHECK_STAGE:-/tmp/mpo-gpu-check}
# On the GPU machine everything lives under $STAGE; `prepare` uses the user's own cache.
[ "${1:-}" = prepare ] || export MPO_CACHE_DIR=${MPO_CACHE_DIR:-$STAGE/cache}
GGUF=${MPO_CACHE_DIR:-$STAGE/cache}/models/smollm2-135m-instruct.gguf

prepare() {
    set -e
    mkdir -p "$DEV/gl"
    echo "building mpo with cuda + wgpu (CUDA 13 driver API, as the GPU machines have)"
    CUDARC_CUDA_VERSION=13000 cargo build --release --locked --features cuda,wgpu
    strip -o "$DEV/mpo" target/release/mpo
    xz -T2 -9 -f "$DEV/mpo"
    local model
    model=$(./target/release/mpo fetch smollm2-135m-instruct | tail -n 1)
    [ -f "$model" ] || { echo "error: mpo fetch printed no model path (got: $model)" >&2; exit 1; }
    local half=$(( ($(stat -c %s "$model") + 1) / 2 ))
    head -c "$half" "$model" > "$DEV/gguf.a"
    tail -c +"$(( half + 1 ))" "$model" > "$DEV/gguf.b"
    # Vulkan/EGL loaders for wgpu (the GPU image has the NVIDIA driver but not the loader).
    local o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
    mkdir -p /tmp/amd64/partial
    # shellcheck disable=SC2086
    apt-get $o update -qq && (cd "$DEV/gl" && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
    du -b "$DEV/mpo.xz" "$DEV/gguf.a" "$DEV/gguf.b" "$DEV"/gl/*.deb | awk '{s+=$1; print} END {printf "total %.1f MiB (first call carries mpo.xz + gguf.a + gl, second gguf.b; 64 MiB each)\n", s/1048576}'
}

stage() {
    mkdir -p "$STAGE/bin" "$(dirname "$GGUF")"
    xz -dc "$DEV/mpo.xz" > "$STAGE/bin/mpo" && chmod +x "$STAGE/bin/mpo" || exit 1
    cp "$DEV/gguf.a" "$GGUF.a" || exit 1
    for f in "$DEV"/gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
    nvidia-smi -L
    "$STAGE/bin/mpo" --version
    echo "staged in $STAGE; run \`scripts/gpu_check.sh measure\` with .devbin/gguf.b within 30 s"
}

measure() {
    local out=${OUT:-/tmp/mpo-gpu-check-out}
    mkdir -p "$out"
    exec > >(tee "$out/gpu_check.log") 2>&1
    local t0 deadline backends bin
    t0=$(date +%s)
    deadline=$(( t0 + ${GPU_CHECK_BUDGET_S:-540} ))
    backends=${GPU_CHECK_BACKENDS:-cuda wgpu}
    if [ "${GPU_CHECK_DRY_RUN:-0}" = 1 ]; then
        # Every step of the paper checks on the CPU, at shapes that finish in minutes.
        backends=cpu
        : "${PAPER_BATCH:=1}" "${PAPER_SEQ:=16}" "${PAPER_ROLLOUT_BATCH:=4}" "${PAPER_CONFIG:=tests/configs/tiny-qwen2.json}"
        : "${GPU_CHECK_DEMO_EPISODES:=8}"
    elif [ "${GPU_CHECK_PAPER:-0}" = 1 ]; then
        backends=${GPU_CHECK_BACKENDS:-cuda}
        # The GPU image has PyTorch, transformers and peft, and no registry to install them from.
        export MPO_TORCH_PYTHON=${MPO_TORCH_PYTHON:-python3}
    fi
    bin=${GPU_CHECK_BIN:-$STAGE/bin/mpo}
    [ -x "$bin" ] || bin=target/release/mpo
    if [ -f "$DEV/gguf.b" ] && [ -f "$GGUF.a" ]; then
        cat "$GGUF.a" "$DEV/gguf.b" > "$GGUF.part" && rm -f "$GGUF.a" && mv "$GGUF.part" "$GGUF"
    fi
    [ -f "$GGUF" ] || [ "${GPU_CHECK_ONLY_CORRECTNESS:-0}" = 1 ] || "$bin" fetch smollm2-135m-instruct || exit 1
    if [ -d /usr/local/nvidia/share/vulkan/icd.d ] && [ -z "${VK_DRIVER_FILES:-}" ]; then
        export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    fi
    # cubecl-cuda needs NVRTC: take it from the CUDA toolkit or PyTorch's wheels.
    if ! ldconfig -p | grep -q 'libnvrtc\.so'; then
        local nv
        nv=$(python3 -c "import glob,site,os; c=sorted(p for s in site.getsitepackages() for p in glob.glob(os.path.join(s,'nvidia','**','libnvrtc.so*'),recursive=True)); print(os.path.dirname(c[0]) if c else '')" 2>/dev/null)
        [ -n "$nv" ] && export LD_LIBRARY_PATH="$nv${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    "$bin" --version

    : > "$out/summary.txt"
    # step NAME TMAX CMD...: run under min(TMAX, time left); the last lines go to the summary.
    step() {
        local name=$1 tmax=$2 left rc s
        shift 2
        left=$(( deadline - $(date +%s) ))
        if [ "$left" -lt 30 ]; then
            echo "== $name: skipped, ${left}s left" | tee -a "$out/summary.txt"
            return
        fi
        [ "$left" -lt "$tmax" ] && tmax=$left
        echo "== [+$(( $(date +%s) - t0 ))s] $name (timeout ${tmax}s): $*"
        s=$(date +%s)
        timeout -k 5 "$tmax" "$@" > "$out/$name.txt" 2>&1
        rc=$?
        cat "$out/$name.txt"
        { echo "== $name: exit $rc, $(( $(date +%s) - s )) s"; grep -E 'bench|tok/s|step|load|warm|finished|stopped|error|PPO update|against|speed' "$out/$name.txt" | tail -n 12; } >> "$out/summary.txt"
    }
    # Correctness first (issue 31): every matmul kernel autotune can pick, forced, at the shapes
    # that broke cubek-matmul 0.2.0; then the tiny spec with adapters on every projection on
    # each GPU backend against the CPU (the parity `tests/it/wgpu.rs` runs on lavapipe).
    if [ "${GPU_CHECK_PAPER:-0}" = 1 ]; then
        paper "$bin" "$out"
        echo "== done at +$(( $(date +%s) - t0 ))s"
        return
    fi
    for b in $backends; do
        step "kernels-$b" 240 "$bin" kernels --backend "$b"
    done
    tiny_parity "$bin" "$out"
    [ "${GPU_CHECK_ONLY_CORRECTNESS:-0}" = 1 ] && { echo "== done at +$(( $(date +%s) - t0 ))s"; return; }
    local demo=(run specs/math.yaml)
    for b in $backends; do
        step "generate-$b" 200 "$bin" bench generate --backend "$b" --new-tokens 32
        step "train-$b" 150 "$bin" bench train --backend "$b" --steps 3
        step "demo-$b" 300 "$bin" "${demo[@]}" "runtime.backend=$b" "output.root=$STAGE/results"
    done
    # The baseline: the same spec on this machine's CPU cores, 2 of its 6 updates.
    step demo-cpu-baseline 200 "$bin" "${demo[@]}" runtime.backend=cpu "output.root=$STAGE/results" ppo.total_episodes=16
    for m in "$STAGE"/results/math/*/metrics.jsonl; do
        [ -f "$m" ] || continue
        python3 - "$m" <<'PY' >> "$out/summary.txt"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
man = json.load(open(sys.argv[1].replace("metrics.jsonl", "manifest.json")))
parts = ["generate", "judge", "ppo", "meta", "total"]
mean = {k: sum(r["time_s"][k] for r in rows) / len(rows) for k in parts}
print(f"{man['backend']} ({man['device']}): {len(rows)} updates, warm-up {man.get('warmup_s', 0):.1f} s; "
      + "mean per update: " + ", ".join(f"{k} {mean[k]:.2f} s" for k in parts)
      + "; totals: " + ", ".join(f"{r['time_s']['total']:.1f}" for r in rows))
PY
    done
    echo "== done at +$(( $(date +%s) - t0 ))s"
}

# The tiny spec (random weights: nothing to carry) with LoRA on q,k,v,o,gate,up,down,lm_head,
# on the CPU and on each GPU backend (cold autotune cache, then warm), compared as the wgpu
# run test compares them: exact rollouts and scores, training numbers within 1e-4.
tiny_parity() {
    local bin=$1 out=$2 b tag
    local args=(run tests/specs/valid/tiny.yaml ppo.total_episodes=8 ppo.learning_rate=1e-3
        "policy.lora.targets=[q, k, v, o, gate, up, down, lm_head]" eval.every=never)
    for tag in cpu $backends; do
        b=${tag%%-*}
        step "tiny-$tag" 200 "$bin" "${args[@]}" "runtime.backend=$b" "output.root=$STAGE/tiny-$tag"
    done
    for b in $backends; do
        step "tiny-$b-warm" 200 "$bin" "${args[@]}" "runtime.backend=$b" "output.root=$STAGE/tiny-$b-warm"
    done
    for b in $backends; do
        parity "tiny parity $b vs cpu (all LoRA targets)" "$STAGE/tiny-cpu/tiny" "$STAGE/tiny-$b/tiny" 1e-4 | tee -a "$out/summary.txt"
        parity "tiny parity $b-warm vs cpu" "$STAGE/tiny-cpu/tiny" "$STAGE/tiny-$b-warm/tiny" 1e-4 | tee -a "$out/summary.txt"
    done
}

# parity LABEL DIR_A DIR_B TOL: the metrics of the runs under two folders over their common
# updates: rollouts and scores exactly, training numbers within TOL (relative, or absolute
# below 1).
parity() {
    python3 - "$@" <<'PY'
import glob, json, sys
label, a, b, tol = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
def rows(d):
    m = glob.glob(f"{d}/*/metrics.jsonl")
    return [json.loads(l) for l in open(m[0])] if m else None
def get(r, path):
    for k in path.strip("/").split("/"):
        r = r[k]
    return r
x, y = rows(a), rows(b)
if x is None or y is None:
    print(f"{label}: missing run ({a}: {x is not None}, {b}: {y is not None})")
    sys.exit(0)
exact = ["/episodes", "/reward", "/score_mean", "/eos_rate", "/tokens/policy_generated", "/judge_failures", "/rubric_version"]
near = ["/entropy", "/kl", "/loss/policy", "/loss/value", "/approxkl", "/grad_norm"]
worst, bad = 0.0, []
for c, g in zip(x, y):
    bad += [f"{p} at update {c['update']}: {get(c, p)} vs {get(g, p)}" for p in exact if get(c, p) != get(g, p)]
    for p in near:
        u, v = get(c, p), get(g, p)
        d = abs(u - v) / max(abs(u), 1.0)
        worst = max(worst, d)
        if d > tol:
            bad.append(f"{p} at update {c['update']}: {u} vs {v}")
n = min(len(x), len(y))
print(f"{label} ({n} common updates): " + ("AGREE" if not bad and n > 0 else "DIFFER")
      + f", worst training-number difference {worst:.2e} (tolerance {tol:g})")
for m in bad[:6]:
    print("   ", m)
PY
}

# The paper-scale checks (GPU_CHECK_PAPER=1), most important first.
paper() {
    local bin=$1 out=$2 b carried=.devbin/cubecl.tar.xz
    local cfg=${PAPER_CONFIG:-qwen2.5-1.5b-instruct} pb=${PAPER_BATCH:-4} ps=${PAPER_SEQ:-1024} rb=${PAPER_ROLLOUT_BATCH:-64}
    local tiny=(run tests/specs/valid/tiny.yaml ppo.total_episodes=8 ppo.learning_rate=1e-3
        "policy.lora.targets=[q, k, v, o, gate, up, down, lm_head]" eval.every=never)
    # 1. Warm-up: the tiny spec on an empty autotune cache, then on the cache a previous
    #    machine left (when one was carried), then warm; each against the CPU.
    step tiny-cpu 200 "$bin" "${tiny[@]}" runtime.backend=cpu "output.root=$STAGE/tiny-cpu"
    # A dry run stands the CPU in for the GPU (and leaves the user's kernel cache alone).
    local dry=${GPU_CHECK_DRY_RUN:-0}
    for b in $backends; do
        [ "$b" = cpu ] && [ "$dry" != 1 ] && continue
        [ "$dry" = 1 ] || rm -rf "$MPO_CACHE_DIR/cubecl"
        step "warmup-$b-empty-cache" 240 "$bin" "${tiny[@]}" "runtime.backend=$b" "output.root=$STAGE/tiny-on-$b"
        parity "tiny parity $b (empty cache) vs cpu" "$STAGE/tiny-cpu/tiny" "$STAGE/tiny-on-$b/tiny" 1e-4 | tee -a "$out/summary.txt"
        if [ -f "$carried" ] && [ "$dry" != 1 ]; then
            rm -rf "$MPO_CACHE_DIR/cubecl" && mkdir -p "$MPO_CACHE_DIR" && tar -xJf "$carried" -C "$MPO_CACHE_DIR"
            step "warmup-$b-carried-cache" 200 "$bin" "${tiny[@]}" "runtime.backend=$b" "output.root=$STAGE/tiny-on-$b-carried"
        else
            echo "== warmup-$b-carried-cache: skipped, no $carried (this run saves one to \$OUT/cubecl.tar.xz)" | tee -a "$out/summary.txt"
        fi
    done
    # 2. The demo spec on the GPU against the device's CPU cores: its first updates, compared.
    local demo=(run specs/math.yaml "ppo.total_episodes=${GPU_CHECK_DEMO_EPISODES:-16}" eval.every=never)
    step demo-cpu 240 "$bin" "${demo[@]}" runtime.backend=cpu "output.root=$STAGE/demo-cpu"
    for b in $backends; do
        [ "$b" = cpu ] && [ "$dry" != 1 ] && continue
        step "demo-on-$b" 200 "$bin" "${demo[@]}" "runtime.backend=$b" "output.root=$STAGE/demo-on-$b"
        parity "demo $b vs cpu" "$STAGE/demo-cpu/math" "$STAGE/demo-on-$b/math" 1e-3 | tee -a "$out/summary.txt"
    done
    # 3. The paper's policy shape: f32 against PyTorch tf32, bf16 against PyTorch bf16.
    for b in $backends; do
        local t=(bench train --backend "$b" --config "$cfg" --random-weights --ppo --batch "$pb" --seq "$ps" --steps 2 --torch)
        step "paper-step-$b-f32" 200 "$bin" "${t[@]}" --precision f32 --torch-dtype "$([ "$b" = cpu ] && echo f32 || echo tf32)"
        step "paper-step-$b-bf16" 200 "$bin" "${t[@]}" --precision bf16 --torch-dtype bf16
    done
    # 4. Generation at the paper's rollout batch (the demo model: generation needs a tokenizer).
    for b in $backends; do
        step "generate-$b-b$rb" 120 "$bin" bench generate --backend "$b" --batch "$rb" --new-tokens 32
    done
    [ "$dry" != 1 ] && [ -d "$MPO_CACHE_DIR/cubecl" ] && tar -cJf "$out/cubecl.tar.xz" -C "$MPO_CACHE_DIR" cubecl
}

case "${1:-}" in
    prepare) prepare ;;
    stage) stage ;;
    measure) measure ;;
    *) echo "usage: scripts/gpu_check.sh prepare|stage|measure (see the comment at the top)" >&2; exit 2 ;;
esac
