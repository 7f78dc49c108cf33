//! Judges: where reward-model and meta-reward-model prompts are answered.
//!
//! A [`Judge`] answers a batch of [`JudgeRequest`]s, each answer a typed result: a network
//! failure, a timeout or a cache miss is an error the caller counts and handles by policy,
//! never an empty string. Backends: [`openai::OpenAiJudge`] (any OpenAI-compatible server,
//! load-balanced, with retries), [`local::LocalJudge`] (the in-process burn model), and
//! replay (a [`cache::CachedJudge`] with no backend behind it). Every judge is wrapped in a
//! content-addressed cache, so a run's rewards can be replayed exactly.

pub mod cache;
pub mod factory;
pub mod local;
pub mod openai;
pub mod scripted;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::grammar::Shape;

/// One prompt to answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JudgeRequest {
    /// The rendered prompt (sent as a user message for chat endpoints and the local model).
    pub prompt: String,
    pub max_tokens: u32,
    pub temperature: f64,
    /// Sampling seed (local judge; servers that honour `seed`).
    pub seed: u64,
    /// Ask for this many alternatives per position (logprob score extraction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u32>,
    /// Constrain the answer to this JSON schema where the server supports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<serde_json::Value>,
    /// Constrain the answer to this grammar (GBNF) where the server supports it
    /// ([`crate::spec::Dialect::grammars`]): the printing of `shape`, attached with it by
    /// [`JudgeRequest::held_to`] for judges that hold answers to shapes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grammar: Option<String>,
    /// The shape `grammar` prints: what the in-process judge's decoder holds the answer to.
    /// Not serialized: `grammar` stands for it in cache keys.
    #[serde(skip)]
    pub shape: Option<Shape>,
    /// 0 for the first ask; retries of an unusable answer count up (and change the cache key).
    #[serde(default)]
    pub attempt: u32,
    /// Guided answers: the answer is written as `label: value` lines, one per label, with the
    /// labels written by mpo and only the values by the judge (small local judges; servers
    /// get one prefilled request per label).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guided: Vec<String>,
    /// The integer range of each guided label's value (empty: unconstrained values). A server
    /// that takes grammars is held to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guided_ranges: Vec<(i64, i64)>,
}

impl JudgeRequest {
    /// This request with its answer held to `shape` (as GBNF for servers, as the shape itself
    /// for the in-process judge).
    pub fn held_to(mut self, shape: Option<Shape>) -> Self {
        self.grammar = shape.as_ref().map(Shape::gbnf);
        self.shape = shape;
        self
    }
}

/// One generated token with its log-probability and the top alternatives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    #[serde(default)]
    pub top: Vec<(String, f32)>,
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeResponse {
    pub text: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<TokenLogprob>>,
    /// The answer was cut off by `max_tokens` (`finish_reason: length`; the local judge ran out
    /// of new tokens): it is incomplete and is never scored or accepted as a rubric.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// Whether the answer came from the cache (not stored in the cache itself).
    #[serde(skip)]
    pub cached: bool,
}

impl JudgeResponse {
    /// A complete answer of `text` with no token counts or logprobs (fill in the rest with
    /// struct update syntax).
    pub fn answer(text: impl Into<String>) -> Self {
        JudgeResponse { text: text.into(), prompt_tokens: 0, completion_tokens: 0, logprobs: None, cached: false, truncated: false }
    }
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JudgeError {
    #[error("timed out after {seconds:.1}s")]
    Timeout { seconds: f64 },
    #[error("HTTP {status} from {url}: {body}")]
    Http { status: u16, url: String, body: String },
    #[error("transport error talking to {url}: {message}")]
    Transport { url: String, message: String },
    #[error("malformed response from {url}: {message}")]
    Malformed { url: String, message: String },
    #[error("gave up after {attempts} attempts; last error: {last}")]
    Exhausted { attempts: u32, last: Box<JudgeError> },
    #[error("no cached answer for request {key} (replay answers only from the cache)")]
    CacheMiss { key: String },
    #[error("local judge failed: {message}")]
    Local { message: String },
    #[error("judge is not configured: {message}")]
    Config { message: String },
}

impl JudgeError {
    /// The cause as a metrics key: `timeout`, `connect`, `http_<status>`, `bad_body`, ...
    pub fn cause(&self) -> String {
        match self {
            JudgeError::Timeout { .. } => "timeout".into(),
            JudgeError::Http { status, .. } => format!("http_{status}"),
            JudgeError::Transport { .. } => "connect".into(),
            JudgeError::Malformed { .. } => "bad_body".into(),
            JudgeError::Exhausted { last, .. } => last.cause(),
            JudgeError::CacheMiss { .. } => "cache_miss".into(),
            JudgeError::Local { .. } => "local".into(),
            JudgeError::Config { .. } => "config".into(),
        }
    }

    /// Worth asking again (timeouts, 408, 429, 5xx, broken connections, truncated bodies).
    pub fn retryable(&self) -> bool {
        match self {
            JudgeError::Timeout { .. } | JudgeError::Transport { .. } | JudgeError::Malformed { .. } => true,
            JudgeError::Http { status, .. } => *status == 408 || *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// Something that answers judge prompts.
pub trait Judge {
    /// Identifies the judge in cache keys: backend and model (`openai:gpt-4o`,
    /// `local:smollm2-135m-instruct`). Never includes URLs or keys.
    fn identity(&self) -> String;

    /// Answer every request; results line up with `requests`.
    fn complete(&mut self, requests: &[JudgeRequest]) -> Vec<Result<JudgeResponse, JudgeError>>;

    /// What talking to a server has cost so far (`None`: this judge talks to none).
    fn transport(&self) -> Option<Transport> {
        None
    }
}

/// The network's side of a judge's answers, cumulative since the judge was built: every failed
/// attempt by cause, whether it was retried or was the last one, and the time spent waiting to
/// retry. A sick judge fleet shows up here even when every request finally succeeds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Transport {
    /// HTTP requests sent (every attempt).
    pub attempts: u64,
    /// Failed attempts that were retried, by cause (`timeout`, `connect`, `http_503`, `bad_body`).
    pub retries: BTreeMap<String, u64>,
    /// Requests that failed for good, by the cause of their last attempt.
    pub failed: BTreeMap<String, u64>,
    /// Seconds spent waiting before retries (backoff and `Retry-After`).
    #[serde(serialize_with = "crate::round::six_or_zero")]
    pub retry_wait_s: f64,
}

impl Transport {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Transport) -> Transport {
        let diff = |now: &BTreeMap<String, u64>, then: &BTreeMap<String, u64>| -> BTreeMap<String, u64> {
            now.iter().map(|(k, v)| (k.clone(), v - then.get(k).copied().unwrap_or(0))).filter(|(_, v)| *v > 0).collect()
        };
        Transport {
            attempts: self.attempts - earlier.attempts,
            retries: diff(&self.retries, &earlier.retries),
            failed: diff(&self.failed, &earlier.failed),
            retry_wait_s: (self.retry_wait_s - earlier.retry_wait_s).max(0.0),
        }
    }

    /// Add `o`'s counts to these.
    pub fn add(&mut self, o: &Transport) {
        self.attempts += o.attempts;
        for (k, v) in &o.retries {
            *self.retries.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.failed {
            *self.failed.entry(k.clone()).or_default() += v;
        }
        self.retry_wait_s += o.retry_wait_s;
    }

    /// No retry and no failure.
    pub fn is_clean(&self) -> bool {
        self.retries.is_empty() && self.failed.is_empty()
    }

    /// `5 retries (http_503 3, timeout 2), 1 failed (timeout 1), 2.5 s waiting to retry`.
    pub fn summary(&self) -> String {
        let part = |m: &BTreeMap<String, u64>| m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ");
        let (r, f): (u64, u64) = (self.retries.values().sum(), self.failed.values().sum());
        let mut s = format!("{r} retr{} ({})", if r == 1 { "y" } else { "ies" }, part(&self.retries));
        if r == 0 {
            s = "0 retries".into();
        }
        if f > 0 {
            s += &format!(", {f} failed ({})", part(&self.failed));
        }
        s + &format!(", {:.1} s waiting to retry", self.retry_wait_s)
    }
}

/// Prompt and completion tokens spent by one role.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenUsage {
    pub calls: u64,
    pub cached_calls: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub failed_calls: u64,
}

impl TokenUsage {
    pub fn record(&mut self, r: &Result<JudgeResponse, JudgeError>) {
        self.calls += 1;
        match r {
            Ok(resp) => {
                if resp.cached {
                    self.cached_calls += 1;
                }
                self.prompt_tokens += resp.prompt_tokens;
                self.completion_tokens += resp.completion_tokens;
            }
            Err(_) => self.failed_calls += 1,
        }
    }

    pub fn add(&mut self, o: &TokenUsage) {
        self.calls += o.calls;
        self.cached_calls += o.cached_calls;
        self.prompt_tokens += o.prompt_tokens;
        self.completion_tokens += o.completion_tokens;
        self.failed_calls += o.failed_calls;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_deltas_sums_and_summary() {
        let m = |kv: &[(&str, u64)]| kv.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>();
        let before = Transport { attempts: 3, retries: m(&[("timeout", 1)]), failed: m(&[]), retry_wait_s: 0.5 };
        let now =
            Transport { attempts: 8, retries: m(&[("timeout", 2), ("http_503", 2)]), failed: m(&[("http_500", 1)]), retry_wait_s: 2.0 };
        let d = now.since(&before);
        assert_eq!(
            d,
            Transport { attempts: 5, retries: m(&[("timeout", 1), ("http_503", 2)]), failed: m(&[("http_500", 1)]), retry_wait_s: 1.5 }
        );
        assert_eq!(d.summary(), "3 retries (http_503 2, timeout 1), 1 failed (http_500 1), 1.5 s waiting to retry");
        let mut total = before.clone();
        total.add(&d);
        assert_eq!(total, now);
        assert!(Transport::default().is_clean() && !d.is_clean());
        let http = |status| JudgeError::Http { status, url: String::new(), body: String::new() };
        let exhausted = JudgeError::Exhausted { attempts: 4, last: Box::new(http(503)) };
        assert_eq!(
            (http(429).cause(), exhausted.cause(), JudgeError::Timeout { seconds: 1.0 }.cause()),
            ("http_429".into(), "http_503".into(), "timeout".into())
        );
    }
}
