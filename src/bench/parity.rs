//! `mpo bench parity`: mpo's next-token log-probs against llama-server's for the same GGUF.
//!
//! For each prompt, llama-server generates greedily (prompt sent as token ids, so both see
//! the same tokens) and reports the top log-probs at every step; mpo scores the same
//! sequence teacher-forced in one forward pass. We report tokenizer agreement (llama-server's
//! `/tokenize` against ours), top-1 agreement and mean |delta logprob|. llama-server computes
//! with quantized weights *and* 8-bit quantized activations, mpo with dequantized f32 weights
//! and f32 activations, so small differences are expected; the target is top-1 >= 95%.

use burn::tensor::backend::AutodiffBackend;

use crate::model::batch::{causal_mask, int_tensor, left_pad, mask_tensor, to_host};
use crate::model::tokenizer::Message;
use crate::model::{self, BackendJob, registry};

pub struct ParityBench {
    pub server: String,
    pub steps: usize,
    /// The GGUF both sides load.
    pub model: std::path::PathBuf,
    pub label: String,
}

/// 24 prompts: 12 chat-formatted tasks and 12 raw texts, from the shipped data.
fn prompts() -> Vec<(bool, String)> {
    let read = |p: &str, field: &str, n: usize| -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|r| r[field].as_str().map(|s| s.chars().take(400).collect::<String>()))
            .take(n)
            .collect()
    };
    let mut v: Vec<(bool, String)> = Vec::new();
    v.extend(read("tasks/math/test_sample.jsonl", "problem", 6).into_iter().map(|s| (true, s)));
    v.extend(read("tasks/essay_writing/prompts_train.jsonl", "prompt", 3).into_iter().map(|s| (true, s)));
    v.extend(
        ["What is the capital of France?", "Write one sentence about the sea.", "List three prime numbers."]
            .iter()
            .map(|s| (true, s.to_string())),
    );
    v.extend(read("tasks/summarization/scitldr_train.jsonl", "text", 6).into_iter().map(|s| (false, s)));
    v.extend(read("tasks/ethical_reasoning/scruples_train.jsonl", "title", 4).into_iter().map(|s| (false, s)));
    v.extend(["The quick brown fox", "def fibonacci(n):\n    "].iter().map(|s| (false, s.to_string())));
    v
}

struct Step {
    token: u32,
    logprob: f32,
    top: Vec<(u32, f32)>,
}

fn server_steps(client: &reqwest::blocking::Client, url: &str, ids: &[u32], steps: usize) -> anyhow::Result<Vec<Step>> {
    let body = serde_json::json!({"prompt": ids, "max_tokens": steps, "temperature": 0.0, "logprobs": 5, "cache_prompt": false});
    let v: serde_json::Value = client.post(format!("{url}/v1/completions")).json(&body).send()?.error_for_status()?.json()?;
    let content =
        v["choices"][0]["logprobs"]["content"].as_array().ok_or_else(|| anyhow::anyhow!("no logprobs.content in the response: {v}"))?;
    content
        .iter()
        .map(|c| {
            let id = |x: &serde_json::Value| {
                x["id"].as_u64().map(|i| i as u32).ok_or_else(|| anyhow::anyhow!("logprob entry without an id: {x}"))
            };
            Ok(Step {
                token: id(c)?,
                logprob: c["logprob"].as_f64().unwrap_or(f64::NAN) as f32,
                top: c["top_logprobs"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|t| Some((id(t).ok()?, t["logprob"].as_f64()? as f32))).collect())
                    .unwrap_or_default(),
            })
        })
        .collect()
}

impl BackendJob for ParityBench {
    type Output = anyhow::Result<String>;
    fn run<B: AutodiffBackend>(self, device: B::Device, backend_name: &'static str) -> anyhow::Result<String> {
        let mref = registry::ModelRef::Gguf { path: self.model.clone(), sha256: String::new() };
        let m = model::load::<B::InnerBackend>(&mref, None, 0, &device, &mut |l| eprintln!("{l}"))?;
        let client = reqwest::blocking::Client::builder().timeout(std::time::Duration::from_secs(300)).build()?;
        let vocab = m.config.vocab_size;
        let (mut tok_same, mut n_prompts) = (0, 0);
        let (mut top1_first, mut top1_all, mut n_all) = (0usize, 0usize, 0usize);
        let (mut d_chosen, mut d_top, mut n_top, mut d_max) = (0f64, 0f64, 0usize, 0f32);
        let mut d_first = 0f64;
        let mut rows = String::new();
        let mut margins = Vec::new();
        for (chat, text) in prompts() {
            let text = if chat { m.tok.apply_chat_template(&[Message::new("user", text)], true, None)? } else { text };
            let ids = m.tok.encode(&text)?;
            let theirs: serde_json::Value = client
                .post(format!("{}/tokenize", self.server))
                .json(&serde_json::json!({"content": text, "add_special": false, "parse_special": true}))
                .send()?
                .error_for_status()?
                .json()?;
            let their_ids: Vec<u32> =
                theirs["tokens"].as_array().map(|a| a.iter().filter_map(|x| x.as_u64().map(|i| i as u32)).collect()).unwrap_or_default();
            n_prompts += 1;
            if their_ids == ids {
                tok_same += 1;
            }
            let steps = server_steps(&client, &self.server, &ids, self.steps)?;
            let mut seq = ids.clone();
            seq.extend(steps.iter().map(|s| s.token));
            let lay = left_pad(std::slice::from_ref(&seq), 0);
            let t = lay.t;
            let h = m.model.forward(
                int_tensor(lay.tokens, [1, t], &device),
                int_tensor(lay.positions, [1, t], &device),
                mask_tensor(causal_mask(&lay.pads, 0, t), 1, t, t, &device),
                None,
                false,
            );
            let d = h.dims()[2];
            let start = ids.len() - 1;
            let logits = to_host(m.model.logits(h.slice([0..1, start..start + steps.len(), 0..d]), false))?;
            let mut lp = Vec::new();
            let mut agree_row = 0;
            for (k, st) in steps.iter().enumerate() {
                crate::model::generate::log_softmax_row(&logits[k * vocab..(k + 1) * vocab], 1.0, &mut lp);
                let ours = lp.iter().enumerate().fold((0, f32::MIN), |a, (i, &v)| if v > a.1 { (i, v) } else { a }).0 as u32;
                let agree = ours == st.token;
                agree_row += agree as usize;
                top1_all += agree as usize;
                n_all += 1;
                let dc = (lp[st.token as usize] - st.logprob).abs();
                d_chosen += dc as f64;
                d_max = d_max.max(dc);
                if k == 0 {
                    top1_first += agree as usize;
                    d_first += dc as f64;
                }
                if !agree {
                    // How close the server's own top two were: disagreements on near-ties are
                    // rounding, not a different model.
                    let mut lps: Vec<f32> = st.top.iter().map(|(_, l)| *l).collect();
                    lps.sort_by(|a, b| b.total_cmp(a));
                    margins.push(lps.first().copied().unwrap_or(0.0) - lps.get(1).copied().unwrap_or(f32::NEG_INFINITY));
                }
                for (id, l) in &st.top {
                    d_top += (lp[*id as usize] - l).abs() as f64;
                    n_top += 1;
                }
            }
            let preview: String = text.chars().filter(|c| !c.is_control()).take(40).collect();
            rows += &format!(
                "    {:>2}/{} top-1 | tokens {:>3} {} | {preview:?}\n",
                agree_row,
                steps.len(),
                ids.len(),
                if their_ids == ids { "same" } else { "DIFFER" }
            );
        }
        let margins: Vec<String> = margins.iter().map(|m| format!("{m:.3}")).collect();
        Ok(format!(
            "parity ({}): mpo (burn {backend_name}, f32 compute) vs llama-server on the same GGUF, {n_prompts} prompts x {} greedy steps\n{rows}  \
             disagreements: server's top-1 vs top-2 logprob margin at each: [{}]\n  \
             tokenization identical: {tok_same}/{n_prompts}\n  \
             next-token top-1 agreement: {}/{n_prompts} = {:.1}%  (all steps: {top1_all}/{n_all} = {:.1}%)\n  \
             mean |delta logprob| of the server's token: next token {:.4}, all steps {:.4} (max {d_max:.4}); over the server's top-5: {:.4}\n",
            self.label,
            self.steps,
            margins.join(", "),
            top1_first,
            100.0 * top1_first as f64 / n_prompts as f64,
            100.0 * top1_all as f64 / n_all.max(1) as f64,
            d_first / n_prompts as f64,
            d_chosen / n_all.max(1) as f64,
            d_top / n_top.max(1) as f64
        ))
    }
}
