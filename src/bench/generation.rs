//! `mpo bench generate`: tokens/s of the real demo model against llama-server on the same
//! prompts. [`measure`] is shared with `mpo bench train --torch`.

use std::time::Instant;

use burn::prelude::Backend;
use burn::tensor::backend::AutodiffBackend;

use crate::model::batch::{causal_mask, int_tensor, left_pad, mask_tensor, to_host};
use crate::model::generate::{Sampling, generate};
use crate::model::llama::QUANT_MAX_ROWS;
use crate::model::quant;
use crate::model::tokenizer::Message;
use crate::model::{self, BackendJob, registry};

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

/// [`bench_prompts`] as chat-formatted token ids.
pub fn encoded_prompts(tok: &crate::model::tokenizer::Tok) -> anyhow::Result<Vec<Vec<u32>>> {
    bench_prompts().iter().map(|p| Ok(tok.encode(&tok.apply_chat_template(&[Message::new("user", p.clone())], true, None)?)?)).collect()
}

pub struct GenerateBench {
    pub new_tokens: usize,
    pub batches: Vec<usize>,
    pub server: Option<String>,
}

pub fn fmt_rate(n: usize, secs: f64) -> String {
    format!("{:>8.1} tok/s ({n} tokens in {secs:.2}s)", n as f64 / secs)
}

impl BackendJob for GenerateBench {
    type Output = anyhow::Result<String>;
    fn run<B: AutodiffBackend>(self, device: B::Device, backend_name: &'static str) -> anyhow::Result<String> {
        let mref = registry::resolve("smollm2-135m-instruct", std::path::Path::new("."))?;
        let t0 = Instant::now();
        let m = model::load::<B::InnerBackend>(&mref, None, 0, &device, &mut |l| eprintln!("{l}"))?;
        let load_s = t0.elapsed().as_secs_f64();
        let eight = encoded_prompts(&m.tok)?;
        let widest = self.batches.iter().copied().max().unwrap_or(1);
        let prompts: Vec<Vec<u32>> = eight.iter().cycle().take(widest.max(eight.len())).cloned().collect();
        let blocks = m.model.quant_attached();
        let how = if blocks > 0 {
            format!(
                "decode products on the GGUF's blocks ({blocks} matrices, {} kernel; up to {QUANT_MAX_ROWS} rows), prefill on the f32 copy",
                quant::kernel()
            )
        } else {
            "GGUF dequantized to f32".to_string()
        };
        let mut out = format!(
            "generate bench: SmolLM2-135M-Instruct ({how}) on burn {backend_name}, greedy, {} new tokens per prompt, EOS ignored\n  load {load_s:.2}s\n",
            self.new_tokens
        );
        // Baseline in the same process, batch by batch: every product on the f32 weights.
        let plain =
            (blocks > 0).then(|| model::LoadedModel { model: m.model.without_quant(), tok: m.tok.clone(), config: m.config.clone() });
        let mut rates = Vec::new();
        for &b in &self.batches {
            let r = measure(&m, &prompts, self.new_tokens, &[b], &mut out)?.remove(0);
            let base = plain.as_ref().map(|p| measure(p, &prompts, self.new_tokens, &[b], &mut out)).transpose()?.map(|mut v| v.remove(0));
            out += &format!(
                "  mpo          batch {}: {}, {:.2} cores busy   prefill {} prompt tokens in {:.2}s ({:.0} tok/s)\n",
                r.batch,
                fmt_rate(r.tokens, r.secs),
                r.cores_busy,
                r.prefill_tokens,
                r.prefill_s,
                r.prefill_tokens as f64 / r.prefill_s
            );
            if let Some(f) = base {
                let same = if f.texts == r.texts { "same tokens" } else { "different tokens" };
                out += &format!(
                    "    f32 weights batch {}: {}   blocks / f32 = {:.2}x ({same})\n",
                    f.batch,
                    fmt_rate(f.tokens, f.secs),
                    (r.tokens as f64 / r.secs) / (f.tokens as f64 / f.secs)
                );
            }
            rates.push(r);
        }
        out += &guided_cost(&m, &prompts[..self.batches.first().copied().unwrap_or(1).min(prompts.len())], self.new_tokens)?;
        let ours: Vec<(usize, f64, Vec<Vec<u32>>)> =
            rates.iter().map(|r| (r.batch, r.tokens as f64 / r.secs, prompts[..r.batch].to_vec())).collect();
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

/// What holding answers to a shape costs (the demo's meta rubric shape): generation with and
/// without guides on the same prompts, and the mask's own time per token, replayed over the
/// guided answers' tokens.
fn guided_cost<B: Backend>(m: &model::LoadedModel<B>, prompts: &[Vec<u32>], new_tokens: usize) -> anyhow::Result<String> {
    use crate::model::constrain::{Constraint, Engine};
    let vocab = m.model.lm_head.weight.val().dims()[1];
    let te = Instant::now();
    let engine = Engine::new(&m.tok, vocab)?;
    let engine_s = te.elapsed().as_secs_f64();
    let shape = crate::rubric::RubricShape::fit(4, 800).ok_or_else(|| anyhow::anyhow!("the demo's meta budget fits no rubric"))?.shape();
    let c = Constraint::Shape(shape.clone());
    let s = Sampling {
        max_new_tokens: new_tokens,
        temperature: 0.0,
        top_p: 1.0,
        top_k: 0,
        stop_ids: m.tok.stop_ids.clone(),
        stop_strings: vec![],
    };
    let t0 = Instant::now();
    let free = generate(&m.model, &m.tok, prompts, &s, false, &mut crate::rng::stream(0, "bench"))?;
    let free_s = t0.elapsed().as_secs_f64();
    let mut guides = prompts.iter().map(|_| engine.guide(&c).map(Some)).collect::<Result<Vec<_>, _>>()?;
    let t1 = Instant::now();
    let held =
        crate::model::generate::generate_guided(&m.model, &m.tok, prompts, &s, false, &mut crate::rng::stream(0, "bench"), &mut guides)?;
    let held_s = t1.elapsed().as_secs_f64();
    // the mask alone, replayed over the tokens the guided rows drew
    let (mut masks, mut logits) = (0usize, vec![0f32; vocab]);
    let tm = Instant::now();
    for g in &held {
        let mut guide = engine.guide(&c)?;
        for &t in &g.tokens {
            guide.mask(&mut logits)?;
            guide.advance(t)?;
            masks += 1;
        }
    }
    let mask_ms = tm.elapsed().as_secs_f64() * 1e3 / masks.max(1) as f64;
    let n = |v: &[crate::model::generate::Generated]| v.iter().map(|g| g.tokens.len()).sum::<usize>();
    let whole = held.iter().filter(|g| shape.matches(g.text.trim_end())).count();
    Ok(format!(
        "  held to the demo's meta rubric shape (batch {}): engine built in {engine_s:.2}s; free {}, held {}; the mask costs {mask_ms:.2} ms per token ({masks} tokens replayed); {whole} of {} held answers complete rubrics\n",
        prompts.len(),
        fmt_rate(n(&free), free_s),
        fmt_rate(n(&held), held_s),
        held.len()
    ))
}

/// One batch size's generation figures.
pub struct GenRate {
    pub batch: usize,
    pub tokens: usize,
    pub secs: f64,
    /// Process CPU time over wall time while generating.
    pub cores_busy: f64,
    pub prefill_tokens: usize,
    pub prefill_s: f64,
    /// The generated tokens, per prompt.
    pub texts: Vec<Vec<u32>>,
}

/// Greedy generation of `new_tokens` per prompt (EOS ignored) for the first `b` prompts, for
/// each `b` in `batches`, after a warm-up (first-use kernel compilation on GPU backends).
pub fn measure<B: Backend>(
    m: &model::LoadedModel<B>,
    prompts: &[Vec<u32>],
    new_tokens: usize,
    batches: &[usize],
    out: &mut String,
) -> anyhow::Result<Vec<GenRate>> {
    let device = m.model.embed.val().device();
    let s = Sampling { max_new_tokens: new_tokens, temperature: 0.0, top_p: 1.0, top_k: 0, stop_ids: vec![], stop_strings: vec![] };
    let tw = Instant::now();
    generate(&m.model, &m.tok, &prompts[..1], &Sampling { max_new_tokens: 2, ..s.clone() }, false, &mut crate::rng::stream(0, "bench"))?;
    *out += &format!("  warm-up {:.2}s\n", tw.elapsed().as_secs_f64());
    let mut rates = Vec::new();
    for &batch in batches {
        let p = &prompts[..batch.min(prompts.len())];
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
        let _ = to_host(m.model.decode_logits(h.slice([0..lay.b, lay.t - 1..lay.t, 0..d]), false))?;
        let prefill_s = tp.elapsed().as_secs_f64();
        let clock = super::CpuClock::start();
        let g = generate(&m.model, &m.tok, p, &s, false, &mut crate::rng::stream(0, "bench"))?;
        let (secs, cores_busy) = clock.stop();
        let tokens: usize = g.iter().map(|x| x.tokens.len()).sum();
        let texts = g.into_iter().map(|x| x.tokens).collect();
        rates.push(GenRate { batch: p.len(), tokens, secs, cores_busy, prefill_tokens: lay.b * lay.t, prefill_s, texts });
    }
    Ok(rates)
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
