//! A real `llama-server` as a child process, for parity checks, benchmarks and integration
//! tests. Built by `scripts/setup_llama_server.sh`; found through `$MPO_LLAMA_SERVER` or the
//! cache path that script uses. Stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The llama-server binary, if it has been built.
pub fn find_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MPO_LLAMA_SERVER").map(PathBuf::from).filter(|p| p.is_file()) {
        return Some(p);
    }
    let p = crate::model::fetch::cache_dir().join("llama.cpp/11434.0.0-portable-v3/bin/llama-server");
    p.is_file().then_some(p)
}

/// A running llama-server.
pub struct LlamaServer {
    child: Child,
    pub url: String,
    pub log: PathBuf,
}

impl LlamaServer {
    /// Start `bin` serving `model` on a free loopback port with `slots` parallel sequences, and
    /// wait (up to `timeout`) until it answers and has run one warm-up completion.
    pub fn start(bin: &Path, model: &Path, slots: usize, threads: usize, ctx_per_slot: usize, timeout: Duration) -> anyhow::Result<Self> {
        let port = free_port()?;
        let log = std::env::temp_dir().join(format!("mpo-llama-server-{port}.log"));
        let logf = std::fs::File::create(&log)?;
        let child = Command::new(bin)
            .args(["-m"])
            .arg(model)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "-t", &threads.to_string(), "-tb", &threads.to_string()])
            .args(["-c", &(ctx_per_slot * slots).to_string(), "-np", &slots.to_string(), "--no-webui"])
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {}: {e}", bin.display()))?;
        let mut s = LlamaServer { child, url: format!("http://127.0.0.1:{port}"), log };
        s.wait_ready(timeout)?;
        Ok(s)
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let t0 = Instant::now();
        let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build()?;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let tail = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(15).collect();
                anyhow::bail!(
                    "llama-server exited ({status}) before it was ready:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            if t0.elapsed() > timeout {
                anyhow::bail!("llama-server did not become ready within {timeout:?} (log: {})", self.log.display());
            }
            let warm = client.post(format!("{}/completion", self.url)).json(&serde_json::json!({"prompt": "Hello", "n_predict": 1})).send();
            if matches!(&warm, Ok(r) if r.status().is_success()) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
