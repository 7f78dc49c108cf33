//! The OpenAI-compatible judge: `/v1/chat/completions` or `/v1/completions` on any server
//! (vLLM, SGLang, llama.cpp's llama-server, Ollama, hosted APIs).
//!
//! Requests run concurrently up to the role's limit, spread round-robin over the base URLs
//! (a retry moves to the next URL). Timeouts, 408, 429 and 5xx are retried with exponential
//! backoff, honouring `Retry-After`; other 4xx are not. The API key comes from an environment
//! variable and is only ever placed in the `Authorization` header.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value as J, json};
use tokio::sync::Semaphore;

use super::{Judge, JudgeError, JudgeRequest, JudgeResponse, TokenLogprob, Transport};
use crate::spec::{Dialect, JudgeApi};

/// Settings of one judge role.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// Base URLs ending in `/v1` (or the server root; `/v1` is added when missing).
    pub base_urls: Vec<String>,
    pub api_key: Option<String>,
    /// The model name sent in requests (`None`: the server's default).
    pub model: Option<String>,
    pub api: JudgeApi,
    /// Which fields carry JSON schemas and grammars.
    pub dialect: Dialect,
    pub concurrency: usize,
    pub timeout: Duration,
    pub max_retries: u32,
    /// First backoff; doubles per attempt (with jitter), capped at 30 s.
    pub backoff: Duration,
}

impl OpenAiConfig {
    /// Base URLs from the value of an environment variable (comma-separated).
    pub fn urls_from(value: &str) -> Vec<String> {
        value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.trim_end_matches('/').to_string()).collect()
    }
}

/// An OpenAI-compatible judge.
pub struct OpenAiJudge {
    cfg: OpenAiConfig,
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
    next_url: Arc<AtomicUsize>,
    transport: Arc<Mutex<Transport>>,
}

impl OpenAiJudge {
    pub fn new(cfg: OpenAiConfig) -> Result<Self, JudgeError> {
        if cfg.base_urls.is_empty() {
            return Err(JudgeError::Config { message: "no base URL".into() });
        }
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .pool_max_idle_per_host(cfg.concurrency)
            .build()
            .map_err(|e| JudgeError::Config { message: e.to_string() })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| JudgeError::Config { message: e.to_string() })?;
        Ok(OpenAiJudge { cfg, client, runtime, next_url: Arc::new(AtomicUsize::new(0)), transport: Arc::default() })
    }
}

fn endpoint(base: &str, api: JudgeApi) -> String {
    let base = base.trim_end_matches('/');
    let base = if base.ends_with("/v1") { base.to_string() } else { format!("{base}/v1") };
    match api {
        JudgeApi::Chat => format!("{base}/chat/completions"),
        JudgeApi::Completions => format!("{base}/completions"),
    }
}

/// The request body. `prefill` starts the answer: a final assistant message to continue (chat;
/// vLLM's `continue_final_message`, llama.cpp's assistant prefill), or text appended to the
/// prompt (completions).
fn body(cfg: &OpenAiConfig, r: &JudgeRequest, prefill: Option<&str>) -> J {
    let mut b = match (cfg.api, prefill) {
        (JudgeApi::Chat, None) => json!({ "messages": [{ "role": "user", "content": r.prompt }] }),
        (JudgeApi::Chat, Some(p)) => json!({
            "messages": [{ "role": "user", "content": r.prompt }, { "role": "assistant", "content": p }],
            "continue_final_message": true, "add_generation_prompt": false,
        }),
        (JudgeApi::Completions, p) => json!({ "prompt": format!("{}{}", r.prompt, p.unwrap_or("")) }),
    };
    let o = b.as_object_mut().expect("object");
    if let Some(m) = &cfg.model {
        o.insert("model".into(), m.clone().into());
    }
    o.insert("max_tokens".into(), r.max_tokens.into());
    o.insert("temperature".into(), r.temperature.into());
    o.insert("seed".into(), r.seed.into());
    if let Some(k) = r.top_logprobs {
        match cfg.api {
            JudgeApi::Chat => {
                o.insert("logprobs".into(), true.into());
                o.insert("top_logprobs".into(), k.into());
            }
            JudgeApi::Completions => {
                o.insert("logprobs".into(), k.into());
            }
        }
    }
    constrain(o, cfg.dialect, cfg.api, r.json_schema.as_ref(), r.grammar.as_deref());
    b
}

/// Put a JSON schema (preferred when both are given) or a grammar into the fields `dialect`
/// reads. What a dialect cannot send is left out: the answer is then parsed as written.
fn constrain(o: &mut serde_json::Map<String, J>, dialect: Dialect, api: JudgeApi, schema: Option<&J>, grammar: Option<&str>) {
    let response_format =
        |schema: &J| json!({ "type": "json_schema", "json_schema": { "name": "scores", "schema": schema, "strict": true } });
    match (schema, grammar, dialect) {
        (Some(s), _, Dialect::Openai | Dialect::Sglang) if api == JudgeApi::Chat => {
            o.insert("response_format".into(), response_format(s));
        }
        (Some(s), _, Dialect::Sglang) => {
            o.insert("json_schema".into(), s.to_string().into());
        }
        (Some(s), _, Dialect::Vllm) => {
            o.insert("structured_outputs".into(), json!({ "json": s }));
        }
        (Some(s), _, Dialect::LlamaCpp) => {
            o.insert("json_schema".into(), s.clone());
        }
        (None, Some(g), Dialect::Vllm) => {
            o.insert("structured_outputs".into(), json!({ "grammar": g }));
        }
        (None, Some(g), Dialect::Sglang) => {
            o.insert("ebnf".into(), g.into());
        }
        (None, Some(g), Dialect::LlamaCpp) => {
            o.insert("grammar".into(), g.into());
        }
        _ => {}
    }
}

/// A grammar (GBNF) for one guided value ([`crate::reward::score::value_shape`]).
pub fn value_grammar(min: i64, max: i64) -> String {
    crate::reward::score::value_shape(min, max).gbnf()
}

/// Parse a chat or completions response body.
pub fn parse_response(api: JudgeApi, url: &str, v: &J) -> Result<JudgeResponse, JudgeError> {
    let bad = |m: &str| JudgeError::Malformed { url: url.into(), message: m.into() };
    let choice = v.get("choices").and_then(|c| c.get(0)).ok_or_else(|| bad("no choices[0]"))?;
    let text = match api {
        JudgeApi::Chat => choice.get("message").and_then(|m| m.get("content")).and_then(J::as_str),
        JudgeApi::Completions => choice.get("text").and_then(J::as_str),
    }
    .ok_or_else(|| bad("no answer text in choices[0]"))?
    .to_string();
    let usage = v.get("usage");
    let n = |k: &str| usage.and_then(|u| u.get(k)).and_then(J::as_u64).unwrap_or(0);
    let lp = choice.get("logprobs").filter(|l| !l.is_null());
    let logprobs = lp.map(|lp| {
        if let Some(content) = lp.get("content").and_then(J::as_array) {
            content
                .iter()
                .map(|c| TokenLogprob {
                    token: c.get("token").and_then(J::as_str).unwrap_or("").to_string(),
                    logprob: c.get("logprob").and_then(J::as_f64).unwrap_or(f64::NEG_INFINITY) as f32,
                    top: c
                        .get("top_logprobs")
                        .and_then(J::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(|t| Some((t.get("token")?.as_str()?.to_string(), t.get("logprob")?.as_f64()? as f32)))
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect()
        } else {
            // legacy completions format: parallel arrays
            let toks = lp.get("tokens").and_then(J::as_array).cloned().unwrap_or_default();
            let lps = lp.get("token_logprobs").and_then(J::as_array).cloned().unwrap_or_default();
            let tops = lp.get("top_logprobs").and_then(J::as_array).cloned().unwrap_or_default();
            toks.iter()
                .enumerate()
                .map(|(i, t)| TokenLogprob {
                    token: t.as_str().unwrap_or("").to_string(),
                    logprob: lps.get(i).and_then(J::as_f64).unwrap_or(f64::NEG_INFINITY) as f32,
                    top: tops
                        .get(i)
                        .and_then(J::as_object)
                        .map(|o| o.iter().filter_map(|(k, v)| Some((k.clone(), v.as_f64()? as f32))).collect())
                        .unwrap_or_default(),
                })
                .collect()
        }
    });
    let truncated = choice.get("finish_reason").and_then(J::as_str) == Some("length");
    Ok(JudgeResponse {
        text,
        prompt_tokens: n("prompt_tokens"),
        completion_tokens: n("completion_tokens"),
        logprobs,
        cached: false,
        truncated,
    })
}

/// Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date).
pub fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(s) = v.parse::<f64>() {
        return (s >= 0.0).then(|| Duration::from_secs_f64(s.min(300.0)));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    let now = std::time::SystemTime::now();
    Some(when.duration_since(now).unwrap_or(Duration::ZERO).min(Duration::from_secs(300)))
}

/// One JSON POST: the parsed body, or the error and any `Retry-After`. Only 2xx answers are
/// parsed; a body that is not JSON is `bad_body` (retried: a cut connection looks the same).
pub async fn post_json(
    client: &reqwest::Client,
    url: &str,
    body: &J,
    api_key: Option<&str>,
    timeout: Duration,
) -> Result<J, (JudgeError, Option<Duration>)> {
    let text = post(client, url, body, api_key, timeout).await?;
    serde_json::from_str(&text).map_err(|e| (JudgeError::Malformed { url: url.into(), message: format!("not JSON: {e}") }, None))
}

/// One POST of a JSON body: the answer's text when its status is 2xx, else the error and any
/// `Retry-After`.
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    body: &J,
    api_key: Option<&str>,
    timeout: Duration,
) -> Result<String, (JudgeError, Option<Duration>)> {
    let mut req = client.post(url).json(body).timeout(timeout);
    if let Some(k) = api_key {
        req = req.bearer_auth(k);
    }
    // a timeout is one cause whether it struck before the answer or while reading it
    let failed = |e: reqwest::Error, other: JudgeError| {
        let e = if e.is_timeout() { JudgeError::Timeout { seconds: timeout.as_secs_f64() } } else { other };
        (e, None)
    };
    let resp = req.send().await.map_err(|e| {
        let message = e.to_string();
        failed(e, JudgeError::Transport { url: url.into(), message })
    })?;
    let status = resp.status().as_u16();
    let wait = retry_after(resp.headers());
    let text = resp.text().await.map_err(|e| {
        let message = format!("reading the body: {e}");
        failed(e, JudgeError::Malformed { url: url.into(), message })
    })?;
    if !(200..300).contains(&status) {
        let body: String = text.chars().take(500).collect();
        return Err((JudgeError::Http { status, url: url.into(), body }, wait));
    }
    Ok(text)
}

/// How a request is retried: over which base URLs, how often, after how long.
pub struct Retrying<'a> {
    pub base_urls: &'a [String],
    /// Round-robin position shared by the requests of one client.
    pub next: &'a AtomicUsize,
    pub max_retries: u32,
    /// First backoff; doubles per attempt (with jitter), capped at 30 s.
    pub backoff: Duration,
    pub transport: &'a Mutex<Transport>,
}

impl Retrying<'_> {
    /// `attempt(base_url)` until it succeeds, fails for good (not [`JudgeError::retryable`]) or
    /// runs out of retries; every attempt, retry and failure counted in `transport` by cause.
    /// The first attempt goes round-robin over the base URLs; each retry moves to the next one
    /// (failover), after the server's `Retry-After` or an exponential backoff.
    pub async fn run<T, F, Fut>(&self, attempt: F) -> Result<T, JudgeError>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, (JudgeError, Option<Duration>)>>,
    {
        let count = |f: &dyn Fn(&mut Transport)| f(&mut self.transport.lock().unwrap_or_else(|e| e.into_inner()));
        let attempts = self.max_retries + 1;
        let mut last = None;
        let n = self.base_urls.len().max(1);
        let mut i = self.next.fetch_add(1, Ordering::Relaxed) % n;
        for k in 0..attempts {
            if k > 0 {
                i = (i + 1) % n;
            }
            count(&|t| t.attempts += 1);
            let url = self.base_urls.get(i).cloned().unwrap_or_default();
            match attempt(url).await {
                Ok(v) => return Ok(v),
                Err((e, wait)) => {
                    if !e.retryable() || k + 1 == attempts {
                        count(&|t| *t.failed.entry(e.cause()).or_default() += 1);
                        if k == 0 {
                            return Err(e);
                        }
                        return Err(JudgeError::Exhausted { attempts: k + 1, last: Box::new(e) });
                    }
                    let backoff = self.backoff.mul_f64(2f64.powi(k as i32)).min(Duration::from_secs(30));
                    // Jitter spreads retries of many concurrent requests; it never changes answers.
                    let jitter = 1.0 + rand::random::<f64>() * 0.25;
                    let pause = wait.unwrap_or(backoff.mul_f64(jitter));
                    count(&|t| {
                        *t.retries.entry(e.cause()).or_default() += 1;
                        t.retry_wait_s += pause.as_secs_f64();
                    });
                    tokio::time::sleep(pause).await;
                    last = Some(e);
                }
            }
        }
        Err(JudgeError::Exhausted { attempts, last: Box::new(last.unwrap_or(JudgeError::Config { message: "no attempt made".into() })) })
    }
}

/// An OpenAI-compatible judge's identity: endpoint and model (never the URL or key).
pub fn identity(api: JudgeApi, model: Option<&str>) -> String {
    let api = match api {
        JudgeApi::Chat => "chat",
        JudgeApi::Completions => "completions",
    };
    format!("openai-{api}:{}", model.unwrap_or("default"))
}

impl Judge for OpenAiJudge {
    fn identity(&self) -> String {
        identity(self.cfg.api, self.cfg.model.as_deref())
    }

    fn transport(&self) -> Option<Transport> {
        Some(self.transport.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    fn complete(&mut self, requests: &[JudgeRequest]) -> Vec<Result<JudgeResponse, JudgeError>> {
        let sem = Arc::new(Semaphore::new(self.cfg.concurrency.max(1)));
        let cfg = Arc::new(self.cfg.clone());
        let tasks: Vec<_> = requests
            .iter()
            .map(|r| {
                let call =
                    Call { client: self.client.clone(), cfg: cfg.clone(), next: self.next_url.clone(), transport: self.transport.clone() };
                let (sem, r) = (sem.clone(), r.clone());
                self.runtime.spawn(async move {
                    if r.guided.is_empty() {
                        let _permit = sem.acquire_owned().await.expect("semaphore open");
                        call.ask(r, None).await
                    } else {
                        guided(&call, &sem, &r).await
                    }
                })
            })
            .collect();
        self.runtime.block_on(async {
            let mut out = Vec::with_capacity(tasks.len());
            for t in tasks {
                out.push(t.await.unwrap_or_else(|e| Err(JudgeError::Config { message: format!("request task failed: {e}") })));
            }
            out
        })
    }
}

/// What one request needs to reach the servers.
struct Call {
    client: reqwest::Client,
    cfg: Arc<OpenAiConfig>,
    next: Arc<AtomicUsize>,
    transport: Arc<Mutex<Transport>>,
}

impl Call {
    async fn ask(&self, r: JudgeRequest, prefill: Option<String>) -> Result<JudgeResponse, JudgeError> {
        let cfg = &self.cfg;
        let retrying = Retrying {
            base_urls: &cfg.base_urls,
            next: &self.next,
            max_retries: cfg.max_retries,
            backoff: cfg.backoff,
            transport: &self.transport,
        };
        let b = body(cfg, &r, prefill.as_deref());
        retrying
            .run(|base| {
                let (client, b) = (&self.client, &b);
                async move {
                    let url = endpoint(&base, cfg.api);
                    let v = post_json(client, &url, b, cfg.api_key.as_deref(), cfg.timeout).await?;
                    parse_response(cfg.api, &url, &v).map_err(|e| (e, None))
                }
            })
            .await
    }
}

/// A guided answer: one request per label, in order, each with the answer so far and the label
/// prefilled (so the judge sees its earlier scores), its value held to the label's range where
/// the dialect sends grammars. The values are joined back into `label: value` lines.
async fn guided(call: &Call, sem: &Semaphore, r: &JudgeRequest) -> Result<JudgeResponse, JudgeError> {
    let mut acc = JudgeResponse { logprobs: Some(vec![]), ..JudgeResponse::answer("") };
    for (k, label) in r.guided.iter().enumerate() {
        let prefix = format!("{label}:");
        let sub = JudgeRequest {
            guided: vec![],
            guided_ranges: vec![],
            grammar: r.guided_ranges.get(k).filter(|_| call.cfg.dialect.grammars()).map(|&(lo, hi)| value_grammar(lo, hi)),
            ..r.clone()
        };
        let prefill = format!("{}{prefix}", acc.text);
        let resp = {
            let _permit = sem.acquire().await.expect("semaphore open");
            call.ask(sub, Some(prefill.clone())).await?
        };
        // llama-server's chat endpoint returns the prefilled text with the continuation; vLLM
        // and completions endpoints return the continuation only.
        let continuation = resp.text.strip_prefix(prefill.as_str()).unwrap_or(&resp.text);
        let value = continuation.lines().next().unwrap_or("").to_string();
        acc.text.push_str(&format!("{prefix}{value}\n"));
        acc.prompt_tokens += resp.prompt_tokens;
        acc.completion_tokens += resp.completion_tokens;
        if let Some(lp) = acc.logprobs.as_mut() {
            lp.push(TokenLogprob { token: prefix, logprob: 0.0, top: vec![] });
            lp.extend(resp.logprobs.unwrap_or_default());
            lp.push(TokenLogprob { token: "\n".into(), logprob: 0.0, top: vec![] });
        }
    }
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_urls() {
        assert_eq!(endpoint("http://h:1", JudgeApi::Chat), "http://h:1/v1/chat/completions");
        assert_eq!(endpoint("http://h:1/v1/", JudgeApi::Completions), "http://h:1/v1/completions");
        assert_eq!(OpenAiConfig::urls_from(" http://a/v1, http://b/ ,"), vec!["http://a/v1", "http://b"]);
    }

    #[test]
    fn parses_chat_and_legacy_completions_with_logprobs() {
        let chat = json!({"choices": [{"message": {"content": "Score: 3"}, "logprobs": {"content": [{"token": "3", "logprob": -0.1, "top_logprobs": [{"token": "3", "logprob": -0.1}, {"token": "2", "logprob": -2.5}]}]}}], "usage": {"prompt_tokens": 10, "completion_tokens": 3}});
        let r = parse_response(JudgeApi::Chat, "u", &chat).unwrap();
        assert_eq!((r.text.as_str(), r.prompt_tokens, r.completion_tokens), ("Score: 3", 10, 3));
        assert_eq!(r.logprobs.unwrap()[0].top[1], ("2".to_string(), -2.5));
        let legacy = json!({"choices": [{"text": "4", "logprobs": {"tokens": ["4"], "token_logprobs": [-0.2], "top_logprobs": [{"4": -0.2, "5": -1.9}]}}]});
        let r = parse_response(JudgeApi::Completions, "u", &legacy).unwrap();
        assert_eq!(r.logprobs.unwrap()[0].top.len(), 2);
        assert!(matches!(parse_response(JudgeApi::Chat, "u", &json!({"choices": []})), Err(JudgeError::Malformed { .. })));
    }

    #[test]
    fn a_length_finish_is_a_truncated_answer() {
        let cut = json!({"choices": [{"message": {"content": "Correct: 3\nClea"}, "finish_reason": "length"}]});
        assert!(parse_response(JudgeApi::Chat, "u", &cut).unwrap().truncated);
        let done = json!({"choices": [{"text": "Correct: 3", "finish_reason": "stop"}]});
        assert!(!parse_response(JudgeApi::Completions, "u", &done).unwrap().truncated);
    }

    #[test]
    fn retry_after_forms() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(reqwest::header::RETRY_AFTER, "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
    }

    #[test]
    fn each_dialect_sends_constraints_in_its_own_fields() {
        let rubric = crate::rubric::Rubric::parse("## Correct (0-2)\n").unwrap();
        let schema = crate::reward::score::json_schema(&rubric, 40);
        let mut out = String::new();
        for dialect in [Dialect::Openai, Dialect::Vllm, Dialect::Sglang, Dialect::LlamaCpp] {
            for api in [JudgeApi::Chat, JudgeApi::Completions] {
                let cfg = OpenAiConfig {
                    base_urls: vec!["http://h".into()],
                    api_key: Some("sk-never-in-a-body".into()),
                    model: Some("judge".into()),
                    api,
                    dialect,
                    concurrency: 1,
                    timeout: Duration::from_secs(1),
                    max_retries: 0,
                    backoff: Duration::ZERO,
                };
                let base = JudgeRequest { prompt: "Grade.".into(), max_tokens: 128, ..Default::default() };
                let json = JudgeRequest { json_schema: Some(schema.clone()), ..base.clone() };
                let value = JudgeRequest { grammar: Some(value_grammar(0, 2)), max_tokens: 3, ..base };
                for (what, r, prefill) in [("json", &json, None), ("guided value", &value, Some("Correct:"))] {
                    let b = serde_json::to_string_pretty(&body(&cfg, r, prefill)).unwrap();
                    assert!(!b.contains("sk-never"), "keys travel in headers only");
                    out += &format!("--- {dialect:?} {api:?}: {what}\n{b}\n");
                }
            }
        }
        insta::assert_snapshot!(out);
    }

    #[test]
    fn which_errors_retry() {
        let http = |s| JudgeError::Http { status: s, url: "u".into(), body: String::new() };
        assert!(http(429).retryable() && http(503).retryable() && http(408).retryable());
        assert!(!http(400).retryable() && !http(401).retryable() && !http(404).retryable());
        assert!(JudgeError::Timeout { seconds: 1.0 }.retryable());
        assert!(!JudgeError::CacheMiss { key: "k".into() }.retryable());
    }
}
