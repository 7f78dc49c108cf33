//! A fault-injecting OpenAI-compatible server on loopback, for tests and the judge benchmark.
//!
//! Each request is answered by a scripted [`Reply`]: a normal chat or completions body, an HTTP
//! error with an optional `Retry-After`, a delay, malformed JSON, a truncated body, or no
//! answer at all. It speaks just enough HTTP/1.1 (keep-alive, Content-Length) for reqwest.
//! It replaces nothing real: the judge's real path is tested against llama-server.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value as J, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How to answer one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A 200 with this answer text (chat or completions shape, whichever was asked).
    Text(String),
    /// An HTTP status with a body and optional `Retry-After` value.
    Status { code: u16, retry_after: Option<String>, body: String },
    /// Wait, then answer.
    Delay(Duration, Box<Reply>),
    /// A 200 whose body is not JSON.
    Malformed(String),
    /// A 200 that declares more bytes than it sends, then closes.
    Truncated,
    /// Never answer (the client times out).
    Hang,
}

/// What the script sees of a request.
#[derive(Debug, Clone)]
pub struct Request {
    /// 0-based, in arrival order across connections.
    pub index: usize,
    pub path: String,
    /// The raw header block.
    pub headers: String,
    pub body: J,
}

type Script = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// A running stub; stops when dropped.
pub struct Stub {
    pub url: String,
    pub requests: Arc<AtomicUsize>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Stub {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Stub {
    /// Start a stub whose `script(request)` decides each reply.
    pub fn start(script: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> std::io::Result<Stub> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let url = format!("http://{}/v1", listener.local_addr()?);
        let requests = Arc::new(AtomicUsize::new(0));
        let script: Script = Arc::new(script);
        let counter = requests.clone();
        runtime.spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else { continue };
                let (script, counter) = (script.clone(), counter.clone());
                tokio::spawn(async move {
                    let _ = serve(sock, script, counter).await;
                });
            }
        });
        Ok(Stub { url, requests, runtime: Some(runtime) })
    }

    pub fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn serve(mut sock: tokio::net::TcpStream, script: Script, counter: Arc<AtomicUsize>) -> std::io::Result<()> {
    // Replies go out in one write with Nagle off: a split write would wait on the client's
    // delayed ACK (~40 ms) and the benchmark would measure TCP, not the judge.
    sock.set_nodelay(true)?;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // headers
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")).and_then(|(_, v)| v.trim().parse().ok())
            })
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 8192];
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body: J = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(J::Null);
        buf.drain(..head_end + len);
        let index = counter.fetch_add(1, Ordering::SeqCst);
        let chat = path.contains("chat");
        let mut reply = script(&Request { index, path, headers: head, body });
        while let Reply::Delay(d, next) = reply {
            tokio::time::sleep(d).await;
            reply = *next;
        }
        match reply {
            Reply::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return Ok(());
            }
            Reply::Truncated => {
                let msg = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{\"choices\": [{\"mess";
                sock.write_all(msg).await?;
                return Ok(());
            }
            Reply::Text(text) => {
                let b = if chat {
                    json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 20, "completion_tokens": 5}})
                } else {
                    json!({"choices": [{"index": 0, "text": text, "finish_reason": "stop"}], "usage": {"prompt_tokens": 20, "completion_tokens": 5}})
                };
                respond(&mut sock, 200, None, &b.to_string()).await?;
            }
            Reply::Status { code, retry_after, body } => respond(&mut sock, code, retry_after.as_deref(), &body).await?,
            Reply::Malformed(body) => respond(&mut sock, 200, None, &body).await?,
            Reply::Delay(..) => unreachable!("delays unwrapped above"),
        }
    }
}

async fn respond(sock: &mut tokio::net::TcpStream, code: u16, retry_after: Option<&str>, body: &str) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n", body.len());
    if let Some(r) = retry_after {
        head += &format!("retry-after: {r}\r\n");
    }
    head += "\r\n";
    head += body;
    sock.write_all(head.as_bytes()).await
}

/// `mpo bench judge`: `calls` requests at `latency` through the OpenAI judge with
/// `concurrency`, against the ideal `ceil(calls / concurrency) * latency`.
pub fn judge_bench(calls: usize, concurrency: usize, latency: Duration) -> anyhow::Result<String> {
    use crate::judge::openai::{OpenAiConfig, OpenAiJudge};
    use crate::judge::{Judge, JudgeRequest};
    use crate::spec::JudgeApi;
    let stub = Stub::start(move |_| Reply::Delay(latency, Box::new(Reply::Text("Correct: 3".into()))))?;
    let mut judge = OpenAiJudge::new(OpenAiConfig {
        base_urls: vec![stub.url.clone()],
        api_key: Some("sk-bench".into()),
        model: Some("stub".into()),
        api: JudgeApi::Chat,
        dialect: Default::default(),
        concurrency,
        timeout: Duration::from_secs(30),
        max_retries: 0,
        backoff: Duration::from_millis(100),
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let reqs: Vec<JudgeRequest> = (0..calls)
        .map(|i| JudgeRequest {
            prompt: format!("grade response {i}"),
            max_tokens: 16,
            temperature: 0.0,
            seed: i as u64,
            ..Default::default()
        })
        .collect();
    // warm the connection pool once, as a run does with its first batch
    let _ = judge.complete(&reqs[..concurrency.min(calls)]);
    let mut best = f64::INFINITY;
    let mut all = Vec::new();
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let out = judge.complete(&reqs);
        let wall = t.elapsed().as_secs_f64();
        anyhow::ensure!(out.iter().all(|r| r.is_ok()), "some calls failed: {:?}", out.iter().find(|r| r.is_err()));
        best = best.min(wall);
        all.push(wall);
    }
    let rounds = calls.div_ceil(concurrency) as f64;
    let ideal = rounds * latency.as_secs_f64();
    let median = {
        all.sort_by(f64::total_cmp);
        all[all.len() / 2]
    };
    Ok(format!(
        "judge bench: {calls} calls, stub latency {:.0} ms, concurrency {concurrency} (ideal {:.0} ms = {rounds} rounds)\n  \
         wall median {:.0} ms (best {:.0} ms) = {:.3}x ideal (target <= 1.1x)\n  \
         overhead per round {:.2} ms, per call {:.3} ms\n",
        latency.as_secs_f64() * 1e3,
        ideal * 1e3,
        median * 1e3,
        best * 1e3,
        median / ideal,
        (median - ideal) / rounds * 1e3,
        (median - ideal) / calls as f64 * 1e3
    ))
}
