//! `mpo run`: the executor. It runs a [`Plan`] and writes its results; it is the imperative
//! shell around the pure parts (plan, PPO math, scoring, rubric parsing).
//!
//! Per update: sample prompts (seeded by the update number), generate rollouts, score them
//! against the current rubric, run a PPO/GRPO update, log metrics and samples; at the planned
//! updates run the meta-reward step (and switch rubric), evaluate, checkpoint. Re-running a
//! finished plan does nothing; re-running an interrupted one resumes from its last checkpoint
//! and reproduces the uninterrupted run. Ctrl-C stops after a checkpoint.

pub mod checkpoint;
pub mod eval;
pub mod progress;
pub mod results;
pub mod tensorboard;
pub mod train;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use serde_json::{Value as J, json};

use crate::judge::cache::CachedJudge;
use crate::judge::local::LocalJudge;
use crate::judge::openai::{Api, OpenAiConfig, OpenAiJudge};
use crate::judge::{Judge, TokenUsage};
use crate::meta::history::History;
use crate::meta::{self, MetaConfig, MetaSample};
use crate::model::generate::{Finish, Sampling, generate};
use crate::model::registry::ModelRef;
use crate::model::tokenizer::{Message, Tok};
use crate::model::{self, BackendJob, Llama, LoraConfig, Target};
use crate::plan::Plan;
use crate::reward::{self, RewardConfig, Rollout};
use crate::rubric::Rubric;
use crate::spec::{Algorithm, Critic, JudgeApi, JudgeBackend, JudgeSpec, LoraTarget, LrSchedule, Spec};
use crate::template::TemplateKind;
use checkpoint::State;
use progress::Progress;
use results::{Manifest, RunDir, Status};
use train::{Seq, Trainer};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Config(String),
    #[error("model: {0}")]
    Model(#[from] model::ModelError),
    #[error("writing results: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Reward(#[from] reward::RewardError),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error("generation: {0}")]
    Generate(#[from] model::generate::GenerateError),
    #[error("another mpo process is running this plan (pid {pid}, lock {lock}); wait for it or remove the lock if it is gone")]
    Locked { pid: u32, lock: String },
}

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The spec file as the user named it (copied into the results).
    pub spec_path: PathBuf,
    pub spec_text: String,
    pub quiet: bool,
    /// Stop after this many updates of this process (tests of resume); None = run to the end.
    pub stop_after: Option<u32>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    AlreadyFinished(PathBuf),
    Finished { dir: PathBuf, updates: u32 },
    Stopped { dir: PathBuf, update: u32 },
}

/// Set by Ctrl-C; checked between updates.
fn interrupted() -> Arc<AtomicBool> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    FLAG.get_or_init(|| {
        let f = Arc::new(AtomicBool::new(false));
        let g = f.clone();
        let _ = ctrlc::set_handler(move || {
            if g.swap(true, Ordering::SeqCst) {
                // a second Ctrl-C: stop now
                std::process::exit(130);
            }
            eprintln!("\ninterrupted: finishing the current update, checkpointing, then stopping (Ctrl-C again to stop now)");
        });
        f
    })
    .clone()
}

/// Run `plan`.
pub fn run(plan: &Plan, opts: &RunOptions) -> Result<RunOutcome, RunError> {
    let dir = RunDir::for_plan(plan);
    if let Some(m) = dir.manifest()
        && m.status == Status::Finished
    {
        return Ok(RunOutcome::AlreadyFinished(dir.root));
    }
    std::fs::create_dir_all(&dir.root)?;
    let _lock = Lock::take(&dir.path("run.lock"))?;
    if let Some(t) = plan.spec.runtime.threads {
        // Only the first pool request of a process takes effect; later runs share it.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(t).build_global();
    }
    let job = Job { plan: plan.clone(), opts: opts.clone(), dir: dir.clone() };
    match model::dispatch(plan.spec.runtime.backend, plan.spec.runtime.device, job) {
        Ok(r) => r,
        Err(e) => Err(RunError::Config(e)),
    }
}

/// An exclusive lock on a run directory (a pid file), released on drop.
struct Lock(PathBuf);

impl Lock {
    fn take(p: &Path) -> Result<Lock, RunError> {
        if let Ok(text) = std::fs::read_to_string(p)
            && let Ok(pid) = text.trim().parse::<u32>()
            && pid != std::process::id()
            && Path::new(&format!("/proc/{pid}")).exists()
        {
            return Err(RunError::Locked { pid, lock: p.display().to_string() });
        }
        crate::fsx::write_atomic(p, std::process::id().to_string().as_bytes())?;
        Ok(Lock(p.to_path_buf()))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

struct Job {
    plan: Plan,
    opts: RunOptions,
    dir: RunDir,
}

impl BackendJob for Job {
    type Output = Result<RunOutcome, RunError>;
    fn run<B: AutodiffBackend>(self, device: B::Device, backend_name: &'static str) -> Result<RunOutcome, RunError> {
        let mut manifest = start_manifest(&self.plan, &self.opts, &self.dir, backend_name, &format!("{device:?}"))?;
        let result = execute::<B>(&self.plan, &self.opts, &self.dir, &device, &mut manifest);
        match &result {
            Ok(RunOutcome::Finished { updates, .. }) => {
                manifest.status = Status::Finished;
                manifest.updates_done = *updates;
                manifest.finished = Some(results::now());
            }
            Ok(RunOutcome::Stopped { update, .. }) => {
                manifest.status = Status::Interrupted;
                manifest.updates_done = *update;
            }
            Ok(RunOutcome::AlreadyFinished(_)) => {}
            Err(e) => {
                manifest.status = Status::Failed;
                manifest.error = Some(e.to_string());
            }
        }
        self.dir.write_manifest(&manifest)?;
        result
    }
}

fn start_manifest(plan: &Plan, opts: &RunOptions, dir: &RunDir, backend: &str, device: &str) -> Result<Manifest, RunError> {
    let old = dir.manifest();
    if old.is_none() {
        dir.write_text("spec.yaml", &opts.spec_text)?;
        let mut resolved = serde_json::to_value(&plan.spec).map_err(std::io::Error::other)?;
        results::redact(&mut resolved);
        let yaml = serde_saphyr::to_string(&resolved).map_err(std::io::Error::other)?;
        dir.write_text("resolved.yaml", &format!("# The resolved spec of run {} (defaults filled in, paths resolved).\n# Secrets are read from the environment variables named here at run time; they are never written.\n{yaml}", plan.run_id))?;
        dir.write_json("plan.json", plan)?;
    }
    let m = Manifest {
        mpo_version: env!("CARGO_PKG_VERSION").into(),
        plan_format: plan.format,
        run_id: plan.run_id.clone(),
        name: plan.name.clone(),
        spec_path: opts.spec_path.display().to_string(),
        git_commit: results::git_commit(),
        backend: backend.into(),
        device: device.into(),
        seed: plan.spec.runtime.seed,
        started: old.as_ref().map(|o| o.started.clone()).unwrap_or_else(results::now),
        finished: None,
        status: Status::Running,
        error: None,
        updates_done: old.as_ref().map(|o| o.updates_done).unwrap_or(0),
        updates_planned: plan.schedule.updates,
        warmup_s: 0.0,
        judges: BTreeMap::new(),
        resumed_from: old.map(|o| o.resumed_from).unwrap_or_default(),
    };
    dir.write_manifest(&m)?;
    Ok(m)
}

pub(crate) fn lora_config(spec: &Spec) -> LoraConfig {
    let targets = spec
        .policy
        .lora
        .targets
        .iter()
        .map(|t| match t {
            LoraTarget::Q => Target::Q,
            LoraTarget::K => Target::K,
            LoraTarget::V => Target::V,
            LoraTarget::O => Target::O,
            LoraTarget::Gate => Target::Gate,
            LoraTarget::Up => Target::Up,
            LoraTarget::Down => Target::Down,
            LoraTarget::LmHead => Target::LmHead,
        })
        .collect();
    LoraConfig { rank: spec.policy.lora.rank, alpha: spec.policy.lora.alpha, targets }
}

/// What every judge of a run is built from.
pub(crate) struct JudgeEnv<'m, B: Backend> {
    pub policy_ref: &'m ModelRef,
    /// The policy model's inner copy (same base weights) and tokenizer, used when a local
    /// judge is the policy's own model (`None`: load it).
    pub shared: Option<(&'m Llama<B>, &'m Tok)>,
    pub batch: usize,
    pub seed: u64,
    pub device: &'m B::Device,
    pub cache: &'m Path,
}

/// Build the judge of a role, behind the run's judge cache.
pub(crate) fn build_judge<'a, B: Backend + 'a>(
    role: &str,
    js: &JudgeSpec,
    mref: Option<&ModelRef>,
    env: &JudgeEnv<'_, B>,
) -> Result<Box<dyn Judge + 'a>, RunError> {
    let (policy_ref, batch, seed, device, cache) = (env.policy_ref, env.batch, env.seed, env.device, env.cache);
    let shared = env.shared;
    let inner: Box<dyn Judge + 'a> = match js.backend {
        JudgeBackend::Replay => {
            let from = js.replay_from.clone().ok_or_else(|| RunError::Config(format!("{role} judge: `replay` needs `replay_from`")))?;
            return Ok(Box::new(CachedJudge::replay(&from)));
        }
        JudgeBackend::Local => {
            let mref = mref.cloned().unwrap_or_else(|| policy_ref.clone());
            let name = match &mref {
                ModelRef::Known { name, .. } | ModelRef::Random { name } => name.clone(),
                ModelRef::Gguf { path } | ModelRef::HfDir { path } => path.display().to_string(),
            };
            match shared.filter(|_| &mref == policy_ref) {
                Some((m, tok)) => Box::new(LocalJudge { model: m.clone(), tok: tok.clone(), name, batch }),
                None => {
                    let l = model::load::<B>(&mref, None, 4096, seed, device, &mut |m| eprintln!("{m}"))?;
                    Box::new(LocalJudge { model: l.model, tok: l.tok, name, batch })
                }
            }
        }
        JudgeBackend::Openai => {
            let urls = std::env::var(&js.base_url_env).map_err(|_| RunError::Config(format!("{role} judge: environment variable `{}` is not set; export it with the server's base URL (several separated by commas)", js.base_url_env)))?;
            let base_urls = OpenAiConfig::urls_from(&urls);
            if base_urls.is_empty() {
                return Err(RunError::Config(format!("{role} judge: `{}` holds no URL", js.base_url_env)));
            }
            let api_key = std::env::var(&js.api_key_env).ok().filter(|k| !k.is_empty());
            let cfg = OpenAiConfig {
                base_urls,
                api_key,
                model: js.model.clone(),
                api: match js.api {
                    JudgeApi::Chat => Api::Chat,
                    JudgeApi::Completions => Api::Completions,
                },
                concurrency: js.concurrency,
                timeout: std::time::Duration::from_secs_f64(js.timeout_s),
                max_retries: js.max_retries,
                backoff: std::time::Duration::from_millis(500),
            };
            Box::new(OpenAiJudge::new(cfg).map_err(|e| RunError::Config(format!("{role} judge: {e}")))?)
        }
    };
    Ok(Box::new(CachedJudge::new(inner, cache)))
}

/// Indices of the prompts of `update`: epochs of seeded permutations of the first `used`
/// records of a seeded shuffle.
fn prompt_indices(seed: u64, available: usize, used: usize, per_update: usize, update: u32) -> Vec<usize> {
    use rand::seq::SliceRandom;
    let mut pool: Vec<usize> = (0..available).collect();
    pool.shuffle(&mut crate::rng::stream(seed, "data/subset"));
    pool.truncate(used.max(1));
    let start = (update as usize - 1) * per_update;
    let mut out = Vec::with_capacity(per_update);
    let mut epoch_cache: Option<(usize, Vec<usize>)> = None;
    for k in start..start + per_update {
        let (epoch, pos) = (k / pool.len(), k % pool.len());
        if epoch_cache.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut p = pool.clone();
            p.shuffle(&mut crate::rng::stream(seed, &format!("data/epoch{epoch}")));
            epoch_cache = Some((epoch, p));
        }
        out.push(epoch_cache.as_ref().expect("set above").1[pos]);
    }
    out
}

/// How the policy samples (rollouts and evaluations differ only in temperature).
pub(crate) fn policy_sampling(spec: &Spec, tok: &Tok, temperature: f64) -> Sampling {
    Sampling {
        max_new_tokens: spec.ppo.response_length,
        temperature: temperature as f32,
        top_p: spec.policy.top_p as f32,
        top_k: spec.policy.top_k,
        stop_ids: tok.stop_ids.clone(),
        stop_strings: spec.policy.stop.clone(),
    }
}

/// The policy prompt of a record: the task template, the optional system message, the chat
/// template. Returns (prompt text, chat-formatted token ids).
pub(crate) fn policy_prompt(
    spec: &Spec,
    template: &crate::spec::validate::TemplateFile,
    tok: &Tok,
    chat_override: Option<&str>,
    record: &J,
) -> Result<(String, Vec<u32>), RunError> {
    let text = crate::template::render(&template.path.display().to_string(), &template.text, record)
        .map_err(|e| RunError::Config(e.to_string()))?;
    let mut messages = Vec::new();
    if let Some(s) = &spec.policy.system {
        messages.push(Message::new("system", s.clone()));
    }
    messages.push(Message::new("user", text.clone()));
    let chat = tok.apply_chat_template(&messages, true, chat_override).map_err(|e| RunError::Config(e.to_string()))?;
    let ids = tok.encode(&chat).map_err(|e| RunError::Config(e.to_string()))?;
    Ok((text, ids))
}

fn mean_std(xs: &[f64]) -> (f64, f64, f64, f64) {
    if xs.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN, f64::NAN);
    }
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    let sd = (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n).sqrt();
    (m, sd, xs.iter().cloned().fold(f64::INFINITY, f64::min), xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max))
}

fn fmt3(x: f64) -> String {
    if x.is_finite() { format!("{x:.3}") } else { "-".into() }
}

fn round4(x: f64) -> J {
    if x.is_finite() { json!((x * 1e6).round() / 1e6) } else { J::Null }
}

/// The sequences one update trains on and (GRPO) the number of groups dropped.
///
/// A response that ends with EOS or a `policy.stop` string is complete; one cut by
/// `response_length` loses `penalty`. Skipped rollouts (no reward) are left out. Under GRPO a
/// group is the rollouts of one prompt: a skipped member leaves it smaller (its statistics come
/// from the members left), and a group with fewer than two members left has no spread to learn
/// from and is dropped whole.
fn training_batch(
    prompts: &[(usize, String, Vec<u32>)],
    gens: &[model::generate::Generated],
    scored: &[reward::Scored],
    penalty: f64,
    eos: u32,
    group_size: usize,
) -> (Vec<Seq>, usize) {
    let mut seqs = Vec::new();
    for (k, ((p, g), s)) in prompts.iter().zip(gens).zip(scored).enumerate() {
        let Some(r) = s.reward else { continue };
        let score = if g.finish == Finish::Length { r - penalty } else { r };
        let response = if g.tokens.is_empty() { vec![eos] } else { g.tokens.clone() };
        // The `group_size` rollouts of one prompt are consecutive in the batch.
        seqs.push(Seq { query: p.2.clone(), response, score, group: k / group_size.max(1) });
    }
    let mut dropped = 0;
    if group_size > 1 {
        let mut size: HashMap<usize, usize> = HashMap::new();
        for s in &seqs {
            *size.entry(s.group).or_default() += 1;
        }
        dropped = size.values().filter(|&&c| c < 2).count();
        seqs.retain(|s| size[&s.group] >= 2);
    }
    (seqs, dropped)
}

/// The rollouts a meta step may learn from: those the judge scored. A verifier-scored or
/// skipped rollout has no grade for the meta judge to audit.
fn meta_evidence(rollouts: &[Rollout], scored: &[reward::Scored], rubric: &Rubric) -> Vec<MetaSample> {
    rollouts
        .iter()
        .zip(scored)
        .filter(|(_, s)| s.item_scores.is_some())
        .map(|(r, s)| MetaSample {
            id: r.id.clone(),
            question: r.question.clone(),
            response: r.response.clone(),
            score: s.item_scores.as_ref().map(|i| i.total()),
            max_score: rubric.max_score() as f64,
            rationale: s.judge_answers.last().cloned().unwrap_or_default(),
            verifier: s.verifier_score,
            record: r.record.clone(),
        })
        .collect()
}

#[allow(clippy::too_many_lines)]
fn execute<B: AutodiffBackend>(
    plan: &Plan,
    opts: &RunOptions,
    dir: &RunDir,
    device: &B::Device,
    manifest: &mut Manifest,
) -> Result<RunOutcome, RunError> {
    let spec = &plan.spec;
    let seed = spec.runtime.seed;
    let updates = plan.schedule.updates;
    let progress = Progress::new(updates as u64, manifest.updates_done as u64, opts.quiet);
    let stop = interrupted();
    let t_setup = Instant::now();

    // --- models ----------------------------------------------------------------------------------
    progress.stage("loading the policy model");
    let lora = lora_config(spec);
    let mut log = |m: &str| progress.log(m);
    let loaded =
        model::load::<B>(&plan.inputs.models.policy, Some(&lora), 4096, crate::rng::sub_seed(seed, "model/init"), device, &mut log)?;
    let tok = loaded.tok.clone();
    let grpo = spec.ppo.algorithm == Algorithm::Grpo;
    // No optimizer-side clipping: burn's clips each tensor on its own; `train::update` clips
    // the global norm over every trained tensor instead.
    let adam = || burn::optim::AdamWConfig::new().with_epsilon(1e-8).with_weight_decay(spec.ppo.weight_decay as f32).init::<B, Llama<B>>();
    let mut policy = loaded.model;
    let mut critic = None;
    if !grpo {
        match spec.ppo.critic {
            Critic::Shared => policy = policy.with_value_head(crate::rng::sub_seed(seed, "model/value-head"), device),
            Critic::Separate => {
                critic = Some((
                    policy
                        .with_fresh_adapters(&lora, "critic", crate::rng::sub_seed(seed, "model/critic"))
                        .with_value_head(crate::rng::sub_seed(seed, "model/value-head"), device),
                    adam(),
                ))
            }
        }
    }
    let mut tr = Trainer { policy, optim: adam(), critic };
    let chat_override = spec.policy.chat_template.as_ref().map(std::fs::read_to_string).transpose()?;

    // --- resume -----------------------------------------------------------------------------------
    let history = History::new(&dir.root);
    let mut state = State {
        update: 0,
        rubric_version: 0,
        meta_candidates: vec![],
        first_response_tokens: None,
        usage: HashMap::new(),
        meta_steps: 0,
        meta_accepted: 0,
    };
    let mut rubric = plan_rubric(plan)?;
    if let Some((ckpt, st)) = checkpoint::latest(dir) {
        progress.log(&format!("resuming from {} (update {} of {updates})", ckpt.display(), st.update));
        tr = checkpoint::load(&ckpt, tr, device)?;
        truncate_after(dir, &history, st.update, st.rubric_version)?;
        rubric = Rubric::parse(&history.show(st.rubric_version)?)
            .map_err(|e| RunError::Config(format!("rubric v{}: {e}", st.rubric_version)))?;
        manifest.resumed_from.push(st.update);
        state = st;
    } else {
        for d in ["metrics.jsonl", "rubrics", "samples"] {
            results::remove(&dir.path(d))?;
        }
        // Evaluations of a previous attempt go; the base model's (`mpo eval SPEC`) stays valid.
        if let Ok(rd) = std::fs::read_dir(dir.path("eval")) {
            for e in rd.flatten().filter(|e| !e.file_name().to_string_lossy().starts_with("base.")) {
                results::remove(&e.path())?;
            }
        }
        history.init(&rubric)?;
    }

    // --- judges ------------------------------------------------------------------------------------
    let judge_inner = tr.policy.valid();
    let batch = spec.runtime.rollout_batch;
    let cache_dir = dir.path("judge-cache");
    let env =
        JudgeEnv { policy_ref: &plan.inputs.models.policy, shared: Some((&judge_inner, &tok)), batch, seed, device, cache: &cache_dir };
    let mut reward_judge = build_judge::<B::InnerBackend>("reward", &spec.reward.judge, plan.inputs.models.judge.as_ref(), &env)?;
    let mut meta_judge = match &spec.meta.judge {
        Some(js) if spec.meta.every != crate::spec::Every::Never => {
            Some(build_judge::<B::InnerBackend>("meta", js, plan.inputs.models.meta.as_ref(), &env)?)
        }
        _ => None,
    };
    manifest.judges.insert("reward".into(), reward_judge.identity());
    if let Some(j) = &meta_judge {
        manifest.judges.insert("meta".into(), j.identity());
    }
    let reward_tmpl = &plan_template(plan, TemplateKind::Judge)?;
    let reward_cfg =
        RewardConfig::new(spec.reward.clone(), spec.task.kind.as_str(), reward_tmpl.text.clone(), reward_tmpl.path.display().to_string())?
            .with_group(if grpo { spec.ppo.group_size } else { 1 });
    let meta_cfg = meta_config(plan)?;
    let policy_tmpl = plan_template(plan, TemplateKind::Policy)?;

    // --- data ---------------------------------------------------------------------------------------
    let data_seed = spec.task.seed.unwrap_or_else(|| crate::rng::sub_seed(seed, "task/data"));
    let train = crate::task::load(spec.task.kind, &spec.task.train, data_seed).map_err(|e| RunError::Config(e.to_string()))?;
    let test = match &spec.task.test {
        Some(t) => Some(crate::task::load(spec.task.kind, t, spec.test_seed()).map_err(|e| RunError::Config(e.to_string()))?),
        None => None,
    };
    manifest.warmup_s = t_setup.elapsed().as_secs_f64();
    dir.write_manifest(manifest)?;

    let group = if grpo { spec.ppo.group_size } else { 1 };
    let per_update = spec.ppo.batch_size / group;
    let used = plan.inputs.train.used;
    let first_here = state.update + 1;
    let mut checkpointed_at = state.update;
    for update in state.update + 1..=updates {
        let t_update = Instant::now();
        // --- rollouts --------------------------------------------------------------------------
        progress.stage(&format!("update {update}: generating {} rollouts", spec.ppo.batch_size));
        let idx = prompt_indices(data_seed, train.records.len(), used, per_update, update);
        let mut prompts = Vec::with_capacity(spec.ppo.batch_size);
        for &i in &idx {
            let (text, ids) = policy_prompt(spec, &policy_tmpl, &tok, chat_override.as_deref(), &train.records[i])?;
            for _ in 0..group {
                prompts.push((i, text.clone(), ids.clone()));
            }
        }
        let gen_model = tr.policy.valid();
        let sampling = policy_sampling(spec, &tok, spec.ppo.temperature);
        let mut gens = Vec::with_capacity(prompts.len());
        for (c, chunk) in prompts.chunks(batch.max(1)).enumerate() {
            let ids: Vec<Vec<u32>> = chunk.iter().map(|p| p.2.clone()).collect();
            let mut rng = crate::rng::stream(seed, &format!("rollout/u{update:06}/c{c}"));
            gens.extend(generate(&gen_model, &tok, &ids, &sampling, true, &mut rng)?);
        }
        drop(gen_model);
        let t_gen = t_update.elapsed().as_secs_f64();

        // --- rewards -----------------------------------------------------------------------------
        progress.stage(&format!("update {update}: judging {} rollouts", gens.len()));
        let t_judge0 = Instant::now();
        let rollouts: Vec<Rollout> = prompts
            .iter()
            .zip(&gens)
            .enumerate()
            .map(|(k, ((i, text, _), g))| Rollout {
                id: format!("u{update:06}-r{k:03}"),
                question: text.clone(),
                response: g.text.clone(),
                record: &train.records[*i],
            })
            .collect();
        let mut usage = TokenUsage::default();
        let scored = reward::score_batch(reward_judge.as_mut(), &reward_cfg, &rubric, &rollouts, seed, update, &mut usage)?;
        state.usage.entry("reward".into()).or_default().add(&usage);
        let t_judge = t_judge0.elapsed().as_secs_f64();

        // --- PPO -----------------------------------------------------------------------------------
        progress.stage(&format!("update {update}: PPO"));
        let t_ppo0 = Instant::now();
        let penalty = spec
            .ppo
            .missing_eos_penalty
            .map(|p| p.amount(reward::reward_range(&spec.reward, (rubric.max_score() - rubric.min_score()) as f64)))
            .unwrap_or(0.0);
        let (seqs, groups_dropped) = training_batch(&prompts, &gens, &scored, penalty, tok.eos, group);
        let frac = match spec.ppo.lr_schedule {
            LrSchedule::Linear => 1.0 - (update - 1) as f64 / updates as f64,
            LrSchedule::Constant => 1.0,
        };
        let lr = spec.ppo.learning_rate * frac;
        let stats = train::update(&mut tr, &seqs, &spec.ppo, lr, tok.pad, batch, seed, update);
        let t_ppo = t_ppo0.elapsed().as_secs_f64();

        // --- logs ---------------------------------------------------------------------------------
        let rewards: Vec<f64> = scored.iter().filter_map(|s| s.reward).collect();
        let (rm, rsd, rmin, rmax) = mean_std(&rewards);
        let resp_tokens: Vec<(&str, usize)> = gens.iter().map(|g| (g.text.as_str(), g.tokens.len())).collect();
        let signals = reward::signals::compute(&resp_tokens, &scored, rubric.min_score() as f64, rubric.max_score() as f64);
        let first = *state.first_response_tokens.get_or_insert(signals.mean_response_tokens);
        let judge_r: Vec<f64> = scored.iter().filter_map(|s| s.judge_reward).collect();
        let ver: Vec<f64> = scored.iter().filter_map(|s| s.verifier_score).collect();
        let eos_rate = gens.iter().filter(|g| g.finish == Finish::Eos).count() as f64 / gens.len().max(1) as f64;

        // --- meta step ------------------------------------------------------------------------------
        state.meta_candidates.extend(meta_evidence(&rollouts, &scored, &rubric));
        let mut meta_row = J::Null;
        let mut t_meta = 0.0;
        if plan.schedule.meta_at.contains(&update) {
            progress.stage(&format!("update {update}: meta-reward step ({} candidates)", state.meta_candidates.len()));
            let t0 = Instant::now();
            let cfg = meta_cfg.as_ref().ok_or_else(|| RunError::Config("a meta step is scheduled but the stages are missing".into()))?;
            let judge: &mut dyn Judge = match meta_judge.as_mut() {
                Some(j) => j.as_mut(),
                None => reward_judge.as_mut(),
            };
            let outcome = meta::run(judge, cfg, &rubric, &state.meta_candidates, seed, update);
            state.usage.entry("meta".into()).or_default().add(&outcome.usage);
            let new_version = history.record(&outcome, &rubric, state.rubric_version)?;
            state.meta_steps += 1;
            state.meta_accepted += u32::from(new_version.is_some() && outcome.result.is_ok());
            meta_row = json!({"ran": true, "samples": outcome.evidence.len(), "new_version": new_version, "kept_because": outcome.result.as_ref().err(),
                "steps": state.meta_steps, "accepted": state.meta_accepted, "acceptance_rate": round4(state.meta_accepted as f64 / state.meta_steps as f64)});
            match (new_version, outcome.result) {
                (Some(v), Ok(r)) => {
                    progress.log(&format!("update {update}: rubric v{v:03} ({} items)", r.items.len()));
                    rubric = r;
                    state.rubric_version = v;
                }
                (_, Err(why)) => progress.log(&format!("update {update}: rubric kept ({why})")),
                _ => {}
            }
            state.meta_candidates.clear();
            t_meta = t0.elapsed().as_secs_f64();
        }

        // --- eval -------------------------------------------------------------------------------------
        let mut eval_row = J::Null;
        let mut t_eval = 0.0;
        if plan.schedule.eval_at.contains(&update)
            && let Some(test) = &test
        {
            progress.stage(&format!("update {update}: evaluating"));
            let t0 = Instant::now();
            let m = eval::evaluate(
                &tr.policy.valid(),
                &tok,
                spec,
                &policy_tmpl,
                chat_override.as_deref(),
                &test.records,
                plan.inputs.test.as_ref().map(|t| t.used).unwrap_or(0),
                dir,
                update,
                &format!("update-{update:06}"),
            )?;
            eval_row = json!(m);
            t_eval = t0.elapsed().as_secs_f64();
        }

        state.update = update;
        let reward_usage = state.usage.get("reward").copied().unwrap_or_default();
        let meta_usage = state.usage.get("meta").copied().unwrap_or_default();
        let row = json!({
            "update": update,
            "rubric_version": state.rubric_version,
            "episodes": update as u64 * spec.ppo.batch_size as u64,
            "reward": {"mean": round4(rm), "std": round4(rsd), "min": round4(rmin), "max": round4(rmax)},
            "judge_reward_mean": round4(mean_std(&judge_r).0),
            "verifier_mean": round4(mean_std(&ver).0),
            "score_mean": round4(stats.score),
            "kl": round4(stats.kl),
            "non_score_reward": round4(stats.non_score_reward),
            "entropy": round4(stats.entropy),
            "loss": {"policy": round4(stats.policy_loss), "value": stats.value_loss.map(round4), "total": round4(stats.policy_loss + spec.ppo.vf_coef * stats.value_loss.unwrap_or(0.0))},
            "clipfrac": round4(stats.clipfrac),
            "approxkl": round4(stats.approxkl),
            "lr": stats.lr,
            "trained_sequences": stats.sequences,
            "optimizer_steps": stats.optimizer_steps,
            "grad_norm": round4(stats.grad_norm),
            "groups_dropped": groups_dropped,
            "missing_eos_penalty": round4(penalty),
            "judge_failures": reward::failure_counts(&scored),
            "skipped": scored.iter().filter(|s| s.reward.is_none()).count(),
            "eos_rate": round4(eos_rate),
            "signals": {
                "mean_response_tokens": round4(signals.mean_response_tokens),
                "length_ratio_to_first_update": round4(signals.mean_response_tokens / first.max(1e-9)),
                "repetition_rate": round4(signals.repetition_rate),
                "identical_share": round4(signals.identical_share),
                "max_score_share": round4(signals.max_score_share),
                "judge_verifier_disagreement": signals.judge_verifier_disagreement.map(round4),
            },
            "tokens": {
                "policy_generated": gens.iter().map(|g| g.tokens.len()).sum::<usize>(),
                "reward_judge": {"calls": usage.calls, "cached": usage.cached_calls, "prompt": usage.prompt_tokens, "completion": usage.completion_tokens},
                "reward_judge_total": {"prompt": reward_usage.prompt_tokens, "completion": reward_usage.completion_tokens},
                "meta_judge_total": {"prompt": meta_usage.prompt_tokens, "completion": meta_usage.completion_tokens},
            },
            "meta": meta_row,
            "eval": eval_row,
            "time_s": {"generate": round4(t_gen), "judge": round4(t_judge), "ppo": round4(t_ppo), "meta": round4(t_meta), "eval": round4(t_eval), "total": round4(t_update.elapsed().as_secs_f64())},
            "wall_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
        });
        dir.append_jsonl("metrics.jsonl", &row)?;
        if spec.output.samples {
            let lines: Vec<J> = rollouts
                .iter()
                .zip(&gens)
                .zip(&scored)
                .zip(&prompts)
                .map(|(((r, g), s), p)| {
                    json!({"id": r.id, "record_index": p.0, "record_id": r.record.get("id"), "question": r.question, "response": g.text, "tokens": g.tokens.len(),
                        "finish": g.finish, "reward": s.reward, "source": s.source, "judge_reward": s.judge_reward, "verifier": s.verifier_score,
                        "verdicts": s.verdicts, "item_scores": s.item_scores, "failure": s.failure, "judge_prompt": s.judge_prompt, "judge_answers": s.judge_answers})
                })
                .collect();
            dir.write_jsonl(&format!("samples/update-{update:06}.jsonl"), &lines)?;
        }
        tensorboard::write(&dir.path("events.out.tfevents.mpo"), &dir.read_jsonl("metrics.jsonl")?)?;
        manifest.updates_done = update;
        dir.write_manifest(manifest)?;
        let ran_here = update - first_here + 1;
        progress.done(
            update as u64,
            &format!(
                "update {update}/{updates}: reward {} (judge {}, verifier {}) kl {:.4} len {:.0} failures {} rubric v{:03} | gen {:.0}s judge {:.0}s ppo {:.0}s{}",
                fmt3(rm),
                fmt3(mean_std(&judge_r).0),
                fmt3(mean_std(&ver).0),
                stats.kl,
                signals.mean_response_tokens,
                scored.iter().filter(|s| s.failure.is_some()).count(),
                state.rubric_version,
                t_gen,
                t_judge,
                t_ppo,
                if t_meta > 0.0 { format!(" meta {t_meta:.0}s") } else { String::new() }
            ),
        );

        // --- checkpoint / stop -----------------------------------------------------------------
        let stopping = stop.load(Ordering::SeqCst) || opts.stop_after.is_some_and(|n| ran_here >= n);
        if plan.schedule.checkpoint_at.contains(&update) || (stopping && checkpointed_at != update) {
            progress.stage(&format!("update {update}: checkpoint"));
            checkpoint::save(dir, &tr, &state, spec.output.keep_checkpoints)?;
            checkpointed_at = update;
        }
        if stopping && update < updates {
            progress.finish();
            return Ok(RunOutcome::Stopped { dir: dir.root.clone(), update });
        }
    }
    progress.finish();
    Ok(RunOutcome::Finished { dir: dir.root.clone(), updates })
}

/// Drop what a crashed process wrote after the checkpoint of `update`: metrics rows, samples,
/// eval files and rubric versions it produced, so the resumed run rewrites them.
fn truncate_after(dir: &RunDir, history: &History, update: u32, version: u32) -> Result<(), RunError> {
    dir.truncate_metrics(update)?;
    for sub in ["samples", "eval"] {
        if let Ok(rd) = std::fs::read_dir(dir.path(sub)) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                if let Some(u) = n.strip_prefix("update-").and_then(|s| s.strip_suffix(".jsonl")).and_then(|s| s.parse::<u32>().ok())
                    && u > update
                {
                    std::fs::remove_file(e.path())?;
                }
            }
        }
    }
    let entries = history.entries()?;
    let keep: Vec<J> = entries.iter().filter(|e| e.trigger_update <= update).map(|e| serde_json::to_value(e).unwrap_or_default()).collect();
    dir.write_jsonl("rubrics/history.jsonl", &keep)?;
    for e in entries.iter().filter(|e| e.trigger_update > update) {
        if let Some(v) = e.version.filter(|v| *v > version) {
            results::remove(&history.version_path(v))?;
        }
    }
    Ok(())
}

pub(crate) fn plan_template(plan: &Plan, kind: TemplateKind) -> Result<crate::spec::validate::TemplateFile, RunError> {
    let info =
        plan.inputs.templates.get(kind.as_str()).ok_or_else(|| RunError::Config(format!("the plan has no {} template", kind.as_str())))?;
    let text = std::fs::read_to_string(&info.path).map_err(|e| {
        let hint = if Path::new(&info.path).is_relative() {
            " (a plan's relative paths resolve against the directory it was made in: run from there)"
        } else {
            ""
        };
        RunError::Config(format!("reading {}: {e}{hint}", info.path))
    })?;
    let sha = crate::task::hex(&<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()));
    if sha != info.sha256 {
        return Err(RunError::Config(format!(
            "template {} changed since the plan was made (sha256 {sha}, plan {}); re-plan with `mpo run SPEC`",
            info.path, info.sha256
        )));
    }
    Ok(crate::spec::validate::TemplateFile { path: PathBuf::from(&info.path), text, sha256: sha })
}

fn plan_rubric(plan: &Plan) -> Result<Rubric, RunError> {
    let t = plan_template(plan, TemplateKind::Rubric)?;
    let text = crate::template::render(&t.path.display().to_string(), &t.text, &json!({"task": plan.spec.task.kind.as_str()}))
        .map_err(|e| RunError::Config(e.to_string()))?;
    Rubric::parse(&text).map_err(|e| RunError::Config(format!("initial rubric: {e}")))
}

fn meta_config(plan: &Plan) -> Result<Option<MetaConfig>, RunError> {
    let spec = &plan.spec;
    if spec.meta.every == crate::spec::Every::Never {
        return Ok(None);
    }
    let t = |k: TemplateKind| plan_template(plan, k).map(|f| (f.path.display().to_string(), f.text));
    let js = spec.meta.judge.as_ref().unwrap_or(&spec.reward.judge);
    Ok(Some(MetaConfig {
        task: spec.task.kind.as_str().into(),
        prescreen: if plan.inputs.templates.contains_key("prescreen") { Some(t(TemplateKind::Prescreen)?) } else { None },
        analyze: t(TemplateKind::Analyze)?,
        refine: t(TemplateKind::Refine)?,
        merge: t(TemplateKind::Merge)?,
        samples: spec.meta.samples,
        max_items: spec.meta.max_items,
        domain_guidelines: spec.meta.domain_guidelines,
        max_tokens: spec.meta.max_tokens,
        temperature: js.temperature,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::generate::Generated;
    use crate::reward::Scored;

    type Parts = ((usize, String, Vec<u32>), Generated, Scored);

    fn rollout(prompt: usize, reward: Option<f64>, finish: Finish) -> Parts {
        (
            (prompt, format!("p{prompt}"), vec![100 + prompt as u32]),
            Generated { tokens: vec![1, 2], logprobs: vec![0.0, 0.0], text: "x".into(), finish },
            Scored {
                id: String::new(),
                reward,
                source: "judge".into(),
                verdicts: vec![],
                verifier_score: None,
                judge_reward: reward,
                item_scores: None,
                judge_prompt: None,
                judge_answers: vec![],
                failure: None,
            },
        )
    }

    fn batch(rs: Vec<Parts>, penalty: f64, group: usize) -> (Vec<Seq>, usize) {
        let (mut p, mut g, mut s) = (vec![], vec![], vec![]);
        for (a, b, c) in rs {
            p.push(a);
            g.push(b);
            s.push(c);
        }
        training_batch(&p, &g, &s, penalty, 0, group)
    }

    #[test]
    fn a_skipped_rollout_does_not_shift_grpo_groups() {
        // 4 prompts x 4 samples, rollout 1 skipped: groups stay AAA BBBB CCCC DDDD (not AAAB ...)
        let rs = (0..16).map(|k| rollout(k / 4, (k != 1).then_some(k as f64), Finish::Eos)).collect();
        let (seqs, dropped) = batch(rs, 0.0, 4);
        assert_eq!((seqs.len(), dropped), (15, 0));
        for s in &seqs {
            assert_eq!(s.query, vec![100 + s.group as u32], "a sequence landed in another prompt's group");
        }
        // three of A's four skipped: A has no spread left and is dropped whole
        let rs = (0..8).map(|k| rollout(k / 4, (k == 0 || k >= 4).then_some(1.0), Finish::Eos)).collect();
        let (seqs, dropped) = batch(rs, 0.0, 4);
        assert_eq!((seqs.len(), dropped), (4, 1));
        assert!(seqs.iter().all(|s| s.group == 1));
    }

    #[test]
    fn meta_evidence_is_what_the_judge_scored() {
        let rec = serde_json::json!({});
        let rollouts: Vec<Rollout> =
            (0..3).map(|k| Rollout { id: format!("r{k}"), question: "q".into(), response: "a".into(), record: &rec }).collect();
        let mut scored: Vec<Scored> = (0..3).map(|k| rollout(k, Some(1.0), Finish::Eos).2).collect();
        // r0 judged, r1 scored by the verifier (coin), r2 skipped
        scored[0].item_scores = Some(crate::reward::score::ItemScores { scores: vec![("Correct".into(), 3.0)] });
        scored[1].source = "verifier".into();
        scored[2].reward = None;
        let rubric = Rubric::parse("## Correct (0-4)\n").unwrap();
        let ev = meta_evidence(&rollouts, &scored, &rubric);
        assert_eq!(ev.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), vec!["r0"]);
        assert_eq!(ev[0].score, Some(3.0));
    }

    #[test]
    fn only_a_cut_off_response_is_penalised() {
        let rs = vec![rollout(0, Some(1.0), Finish::Eos), rollout(1, Some(1.0), Finish::Stop), rollout(2, Some(1.0), Finish::Length)];
        let (seqs, _) = batch(rs, 0.25, 1);
        assert_eq!(seqs.iter().map(|s| s.score).collect::<Vec<_>>(), vec![1.0, 1.0, 0.75]);
    }

    #[test]
    fn prompt_indices_are_epochs_of_permutations() {
        let a: Vec<usize> = (1..=3).flat_map(|u| prompt_indices(1, 10, 6, 4, u)).collect();
        assert_eq!(a, (1..=3).flat_map(|u| prompt_indices(1, 10, 6, 4, u)).collect::<Vec<_>>());
        // the first epoch (6 prompts) covers the 6-record subset exactly once
        let mut first: Vec<usize> = a[..6].to_vec();
        first.sort();
        first.dedup();
        assert_eq!(first.len(), 6);
        assert!(a.iter().all(|&i| i < 10));
    }
}
