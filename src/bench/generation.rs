//! `mpo bench generate` and `mpo bench train`: tokens/s of the real demo model, against
//! llama-server on the same prompts (generation) and against a forward pass (training).

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;

use crate::model::batch::{causal_mask, int_tensor, left_pad, mask_tensor, to_host};
use crate::model::generate::{Sampling, generate};
use crate::model::tokenizer::Message;
use crate::model::{self, BackendJob, LoraConfig, registry};
use crate::spec::LoraTarget;

/// Eight chat prompts (MATH problems from the shipped sample).
pub fn bench_prompts() -> Vec<String> {
    let text = std::fs::read_to_string("tasks/math/test_sample.jsonl").unwrap_or_default();
    let mut v: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|r| r["problem"].as_str().map(str::to_string))
        .filter(|p| p.len() < 300)
        .take(8)
        .collect();
    while v.len() < 8 {
        v.push(format!("What is {} + {}?", v.len() + 3, 2 * v.len() + 1));
    }
    v
}

pub struct GenerateBench {
    pub new_tokens: usize,
    pub server: Option<String>,
}

fn fmt_rate(n: usize, secs: f64) -> String {
    format!("{:>8.1} tok/s ({n} tokens in {secs:.2}s)", n as f64 / secs)
}

impl BackendJob for GenerateBench {
    type Output = anyhow::Result<String>;
    fn run<B: AutodiffBackend>(self, device: B::Device, backend_name: &'static str) -> anyhow::Result<String> {
        let mref = registry::resolve("smollm2-135m-instruct", std::path::Path::new("."))?;
        let t0 = Instant::now();
        let m = model::load::<B::InnerBackend>(&mref, None, 0, &device, &mut |l| eprintln!("{l}"))?;
        let load_s = t0.elapsed().as_secs_f64();
        let prompts: Vec<Vec<u32>> = bench_prompts()
            .iter()
            .map(|p| Ok(m.tok.encode(&m.tok.apply_chat_template(&[Message::new("user", p.clone())], true, None)?)?))
            .collect::<anyhow::Result<_>>()?;
        let s =
            Sampling { max_new_tokens: self.new_tokens, temperature: 0.0, top_p: 1.0, top_k: 0, stop_ids: vec![], stop_strings: vec![] };
        let mut out = format!(
            "generate bench: SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to f32) on burn {backend_name}, greedy, {} new tokens per prompt, EOS ignored\n  load {load_s:.2}s\n",
            self.new_tokens
        );
        // Warm-up (first-use kernel compilation on GPU backends; allocator on CPU).
        let tw = Instant::now();
        generate(
            &m.model,
            &m.tok,
            &prompts[..1],
            &Sampling { max_new_tokens: 2, ..s.clone() },
            false,
            &mut crate::rng::stream(0, "bench"),
        )?;
        out += &format!("  warm-up {:.2}s\n", tw.elapsed().as_secs_f64());
        let mut ours = Vec::new();
        for batch in [1usize, 8] {
            let p = &prompts[..batch];
            // prefill alone
            let lay = left_pad(p, m.tok.pad);
            let tp = Instant::now();
            let h = m.model.forward(
                int_tensor(lay.tokens.clone(), [lay.b, lay.t], &device),
                int_tensor(lay.positions.clone(), [lay.b, lay.t], &device),
                mask_tensor(causal_mask(&lay.pads, 0, lay.t), lay.b, lay.t, lay.t, &device),
                None,
                false,
            );
            let d = h.dims()[2];
            let _ = to_host(m.model.logits(h.slice([0..lay.b, lay.t - 1..lay.t, 0..d]), false))?;
            let prefill_s = tp.elapsed().as_secs_f64();
            let t = Instant::now();
            let g = generate(&m.model, &m.tok, p, &s, false, &mut crate::rng::stream(0, "bench"))?;
            let secs = t.elapsed().as_secs_f64();
            let n: usize = g.iter().map(|x| x.tokens.len()).sum();
            out += &format!(
                "  mpo          batch {batch}: {}   prefill {} prompt tokens in {prefill_s:.2}s ({:.0} tok/s)\n",
                fmt_rate(n, secs),
                lay.b * lay.t,
                (lay.b * lay.t) as f64 / prefill_s
            );
            ours.push((batch, n as f64 / secs, p.to_vec()));
        }
        if let Some(url) = &self.server {
            for (batch, our_rate, p) in &ours {
                let (n, secs) = server_generate(url, p, self.new_tokens)?;
                let rate = n as f64 / secs;
                out += &format!("  llama-server batch {batch}: {}   mpo / llama-server = {:.2}x\n", fmt_rate(n, secs), our_rate / rate);
            }
        }
        Ok(out)
    }
}

/// Generate `n` tokens for each prompt concurrently on llama-server; (tokens, wall seconds).
pub fn server_generate(url: &str, prompts: &[Vec<u32>], n: usize) -> anyhow::Result<(usize, f64)> {
    let client = reqwest::blocking::Client::builder().timeout(std::time::Duration::from_secs(600)).build()?;
    let t = Instant::now();
    let total = std::thread::scope(|sc| -> anyhow::Result<usize> {
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| {
                let client = &client;
                sc.spawn(move || -> anyhow::Result<usize> {
                    let body =
                        serde_json::json!({"prompt": p, "n_predict": n, "temperature": 0.0, "ignore_eos": true, "cache_prompt": false});
                    let v: serde_json::Value = client.post(format!("{url}/completion")).json(&body).send()?.error_for_status()?.json()?;
                    Ok(v["tokens_predicted"].as_u64().unwrap_or(0) as usize)
                })
            })
            .collect();
        let mut sum = 0;
        for h in handles {
            sum += h.join().map_err(|_| anyhow::anyhow!("request thread panicked"))??;
        }
        Ok(sum)
    })?;
    Ok((total, t.elapsed().as_secs_f64()))
}

pub struct TrainBench {
    pub batch: usize,
    pub seq: usize,
    pub steps: usize,
}

impl BackendJob for TrainBench {
    type Output = anyhow::Result<String>;
    fn run<B: AutodiffBackend>(self, device: B::Device, backend_name: &'static str) -> anyhow::Result<String> {
        let mref = registry::resolve("smollm2-135m-instruct", std::path::Path::new("."))?;
        let mut out = format!(
            "train bench: SmolLM2-135M-Instruct on burn {backend_name}, batch {} x {} tokens, AdamW step on LoRA params\n",
            self.batch, self.seq
        );
        for (label, targets) in [
            ("LoRA r=8 on q,v (demo)", vec![LoraTarget::Q, LoraTarget::V]),
            (
                "LoRA r=8 on all 7 projections + lm_head",
                vec![
                    LoraTarget::Q,
                    LoraTarget::K,
                    LoraTarget::V,
                    LoraTarget::O,
                    LoraTarget::Gate,
                    LoraTarget::Up,
                    LoraTarget::Down,
                    LoraTarget::LmHead,
                ],
            ),
        ] {
            let lora = LoraConfig { rank: 8, alpha: 16.0, targets };
            let m = model::load::<B>(&mref, Some(&lora), 0, &device, &mut |l| eprintln!("{l}"))?;
            let vocab = m.config.vocab_size;
            let mut rng = crate::rng::stream(1, "bench/train");
            let rows: Vec<Vec<u32>> =
                (0..self.batch).map(|_| (0..self.seq).map(|_| rand::Rng::random_range(&mut rng, 100..vocab as u32)).collect()).collect();
            let lay = left_pad(&rows, 0);
            let (b, t) = (lay.b, lay.t);
            let tokens = int_tensor::<B>(lay.tokens.clone(), [b, t], &device);
            let positions = int_tensor::<B>(lay.positions.clone(), [b, t], &device);
            let mask = mask_tensor::<B>(causal_mask(&lay.pads, 0, t), b, t, t, &device);
            let targets = tokens.clone().slice([0..b, 1..t]);
            let mut model = m.model;
            let mut optim = AdamWConfig::new().init::<B, crate::model::Llama<B>>();
            // baseline: forward only, no autodiff graph
            let inner = model.valid();
            let fwd = |k: usize| -> anyhow::Result<f64> {
                let t0 = Instant::now();
                for _ in 0..k {
                    let h = inner.forward(tokens.clone().inner(), positions.clone().inner(), mask.clone().inner(), None, true);
                    let _ = to_host(inner.logits(h, true).slice([0..1, 0..1, 0..1]))?;
                }
                Ok(t0.elapsed().as_secs_f64() / k as f64)
            };
            fwd(1)?;
            let fwd_s = fwd(self.steps)?;
            let mut step = |model: crate::model::Llama<B>| -> anyhow::Result<(crate::model::Llama<B>, f32)> {
                let h = model.forward(tokens.clone(), positions.clone(), mask.clone(), None, true);
                let d = h.dims()[2];
                let logits = model.logits(h.slice([0..b, 0..t - 1, 0..d]), true);
                let lp = log_softmax(logits, 2).gather(2, targets.clone().unsqueeze_dim::<3>(2)).squeeze_dim::<2>(2);
                let loss = lp.mean().neg();
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                let model = optim.step(1e-4, model, grads);
                let l: f32 = to_host(loss)?.first().copied().unwrap_or(f32::NAN);
                Ok((model, l))
            };
            let (m1, _) = step(model)?;
            model = m1;
            let t0 = Instant::now();
            let mut last = 0.0;
            for _ in 0..self.steps {
                let (m1, l) = step(model)?;
                model = m1;
                last = l;
            }
            let step_s = t0.elapsed().as_secs_f64() / self.steps as f64;
            let toks = (b * t) as f64;
            out += &format!(
                "  {label}: train step {step_s:.2}s = {:.0} tok/s; forward-only baseline {fwd_s:.2}s = {:.0} tok/s; step / forward = {:.2}x (loss {last:.3})\n",
                toks / step_s,
                toks / fwd_s,
                step_s / fwd_s
            );
        }
        Ok(out)
    }
}
