//! Rollouts on an inference engine (`runtime.rollouts`): llama.cpp's llama-server (started and
//! restarted by mpo), or a running vLLM or SGLang server that loads LoRA adapters at run time.
//!
//! Each update: the policy's adapter is written in the engine's format (`export::write_adapter`:
//! a llama.cpp adapter GGUF, or a PEFT folder), the engine loads it (llama-server restarts with
//! `--lora`; vLLM and SGLang load it under a new name, then unload the previous one), and every
//! prompt goes out as its own request, at most `concurrency` at a time, retried like a judge's
//! requests (every attempt, retry and failure counted by cause). The trainer recomputes PPO's
//! old log-probs; the engine's are kept to measure the drift between the two.

pub mod dialect;
pub mod llama_server;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use dialect::Sampled;
use tokio::sync::Semaphore;

use crate::export::{self, ByName, Format};
use crate::judge::openai::{Retrying, post, post_json};
use crate::judge::{JudgeError, Transport};
use crate::model::generate::Sampling;
use crate::plan::Plan;
use crate::spec::{RolloutEngine, RolloutsSpec};

/// Why rollouts could not be generated on the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("rollout engine `{engine}`: {message}")]
    Setup { engine: &'static str, message: String, help: Option<String> },
    #[error("rollout engine `{engine}`: writing the adapter: {source}")]
    Adapter { engine: &'static str, source: export::ExportError },
    #[error("rollout engine `{engine}`: {what}: {source}")]
    Request { engine: &'static str, what: String, source: JudgeError },
}

impl EngineError {
    pub fn help(&self) -> Option<String> {
        match self {
            EngineError::Setup { help, .. } => help.clone(),
            EngineError::Adapter { source, .. } => source.help(),
            EngineError::Request { source: JudgeError::Config { .. }, .. } => Some(
                "the server's answers lack the token ids or log-probs mpo reads: vLLM needs >= 0.10.2 (`return_token_ids`); SGLang's `/generate` needs `return_logprob`".into(),
            ),
            EngineError::Request { source, .. } if source.retryable() => {
                Some("the engine stopped answering: check its log; `runtime.rollouts.max_retries` and `timeout_s` set the patience".into())
            }
            EngineError::Request { source: JudgeError::Http { status: 404, .. }, .. } => {
                Some("the server does not know the adapter or the endpoint: start vLLM with `--enable-lora` and `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`, SGLang with `--enable-lora`".into())
            }
            EngineError::Request { .. } => None,
        }
    }
}

/// What one update's generation on the engine cost, beside its answers.
#[derive(Debug, Clone, Default)]
pub struct Timing {
    /// Writing the adapter and having the engine load it (a llama-server restart included).
    pub load_s: f64,
    pub generate_s: f64,
}

/// A rollout engine for one run.
pub struct Engine {
    kind: RolloutEngine,
    spec: RolloutsSpec,
    plan: Plan,
    layers: usize,
    /// Where adapters are written: a private temporary folder (llama-server) or `adapter_dir`.
    dir: PathBuf,
    /// The adapter the engine holds: its name and folder.
    loaded: Option<(String, PathBuf)>,
    base_urls: Vec<String>,
    api_key: Option<String>,
    server: Option<llama_server::LlamaServer>,
    /// llama-server: its binary, the base GGUF, CPU threads.
    local: Option<(PathBuf, PathBuf, usize)>,
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
    next_url: AtomicUsize,
    transport: Arc<Mutex<Transport>>,
}

impl Engine {
    /// Connect to (or, for llama-server, prepare to start) the engine `plan` names; `layers` is
    /// the policy's layer count (for the adapter's tensor names).
    pub fn start(plan: &Plan, layers: usize) -> Result<Engine, EngineError> {
        let spec = plan.spec.runtime.rollouts.clone();
        let kind = spec.engine;
        let name = kind.as_str();
        let setup = |message: String, help: Option<String>| EngineError::Setup { engine: name, message, help };
        let (mut base_urls, mut api_key, mut local) = (vec![], None, None);
        let dir = match kind {
            RolloutEngine::InProcess => return Err(setup("the in-process decoder is not an engine".into(), None)),
            RolloutEngine::LlamaServer => {
                let bin = llama_server::find_binary().ok_or_else(|| {
                    setup(
                        "llama-server is not built".into(),
                        Some(
                            "`scripts/setup_llama_server.sh` builds it into ~/.cache/mpo (or point `MPO_LLAMA_SERVER` at a binary)".into(),
                        ),
                    )
                })?;
                let gguf = export::base_gguf(&plan.inputs.models.policy)
                    .map_err(|e| setup(e.to_string(), None))?
                    .ok_or_else(|| setup("llama-server serves a GGUF, and the policy is not one".into(), None))?;
                let threads = plan.spec.runtime.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
                local = Some((bin, gguf, threads));
                std::env::temp_dir().join(format!("mpo-rollouts-{}-{}", plan.run_id, std::process::id()))
            }
            RolloutEngine::Vllm | RolloutEngine::Sglang => {
                let var = spec.base_url_env.clone().unwrap_or_default();
                let value = std::env::var(&var).map_err(|_| {
                    setup(
                        format!("environment variable `{var}` (runtime.rollouts.base_url_env) is not set"),
                        Some(format!("export {var}=http://host:port")),
                    )
                })?;
                base_urls = crate::judge::openai::OpenAiConfig::urls_from(&value)
                    .into_iter()
                    .map(|u| u.trim_end_matches("/v1").to_string())
                    .collect();
                if base_urls.is_empty() {
                    return Err(setup(format!("`{var}` holds no URL"), None));
                }
                if let Some(k) = &spec.api_key_env {
                    api_key = Some(
                        std::env::var(k)
                            .map_err(|_| setup(format!("environment variable `{k}` (runtime.rollouts.api_key_env) is not set"), None))?,
                    );
                }
                spec.adapter_dir.clone().ok_or_else(|| setup("`runtime.rollouts.adapter_dir` is not set".into(), None))?
            }
        };
        std::fs::create_dir_all(&dir).map_err(|e| setup(format!("creating {}: {e}", dir.display()), None))?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs_f64(spec.timeout_s))
            .pool_max_idle_per_host(spec.concurrency)
            .build()
            .map_err(|e| setup(e.to_string(), None))?;
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| setup(e.to_string(), None))?;
        Ok(Engine {
            kind,
            spec,
            plan: plan.clone(),
            layers,
            dir,
            loaded: None,
            base_urls,
            api_key,
            server: None,
            local,
            client,
            runtime,
            next_url: AtomicUsize::new(0),
            transport: Arc::default(),
        })
    }

    pub fn kind(&self) -> RolloutEngine {
        self.kind
    }

    /// The HTTP side so far (cumulative): attempts, retries and failures by cause.
    pub fn transport(&self) -> Transport {
        self.transport.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Load `adapter` (the policy's trained tensors) as update `update`'s, then sample one
    /// response per prompt, prompt `i` with `seeds[i]`.
    pub fn rollouts(
        &mut self,
        adapter: &ByName,
        update: u32,
        prompts: &[Vec<u32>],
        seeds: &[u32],
        s: &Sampling,
    ) -> Result<(Vec<Sampled>, Timing), EngineError> {
        let t0 = Instant::now();
        // A name no server has seen: a resumed run never reloads a name (vLLM refuses a loaded
        // name, SGLang leaks the copy, and vLLM 0.13-0.16 key their prefix caches by name).
        let name = format!("mpo-{}-p{}-u{update:06}", &self.plan.run_id[..8.min(self.plan.run_id.len())], std::process::id());
        let folder = self.dir.join(&name);
        self.write(adapter, &folder)?;
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        if let Err(e) = self.load(&name, &folder, longest + s.max_new_tokens, prompts.len()) {
            let _ = std::fs::remove_dir_all(&folder);
            return Err(e);
        }
        let load_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let out = self.generate(&name, prompts, seeds, s)?;
        Ok((out, Timing { load_s, generate_s: t1.elapsed().as_secs_f64() }))
    }

    fn write(&self, adapter: &ByName, folder: &Path) -> Result<(), EngineError> {
        let engine = self.kind.as_str();
        let _ = std::fs::remove_dir_all(folder);
        std::fs::create_dir_all(folder).map_err(|e| EngineError::Setup {
            engine,
            message: format!("creating {}: {e}", folder.display()),
            help: None,
        })?;
        let format = if self.kind == RolloutEngine::LlamaServer { Format::GgufLora } else { Format::Peft };
        export::write_adapter(folder, format, &self.plan, adapter, "the policy", self.layers)
            .map(|_| ())
            .map_err(|source| EngineError::Adapter { engine, source })
    }

    /// Have the engine serve the adapter in `folder` as `name`; the previous one is then let go
    /// (unloaded, its folder removed). `context`: the longest prompt plus the token budget.
    fn load(&mut self, name: &str, folder: &Path, context: usize, rows: usize) -> Result<(), EngineError> {
        let engine = self.kind.as_str();
        if let Some((bin, gguf, threads)) = &self.local {
            // the old server goes first: it holds memory and threads the new one needs
            self.server = None;
            let slots = rows.clamp(1, self.spec.concurrency.max(1));
            let ctx = context.div_ceil(256) * 256;
            let lora = folder.join("adapter.gguf");
            let extra = [std::ffi::OsStr::new("--lora"), lora.as_os_str(), std::ffi::OsStr::new("--no-warmup")];
            let server = llama_server::LlamaServer::start_with(bin, gguf, slots, *threads, ctx, Duration::from_secs(300), &extra)
                .map_err(|e| EngineError::Setup { engine, message: format!("starting llama-server: {e}"), help: None })?;
            self.base_urls = vec![server.url.clone()];
            self.server = Some(server);
        } else if let Some((path, body)) = dialect::load(self.kind, name, &folder.display().to_string()) {
            // every server behind the variable gets it: generations go to all of them
            for url in &self.base_urls {
                match self.post(url, path, &body, self.spec.max_retries, self.timeout()) {
                    Ok(_) => {}
                    // the name is this process's own: an attempt that timed out had loaded it
                    Err(e) if already_loaded(&e) => {}
                    Err(source) => return Err(EngineError::Request { engine, what: format!("loading adapter {name} on {url}"), source }),
                }
            }
        }
        if let Some((old, old_folder)) = self.loaded.replace((name.to_string(), folder.to_path_buf())) {
            self.release(&old, &old_folder);
        }
        Ok(())
    }

    /// Unload adapter `name` from every server and remove its folder. Best effort, one quick
    /// attempt each: a failure leaves one adapter loaded, nothing more, and a run that is
    /// stopping because its engine hangs must not wait on it again.
    fn release(&self, name: &str, folder: &Path) {
        if let Some((path, body)) = dialect::unload(self.kind, name) {
            for url in &self.base_urls {
                if let Err(e) = self.post(url, path, &body, 0, Duration::from_secs(10)) {
                    tracing::warn!("rollout engine {}: unloading {name} from {url}: {e}", self.kind.as_str());
                }
            }
        }
        let _ = std::fs::remove_dir_all(folder);
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.spec.timeout_s)
    }

    /// An adapter request to one server (vLLM answers these in plain text, SGLang in JSON; the
    /// status says how it went).
    fn post(&self, url: &str, path: &'static str, body: &serde_json::Value, retries: u32, timeout: Duration) -> Result<String, JudgeError> {
        let urls = [url.to_string()];
        let next = AtomicUsize::new(0);
        let retrying = Retrying { max_retries: retries, ..self.retrying(&urls, &next) };
        self.runtime.block_on(retrying.run(|base| {
            let (client, key) = (&self.client, self.api_key.as_deref());
            async move { post(client, &format!("{base}{path}"), body, key, timeout).await }
        }))
    }

    fn retrying<'a>(&'a self, base_urls: &'a [String], next: &'a AtomicUsize) -> Retrying<'a> {
        Retrying { base_urls, next, max_retries: self.spec.max_retries, backoff: Duration::from_millis(500), transport: &self.transport }
    }

    fn generate(&self, lora: &str, prompts: &[Vec<u32>], seeds: &[u32], s: &Sampling) -> Result<Vec<Sampled>, EngineError> {
        let engine = self.kind.as_str();
        let sem = Semaphore::new(self.spec.concurrency.max(1));
        let retrying = self.retrying(&self.base_urls, &self.next_url);
        let timeout = self.timeout();
        let one = |i: usize| {
            let (path, body) = dialect::generate(self.kind, lora, &prompts[i], seeds[i], s);
            let (client, key, sem, retrying) = (&self.client, self.api_key.as_deref(), &sem, &retrying);
            async move {
                let _permit = sem.acquire().await.expect("semaphore open");
                retrying
                    .run(|base| {
                        let body = &body;
                        async move {
                            let url = format!("{base}{path}");
                            let v = post_json(client, &url, body, key, timeout).await?;
                            // an answer without what mpo reads will not improve when asked again
                            dialect::parse(self.kind, &v)
                                .map_err(|message| (JudgeError::Config { message: format!("{url} answered without {message}") }, None))
                        }
                    })
                    .await
            }
        };
        let answers = self.runtime.block_on(futures_util::future::join_all((0..prompts.len()).map(one)));
        answers
            .into_iter()
            .enumerate()
            .map(|(i, a)| a.map_err(|source| EngineError::Request { engine, what: format!("generating rollout {i}"), source }))
            .collect()
    }
}

/// A load refused because the name is loaded (vLLM: 400 "has already been loaded"; SGLang: 400
/// "already exists"), after retries or not.
fn already_loaded(e: &JudgeError) -> bool {
    match e {
        JudgeError::Http { status: 400, body, .. } => body.contains("already"),
        JudgeError::Exhausted { last, .. } => already_loaded(last),
        _ => false,
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.server = None;
        if let Some((name, folder)) = self.loaded.take() {
            self.release(&name, &folder);
        }
        if self.kind == RolloutEngine::LlamaServer {
            // the private temporary folder; an `adapter_dir` is the user's and stays
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
