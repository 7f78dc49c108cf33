//! `mpo run`: the executor. It runs a [`Plan`] and writes its results; it is the imperative
//! shell around the pure parts (plan, PPO math, scoring, rubric parsing).
//!
//! [`setup`] builds one [`Runner`] (models, judges, the rubric in force, the checkpointed
//! state); then every update runs the same phases, each in its own file:
//!
//! 1. [`rollout`]: the update's prompts (seeded by the update number), the policy's responses;
//! 2. [`score`]: judge and verifier scores under the current rubric;
//! 3. [`train`]: one PPO / GRPO update;
//! 4. [`meta_step`]: at the planned updates, the meta-reward step (it may switch the rubric);
//! 5. [`eval`]: at the planned updates, the held-out evaluation;
//! 6. [`record`]: the metrics row, samples, TensorBoard, the progress line;
//! 7. [`checkpoint`]: at the planned updates, and whenever the run stops early.
//!
//! Re-running a finished plan does nothing; re-running an interrupted one resumes from its last
//! checkpoint and reproduces the uninterrupted run. Ctrl-C stops after a checkpoint.

pub mod checkpoint;
pub mod eval;
pub mod lock;
pub mod meta_step;
pub mod progress;
pub mod record;
pub mod rollout;
pub mod rubrics;
pub mod score;
pub mod setup;
pub mod tensorboard;
pub mod train;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;

use crate::model::{self, BackendJob};
use crate::plan::Plan;
use crate::results::{self, Manifest, RunDir, Status};
pub use setup::Runner;

/// Why a run could not go on. Each says what happened; [`RunError::help`] what to do.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Judge(#[from] crate::judge::factory::BuildError),
    #[error("model: {0}")]
    Model(#[from] model::ModelError),
    #[error("writing results: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Reward(#[from] crate::reward::RewardError),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error("generation: {0}")]
    Generate(#[from] model::generate::GenerateError),
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] model::tokenizer::TokenizerError),
    #[error(transparent)]
    Template(#[from] crate::template::TemplateError),
    #[error("task data: {0}")]
    Data(#[from] crate::task::DataError),
    #[error(transparent)]
    Results(#[from] results::ResultsError),
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    #[error(transparent)]
    PlanFile(#[from] crate::plan::PlanFileError),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    Eval(#[from] crate::eval::EvalError),
    #[error("meta.gate: {0}")]
    Gate(#[from] crate::cases::ScoreError),
    #[error("reading {path}: {error}")]
    CaseFile { path: String, error: crate::cases::CaseFileError },
    #[error("{what}: {message}")]
    Rubric { what: String, message: String },
    #[error("{0}")]
    Backend(String),
    #[error("model: {0}")]
    Folder(#[from] model::folder::FolderError),
    #[error("model {path} changed since the plan was made (content sha256 {now}, the plan's {planned})")]
    ModelChanged { path: String, now: String, planned: String },
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
}

impl RunError {
    /// What the user can do about it, where there is something.
    pub fn help(&self) -> Option<String> {
        match self {
            RunError::Judge(e) => e.help(),
            RunError::Lock(e) => e.help(),
            RunError::Checkpoint(e) => e.help(),
            RunError::Engine(e) => e.help(),
            RunError::PlanFile(e) => e.help(),
            RunError::Policy(e) => e.help(),
            RunError::Eval(e) => e.help(),
            RunError::ModelChanged { .. } => Some(
                "the files at that path are not the ones the plan (and its run id) were made with: restore them, or re-plan from the spec for a run of its own".into(),
            ),
            RunError::Folder(e) => Some(e.help()),
            RunError::Reward(e) => e.help(),
            _ => None,
        }
    }
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
    /// Start over: the run's earlier files move into `superseded/` first.
    pub restart: bool,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    AlreadyFinished(PathBuf),
    /// `summary`: lines worth a reader's attention about the whole run.
    Finished {
        dir: PathBuf,
        updates: u32,
        summary: Vec<String>,
    },
    Stopped {
        dir: PathBuf,
        update: u32,
    },
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
    let backend = plan.spec.runtime.backend;
    if !backend.compiled_in() {
        // before the run folder exists: a plan emitted on a login node fails here, not half-way
        return Err(RunError::Backend(format!("backend `{}` is not compiled into this mpo; {}", backend.as_str(), backend.build_hint())));
    }
    // A frozen plan (a queued Slurm array, a resume) must not continue on other weights.
    let models = &plan.inputs.models;
    for m in std::iter::once(&models.policy).chain(models.judge.as_ref()).chain(models.meta.as_ref()) {
        if let Some((path, planned, now)) = model::folder::changed(m)? {
            return Err(RunError::ModelChanged { path: path.display().to_string(), now, planned });
        }
    }
    if !opts.restart
        && let Some(m) = dir.manifest()
        && m.status == Status::Finished
    {
        return Ok(RunOutcome::AlreadyFinished(dir.root));
    }
    std::fs::create_dir_all(&dir.root)?;
    let _lock = lock::RunLock::take(&dir.path("run.lock"))?;
    if opts.restart
        && let Some(folder) = setup::restart(&dir)?
        && !opts.quiet
    {
        eprintln!("restarting: the earlier attempt's files are kept in {}", folder.display());
    }
    // What the run reads, copied into its folder once: its analysis needs nothing else.
    for why in crate::results::inputs::store(&dir, plan)? {
        if !opts.quiet {
            eprintln!("warning: not copied into {}/inputs: {why}", dir.root.display());
        }
    }
    if let Some(t) = plan.spec.runtime.threads {
        // Only the first pool request of a process takes effect; later runs share it.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(t).build_global();
    }
    let job = Job { plan: plan.clone(), opts: opts.clone(), dir: dir.clone() };
    model::dispatch(plan.spec.runtime.backend, plan.spec.runtime.device, job).map_err(|e| RunError::Backend(e.to_string()))?
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
        adapter: model::adapter(plan.spec.runtime.backend, plan.spec.runtime.device),
        host: Some(results::Host::this()),
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

/// The update loop: the phases of one MPO update, in order, until the plan is done or the run
/// is asked to stop.
fn execute<B: AutodiffBackend>(
    plan: &Plan,
    opts: &RunOptions,
    dir: &RunDir,
    device: &B::Device,
    manifest: &mut Manifest,
) -> Result<RunOutcome, RunError> {
    let (mut r, data) = setup::start::<B>(plan, opts, dir, device, manifest)?;
    eval::evaluate_base(&r, &data)?;
    let stop = interrupted();
    let updates = plan.schedule.updates;
    let first_here = r.state.update + 1;
    let mut checkpointed_at = r.state.update;
    for update in first_here..=updates {
        let started = Instant::now();
        let batch = rollout::generate(&mut r, &data.train, update)?;
        let scoring = score::score(&mut r, &batch, &data.train, update)?;
        let trained = train::train(&mut r, &batch, &scoring, update);
        let meta = meta_step::maybe_run(&mut r, &scoring, update)?;
        let eval = eval::maybe_evaluate(&r, &data, update)?;
        record::record(&mut r, record::Update { update, started, batch: &batch, scoring: &scoring, trained: &trained, meta, eval })?;

        let stopping = stop.load(Ordering::SeqCst) || opts.stop_after.is_some_and(|n| update - first_here + 1 >= n);
        if plan.schedule.checkpoint_at.contains(&update) || (stopping && checkpointed_at != update) {
            r.progress.stage(&format!("update {update}: checkpoint"));
            checkpoint::save(dir, &r.tr, &r.state, plan.spec.output.keep_checkpoints, &plan.schedule.eval_at)?;
            checkpointed_at = update;
        }
        if stopping && update < updates {
            r.progress.finish();
            return Ok(RunOutcome::Stopped { dir: dir.root.clone(), update });
        }
    }
    r.progress.finish();
    let mut summary = before_after(plan, dir);
    summary.extend(transport(&dir.metrics()?));
    Ok(RunOutcome::Finished { dir: dir.root.clone(), updates, summary })
}

/// The base policy against the trained one on each held-out split, with intervals.
pub fn before_after(plan: &Plan, dir: &RunDir) -> Vec<String> {
    let Some(last) = plan.schedule.eval_at.last() else { return Vec::new() };
    results::evals::SPLITS
        .iter()
        .flat_map(|split| results::evals::compare(dir, split, "base", &format!("update-{last:06}")))
        .flat_map(|c| c.lines())
        .collect()
}

/// The run's judge transport, totalled over its rows, where any request had to be retried or
/// failed.
fn transport(rows: &[results::MetricsRow]) -> Vec<String> {
    // (who, where its rows keep it) -> totals
    let mut totals: BTreeMap<(String, &str), crate::judge::Transport> = BTreeMap::new();
    for r in rows {
        for (role, t) in &r.judge_transport {
            totals.entry((format!("{role} judge"), "judge_transport")).or_default().add(t);
        }
        if let Some(t) = &r.rollouts.transport {
            totals.entry(("rollout engine".into(), "rollouts.transport")).or_default().add(t);
        }
    }
    totals
        .iter()
        .filter(|(_, t)| !t.is_clean())
        .map(|((who, field), t)| format!("{who}: {} over {} HTTP requests (by update: {field} in metrics.jsonl)", t.summary(), t.attempts))
        .collect()
}
