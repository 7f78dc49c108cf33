//! `mpo bench ppo`: one PPO update at the demo's shapes (8 rollouts of a chat prompt and 64
//! response tokens, 2 epochs x 2 mini-batches, LoRA r=8 on q and v, a shared critic) with the
//! rollout-time passes shared as a run does them, against every rollout-time quantity from its
//! own no-grad pass, alternating in one process. Each repetition runs two updates on a fresh
//! trainer: the first from zero adapters (the reference pass is skipped), the second from
//! trained ones.

use std::path::Path;

use burn::tensor::backend::AutodiffBackend;
use rand::Rng;

use super::CpuClock;
use super::generation::encoded_prompts;
use crate::model::{self, BackendJob, LoraConfig, registry};
use crate::run::train::{Passes, Seq, Trainer, UpdateOptions, update};
use crate::spec::{LoraTarget, PpoSpec};

pub struct PpoBench {
    pub reps: usize,
}

impl BackendJob for PpoBench {
    type Output = anyhow::Result<String>;
    fn run<B: AutodiffBackend>(self, device: B::Device, backend_name: &'static str) -> anyhow::Result<String> {
        let mref = registry::resolve("smollm2-135m-instruct", Path::new("."))?;
        let lora = LoraConfig { rank: 8, alpha: 16.0, targets: vec![LoraTarget::Q, LoraTarget::V] };
        let m = model::load::<B>(&mref, Some(&lora), 0, &device, &mut |l| eprintln!("{l}"))?;
        let vocab = m.model.embed.val().dims()[0] as u32;
        let mut rng = crate::rng::stream(2, "bench/ppo");
        let seqs: Vec<Seq> = encoded_prompts(&m.tok)?
            .into_iter()
            .enumerate()
            .map(|(i, query)| Seq {
                query,
                response: (0..64).map(|_| rng.random_range(100..vocab)).collect(),
                score: rng.random_range(-1.0..1.0),
                group: i,
                rollout_logprobs: vec![],
            })
            .collect();
        let spec = PpoSpec { num_ppo_epochs: 2, num_mini_batches: 2, learning_rate: 1e-4, ..PpoSpec::default() };
        let adam = || burn::optim::AdamWConfig::new().with_epsilon(1e-8).with_weight_decay(0.0).init::<B, model::Llama<B>>();
        let mut times: [[Vec<f64>; 2]; 2] = Default::default();
        for rep in 0..self.reps.max(1) {
            for (k, passes) in [(0, Passes::Separate), (1, Passes::Shared)] {
                let mut tr = Trainer { policy: m.model.clone().with_value_head(3, &device), optim: adam(), critic: None };
                for (u, t) in times[k].iter_mut().enumerate() {
                    let clock = CpuClock::start();
                    let opts = UpdateOptions {
                        spec: &spec,
                        lr: 1e-4,
                        pad: m.tok.pad,
                        chunk: 8,
                        seed: 0,
                        update: u as u32 + 1,
                        passes,
                        recenter: false,
                    };
                    update(&mut tr, &seqs, &opts);
                    let secs = clock.stop().0;
                    eprintln!("  rep {rep} update {} {}: {secs:.2}s", u + 1, if passes == Passes::Shared { "shared" } else { "separate" });
                    t.push(secs);
                }
            }
        }
        let med = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let mut out = format!(
            "ppo bench: SmolLM2-135M-Instruct on burn {backend_name}, one update of 8 rollouts (prompt + 64 tokens), 2 epochs x 2 mini-batches, \
             LoRA r=8 on q,v, shared critic; median of {} alternating repetitions\n",
            self.reps.max(1)
        );
        for (u, what) in [(0, "update 1 (zero adapters)"), (1, "update 2 (trained adapters)")] {
            let (sep, sh) = (med(&times[0][u]), med(&times[1][u]));
            out += &format!("  {what}: separate passes {sep:.2}s, shared passes {sh:.2}s, speed {:.2}x\n", sep / sh);
        }
        Ok(out)
    }
}
