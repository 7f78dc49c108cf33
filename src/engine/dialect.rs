//! What each engine is sent and what it answers: request bodies (generation, adapter load and
//! unload) and the parsing of a generation, pure functions snapshot-tested like the judge's
//! dialects.
//!
//! Every engine gets the prompt as token ids (no re-tokenization on either side), sampling set
//! to mpo's own (temperature, then top-k, then top-p; nothing else: no min-p, no penalties), a
//! per-request seed, no stop strings (mpo cuts at `policy.stop` itself, as its decoder does), and
//! answers with the sampled token ids and each one's log-probability under the distribution it
//! was drawn from.

use serde_json::{Value as J, json};

use crate::model::generate::Sampling;
use crate::spec::RolloutEngine;

/// One sampled response as the engine returned it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub tokens: Vec<u32>,
    /// The engine's log-probability of each token (NaN where it gave none).
    pub logprobs: Vec<f32>,
    /// The engine stopped on an end-of-sequence token (not on the token budget).
    pub ended: bool,
}

/// What a generation answer lacks for mpo to read it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DialectError {
    #[error("no `{0}` array")]
    NoArray(&'static str),
    #[error("no `choices[0]`")]
    NoChoice,
    #[error("`{what}` holds {value}, not a token id")]
    NotTokenId { what: &'static str, value: J },
    #[error("{tokens} tokens but {logprobs} log-probs")]
    Lengths { tokens: usize, logprobs: usize },
}

/// An endpoint path and its JSON body.
pub type Request = (&'static str, J);

/// The generation request of one prompt under the adapter `lora` (the name it was loaded as).
pub fn generate(engine: RolloutEngine, lora: &str, prompt: &[u32], seed: u32, s: &Sampling) -> Request {
    // the spec's decimal (0.7), not the nearest f32 widened (0.699999988...)
    let dec = |x: f32| -> f64 { x.to_string().parse().unwrap_or(x as f64) };
    let (temperature, top_p) = (dec(s.temperature), dec(s.top_p));
    match engine {
        // /completion, llama.cpp's own endpoint: `post_sampling_probs` gives the probability
        // after the sampler chain, here temperature -> top-k -> top-p (0 and 1 switch them off).
        RolloutEngine::LlamaServer | RolloutEngine::InProcess => (
            "/completion",
            json!({
                "prompt": prompt,
                "n_predict": s.max_new_tokens,
                "temperature": temperature,
                "top_k": s.top_k,
                "top_p": top_p,
                "min_p": 0.0,
                "typical_p": 1.0,
                "repeat_penalty": 1.0,
                "samplers": ["temperature", "top_k", "top_p"],
                "seed": seed,
                "n_probs": 1,
                "post_sampling_probs": true,
                "return_tokens": true,
            }),
        ),
        // The OpenAI completions endpoint with vLLM's extensions (>= 0.10.2): the adapter is
        // selected by its name as the model; `return_token_ids` returns the sampled ids (an end
        // token included); `logprobs: 0` still returns the sampled token's. Every sampling field
        // is sent: one left out takes the model's `generation_config.json` value.
        RolloutEngine::Vllm => {
            let mut b = json!({"model": lora, "prompt": prompt, "max_tokens": s.max_new_tokens});
            extend(&mut b, server_sampling(s, temperature, top_p));
            extend(&mut b, json!({"seed": seed, "n": 1, "logprobs": 0, "return_token_ids": true, "skip_special_tokens": false}));
            ("/v1/completions", b)
        }
        // SGLang's native /generate: `input_ids`, the adapter by its loaded name in `lora_path`,
        // log-probs of the output tokens only (`logprob_start_len: -1`), after temperature and
        // before top-k / top-p, as mpo's. `sampling_seed` takes effect only on a server started
        // with `--enable-deterministic-inference`.
        RolloutEngine::Sglang => {
            let mut params = json!({"max_new_tokens": s.max_new_tokens});
            extend(&mut params, server_sampling(s, temperature, top_p));
            extend(&mut params, json!({"sampling_seed": seed, "skip_special_tokens": false, "no_stop_trim": true}));
            (
                "/generate",
                json!({
                    "input_ids": prompt,
                    "lora_path": lora,
                    "sampling_params": params,
                    "return_logprob": true,
                    "logprob_start_len": -1,
                }),
            )
        }
    }
}

/// mpo's sampling in the fields vLLM and SGLang share: everything else switched off, the stop
/// ids mpo ends a response on.
fn server_sampling(s: &Sampling, temperature: f64, top_p: f64) -> J {
    json!({
        "temperature": temperature,
        "top_k": if s.top_k == 0 { -1 } else { s.top_k as i64 },
        "top_p": top_p,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "stop_token_ids": s.stop_ids,
    })
}

/// `more`'s fields added to the object `b`.
fn extend(b: &mut J, more: J) {
    if let (Some(o), J::Object(m)) = (b.as_object_mut(), more) {
        o.extend(m);
    }
}

/// The request that loads the adapter folder `path` under `name` (vLLM, SGLang; llama-server
/// loads adapters only at start).
pub fn load(engine: RolloutEngine, name: &str, path: &str) -> Option<Request> {
    match engine {
        RolloutEngine::Vllm => Some(("/v1/load_lora_adapter", json!({"lora_name": name, "lora_path": path}))),
        RolloutEngine::Sglang => Some(("/load_lora_adapter", json!({"lora_name": name, "lora_path": path}))),
        _ => None,
    }
}

/// The request that unloads the adapter `name`.
pub fn unload(engine: RolloutEngine, name: &str) -> Option<Request> {
    match engine {
        RolloutEngine::Vllm => Some(("/v1/unload_lora_adapter", json!({"lora_name": name}))),
        RolloutEngine::Sglang => Some(("/unload_lora_adapter", json!({"lora_name": name}))),
        _ => None,
    }
}

/// A generation answer read into token ids and log-probs; `Err` says what is missing.
pub fn parse(engine: RolloutEngine, v: &J) -> Result<Sampled, DialectError> {
    let ids = |a: Option<&J>, what: &'static str| -> Result<Vec<u32>, DialectError> {
        a.and_then(J::as_array)
            .ok_or(DialectError::NoArray(what))?
            .iter()
            .map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| DialectError::NotTokenId { what, value: x.clone() }))
            .collect()
    };
    let f = |x: &J| x.as_f64().map_or(f32::NAN, |p| p as f32);
    let s = match engine {
        RolloutEngine::LlamaServer | RolloutEngine::InProcess => {
            let tokens = ids(v.get("tokens"), "tokens")?;
            let probs = v.get("completion_probabilities").and_then(J::as_array).ok_or(DialectError::NoArray("completion_probabilities"))?;
            let logprobs = probs
                .iter()
                .map(|p| match (p.get("prob"), p.get("logprob")) {
                    (Some(pr), _) => pr.as_f64().map_or(f32::NAN, |pr| pr.ln() as f32),
                    (None, Some(lp)) => f(lp),
                    (None, None) => f32::NAN,
                })
                .collect();
            Sampled { tokens, logprobs, ended: v.get("stop_type").and_then(J::as_str) == Some("eos") }
        }
        RolloutEngine::Vllm => {
            let c = v.get("choices").and_then(|c| c.get(0)).ok_or(DialectError::NoChoice)?;
            let tokens = ids(c.get("token_ids"), "choices[0].token_ids")?;
            let logprobs = c
                .pointer("/logprobs/token_logprobs")
                .and_then(J::as_array)
                .ok_or(DialectError::NoArray("choices[0].logprobs.token_logprobs"))?
                .iter()
                .map(f)
                .collect();
            // no stop strings are sent: `stop` is an end-of-sequence token or a `stop_token_ids` one
            let ended = c.get("finish_reason").and_then(J::as_str) == Some("stop");
            Sampled { tokens, logprobs, ended }
        }
        RolloutEngine::Sglang => {
            // `[logprob, token id, text]` per output token. The ids are read from here, not from
            // `output_ids`, which SGLang 0.5.3 starts with some of the prompt's tokens.
            let entries = v
                .pointer("/meta_info/output_token_logprobs")
                .and_then(J::as_array)
                .ok_or(DialectError::NoArray("meta_info.output_token_logprobs"))?;
            let tokens =
                ids(Some(&J::Array(entries.iter().map(|e| e.get(1).cloned().unwrap_or(J::Null)).collect())), "output_token_logprobs[][1]")?;
            let logprobs = entries.iter().map(|e| e.get(0).map_or(f32::NAN, f)).collect();
            let ended = v.pointer("/meta_info/finish_reason/type").and_then(J::as_str) == Some("stop");
            Sampled { tokens, logprobs, ended }
        }
    };
    if s.logprobs.len() != s.tokens.len() {
        return Err(DialectError::Lengths { tokens: s.tokens.len(), logprobs: s.logprobs.len() });
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling() -> Sampling {
        Sampling { max_new_tokens: 64, temperature: 0.7, top_p: 1.0, top_k: 0, stop_ids: vec![2], stop_strings: vec![] }
    }

    #[test]
    fn each_engine_gets_ids_seed_and_mpo_sampling_in_its_own_fields() {
        let mut out = String::new();
        for e in [RolloutEngine::LlamaServer, RolloutEngine::Vllm, RolloutEngine::Sglang] {
            let (path, body) = generate(e, "mpo-0123abcd-u000003", &[1, 4093, 198], 42, &sampling());
            out += &format!("## {}\nPOST {path}\n{}\n", e.as_str(), serde_json::to_string_pretty(&body).unwrap());
            for r in [load(e, "mpo-0123abcd-u000003", "/shared/adapters/mpo-0123abcd-u000003"), unload(e, "mpo-0123abcd-u000002")]
                .into_iter()
                .flatten()
            {
                out += &format!("POST {}\n{}\n", r.0, r.1);
            }
        }
        insta::assert_snapshot!(out);
    }

    #[test]
    fn answers_parse_into_ids_and_log_probs() {
        let llama = json!({"tokens": [504, 2], "stop_type": "eos", "completion_probabilities": [{"id": 504, "prob": 0.5}, {"id": 2, "prob": 0.25}]});
        let s = parse(RolloutEngine::LlamaServer, &llama).unwrap();
        assert_eq!((s.tokens, s.ended), (vec![504, 2], true));
        assert!((s.logprobs[1] - 0.25f32.ln()).abs() < 1e-7);
        let vllm = json!({"choices": [{"token_ids": [7, 2], "finish_reason": "stop", "stop_reason": null, "logprobs": {"token_logprobs": [-0.1, -0.2]}}]});
        assert_eq!(parse(RolloutEngine::Vllm, &vllm).unwrap(), Sampled { tokens: vec![7, 2], logprobs: vec![-0.1, -0.2], ended: true });
        let cut = json!({"choices": [{"token_ids": [7], "finish_reason": "length", "stop_reason": null, "logprobs": {"token_logprobs": [-0.1]}}]});
        assert!(!parse(RolloutEngine::Vllm, &cut).unwrap().ended);
        // SGLang 0.5.3's `output_ids` may start with prompt tokens: the ids come from the log-probs
        let sglang = json!({"output_ids": [198, 9], "meta_info": {"finish_reason": {"type": "length", "length": 1}, "output_token_logprobs": [[-0.3, 9, null]]}});
        assert_eq!(parse(RolloutEngine::Sglang, &sglang).unwrap(), Sampled { tokens: vec![9], logprobs: vec![-0.3], ended: false });
        // what is missing is named
        assert!(parse(RolloutEngine::Sglang, &json!({"output_ids": [9]})).unwrap_err().to_string().contains("output_token_logprobs"));
        let short = json!({"tokens": [1, 2], "completion_probabilities": [{"prob": 0.5}]});
        assert!(parse(RolloutEngine::LlamaServer, &short).unwrap_err().to_string().contains("2 tokens but 1 log-probs"));
        assert!(
            parse(RolloutEngine::Vllm, &json!({"choices": [{"token_ids": ["a"]}]})).unwrap_err().to_string().contains("not a token id")
        );
    }
}
