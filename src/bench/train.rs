//! `mpo bench train`: the LoRA training step of the demo model (forward + backward + AdamW)
//! against a forward pass, and with `--torch` against PyTorch eager on the same shapes, the
//! same weights and the same tokens (`scripts/bench_torch.py` in the venv that
//! `scripts/setup_torch.sh` installs), with generation at batch 1 and 8 against transformers'
//! `generate` (and llama-server when one is given or built).

use std::path::Path;
use std::process::{Command, Stdio};

use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;

use super::CpuClock;
use super::flops::Products;
use super::generation::{GenRate, encoded_prompts, measure, server_generate};
use crate::model::batch::{causal_mask, int_tensor, left_pad, mask_tensor, to_host};
use crate::model::{self, BackendJob, LoraConfig, registry};
use crate::spec::LoraTarget;

pub struct TrainBench {
    pub batch: usize,
    pub seq: usize,
    pub steps: usize,
    /// Measure PyTorch too (installs its venv on first use).
    pub torch: bool,
    /// A llama-server serving the demo GGUF, for the generation rows.
    pub server: Option<String>,
    pub new_tokens: usize,
    /// `--config`: a model built from a Hugging Face `config.json` alone, with seeded random
    /// weights (a shipped name, a folder or a file), trained as the paper trains its policy.
    pub config: Option<String>,
    /// mpo's arithmetic (`--precision`).
    pub precision: crate::spec::Precision,
    /// PyTorch's: `f32`, `tf32` or `bf16` (`--torch-dtype`).
    pub torch_dtype: String,
    /// Where PyTorch runs: `cuda` when mpo does, else `cpu`.
    pub torch_device: &'static str,
    /// With `config`: time a PPO update ([`ppo_update`]) instead of a LoRA step.
    pub ppo: bool,
}

/// The shipped configs (`configs/<name>/config.json`), compiled in so a name works anywhere.
pub const SHIPPED_CONFIGS: &[(&str, &str)] = &[
    ("qwen2.5-1.5b-instruct", include_str!("../../configs/qwen2.5-1.5b-instruct/config.json")),
    ("qwen2.5-7b-instruct", include_str!("../../configs/qwen2.5-7b-instruct/config.json")),
];

/// `--config`'s model: its name and the config.json it reads, as text.
pub fn read_config(arg: &str) -> anyhow::Result<(String, String)> {
    if let Some((name, text)) = SHIPPED_CONFIGS.iter().find(|(n, _)| *n == arg) {
        return Ok((name.to_string(), text.to_string()));
    }
    let p = Path::new(arg);
    let file = if p.is_dir() { p.join("config.json") } else { p.to_path_buf() };
    let text = std::fs::read_to_string(&file).map_err(|e| {
        let names: Vec<&str> = SHIPPED_CONFIGS.iter().map(|(n, _)| *n).collect();
        anyhow::anyhow!(
            "--config `{arg}`: cannot read {} ({e}); give a folder with a config.json, the file, or one of {}",
            file.display(),
            names.join(", ")
        )
    })?;
    Ok((file.display().to_string(), text))
}

/// The paper's adapters: rank 64, alpha 128, on every projection and the LM head.
pub fn paper_lora() -> LoraConfig {
    LoraConfig { rank: 64, alpha: 128.0, targets: LoraTarget::ALL.to_vec() }
}

/// One configuration's figures: mean seconds and cores busy of a forward pass (no autodiff)
/// and of a train step, and the loss before any update.
struct Train {
    fwd_s: f64,
    fwd_busy: f64,
    step_s: f64,
    step_busy: f64,
    first_loss: f32,
    /// The matmuls of one forward pass and of one train step (per call, from the timed calls).
    fwd_products: Products,
    step_products: Products,
}

fn train_rows(batch: usize, seq: usize, vocab: usize) -> Vec<Vec<u32>> {
    let mut rng = crate::rng::stream(1, "bench/train");
    (0..batch).map(|_| (0..seq).map(|_| rand::Rng::random_range(&mut rng, 100..vocab as u32)).collect()).collect()
}

/// Forward (no grad) and train-step timings of `model` on `rows`, each the mean of `steps`
/// calls after one warm-up call. The loss is the mean negative log-prob of every next token
/// under the full-vocabulary softmax, computed by PPO's own function.
fn measure_train<B: AutodiffBackend>(model: crate::model::Llama<B>, rows: &[Vec<u32>], steps: usize) -> anyhow::Result<Train> {
    let device = model.embed.val().device();
    let lay = left_pad(rows, 0);
    let (b, t) = (lay.b, lay.t);
    let tokens = int_tensor::<B>(lay.tokens.clone(), [b, t], &device);
    let positions = int_tensor::<B>(lay.positions.clone(), [b, t], &device);
    let mask = mask_tensor::<B>(causal_mask(&lay.pads, 0, t), b, t, t, &device);
    let targets = tokens.clone().slice([0..b, 1..t]);
    let inner = model.valid();
    let fwd = || -> anyhow::Result<()> {
        let h = inner.forward(tokens.clone().inner(), positions.clone().inner(), mask.clone().inner(), None, true);
        to_host(inner.logits(h, true).slice([0..1, 0..1, 0..1]))?;
        Ok(())
    };
    fwd()?;
    let (clock, p0) = (CpuClock::start(), Products::now());
    for _ in 0..steps {
        fwd()?;
    }
    let (fwd_wall, fwd_busy) = clock.stop();
    let fwd_products = Products::now().since(p0).per(steps);

    let mut optim = AdamWConfig::new().init::<B, crate::model::Llama<B>>();
    let mut step = |model: crate::model::Llama<B>| -> anyhow::Result<(crate::model::Llama<B>, f32)> {
        let h = model.forward(tokens.clone(), positions.clone(), mask.clone(), None, true);
        let d = h.dims()[2];
        let logits = model.logits(h.slice([0..b, 0..t - 1, 0..d]), true);
        let lp = crate::ppo::token_logprobs(logits, targets.clone(), 1.0, false).0;
        let loss = lp.mean().neg();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let model = optim.step(1e-4, model, grads);
        let l: f32 = to_host(loss)?.first().copied().unwrap_or(f32::NAN);
        Ok((model, l))
    };
    let (mut model, first_loss) = step(model)?;
    let (clock, p0) = (CpuClock::start(), Products::now());
    for _ in 0..steps {
        model = step(model)?.0;
    }
    let (step_wall, step_busy) = clock.stop();
    let step_products = Products::now().since(p0).per(steps);
    Ok(Train {
        fwd_s: fwd_wall / steps as f64,
        fwd_busy,
        step_s: step_wall / steps as f64,
        step_busy,
        first_loss,
        fwd_products,
        step_products,
    })
}

impl BackendJob for TrainBench {
    type Output = anyhow::Result<String>;
    fn run<B: AutodiffBackend>(self, device: B::Device, backend_name: &'static str) -> anyhow::Result<String> {
        if let Some(arg) = &self.config {
            return self.run_config::<B>(arg, device, backend_name);
        }
        let mref = registry::resolve("smollm2-135m-instruct", Path::new("."))?;
        let mut out = format!(
            "train bench: SmolLM2-135M-Instruct (GGUF dequantized to f32) on burn {backend_name} in {}, batch {} x {} tokens, \
             forward + backward + AdamW on the LoRA parameters, full-vocabulary log-softmax on every position\n",
            self.precision.as_str(),
            self.batch,
            self.seq
        );
        let demo = LoraConfig { rank: 8, alpha: 16.0, targets: vec![LoraTarget::Q, LoraTarget::V] };
        let all = LoraConfig { targets: LoraTarget::ALL.to_vec(), ..demo.clone() };
        let configs: Vec<(&str, LoraConfig)> = if self.torch {
            vec![("LoRA r=8 on q,v (demo)", demo.clone())]
        } else {
            vec![("LoRA r=8 on q,v (demo)", demo.clone()), ("LoRA r=8 on all 7 projections + lm_head", all)]
        };
        let mut ours = None;
        let mut rows = vec![];
        for (label, lora) in configs {
            let m = model::load::<B>(&mref, Some(&lora), 0, &device, &mut |l| eprintln!("{l}"))?.precision(self.precision);
            rows = train_rows(self.batch, self.seq, m.config.vocab_size);
            let r = measure_train(m.model, &rows, self.steps)?;
            let toks = (self.batch * self.seq) as f64;
            out += &format!(
                "  {label}: train step {:.2}s = {:.0} tok/s ({:.2} cores busy); forward-only baseline {:.2}s = {:.0} tok/s ({:.2} cores busy); \
                 step / forward = {:.2}x (loss before the first step {:.4}); matmuls {:.0} GFLOP/s in the step ({:.0}% of it), \
                 {:.0} GFLOP/s in the forward pass ({:.0}%)\n",
                r.step_s,
                toks / r.step_s,
                r.step_busy,
                r.fwd_s,
                toks / r.fwd_s,
                r.fwd_busy,
                r.step_s / r.fwd_s,
                r.first_loss,
                r.step_products.gflops(),
                100.0 * r.step_products.secs / r.step_s,
                r.fwd_products.gflops(),
                100.0 * r.fwd_products.secs / r.fwd_s,
            );
            ours.get_or_insert(r);
        }
        if !self.torch {
            return Ok(out);
        }
        let ours = ours.expect("one configuration measured");
        let m = model::load::<B::InnerBackend>(&mref, None, 0, &device, &mut |l| eprintln!("{l}"))?;
        let prompts = encoded_prompts(&m.tok)?;
        let rates = measure(&m, &prompts, self.new_tokens, &[1, 8], &mut out)?;
        let pad = m.tok.pad;
        drop(m);
        let torch = run_torch(&TorchRequest {
            gguf: Some(crate::model::fetch::fetch("smollm2-135m-instruct", &mut |l| eprintln!("{l}"))?.display().to_string()),
            config: None,
            device: self.torch_device.into(),
            dtype: self.torch_dtype.clone(),
            threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            train_rows: rows,
            steps: self.steps,
            lora: TorchLora { rank: demo.rank, alpha: demo.alpha, targets: vec!["q_proj".into(), "v_proj".into()] },
            prompts: prompts.clone(),
            generate_batches: rates.iter().map(|g| g.batch).collect(),
            new_tokens: self.new_tokens,
            pad_id: pad,
            ppo: false,
        })?;
        let server: Vec<(usize, f64)> = match &self.server {
            Some(url) => rates
                .iter()
                .map(|g| server_generate(url, &prompts[..g.batch], self.new_tokens).map(|(n, s)| (g.batch, n as f64 / s)))
                .collect::<anyhow::Result<_>>()?,
            None => vec![],
        };
        out += &compare(&ours, &rates, &torch, &server, true);
        Ok(out)
    }
}

impl TrainBench {
    /// A model from a config.json alone (seeded random weights), the paper's adapters, the
    /// same train step; with `--torch` the same shapes in transformers + peft (random weights
    /// of its own: the speeds compare, the losses do not), each side's parameter counts printed.
    fn run_config<B: AutodiffBackend>(&self, arg: &str, device: B::Device, backend_name: &'static str) -> anyhow::Result<String> {
        let (name, text) = read_config(arg)?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{name}: not JSON ({e})"))?;
        let config = crate::model::weights::LlamaConfig::from_hf(&json).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let lora = paper_lora();
        let (base, trained) =
            (crate::model::memory::base_parameters(&config), crate::model::memory::lora_parameters(&config, lora.rank, &lora.targets));
        let mut out = format!(
            "train bench: {name} built from its config.json with seeded random weights ({:.3}B parameters), on burn {backend_name} in {}, \
             batch {} x {} tokens, LoRA r={} alpha={} on every projection and lm_head ({:.1}M trained), {}\n",
            base as f64 / 1e9,
            self.precision.as_str(),
            self.batch,
            self.seq,
            lora.rank,
            lora.alpha,
            trained as f64 / 1e6,
            if self.ppo { "one PPO update" } else { "forward + backward + AdamW, full-vocabulary log-softmax on every position" }
        );
        let src = crate::model::weights::RandomWeights { config: config.clone(), seed: 7 };
        let model = crate::model::Llama::<B>::load(&config, &src, Some(&lora), self.seq.max(2), 0, &device)?.with_precision(self.precision);
        // What was built, counted (the formulas above are `mpo plan`'s memory estimate). A tied
        // LM head is held as its own frozen copy of the embedding (transposed), one more matrix.
        let built = burn::module::Module::num_params(&model) as u64;
        let head_copy = if config.tie_word_embeddings { (config.vocab_size * config.hidden_size) as u64 } else { 0 };
        anyhow::ensure!(
            built == base + trained + head_copy,
            "{name}: built {built} parameters, the config's shapes say {}",
            base + trained + head_copy
        );
        let rows = train_rows(self.batch, self.seq, config.vocab_size);
        let toks = (self.batch * self.seq) as f64;
        if self.ppo {
            let secs = ppo_update(model, &rows, self.steps)?;
            out += &format!(
                "  PPO update ({} rollouts of {} tokens, a quarter prompt; reference, old log-prob and value passes, one optimizer step of \
                 the policy and of a separate critic): {secs:.3}s = {:.0} tok/s\n",
                self.batch,
                self.seq,
                toks / secs
            );
            if self.torch {
                let torch = run_torch(&self.torch_request(json, rows, &lora, true))?;
                let theirs = torch.ppo_update.as_ref().map(|p| p.secs).unwrap_or(f64::NAN);
                out += &torch_header(&torch, false);
                out += &format!("  {:<22} {:>9.3}s {:>16.3}s {:>7.2}x\n", "PPO update", secs, theirs, theirs / secs);
            }
            return Ok(out);
        }
        let ours = measure_train(model, &rows, self.steps)?;
        out += &format!(
            "  train step {:.2}s = {:.0} tok/s ({:.2} cores busy); forward-only baseline {:.2}s = {:.0} tok/s ({:.2} cores busy)\n",
            ours.step_s,
            toks / ours.step_s,
            ours.step_busy,
            ours.fwd_s,
            toks / ours.fwd_s,
            ours.fwd_busy
        );
        if !self.torch {
            return Ok(out);
        }
        let torch = run_torch(&self.torch_request(json, rows, &lora, false))?;
        out += &format!(
            "  parameters: mpo {base} base + {trained} trained (counted in the built model); PyTorch {} base + {} trained{}\n",
            torch.params.unwrap_or(0),
            torch.trainable.unwrap_or(0),
            if torch.params == Some(base) && torch.trainable == Some(trained) { " (the same shapes)" } else { " (DIFFERENT shapes)" }
        );
        out += &compare(&ours, &[], &torch, &[], false);
        Ok(out)
    }
}

impl TrainBench {
    /// The PyTorch side of `--config`: the same config, rows and adapters.
    fn torch_request(&self, config: serde_json::Value, rows: Vec<Vec<u32>>, lora: &LoraConfig, ppo: bool) -> TorchRequest {
        TorchRequest {
            gguf: None,
            config: Some(config),
            device: self.torch_device.into(),
            dtype: self.torch_dtype.clone(),
            threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            train_rows: rows,
            steps: self.steps,
            lora: TorchLora {
                rank: lora.rank,
                alpha: lora.alpha,
                // peft names a module by the last part of its path
                targets: crate::model::llama::PROJECTIONS
                    .iter()
                    .map(|(_, _, path)| path.rsplit('.').next().unwrap_or(path).to_string())
                    .chain(["lm_head".to_string()])
                    .collect(),
            },
            prompts: vec![],
            generate_batches: vec![],
            new_tokens: self.new_tokens,
            pad_id: 0,
            ppo,
        }
    }
}

/// Mean seconds of `steps` PPO updates (after one untimed update, which also makes the adapters
/// non-zero so every timed update runs its reference pass): the rows as rollouts (the first
/// quarter the prompt), random scores, one epoch of one mini-batch, a separate critic.
fn ppo_update<B: AutodiffBackend>(policy: crate::model::Llama<B>, rows: &[Vec<u32>], steps: usize) -> anyhow::Result<f64> {
    use crate::run::train::{Passes, Seq, Trainer, UpdateOptions, update};
    let device = policy.embed.val().device();
    let adam = || AdamWConfig::new().with_epsilon(1e-8).with_weight_decay(0.0).init::<B, crate::model::Llama<B>>();
    let critic = policy.with_fresh_adapters(&paper_lora(), "critic", 1).with_value_head(2, &device);
    let mut tr = Trainer { policy, optim: adam(), critic: Some((critic, adam())) };
    let mut rng = crate::rng::stream(3, "bench/ppo-scores");
    let seqs: Vec<Seq> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let q = (r.len() / 4).max(1);
            Seq {
                query: r[..q].to_vec(),
                response: r[q..].to_vec(),
                score: rand::Rng::random_range(&mut rng, -1.0..1.0),
                group: i,
                rollout_logprobs: vec![],
            }
        })
        .collect();
    let spec = crate::spec::PpoSpec { num_ppo_epochs: 1, num_mini_batches: 1, learning_rate: 1e-4, ..Default::default() };
    let chunk = rows.len().max(1);
    let opts = |update| UpdateOptions { spec: &spec, lr: 1e-4, pad: 0, chunk, seed: 0, update, passes: Passes::Shared, recenter: false };
    update(&mut tr, &seqs, &opts(1));
    let clock = CpuClock::start();
    for u in 0..steps {
        update(&mut tr, &seqs, &opts(u as u32 + 2));
    }
    Ok(clock.stop().0 / steps as f64)
}

#[derive(serde::Serialize)]
struct TorchLora {
    rank: usize,
    alpha: f64,
    targets: Vec<String>,
}

/// What scripts/bench_torch.py reads on stdin.
#[derive(serde::Serialize)]
struct TorchRequest {
    /// The demo's weights, or (`config`) a config.json to build with random weights.
    gguf: Option<String>,
    config: Option<serde_json::Value>,
    /// `cpu` or `cuda`; `f32`, `tf32` or `bf16`.
    device: String,
    dtype: String,
    threads: usize,
    train_rows: Vec<Vec<u32>>,
    steps: usize,
    lora: TorchLora,
    prompts: Vec<Vec<u32>>,
    generate_batches: Vec<usize>,
    new_tokens: usize,
    pad_id: u32,
    /// Time a PPO update (a separate critic adapter and value head) instead of a LoRA step.
    ppo: bool,
}

#[derive(serde::Deserialize, Debug)]
struct TorchPhase {
    secs: f64,
    cores_busy: f64,
    #[serde(default)]
    losses: Vec<f64>,
    /// Its matrix products in one profiled call (torch.profiler: aten::mm, addmm, bmm, baddbmm).
    #[serde(default)]
    products: Option<TorchProducts>,
}

#[derive(serde::Deserialize, Debug)]
struct TorchProducts {
    flops: f64,
    secs: f64,
    /// The profiled call's own wall time (the profiler's overhead included).
    call_secs: f64,
}

#[derive(serde::Deserialize, Debug)]
struct TorchGen {
    batch: usize,
    tokens: usize,
    secs: f64,
    cores_busy: f64,
}

/// What scripts/bench_torch.py prints.
#[derive(serde::Deserialize, Debug)]
struct TorchResult {
    versions: std::collections::BTreeMap<String, String>,
    threads: usize,
    #[serde(default)]
    forward: Option<TorchPhase>,
    #[serde(default)]
    train_step: Option<TorchPhase>,
    #[serde(default)]
    ppo_update: Option<TorchPhase>,
    #[serde(default)]
    generate: Vec<TorchGen>,
    /// Base and trained (LoRA) parameter counts.
    #[serde(default)]
    params: Option<u64>,
    /// What PyTorch ran on and in, and its peak GPU memory (bytes) where it ran on one.
    #[serde(default)]
    device: String,
    #[serde(default)]
    dtype: String,
    #[serde(default)]
    peak_memory: Option<u64>,
    #[serde(default)]
    trainable: Option<u64>,
}

/// Install (once) and run the PyTorch baseline: in scripts/setup_torch.sh's venv, or with the
/// interpreter `MPO_TORCH_PYTHON` names (a machine whose image has PyTorch and no registry).
fn run_torch(req: &TorchRequest) -> anyhow::Result<TorchResult> {
    let python = match std::env::var("MPO_TORCH_PYTHON") {
        Ok(p) if !p.is_empty() => p,
        _ => {
            let setup = Command::new("bash")
                .arg("scripts/setup_torch.sh")
                .stderr(Stdio::inherit())
                .output()
                .map_err(|e| anyhow::anyhow!("could not run scripts/setup_torch.sh ({e}): run mpo bench from the repository root"))?;
            anyhow::ensure!(
                setup.status.success(),
                "scripts/setup_torch.sh failed (its messages are above); --torch needs its venv, or MPO_TORCH_PYTHON naming a python with torch, transformers and peft"
            );
            String::from_utf8_lossy(&setup.stdout).lines().last().unwrap_or_default().trim().to_string()
        }
    };
    eprintln!("running the PyTorch baseline ({python} scripts/bench_torch.py) ...");
    let mut child = Command::new(&python)
        .arg("scripts/bench_torch.py")
        // Local weights only; no progress bars or deprecation notices in the figures.
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        .env("TRANSFORMERS_VERBOSITY", "error")
        .env("PYTHONWARNINGS", "ignore::FutureWarning")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| anyhow::anyhow!("could not start {python}: {e}"))?;
    let body = serde_json::to_vec(req)?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped");
        stdin.write_all(&body)?;
    }
    let output = child.wait_with_output()?;
    anyhow::ensure!(output.status.success(), "scripts/bench_torch.py failed ({}); its messages are above", output.status);
    let text = String::from_utf8_lossy(&output.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).map_err(|e| anyhow::anyhow!("scripts/bench_torch.py printed no result ({e}): {last:.200}"))
}

/// The side-by-side table; speed ratios are PyTorch's time over mpo's (above 1: mpo is faster).
fn compare(ours: &Train, rates: &[GenRate], torch: &TorchResult, server: &[(usize, f64)], same_weights: bool) -> String {
    let mut s = torch_header(torch, same_weights);
    let row = |name: &str, a: f64, ab: f64, b: Option<&TorchPhase>| {
        let (b, bb) = b.map(|p| (p.secs, p.cores_busy)).unwrap_or((f64::NAN, f64::NAN));
        format!("  {name:<22} {:>9.2}s ({ab:.2}) {:>9.2}s ({bb:.2}) {:>7.2}x\n", a, b, b / a)
    };
    s += &row("train step", ours.step_s, ours.step_busy, torch.train_step.as_ref());
    s += &row("forward, no grad", ours.fwd_s, ours.fwd_busy, torch.forward.as_ref());
    for g in rates {
        if let Some(t) = torch.generate.iter().find(|t| t.batch == g.batch) {
            let (ours_rate, theirs) = (g.tokens as f64 / g.secs, t.tokens as f64 / t.secs);
            s += &format!(
                "  {:<22} {:>7.1} tok/s ({:.2}) {:>7.1} tok/s ({:.2}) {:>7.2}x\n",
                format!("generate, batch {}", g.batch),
                ours_rate,
                g.cores_busy,
                theirs,
                t.cores_busy,
                ours_rate / theirs
            );
        }
        if let Some((_, rate)) = server.iter().find(|(b, _)| *b == g.batch) {
            s += &format!(
                "  {:<22} {:>7.1} tok/s {:>20} {:>7.2}x  (llama-server, same GGUF quantized)\n",
                format!("  vs llama-server, b{}", g.batch),
                g.tokens as f64 / g.secs,
                format!("{rate:.1} tok/s"),
                g.tokens as f64 / g.secs / rate
            );
        }
    }
    s += &products_table(ours, torch);
    if let Some(first) = torch.train_step.as_ref().and_then(|t| t.losses.first()).filter(|_| same_weights) {
        s += &format!(
            "  loss before the first step: mpo {:.5}, PyTorch {:.5} (|diff| {:.1e}: the same model on the same tokens)\n",
            ours.first_loss,
            first,
            (ours.first_loss as f64 - first).abs()
        );
    }
    s
}

/// The matmuls' GFLOP/s on each side and the share of the phase they take, beside the machine's
/// FMA peak: what is left of a gap once the products run at the same speed is not products.
fn products_table(ours: &Train, torch: &TorchResult) -> String {
    let peak = super::flops::fma_gflops();
    let mut s = format!(
        "\n  matrix products: GFLOP/s (share of the phase's time); machine peak = {}\n  {:<22} {:>16} {:>16}\n",
        match peak {
            Some((g, isa)) =>
                format!("{g:.0} GFLOP/s ({isa} fused multiply-adds on {} threads, no memory traffic)", rayon::current_num_threads()),
            None => "not measured (no AVX-512 or AVX2+FMA on this CPU)".into(),
        },
        "",
        "mpo",
        "PyTorch"
    );
    let cell = |gflops: f64, share: f64| format!("{gflops:.0} ({:.0}%)", share * 100.0);
    for (name, p, wall, theirs) in [
        ("train step", ours.step_products, ours.step_s, torch.train_step.as_ref()),
        ("forward, no grad", ours.fwd_products, ours.fwd_s, torch.forward.as_ref()),
    ] {
        let t = theirs.and_then(|t| t.products.as_ref()).map(|t| cell(t.flops / t.secs / 1e9, t.secs / t.call_secs));
        s += &format!("  {name:<22} {:>16} {:>16}\n", cell(p.gflops(), p.secs / wall), t.unwrap_or_else(|| "not measured".into()));
    }
    s
}

/// The table's title: PyTorch's versions, device and arithmetic, and the column heads.
fn torch_header(torch: &TorchResult, same_weights: bool) -> String {
    let versions: Vec<String> = torch.versions.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let mut s = format!(
        "\n  against PyTorch eager ({}; {} on {}, {} threads{}), {}; speed = PyTorch time / mpo time (cores busy in parentheses)\n",
        versions.join(", "),
        torch.dtype,
        torch.device,
        torch.threads,
        torch.peak_memory.map(|b| format!(", peak GPU memory {}", crate::model::memory::gib(b))).unwrap_or_default(),
        if same_weights { "same weights and tokens" } else { "same shapes and tokens, random weights on each side" }
    );
    s += &format!("  {:<22} {:>16} {:>16} {:>8}\n", "", "mpo", "PyTorch", "speed");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::memory::{base_parameters, lora_parameters};
    use crate::model::weights::LlamaConfig;

    fn shipped(name: &str) -> LlamaConfig {
        let (_, text) = read_config(name).unwrap();
        LlamaConfig::from_hf(&serde_json::from_str(&text).unwrap()).unwrap()
    }

    #[test]
    fn the_shipped_configs_are_the_published_models() {
        // Qwen2.5-1.5B: 1.54B parameters; Qwen2.5-7B: 7.62B (their model cards)
        let small = shipped("qwen2.5-1.5b-instruct");
        assert!((1_540_000_000..1_550_000_000).contains(&base_parameters(&small)), "{}", base_parameters(&small));
        assert!(small.tie_word_embeddings && small.attention_bias && small.num_kv_heads == 2);
        let big = shipped("qwen2.5-7b-instruct");
        assert!((7_610_000_000..7_620_000_000).contains(&base_parameters(&big)), "{}", base_parameters(&big));
        assert!(!big.tie_word_embeddings && big.num_kv_heads == 4 && big.vocab_size == 152064);
        // the paper's adapters: every projection and lm_head, once each
        let l = paper_lora();
        assert_eq!(l.targets.len(), 8);
        assert_eq!(lora_parameters(&small, 64, &l.targets), lora_parameters(&small, 64, &LoraTarget::ALL));
    }

    #[test]
    fn a_config_is_a_name_a_folder_or_a_file_and_anything_else_says_which() {
        let dir = std::env::temp_dir().join(format!("mpo-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), SHIPPED_CONFIGS[0].1).unwrap();
        assert_eq!(read_config(dir.to_str().unwrap()).unwrap().1, SHIPPED_CONFIGS[0].1);
        assert_eq!(read_config(dir.join("config.json").to_str().unwrap()).unwrap().1, SHIPPED_CONFIGS[0].1);
        let e = read_config("qwen2.5-3b").unwrap_err().to_string();
        assert!(e.contains("qwen2.5-1.5b-instruct, qwen2.5-7b-instruct"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
