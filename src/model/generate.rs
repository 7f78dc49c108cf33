//! Batched generation with a KV cache (the batch layout is `batch.rs`).
//!
//! Sampling happens on the host from a seeded generator, so a run's samples depend only on
//! its seed. Each sampled token's log-probability is returned under the tempered distribution
//! it was drawn from (`log_softmax(logits / T)`), which is what PPO recomputes for rollouts;
//! a judge's answer held to a shape (`constrain::Guide`) is drawn from, and reported under,
//! the masked distribution.

use burn::prelude::*;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::batch::{NEG, causal_mask, int_tensor, left_pad, mask_tensor, to_host};
use super::constrain::{Constraint, Engine, Guide};
use super::llama::{KvCache, Llama};
use super::tokenizer::Tok;
use crate::grammar::Shape;

/// How to sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f32,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off.
    pub top_k: usize,
    /// Token ids that end a response (kept as its last token).
    pub stop_ids: Vec<u32>,
    /// Strings that end a response (the text is cut before them).
    pub stop_strings: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// Ended with an end-of-sequence / end-of-turn token.
    Eos,
    /// Ended with a stop string.
    Stop,
    /// Ran out of `max_new_tokens`.
    Length,
}

/// One generated response.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// Response token ids: a final stop token included; after a stop string, the fewest tokens
    /// whose text covers `text` (what is trained is what was judged).
    pub tokens: Vec<u32>,
    /// Log-probability of each token under the tempered distribution it was sampled from.
    pub logprobs: Vec<f32>,
    pub text: String,
    pub finish: Finish,
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("prompt of {prompt} tokens + {new} new tokens exceeds the model's {max} positions")]
    TooLong { prompt: usize, new: usize, max: usize },
    #[error("empty prompt")]
    EmptyPrompt,
    #[error(transparent)]
    Tokenizer(#[from] super::tokenizer::TokenizerError),
    #[error(transparent)]
    Data(#[from] super::batch::TensorReadError),
    #[error(transparent)]
    Constraint(#[from] super::constrain::ConstrainError),
}

/// `log_softmax` of one row (in place into `out`).
pub fn log_softmax_row(logits: &[f32], scale: f32, out: &mut Vec<f32>) {
    out.clear();
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x * scale));
    let sum: f64 = logits.iter().map(|&x| ((x * scale - max) as f64).exp()).sum();
    let lse = max + sum.ln() as f32;
    out.extend(logits.iter().map(|&x| x * scale - lse));
}

/// Draw one token from a row of logits; returns the token and its log-probability under the
/// tempered full distribution.
pub fn sample_row(logits: &[f32], s: &Sampling, rng: &mut impl Rng, scratch: &mut Vec<f32>) -> (u32, f32) {
    if s.temperature <= 0.0 {
        let (i, _) = logits.iter().enumerate().fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) });
        log_softmax_row(logits, 1.0, scratch);
        return (i as u32, scratch[i]);
    }
    log_softmax_row(logits, 1.0 / s.temperature, scratch);
    let lp = scratch.clone();
    let mut candidates: Vec<usize> = (0..lp.len()).collect();
    if s.top_k > 0 && s.top_k < candidates.len() {
        candidates.select_nth_unstable_by(s.top_k - 1, |&a, &b| lp[b].total_cmp(&lp[a]));
        candidates.truncate(s.top_k);
    }
    if s.top_p < 1.0 {
        candidates.sort_by(|&a, &b| lp[b].total_cmp(&lp[a]));
        let mut acc = 0.0f64;
        let mut keep = 0;
        for &c in &candidates {
            acc += (lp[c] as f64).exp();
            keep += 1;
            if acc >= s.top_p as f64 {
                break;
            }
        }
        candidates.truncate(keep.max(1));
    }
    let total: f64 = candidates.iter().map(|&c| (lp[c] as f64).exp()).sum();
    let mut u = rng.random::<f64>() * total;
    let mut pick = *candidates.last().expect("at least one candidate");
    for &c in &candidates {
        u -= (lp[c] as f64).exp();
        if u <= 0.0 {
            pick = c;
            break;
        }
    }
    (pick as u32, lp[pick])
}

/// Generate a response for every prompt (token ids, already chat-formatted).
pub fn generate<B: Backend>(
    model: &Llama<B>,
    tok: &Tok,
    prompts: &[Vec<u32>],
    s: &Sampling,
    adapter: bool,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Generated>, GenerateError> {
    generate_guided(model, tok, prompts, s, adapter, rng, &mut [])
}

/// [`generate`], each row with a `guides[r]` (when given) holding it to a shape: the logits of
/// tokens the shape does not admit are masked before the seeded draw, and log-probabilities are
/// under that masked distribution.
pub fn generate_guided<B: Backend>(
    model: &Llama<B>,
    tok: &Tok,
    prompts: &[Vec<u32>],
    s: &Sampling,
    adapter: bool,
    rng: &mut ChaCha8Rng,
    guides: &mut [Option<Guide>],
) -> Result<Vec<Generated>, GenerateError> {
    if prompts.iter().any(Vec::is_empty) {
        return Err(GenerateError::EmptyPrompt);
    }
    let device = model.embed.val().device();
    let lay = left_pad(prompts, tok.pad);
    let (b, t) = (lay.b, lay.t);
    if t + s.max_new_tokens > model.max_positions() {
        return Err(GenerateError::TooLong { prompt: t, new: s.max_new_tokens, max: model.max_positions() });
    }
    let mut cache = KvCache::new(model.num_layers());
    let hidden = model.forward(
        int_tensor(lay.tokens.clone(), [b, t], &device),
        int_tensor(lay.positions.clone(), [b, t], &device),
        mask_tensor(causal_mask(&lay.pads, 0, t), b, t, t, &device),
        Some(&mut cache),
        adapter,
    );
    let d = hidden.dims()[2];
    let mut last = hidden.slice([0..b, t - 1..t, 0..d]);
    let mut out: Vec<Generated> =
        (0..b).map(|_| Generated { tokens: vec![], logprobs: vec![], text: String::new(), finish: Finish::Length }).collect();
    let mut done = vec![false; b];
    let mut scratch = Vec::new();
    let vocab = model.lm_head.weight.val().dims()[1];
    for step in 0..s.max_new_tokens {
        let mut logits = to_host(model.decode_logits(last, adapter))?;
        let mut next = vec![tok.pad as i64; b];
        for r in 0..b {
            if done[r] {
                continue;
            }
            let row = &mut logits[r * vocab..(r + 1) * vocab];
            if let Some(Some(g)) = guides.get_mut(r) {
                g.mask(row)?;
            }
            let (id, lp) = sample_row(row, s, rng, &mut scratch);
            if let Some(Some(g)) = guides.get_mut(r) {
                g.advance(id)?;
            }
            next[r] = id as i64;
            done[r] = push(tok, s, &mut out[r], id, lp)?;
        }
        if done.iter().all(|&x| x) || step + 1 == s.max_new_tokens {
            break;
        }
        let past = t + step;
        let positions: Vec<i64> = (0..b).map(|r| (past - lay.pads[r]) as i64).collect();
        let mask: Vec<f32> = lay.pads.iter().flat_map(|&p| (0..past + 1).map(move |j| if j < p { NEG } else { 0.0 })).collect();
        let h = model.forward(
            int_tensor(next, [b, 1], &device),
            int_tensor(positions, [b, 1], &device),
            mask_tensor(mask, b, 1, past + 1, &device),
            Some(&mut cache),
            adapter,
        );
        last = h;
    }
    for g in &mut out {
        if g.finish != Finish::Stop {
            g.text = tok.decode(&g.tokens)?;
        }
    }
    Ok(out)
}

/// Append a sampled token to `g` and say whether the response ended: on a stop id (kept as the
/// last token) or a stop string (the text cut before it, the tokens to the fewest that cover
/// the text).
fn push(tok: &Tok, s: &Sampling, g: &mut Generated, id: u32, lp: f32) -> Result<bool, GenerateError> {
    g.tokens.push(id);
    g.logprobs.push(lp);
    if s.stop_ids.contains(&id) {
        g.finish = Finish::Eos;
        return Ok(true);
    }
    if !s.stop_strings.is_empty() {
        let text = tok.decode(&g.tokens)?;
        if let Some(cut) = s.stop_strings.iter().filter_map(|ss| text.find(ss.as_str())).min() {
            g.finish = Finish::Stop;
            g.text = text[..cut].to_string();
            let keep = covering_prefix(tok, &g.tokens, cut)?;
            g.tokens.truncate(keep);
            g.logprobs.truncate(keep);
            return Ok(true);
        }
    }
    Ok(false)
}

/// A response another generator sampled (an inference engine), ended exactly as mpo's decoder
/// ends one: at the first stop id or stop string, within `max_new_tokens`. `ended`: the
/// generator stopped on an end token of its own before the budget; such a last token is kept
/// and the response counts as complete even if mpo does not list that id.
pub fn from_sampled(tok: &Tok, s: &Sampling, tokens: &[u32], logprobs: &[f32], ended: bool) -> Result<Generated, GenerateError> {
    let mut g = Generated { tokens: vec![], logprobs: vec![], text: String::new(), finish: Finish::Length };
    let mut done = false;
    for (k, &id) in tokens.iter().enumerate().take(s.max_new_tokens) {
        if push(tok, s, &mut g, id, logprobs.get(k).copied().unwrap_or(f32::NAN))? {
            done = true;
            break;
        }
    }
    if !done && ended && !g.tokens.is_empty() && g.tokens.len() == tokens.len() && tokens.len() < s.max_new_tokens {
        g.finish = Finish::Eos;
    }
    if g.finish != Finish::Stop {
        g.text = tok.decode(&g.tokens)?;
    }
    Ok(g)
}

/// The log-probs of `response`'s tokens after `prompt`, teacher-forced in one pass (at
/// `temperature`, as PPO scores them): what a loader of the policy, or an engine that sampled
/// the response, is compared against.
pub fn response_logprobs<B: Backend>(
    model: &Llama<B>,
    prompt: &[u32],
    response: &[u32],
    adapter: bool,
    temperature: f64,
) -> Result<Vec<f32>, super::batch::TensorReadError> {
    if prompt.is_empty() || response.is_empty() {
        return Ok(vec![]);
    }
    let device = model.embed.val().device();
    let seq: Vec<u32> = prompt.iter().chain(response).copied().collect();
    let t = seq.len();
    let lay = left_pad(std::slice::from_ref(&seq), 0);
    let h = model.forward(
        int_tensor(lay.tokens.clone(), [1, t], &device),
        int_tensor(lay.positions.clone(), [1, t], &device),
        mask_tensor(causal_mask(&lay.pads, 0, t), 1, t, t, &device),
        None,
        adapter,
    );
    let d = h.dims()[2];
    let logits = model.logits(h.slice([0..1, prompt.len() - 1..t - 1, 0..d]), adapter);
    let targets = int_tensor::<B>(response.iter().map(|&x| x as i64).collect(), [1, response.len()], &device);
    to_host(crate::ppo::token_logprobs(logits, targets, temperature, false).0)
}

/// The fewest leading `tokens` (at least one) whose decoded text is `cut` bytes or longer.
fn covering_prefix(tok: &Tok, tokens: &[u32], cut: usize) -> Result<usize, GenerateError> {
    for k in 1..tokens.len() {
        if tok.decode(&tokens[..k])?.len() >= cut {
            return Ok(k);
        }
    }
    Ok(tokens.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(feature = "cpu")]
    use crate::model::llama::tests::{full_logits, tiny};

    #[test]
    fn a_stop_string_keeps_only_the_tokens_of_the_judged_text() {
        let tok = crate::model::tokenizer::tests::tiny_tok();
        let ids = tok.encode("hello world\n\nQuestion: next").unwrap();
        let cut = "hello world".len();
        let k = covering_prefix(&tok, &ids, cut).unwrap();
        assert!(tok.decode(&ids[..k]).unwrap().starts_with("hello world"));
        assert!(tok.decode(&ids[..k - 1]).unwrap().len() < cut, "not minimal");
        assert!(k < ids.len());
        // a stop string at the very start still trains one token
        assert_eq!(covering_prefix(&tok, &ids, 0).unwrap(), 1);
    }

    /// An engine's tokens end where mpo's decoder would have ended them.
    #[test]
    fn an_engine_response_ends_as_the_decoder_ends_one() {
        let tok = crate::model::tokenizer::tests::tiny_tok();
        let ids = tok.encode("hello world\n\nQuestion: next").unwrap();
        let lps: Vec<f32> = (0..ids.len()).map(|k| -(k as f32) - 1.0).collect();
        let s = Sampling { max_new_tokens: 64, temperature: 1.0, top_p: 1.0, top_k: 0, stop_ids: vec![], stop_strings: vec![] };
        // a stop string: text and tokens cut as in `generate`, the log-probs with the tokens
        let cut = Sampling { stop_strings: vec!["\n\nQuestion:".into()], ..s.clone() };
        let g = from_sampled(&tok, &cut, &ids, &lps, false).unwrap();
        assert_eq!((g.finish, g.text.as_str()), (Finish::Stop, "hello world"));
        assert_eq!(g.tokens.len(), covering_prefix(&tok, &ids, "hello world".len()).unwrap());
        assert_eq!(g.logprobs, lps[..g.tokens.len()]);
        // a stop id ends it, kept as the last token; what the engine sent after it is dropped
        let stop = Sampling { stop_ids: vec![ids[2]], ..s.clone() };
        let g = from_sampled(&tok, &stop, &ids, &lps, false).unwrap();
        assert_eq!((g.finish, g.tokens.as_slice()), (Finish::Eos, &ids[..3]));
        // the engine's own end token counts as an end; running out of the budget does not
        assert_eq!(from_sampled(&tok, &s, &ids, &lps, true).unwrap().finish, Finish::Eos);
        assert_eq!(from_sampled(&tok, &s, &ids, &lps, false).unwrap().finish, Finish::Length);
        let budget = Sampling { max_new_tokens: 2, ..s };
        let g = from_sampled(&tok, &budget, &ids, &lps, true).unwrap();
        assert_eq!((g.finish, g.tokens.len()), (Finish::Length, 2));
    }

    #[test]
    fn greedy_and_sampling_logprobs() {
        let s = Sampling { max_new_tokens: 1, temperature: 0.0, top_p: 1.0, top_k: 0, stop_ids: vec![], stop_strings: vec![] };
        let mut rng = crate::rng::stream(0, "t");
        let mut sc = Vec::new();
        let (i, lp) = sample_row(&[0.0, 2.0, 1.0], &s, &mut rng, &mut sc);
        assert_eq!(i, 1);
        let z = (0f32.exp() + 2f32.exp() + 1f32.exp()).ln();
        assert!((lp - (2.0 - z)).abs() < 1e-5);
        // top_k = 1 at any temperature is greedy
        let s = Sampling { temperature: 0.7, top_k: 1, ..s };
        for _ in 0..20 {
            assert_eq!(sample_row(&[0.0, 2.0, 1.0], &s, &mut rng, &mut sc).0, 1);
        }
        // top_p keeps the smallest set with that mass
        let s = Sampling { top_k: 0, top_p: 0.5, temperature: 1.0, ..s };
        for _ in 0..20 {
            assert_eq!(sample_row(&[0.0, 3.0, 1.0], &s, &mut rng, &mut sc).0, 1);
        }
        // the empirical distribution matches softmax at T = 1
        let s = Sampling { top_p: 1.0, ..s };
        let n = 4000;
        let ones = (0..n).filter(|_| sample_row(&[0.0, 1.0], &s, &mut rng, &mut sc).0 == 1).count();
        let p1 = 1f64.exp() / (1.0 + 1f64.exp());
        assert!(((ones as f64 / n as f64) - p1).abs() < 0.03);
    }

    #[cfg(feature = "cpu")]
    #[test]
    fn kv_cache_generation_equals_full_recomputation() {
        let m = tiny(None);
        let tok = crate::model::tokenizer::tests::tiny_tok();
        let prompts = vec![vec![5u32, 9, 12, 40, 7], vec![3u32, 8]];
        let s = Sampling { max_new_tokens: 6, temperature: 0.0, top_p: 1.0, top_k: 0, stop_ids: vec![], stop_strings: vec![] };
        let out = generate(&m, &tok, &prompts, &s, false, &mut crate::rng::stream(0, "g")).unwrap();
        let vocab = 300;
        for (r, g) in out.iter().enumerate() {
            assert_eq!(g.tokens.len(), 6);
            // Recompute each step from scratch (no cache, the row alone): the greedy token is the
            // argmax of the last position, and the returned log-prob matches.
            for k in 0..g.tokens.len() {
                let mut seq = prompts[r].clone();
                seq.extend(&g.tokens[..k]);
                let logits = full_logits(&m, &[seq.clone()], false);
                let last = &logits[(seq.len() - 1) * vocab..seq.len() * vocab];
                let mut lp = Vec::new();
                log_softmax_row(last, 1.0, &mut lp);
                let argmax = lp.iter().enumerate().fold((0, f32::MIN), |a, (i, &v)| if v > a.1 { (i, v) } else { a }).0;
                assert_eq!(argmax as u32, g.tokens[k], "row {r} step {k}");
                assert!((lp[argmax] - g.logprobs[k]).abs() < 1e-4, "row {r} step {k}: {} vs {}", lp[argmax], g.logprobs[k]);
            }
        }
    }

    #[cfg(feature = "cpu")]
    #[test]
    fn a_stop_string_ends_the_response_and_its_tokens() {
        let m = tiny(None);
        let tok = crate::model::tokenizer::tests::tiny_tok();
        let prompts = vec![vec![5u32, 9, 12, 40, 7]];
        let mut s = Sampling { max_new_tokens: 8, temperature: 0.0, top_p: 1.0, top_k: 0, stop_ids: vec![], stop_strings: vec![] };
        let full = generate(&m, &tok, &prompts, &s, false, &mut crate::rng::stream(0, "g")).unwrap().remove(0);
        // stop on the text of tokens 3..5 of the unstopped answer
        let stop = tok.decode(&full.tokens[3..5]).unwrap();
        let cut = full.text.find(&stop).unwrap();
        s.stop_strings = vec![stop];
        let g = generate(&m, &tok, &prompts, &s, false, &mut crate::rng::stream(0, "g")).unwrap().remove(0);
        assert_eq!(g.finish, Finish::Stop);
        assert_eq!(g.text, full.text[..cut]);
        assert_eq!(g.tokens.len(), g.logprobs.len());
        assert!(g.tokens.len() <= 4, "trained tokens run past the judged text: {} tokens", g.tokens.len());
        assert!(tok.decode(&g.tokens).unwrap().len() >= cut);
    }
}

/// A token's text, its log-prob and the top alternatives `(text, logprob)`.
pub type TokenWithTop = (String, f32, Vec<(String, f32)>);

/// One row's answer from [`fill_fields`]: the text (labels and values) and, per generated
/// value token, its log-prob and the top alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct Filled {
    pub text: String,
    /// `(token text, logprob, top alternatives)` for every token of the answer; label tokens
    /// have logprob 0 and no alternatives.
    pub tokens: Vec<TokenWithTop>,
    pub generated: usize,
}

/// Guided decoding: after each prompt, write each of `labels` (forced tokens) and let the model
/// produce a short value after it (at most `value_tokens`, ending at a newline or end token).
/// All rows share the labels, so forced segments run in lockstep; rows whose value ended early
/// wait on masked padding. One prompt pass serves every field, which is what makes a small
/// local judge affordable. With `values` (a shape per label), each value is held to its shape
/// and then a newline, and its log-prob and alternatives are under the masked distribution.
pub fn fill_fields<B: Backend>(
    model: &Llama<B>,
    tok: &Tok,
    prompts: &[Vec<u32>],
    labels: &[String],
    value_tokens: usize,
    top_k: usize,
    values: Option<(&Engine, &[Shape])>,
) -> Result<Vec<Filled>, GenerateError> {
    if prompts.iter().any(Vec::is_empty) {
        return Err(GenerateError::EmptyPrompt);
    }
    let device = model.embed.val().device();
    let lay = left_pad(prompts, tok.pad);
    let (b, t) = (lay.b, lay.t);
    let label_ids: Vec<Vec<u32>> = labels
        .iter()
        .enumerate()
        .map(|(k, l)| tok.encode(&if k == 0 { format!("{l}:") } else { format!("\n{l}:") }))
        .collect::<Result<_, _>>()?;
    let needed = t + label_ids.iter().map(|l| l.len() + value_tokens).sum::<usize>();
    if needed > model.max_positions() {
        return Err(GenerateError::TooLong { prompt: t, new: needed - t, max: model.max_positions() });
    }
    let mut cache = KvCache::new(model.num_layers());
    // valid[r][j]: may row r attend to column j
    let mut valid: Vec<Vec<bool>> = lay.pads.iter().map(|&p| (0..t).map(|j| j >= p).collect()).collect();
    let mut pos: Vec<i64> = lay.pads.iter().map(|&p| (t - p) as i64).collect();
    // The prompt pass only fills the cache: the first label follows it directly.
    let h = model.forward(
        int_tensor(lay.tokens.clone(), [b, t], &device),
        int_tensor(lay.positions.clone(), [b, t], &device),
        mask_tensor(causal_mask(&lay.pads, 0, t), b, t, t, &device),
        Some(&mut cache),
        false,
    );
    let d = h.dims()[2];
    let mut out: Vec<Filled> = (0..b).map(|_| Filled { text: String::new(), tokens: vec![], generated: 0 }).collect();
    let vocab = model.lm_head.weight.val().dims()[1];
    let mut lp = Vec::new();
    let feed =
        |cache: &mut KvCache<B>, valid: &mut Vec<Vec<bool>>, pos: &mut Vec<i64>, cols: Vec<Vec<u32>>, live: &[bool]| -> Tensor<B, 3> {
            // cols: per row, the tokens of this chunk (all the same length)
            let m = cols[0].len();
            let past = valid[0].len();
            let mut toks = Vec::with_capacity(b * m);
            let mut p = Vec::with_capacity(b * m);
            let mut mask = Vec::with_capacity(b * m * (past + m));
            for r in 0..b {
                for (c, &x) in cols[r].iter().enumerate() {
                    toks.push(x as i64);
                    p.push(pos[r] + c as i64);
                    for j in 0..past + m {
                        let ok = if j < past { valid[r].get(j).copied().unwrap_or(false) } else { j - past <= c && live[r] };
                        mask.push(if ok || (j == past + c) { 0.0 } else { NEG });
                    }
                }
                for _ in 0..m {
                    valid[r].push(live[r]);
                }
                if live[r] {
                    pos[r] += m as i64;
                }
            }
            model.forward(
                int_tensor(toks, [b, m], &device),
                int_tensor(p, [b, m], &device),
                mask_tensor(mask, b, m, past + m, &device),
                Some(cache),
                false,
            )
        };
    let text_of = |id: u32| tok.inner.decode(&[id], false).unwrap_or_default();
    let all_live = vec![true; b];
    for (k, lab) in label_ids.iter().enumerate() {
        let mut guides: Vec<Option<Guide>> = match values.and_then(|(e, v)| v.get(k).map(|v| (e, v))) {
            Some((engine, value)) => {
                let c = Constraint::Shape(Shape::seq([value.clone(), Shape::lit("\n")]));
                (0..b).map(|_| engine.guide(&c).map(Some)).collect::<Result<_, _>>()?
            }
            None => (0..b).map(|_| None).collect(),
        };
        let h = feed(&mut cache, &mut valid, &mut pos, vec![lab.clone(); b], &all_live);
        let m = lab.len();
        for r in out.iter_mut() {
            for &x in lab {
                let s = text_of(x);
                r.text.push_str(&s);
                r.tokens.push((s, 0.0, vec![]));
            }
        }
        let mut last = h.slice([0..b, m - 1..m, 0..d]);
        let mut live = vec![true; b];
        for step in 0..value_tokens {
            let mut logits = to_host(model.decode_logits(last.clone(), false))?;
            let mut next = vec![tok.pad; b];
            for r in 0..b {
                if !live[r] {
                    continue;
                }
                let row = &mut logits[r * vocab..(r + 1) * vocab];
                if let Some(g) = &mut guides[r] {
                    g.mask(row)?;
                }
                log_softmax_row(row, 1.0, &mut lp);
                let mut idx: Vec<usize> = (0..vocab).collect();
                let k = top_k.clamp(1, vocab);
                idx.select_nth_unstable_by(k - 1, |&a, &c| lp[c].total_cmp(&lp[a]));
                idx.truncate(k);
                idx.sort_by(|&a, &c| lp[c].total_cmp(&lp[a]));
                // alternatives the shape rules out are not alternatives
                idx.retain(|&i| lp[i].is_finite());
                let best = idx[0] as u32;
                if let Some(g) = &mut guides[r] {
                    g.advance(best)?;
                }
                let s = text_of(best);
                if tok.stop_ids.contains(&best) || (step > 0 && (s.contains('\n') || s.trim().is_empty())) {
                    live[r] = false;
                    continue;
                }
                let top: Vec<(String, f32)> = idx.iter().map(|&i| (text_of(i as u32), lp[i])).collect();
                out[r].text.push_str(&s);
                out[r].tokens.push((s, lp[best as usize], top));
                out[r].generated += 1;
                next[r] = best;
                if out[r].text.ends_with('\n') {
                    live[r] = false;
                }
            }
            if !live.iter().any(|&x| x) {
                break;
            }
            let h = feed(&mut cache, &mut valid, &mut pos, next.iter().map(|&x| vec![x]).collect(), &live);
            last = h;
        }
    }
    Ok(out)
}
