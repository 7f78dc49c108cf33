//! `mpo generate`: load a model on a backend and generate from prompts, with timing.

use std::time::Instant;

use anyhow::Context as _;
use burn::tensor::backend::AutodiffBackend;

use crate::model::generate::{Sampling, generate};
use crate::model::tokenizer::Message;
use crate::model::{self, BackendJob, registry};

pub struct Args {
    pub model: String,
    pub prompts: Vec<String>,
    pub raw: bool,
    pub max_new_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub seed: u64,
    pub logprobs: bool,
}

/// The arguments, and the backend they run on (to name its adapter).
struct Job(Args, crate::spec::BackendKind);

impl BackendJob for Job {
    type Output = anyhow::Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device, backend_name: &'static str) -> anyhow::Result<()> {
        let a = self.0;
        anyhow::ensure!(!a.prompts.is_empty(), "give at least one --prompt");
        let mref = registry::resolve(&a.model, std::path::Path::new(".")).map_err(|e| anyhow::anyhow!("{e}"))?;
        let t0 = Instant::now();
        let loaded = model::load::<B::InnerBackend>(&mref, None, a.seed, &device, &mut |m| eprintln!("{m}"))?;
        eprintln!(
            "loaded {} ({:.1}M parameters, {} layers) on {backend_name} in {:.2}s",
            a.model,
            loaded.config.num_params() as f64 / 1e6,
            loaded.config.num_layers,
            t0.elapsed().as_secs_f64()
        );
        if let Some(a) = model::adapter(self.1, 0) {
            eprintln!("{backend_name} adapter: {a}");
        }
        let prompts: Vec<Vec<u32>> = a
            .prompts
            .iter()
            .map(|p| {
                let text =
                    if a.raw { p.clone() } else { loaded.tok.apply_chat_template(&[Message::new("user", p.clone())], true, None)? };
                Ok(loaded.tok.encode(&text)?)
            })
            .collect::<anyhow::Result<_>>()?;
        let s = Sampling {
            max_new_tokens: a.max_new_tokens,
            temperature: a.temperature,
            top_p: a.top_p,
            top_k: a.top_k,
            stop_ids: loaded.tok.stop_ids.clone(),
            stop_strings: vec![],
        };
        let t1 = Instant::now();
        let out =
            generate(&loaded.model, &loaded.tok, &prompts, &s, false, &mut crate::rng::stream(a.seed, "generate")).context("generating")?;
        let dt = t1.elapsed().as_secs_f64();
        let n: usize = out.iter().map(|g| g.tokens.len()).sum();
        for (p, g) in a.prompts.iter().zip(&out) {
            println!("### {p}\n{}\n", g.text);
            if a.logprobs {
                for (t, lp) in g.tokens.iter().zip(&g.logprobs) {
                    println!("  {t:>6} {lp:>9.4} {:?}", loaded.tok.inner.decode(&[*t], false).unwrap_or_default());
                }
            }
        }
        eprintln!("{n} tokens in {dt:.2}s ({:.1} tokens/s, batch {})", n as f64 / dt, out.len());
        Ok(())
    }
}

pub fn run(b: crate::spec::BackendKind, args: Args) -> anyhow::Result<()> {
    model::dispatch(b, 0, Job(args, b)).map_err(|e| anyhow::anyhow!(e))?
}
