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

use serde::{Deserialize, Serialize};

/// One prompt to answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// 0 for the first ask; retries of an unusable answer count up (and change the cache key).
    #[serde(default)]
    pub attempt: u32,
    /// Guided answers: the answer is written as `label: value` lines, one per label, with the
    /// labels written by mpo and only the values by the judge (small local judges; servers
    /// get one prefilled request per label).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guided: Vec<String>,
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
