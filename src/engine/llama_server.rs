//! A real `llama-server` as a child process: the `llama_server` rollout engine, and parity
//! checks, benchmarks and integration tests. Built by `scripts/setup_llama_server.sh`; found through `$MPO_LLAMA_SERVER` or the
//! cache path that script uses. Stopped when dropped, and also when this process ends without
//! dropping it (a test binary's static, a crash): a small `sh` watchdog between the two stops
//! the server once this process is gone.

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
        Self::start_with(bin, model, slots, threads, ctx_per_slot, timeout, &[])
    }

    /// [`Self::start`] with more arguments for llama-server (e.g. `--lora FILE`).
    pub fn start_with(
        bin: &Path,
        model: &Path,
        slots: usize,
        threads: usize,
        ctx_per_slot: usize,
        timeout: Duration,
        extra: &[&std::ffi::OsStr],
    ) -> anyhow::Result<Self> {
        let port = free_port()?;
        let log = std::env::temp_dir().join(format!("mpo-llama-server-{port}.log"));
        let logf = std::fs::File::create(&log)?;
        let child = watched(bin, std::process::id())
            .args(["-m"])
            .arg(model)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "-t", &threads.to_string(), "-tb", &threads.to_string()])
            .args(["-c", &(ctx_per_slot * slots).to_string(), "-np", &slots.to_string(), "--no-webui"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {} (through sh): {e}", bin.display()))?;
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
        // SIGTERM lets the watchdog stop the server; SIGKILL would orphan it.
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `bin` (arguments to follow) under an `sh` watchdog: it runs `bin` in the background, prints
/// its pid, and waits while both it and process `parent` live; on its way out (`parent` gone,
/// `bin` gone, or a SIGTERM) it stops `bin`.
fn watched(bin: &Path, parent: u32) -> Command {
    const WATCHDOG: &str = r#""$@" & server=$!
echo $server
trap 'kill $server 2>/dev/null; exit 0' TERM INT
trap 'kill $server 2>/dev/null' EXIT
while kill -0 "$MPO_PARENT_PID" 2>/dev/null && kill -0 $server 2>/dev/null; do sleep 1; done"#;
    let mut c = Command::new("sh");
    c.args(["-c", WATCHDOG, "llama-server-watchdog"]).arg(bin).env("MPO_PARENT_PID", parent.to_string());
    c
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The watchdog stops the server when the process that started it ends without a Drop.
    #[test]
    fn the_server_does_not_outlive_its_parent() {
        let alive = |pid: &str| Command::new("kill").args(["-0", pid]).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
        // `sleep 60` stands in for the test binary, `sleep 300` for llama-server
        let mut parent = Command::new("sleep").arg("60").spawn().unwrap();
        let mut dog = watched(Path::new("sleep"), parent.id()).arg("300").stdout(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(dog.stdout.take().unwrap()), &mut line).unwrap();
        let server = line.trim().to_string();
        assert!(alive(&server), "the stand-in server did not start");
        parent.kill().unwrap();
        parent.wait().unwrap();
        let t0 = Instant::now();
        while alive(&server) {
            assert!(t0.elapsed() < Duration::from_secs(10), "the stand-in server {server} outlived its parent");
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = dog.wait();
    }
}
