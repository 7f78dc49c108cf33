//! `mpo eval`: the task metrics of a run's saved checkpoint (or of the base model) on the test
//! split, and pairwise tournaments between runs (`mpo eval --elo`: `elo.rs` draws, judges and
//! rates; `rating.rs` is the Bradley–Terry and sequential-Elo math; this file reads the runs,
//! pools the seeds of an arm into one player and chooses the judge).
//!
//! A checkpoint's evaluation writes `eval/checkpoint-NNNNNN.jsonl` (responses) and
//! `eval/checkpoint-NNNNNN.json` (metrics) into the run; `--checkpoint base` evaluates the
//! policy with its adapter switched off (`eval/base.*`). Tournaments read those response files.

pub mod compare;
pub mod elo;
pub mod measure;
pub mod metrics;
pub mod rating;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use burn::tensor::backend::AutodiffBackend;

use crate::judge::factory::{self, JudgeEnv};
use crate::model::registry::ModelRef;
use crate::model::{self, BackendJob};
use crate::plan::Plan;
use crate::policy::Adapters;
use crate::results::evals::{EvalSummary, Measure};
use crate::results::{ResultsError, RunDir};
use crate::spec::{JudgeBackend, JudgeSpec};
use crate::task::Split;
use measure::{Evaluator, base_cached};

/// Which weights to evaluate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Which {
    /// The newest checkpoint.
    Latest,
    /// The pretrained policy, adapter off.
    Base,
    /// The checkpoint after this update.
    Update(u32),
}

/// A `--checkpoint` that names no checkpoint.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("`{0}`: expected an update number, `latest` or `base`")]
pub struct NotACheckpoint(String);

impl std::str::FromStr for Which {
    type Err = NotACheckpoint;
    fn from_str(s: &str) -> Result<Self, NotACheckpoint> {
        match s {
            "latest" => Ok(Which::Latest),
            "base" => Ok(Which::Base),
            n => n.parse().map(Which::Update).map_err(|_| NotACheckpoint(n.to_string())),
        }
    }
}

/// Why an evaluation could not run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The arguments ask for something that cannot be (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The inputs are wrong or missing (exit 1).
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Results(#[from] ResultsError),
    #[error(transparent)]
    PlanFile(#[from] crate::plan::PlanFileError),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    Judge(#[from] crate::judge::factory::BuildError),
    #[error(transparent)]
    Reward(#[from] crate::reward::RewardError),
    #[error(transparent)]
    Template(#[from] crate::template::TemplateError),
    #[error("generation: {0}")]
    Generate(#[from] crate::model::generate::GenerateError),
    #[error("task data: {0}")]
    Data(#[from] crate::task::DataError),
    #[error("writing results: {0}")]
    Io(#[from] std::io::Error),
    #[error("{what}: {message}")]
    Rubric { what: String, message: String },
    /// The backend could not run (its message carries its own help).
    #[error(transparent)]
    Device(#[from] model::DeviceError),
    #[error(transparent)]
    Evals(#[from] crate::results::evals::EvalsError),
    #[error(transparent)]
    Elo(#[from] elo::EloError),
}

impl EvalError {
    pub fn help(&self) -> Option<String> {
        match self {
            EvalError::PlanFile(e) => e.help(),
            EvalError::Policy(e) => e.help(),
            EvalError::Judge(e) => e.help(),
            EvalError::Reward(e) => e.help(),
            _ => None,
        }
    }
}

fn usage(s: impl Into<String>) -> EvalError {
    EvalError::Usage(s.into())
}

fn input(s: impl Into<String>) -> EvalError {
    EvalError::Input(s.into())
}

/// What `mpo eval` evaluates: a run's saved weights, or a spec's base model before training.
#[derive(Debug, Clone)]
pub enum Subject {
    Run { dir: PathBuf, which: Which },
    Base(Box<Plan>),
}

impl Subject {
    /// The run directory the results go to.
    pub fn dir(&self) -> PathBuf {
        match self {
            Subject::Run { dir, .. } => dir.clone(),
            Subject::Base(p) => RunDir::for_plan(p).root,
        }
    }

    /// Evaluate it.
    pub fn evaluate(&self) -> Result<EvalResult, EvalError> {
        match self {
            Subject::Run { dir, which } => eval_run(dir, *which),
            Subject::Base(p) => eval_base_of_plan(p),
        }
    }
}

/// The subjects of a spec's cells: their base models (a spec has no checkpoints yet).
pub fn spec_subjects(plans: Vec<Plan>, which: Which) -> Result<Vec<Subject>, EvalError> {
    if which != Which::Base && which != Which::Latest {
        return Err(usage("a spec has no checkpoints yet: evaluate its base model (the default), or a run directory"));
    }
    Ok(plans.into_iter().map(|p| Subject::Base(Box::new(p))).collect())
}

/// What `mpo eval` prints for one result: every split's metrics, the headline with its 95%
/// interval, and against the base policy's evaluation when the run has one.
pub fn summary(subject: &Subject, res: &EvalResult) -> String {
    let mut out = String::new();
    for s in &res.splits {
        out.push_str(&format!("{} {} on {} {} prompts:\n", subject.dir().display(), res.label, s.samples, s.split));
        for (k, v) in &s.metrics {
            out.push_str(&format!("  {k:<24} {v:.4}\n"));
        }
        let lines = RunDir { root: subject.dir() }.read_eval(&s.split, &res.label).map(|(_, l)| l).unwrap_or_default();
        for m in Measure::of(s) {
            let scores: Vec<f64> = lines.iter().filter_map(|l| m.score(l)).collect();
            if scores.is_empty() {
                continue;
            }
            let e = crate::results::evals::estimate(&scores, 0);
            let interval = match e.ci {
                Some((lo, hi)) => format!("[{lo:.4}, {hi:.4}] {} on {} prompts", e.how, scores.len()),
                None => format!("{} ({} prompts)", e.how, scores.len()),
            };
            let note = match m {
                Measure::Headline => s.note.clone(),
                Measure::Instrument => s.instrument.as_ref().map(|i| i.describe()),
            };
            let name = m.name(s).unwrap_or_default();
            out.push_str(&format!("  {name:<24} {interval}{}\n", note.map(|n| format!(" ({n})")).unwrap_or_default()));
        }
        out.push_str(&format!(
            "  responses: {}\n",
            subject.dir().join(crate::results::evals::folder(&s.split)).join(format!("{}.jsonl", res.label)).display()
        ));
    }
    for line in &res.comparisons {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// What an evaluation produced: one summary per held-out split, and (for trained weights) the
/// comparison with the base policy's evaluation.
#[derive(Debug, Clone)]
pub struct EvalResult {
    pub label: String,
    pub splits: Vec<EvalSummary>,
    pub comparisons: Vec<String>,
}

struct EvalJob {
    run: PathBuf,
    plan: Plan,
    /// (update, checkpoint dir); None = base model.
    checkpoint: Option<(u32, PathBuf)>,
}

impl BackendJob for EvalJob {
    type Output = Result<EvalResult, EvalError>;
    fn run<B: AutodiffBackend>(self, device: B::Device, _backend: &'static str) -> Self::Output {
        let spec = &self.plan.spec;
        if spec.task.test.is_none() {
            return Err(input(format!("{}: the spec has no `task.test` split to evaluate on", self.run.display())));
        }
        let seed = spec.runtime.seed;
        // The base model is the policy without adapters (a fresh adapter is the base anyway).
        let adapters = if self.checkpoint.is_some() { Adapters::Fresh } else { Adapters::Off };
        let loaded = crate::policy::load::<B::InnerBackend>(&self.plan, adapters, &device, &mut |m| eprintln!("{m}"))?;
        let (policy, update, label) = match &self.checkpoint {
            Some((u, d)) => {
                let m = crate::model::adapter::load(loaded.model, &d.join("policy.safetensors"))
                    .map_err(|e| input(format!("{}: {e}", d.display())))?;
                (m, *u, format!("checkpoint-{u:06}"))
            }
            None => (loaded.model, 0, "base".to_string()),
        };
        let dir = RunDir { root: self.run.clone() };
        let cache = dir.path("judge-cache");
        let env = crate::judge::factory::JudgeEnv {
            policy_ref: &self.plan.inputs.models.policy,
            shared: Some((&policy, &loaded.tok)),
            batch: spec.runtime.rollout_batch,
            seed,
            device: &device,
            cache: &cache,
            quantized_decode: spec.runtime.quantized_decode,
        };
        let instrument = measure::Instrument::build(&self.plan, &env)?;
        let ev = Evaluator {
            plan: &self.plan,
            tok: &loaded.tok,
            template: &loaded.template,
            chat_override: loaded.chat.as_deref(),
            instrument: instrument.as_ref(),
        };
        let mut res = EvalResult { label: label.clone(), splits: Vec::new(), comparisons: Vec::new() };
        for (split, src) in [("test", &spec.task.test), ("transfer", &spec.task.transfer)] {
            let Some(src) = src else { continue };
            let data = crate::task::load(spec.task.kind, src, spec.test_seed(), Split::Test)?;
            let measure = || ev.run(&policy, true, split, &data.records, update, &label, &dir);
            if self.checkpoint.is_none() {
                base_cached(&ev, split, &dir, measure)?;
            } else {
                measure()?;
            }
            let (summary, _) =
                dir.read_eval(split, &label).ok_or_else(|| input(format!("{}: the evaluation was not written", dir.root.display())))?;
            res.splits.push(summary);
            if self.checkpoint.is_some() {
                for c in crate::results::evals::compare(&dir, split, "base", &label) {
                    res.comparisons.extend(c.lines());
                }
            }
        }
        Ok(res)
    }
}

/// Evaluate the base model of a spec's plan before any training: the results go to the run
/// directory the plan will train in (`eval/base.*`, which `mpo run` keeps).
pub fn eval_base_of_plan(plan: &Plan) -> Result<EvalResult, EvalError> {
    let dir = RunDir::for_plan(plan);
    let existing = RunDir::open(&dir.root).and_then(|d| d.plan()).ok();
    if existing.as_ref().is_some_and(|p| p.run_id != plan.run_id) {
        return Err(input(format!("{} holds another plan", dir.root.display())));
    }
    if existing.is_none() {
        dir.write_json("plan.json", plan)?;
    }
    crate::results::inputs::store(&dir, plan)?;
    eval_run(&dir.root, Which::Base)
}

/// Evaluate a run's checkpoint (or the base model) on its test split.
pub fn eval_run(run: &Path, which: Which) -> Result<EvalResult, EvalError> {
    let dir = RunDir::open(run)?;
    // The run's own copies of what it read: a run folder is evaluated from anywhere.
    let local = dir.local_plan()?;
    local.require(&["templates/policy", "chat_template", "data/test", "data/transfer"])?;
    let plan = local.plan;
    let cks = dir.checkpoints();
    let checkpoint =
        match which {
            Which::Base => None,
            Which::Latest => Some(cks.iter().next_back().map(|(u, d)| (*u, d.clone())).ok_or_else(|| {
                input(format!("{} has no checkpoint yet; evaluate the base model with `--checkpoint base`", run.display()))
            })?),
            Which::Update(u) => Some(cks.get(&u).map(|d| (u, d.clone())).ok_or_else(|| {
                let have: Vec<String> = cks.keys().map(u32::to_string).collect();
                input(format!(
                    "{} has no checkpoint of update {u}; saved: {}{}",
                    run.display(),
                    if have.is_empty() { "none".into() } else { have.join(", ") },
                    match plan.spec.output.keep_checkpoints {
                        crate::spec::Keep::Newest(n) =>
                            format!(" (the run kept the newest {n} and those at evaluated updates: `output.keep_checkpoints`)"),
                        crate::spec::Keep::All => " (checkpoints are written at `runtime.checkpoint_every`)".to_string(),
                    }
                ))
            })?),
        };
    let job = EvalJob { run: run.to_path_buf(), plan: plan.clone(), checkpoint };
    model::dispatch(plan.spec.runtime.backend, plan.spec.runtime.device, job).map_err(EvalError::from)?
}

/// How an argument of `mpo eval --elo` reads.
#[derive(Debug, Clone, PartialEq)]
enum EloArg {
    /// A run directory: its newest evaluation plays.
    Run(PathBuf),
    /// An evaluation file and the run it belongs to.
    File { file: PathBuf, run: PathBuf },
    /// Not a run (`results/NAME/slurm`, `elo/`, `report.md`): skipped, with why.
    Skip(String),
}

fn classify(arg: &Path) -> Result<EloArg, EvalError> {
    if arg.is_dir() {
        return Ok(if arg.join("plan.json").is_file() {
            EloArg::Run(arg.to_path_buf())
        } else {
            EloArg::Skip(format!("{}: not a run directory (no plan.json)", arg.display()))
        });
    }
    if arg.is_file() {
        if arg.extension().is_some_and(|x| x == "jsonl") {
            let run = arg.ancestors().skip(1).find(|d| d.join("plan.json").is_file()).ok_or_else(|| {
                input(format!("{}: an evaluation file lies in a run directory (RUN/eval/FILE.jsonl); this one does not", arg.display()))
            })?;
            return Ok(EloArg::File { file: arg.to_path_buf(), run: run.to_path_buf() });
        }
        return Ok(EloArg::Skip(format!("{}: not a run directory or an evaluation file (RUN/eval/FILE.jsonl)", arg.display())));
    }
    Err(input(format!("{}: no such run directory or evaluation file", arg.display())))
}

/// A run's newest evaluation responses: the highest update among update-N / checkpoint-N, the
/// base model's last.
fn newest_eval(run: &Path) -> Result<PathBuf, EvalError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(run.join("eval"))
        .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "jsonl")).collect())
        .unwrap_or_default();
    files.sort_by_key(|p| {
        let n = p.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        (n.rsplit('-').next().and_then(|u| u.parse::<u32>().ok()).map(|u| (1, u)).unwrap_or((0, 0)), n)
    });
    files.pop().ok_or_else(|| {
        input(format!(
            "{} has no evaluation responses: run `mpo eval {}` first (or set `eval.every` in the spec)",
            run.display(),
            run.display()
        ))
    })
}

/// One source of responses, read: the member, its run's plan, and its weights (`update-000010`,
/// `checkpoint-000004`, `base`).
pub struct Source {
    pub member: elo::Member,
    pub plan: Plan,
    pub weights: String,
    pub file: PathBuf,
    pub run: PathBuf,
}

fn read_source(file: &Path, run: &Path) -> Result<Source, EvalError> {
    // Paths at the run's own copies (the pairwise template), wherever the folder is.
    let plan = RunDir::open(run)?.local_plan()?.plan;
    let lines: Vec<(String, String)> = crate::results::evals::read_lines(file)?.into_iter().map(|l| (l.question, l.response)).collect();
    let weights = file.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    let member = elo::Member::new(format!("{} @{weights}", plan.run_id), lines);
    Ok(Source { member, plan, weights, file: file.to_path_buf(), run: run.to_path_buf() })
}

/// The players of a tournament from its sources: one per arm (runs that differ only by
/// `runtime.seed`, [`Plan::arm_id`]; a base-model evaluation is its own arm), or one per source
/// with `per_run`. Also the notes worth printing (an arm pooling different weights).
pub fn players(sources: &[Source], per_run: bool) -> (Vec<elo::Player>, Vec<String>) {
    let mut notes = Vec::new();
    if per_run {
        let ps = sources
            .iter()
            .map(|s| {
                let label = s.plan.cell.as_ref().map(|c| format!(" {}", c.label)).unwrap_or_default();
                elo::Player { name: format!("{}/{}{label} @{}", s.plan.name, s.plan.run_id, s.weights), members: vec![s.member.clone()] }
            })
            .collect();
        return (ps, notes);
    }
    let several_specs = sources.iter().any(|s| s.plan.name != sources[0].plan.name);
    // (arm id, base?) -> (label, sources), in order of first appearance
    let mut arms: Vec<((String, bool), String, Vec<&Source>)> = Vec::new();
    for s in sources {
        let key = (s.plan.arm_id(), s.weights == "base");
        match arms.iter_mut().find(|(k, _, _)| *k == key) {
            Some((_, _, v)) => v.push(s),
            None => {
                let mut label = match &s.plan.cell {
                    Some(_) if several_specs => format!("{}: {}", s.plan.name, s.plan.arm()),
                    Some(_) => s.plan.arm(),
                    None => s.plan.name.clone(),
                };
                if key.1 {
                    label.push_str(" @base");
                }
                arms.push((key, label, vec![s]));
            }
        }
    }
    // in sweep order, as the report lists its groups (a base-model player after its arm)
    arms.sort_by_key(|(key, _, ss)| (ss.iter().map(|s| s.plan.cell.as_ref().map_or(usize::MAX, |c| c.index)).min(), key.1));
    // arms whose labels coincide (plain runs of one spec with other overrides) get their id
    let labels: Vec<String> = arms.iter().map(|a| a.1.clone()).collect();
    for (key, label, _) in arms.iter_mut() {
        if labels.iter().filter(|l| *l == label).count() > 1 {
            label.push_str(&format!(" [{}]", key.0));
        }
    }
    let ps = arms
        .into_iter()
        .map(|(_, name, ss)| {
            let weights: BTreeSet<&str> = ss.iter().map(|s| s.weights.as_str()).collect();
            if weights.len() > 1 {
                let each: Vec<String> = ss.iter().map(|s| s.member.name.clone()).collect();
                notes.push(format!("{name} pools responses of different weights: {} (unfinished runs?)", each.join(", ")));
            }
            elo::Player { name, members: ss.iter().map(|s| s.member.clone()).collect() }
        })
        .collect();
    (ps, notes)
}

/// The tournament's judge: its spec, its in-process model, and how it was chosen.
#[derive(Debug, Clone)]
pub struct TournamentJudge {
    pub spec: JudgeSpec,
    pub model: Option<ModelRef>,
    pub info: elo::JudgeInfo,
}

/// A judge spec from a YAML file (the keys of `reward.judge`); paths in it (`model`,
/// `replay_from`) resolve against the file's directory.
pub fn read_judge_file(path: &Path) -> Result<(JudgeSpec, Option<ModelRef>), EvalError> {
    let text = std::fs::read_to_string(path).map_err(|e| input(format!("--judge {}: {e}", path.display())))?;
    let mut js: JudgeSpec = serde_saphyr::from_str(&text).map_err(|e| {
        input(format!(
            "--judge {}: not a judge spec: {e}\n  (the file holds the keys of `reward.judge`, e.g. `backend: openai`, `model: NAME`, `base_url_env: JUDGE_URL`)",
            path.display()
        ))
    })?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let model = match js.backend {
        JudgeBackend::Local => {
            let name = js
                .model
                .clone()
                .ok_or_else(|| input(format!("--judge {}: a local judge names its model (`model: NAME` or a path)", path.display())))?;
            Some(crate::model::registry::resolve(&name, &dir).map_err(|e| input(format!("--judge {}: `model`: {e}", path.display())))?)
        }
        JudgeBackend::Replay => {
            let from = js.replay_from.clone().ok_or_else(|| {
                input(format!("--judge {}: `backend: replay` needs `replay_from` (a judge cache directory)", path.display()))
            })?;
            let from = if from.is_absolute() { from } else { dir.join(from) };
            if !from.is_dir() {
                return Err(input(format!("--judge {}: judge cache `{}` does not exist", path.display(), from.display())));
            }
            js.replay_from = Some(from);
            None
        }
        JudgeBackend::Openai => None,
    };
    Ok((js, model))
}

/// Choose the tournament's judge: `--judge FILE`, else the runs' `eval.elo.judge`, else (only
/// when asked with `--training-judge`) the runs' own reward judge.
pub fn tournament_judge(flags: &EloFlags, plans: &[&Plan]) -> Result<TournamentJudge, EvalError> {
    let policy = &plans[0].inputs.models.policy;
    let make = |spec: JudgeSpec, model: Option<ModelRef>, source: String, training_judge: bool| {
        let identity = factory::identity(&spec, model.as_ref(), policy);
        TournamentJudge { info: elo::JudgeInfo { source, identity, training_judge, spec: spec.clone() }, spec, model }
    };
    if flags.judge.is_some() && flags.training_judge {
        return Err(usage("`--judge` and `--training-judge` name two judges: pass one"));
    }
    if let Some(path) = &flags.judge {
        let (spec, model) = read_judge_file(path)?;
        return Ok(make(spec, model, format!("--judge {}", path.display()), false));
    }
    if flags.training_judge {
        let first = (&plans[0].spec.reward.judge, &plans[0].inputs.models.judge);
        if let Some(other) = plans.iter().find(|p| (&p.spec.reward.judge, &p.inputs.models.judge) != first) {
            return Err(input(format!(
                "--training-judge: the runs were trained against different reward judges ({} in {}, {} in {}): name one tournament judge with `--judge FILE`",
                crate::plan::describe_judge(first.0, first.1.as_ref()),
                plans[0].run_id,
                crate::plan::describe_judge(&other.spec.reward.judge, other.inputs.models.judge.as_ref()),
                other.run_id
            )));
        }
        return Ok(make(first.0.clone(), first.1.clone(), "--training-judge (the runs' reward.judge)".into(), true));
    }
    let mut named: Vec<(&JudgeSpec, &Option<ModelRef>, &str)> = Vec::new();
    for p in plans {
        if let Some(j) = &p.spec.eval.elo.judge
            && !named.iter().any(|(s, m, _)| *s == j && *m == &p.inputs.models.elo)
        {
            named.push((j, &p.inputs.models.elo, &p.run_id));
        }
    }
    match named.as_slice() {
        [] => Err(input(
            "no tournament judge named: pass `--judge FILE` (a YAML judge spec, the keys of `reward.judge`, e.g. \
             `backend: openai`, `model: NAME`, `base_url_env: JUDGE_URL`), or set `eval.elo.judge` in the spec; \
             `--training-judge` reuses the runs' own reward judge, which the policies were optimised against and which favours them",
        )),
        [(spec, model, _)] => Ok(make((*spec).clone(), (*model).clone(), "eval.elo.judge".into(), false)),
        more => {
            let each: Vec<String> =
                more.iter().map(|(s, m, run)| format!("{} in {run}", crate::plan::describe_judge(s, m.as_ref()))).collect();
            Err(input(format!(
                "the runs' specs name different `eval.elo.judge`s ({}): one tournament has one judge; choose it with `--judge FILE`",
                each.join("; ")
            )))
        }
    }
}

/// The built-in pairwise template (`--template` overrides it).
pub const PAIRWISE_TEMPLATE: &str = include_str!("../../prompt_templates/elo/pairwise.j2");

struct EloJob {
    plan: Plan,
    judge: TournamentJudge,
    players: Vec<elo::Player>,
    cfg: elo::EloConfig,
    template: (String, String),
    out: PathBuf,
}

impl BackendJob for EloJob {
    type Output = Result<elo::Tournament, EvalError>;
    fn run<B: AutodiffBackend>(self, device: B::Device, _backend: &'static str) -> Self::Output {
        let spec = &self.plan.spec;
        let cache = self.out.join("judge-cache");
        let env = JudgeEnv::<B::InnerBackend> {
            policy_ref: &self.plan.inputs.models.policy,
            shared: None,
            batch: spec.runtime.rollout_batch,
            seed: spec.runtime.seed,
            device: &device,
            cache: &cache,
            quantized_decode: spec.runtime.quantized_decode,
        };
        let mut judge = factory::build::<B::InnerBackend>("tournament", &self.judge.spec, self.judge.model.as_ref(), &env)?;
        let t = elo::tournament(judge.as_mut(), &self.players, (&self.template.0, &self.template.1), spec.task.kind.as_str(), &self.cfg)
            .map_err(EvalError::Elo)?;
        Ok(t)
    }
}

/// Command-line choices of a tournament; unset ones come from the first run's `eval.elo`.
#[derive(Debug, Clone)]
pub struct EloFlags {
    pub rating: elo::Rating,
    pub k: Option<f64>,
    pub matches_per_pair: Option<usize>,
    pub repeats: Option<usize>,
    pub bootstrap: usize,
    pub seed: u64,
    /// Bradley–Terry: virtual tied games per player (default 1).
    pub prior: Option<f64>,
    pub template: Option<PathBuf>,
    /// A YAML judge spec.
    pub judge: Option<PathBuf>,
    /// Reuse the runs' reward judge.
    pub training_judge: bool,
    /// One player per run instead of per arm.
    pub per_run: bool,
}

impl Default for EloFlags {
    fn default() -> Self {
        EloFlags {
            rating: elo::Rating::BradleyTerry,
            k: None,
            matches_per_pair: None,
            repeats: None,
            bootstrap: 1000,
            seed: 0,
            prior: None,
            template: None,
            judge: None,
            training_judge: false,
            per_run: false,
        }
    }
}

/// A tournament ready to be judged: everything read and checked.
pub struct EloSetup {
    pub players: Vec<elo::Player>,
    /// The first source's plan: task, policy model, runtime for an in-process judge.
    pub plan: Plan,
    pub judge: TournamentJudge,
    pub cfg: elo::EloConfig,
    pub template: (String, String),
    pub out: PathBuf,
    /// Arguments that are not runs, with why.
    pub skipped: Vec<String>,
    pub notes: Vec<String>,
}

impl EloSetup {
    /// Where the tournament runs: nowhere but the CPU when its judge is a server (or a cache),
    /// whatever the runs trained on; an in-process judge on the first run's backend.
    pub fn backend(&self) -> (crate::spec::BackendKind, usize) {
        let rt = &self.plan.spec.runtime;
        if self.judge.spec.backend != JudgeBackend::Local && cfg!(feature = "cpu") {
            (crate::spec::BackendKind::Cpu, 0)
        } else {
            (rt.backend, rt.device)
        }
    }
}

/// Read the arguments of `mpo eval --elo` (run directories, evaluation files; anything else is
/// skipped with a note), pool players, choose the judge and the settings.
pub fn elo_setup(args: &[PathBuf], flags: &EloFlags, out: Option<&Path>) -> Result<EloSetup, EvalError> {
    let mut skipped = Vec::new();
    let mut sources: Vec<Source> = Vec::new();
    for a in args {
        let (file, run) = match classify(a)? {
            EloArg::Skip(why) => {
                skipped.push(why);
                continue;
            }
            EloArg::Run(run) => (newest_eval(&run)?, run),
            EloArg::File { file, run } => (file, run),
        };
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        if let Some(s) = sources.iter().find(|s| canon(&s.file) == canon(&file)) {
            return Err(usage(format!("{} plays twice ({} is the same responses)", file.display(), s.file.display())));
        }
        sources.push(read_source(&file, &run)?);
    }
    let skipped_note = if skipped.is_empty() { String::new() } else { format!(" ({} argument(s) skipped as not runs)", skipped.len()) };
    if sources.len() < 2 {
        return Err(input(format!("a tournament needs at least 2 runs or evaluation files, got {}{skipped_note}", sources.len())));
    }
    if let Some(other) = sources.iter().find(|s| s.plan.spec.task.kind != sources[0].plan.spec.task.kind) {
        return Err(input(format!(
            "players come from different tasks ({} and {}): a tournament compares one task",
            sources[0].plan.spec.task.kind.as_str(),
            other.plan.spec.task.kind.as_str()
        )));
    }
    let (players, notes) = players(&sources, flags.per_run);
    if players.len() < 2 {
        return Err(input(format!(
            "all {} runs are seeds of one arm ({}): there is nothing to compare; pass `--per-run` to rate the runs themselves",
            sources.len(),
            players[0].name
        )));
    }
    let plans: Vec<&Plan> = sources.iter().map(|s| &s.plan).collect();
    let judge = tournament_judge(flags, &plans)?;
    let spec_elo = &sources[0].plan.spec.eval.elo;
    if flags.rating == elo::Rating::BradleyTerry && (flags.k.is_some() || flags.repeats.is_some()) {
        return Err(usage("`--k` and `--repeats` are settings of sequential Elo: add `--rating elo`, or drop them"));
    }
    if flags.rating == elo::Rating::SequentialElo && flags.prior.is_some() {
        return Err(usage("`--bt-prior` is a setting of the Bradley–Terry fit, not of `--rating elo`"));
    }
    let cfg = elo::EloConfig {
        rating: flags.rating,
        k: flags.k.unwrap_or(spec_elo.k),
        initial: spec_elo.start,
        matches_per_pair: flags.matches_per_pair.unwrap_or(spec_elo.matches),
        repeats: flags.repeats.unwrap_or(spec_elo.repeats),
        bootstrap: flags.bootstrap,
        seed: flags.seed,
        prior: flags.prior.unwrap_or(1.0),
    };
    if !(cfg.prior >= 0.0 && cfg.prior.is_finite()) {
        return Err(usage(format!("`--bt-prior {}`: expected a number of games >= 0", cfg.prior)));
    }
    let template = match flags.template.as_deref().or(spec_elo.prompt.as_deref()) {
        Some(p) => (p.display().to_string(), std::fs::read_to_string(p).map_err(|e| input(format!("{}: {e}", p.display())))?),
        None => ("prompt_templates/elo/pairwise.j2 (built in)".into(), PAIRWISE_TEMPLATE.to_string()),
    };
    let out = match out {
        Some(o) => o.to_path_buf(),
        None => sources[0].run.parent().map(|p| p.join("elo")).unwrap_or_else(|| PathBuf::from("elo")),
    };
    let plan = sources.swap_remove(0).plan;
    Ok(EloSetup { players, plan, judge, cfg, template, out, skipped, notes })
}

/// Write `elo.json` and `matches.jsonl` into the setup's output directory.
pub fn write_elo(setup: &EloSetup, t: &elo::Tournament) -> Result<elo::EloFile, EvalError> {
    let out = &setup.out;
    std::fs::create_dir_all(out).map_err(|e| input(format!("{}: {e}", out.display())))?;
    let w = |name: &str, text: String| {
        crate::fsx::write_atomic(&out.join(name), text.as_bytes()).map_err(|e| input(format!("{}: {e}", out.join(name).display())))
    };
    let file = elo::EloFile {
        format: elo::FORMAT,
        created: crate::results::now(),
        judge: setup.judge.info.clone(),
        skipped: setup.skipped.clone(),
        summary: t.summary.clone(),
    };
    w("elo.json", serde_json::to_string_pretty(&file).unwrap_or_default() + "\n")?;
    w("matches.jsonl", t.matches.iter().map(|m| serde_json::to_string(m).unwrap_or_default() + "\n").collect())?;
    Ok(file)
}

/// Run a tournament between `args` (run directories or evaluation files), judged by the judge
/// [`tournament_judge`] names; writes `elo.json` and `matches.jsonl` into `out` (default:
/// `results/NAME/elo`).
pub fn elo_cmd(args: &[PathBuf], flags: &EloFlags, out: Option<&Path>) -> Result<(EloSetup, elo::Tournament, elo::EloFile), EvalError> {
    let setup = elo_setup(args, flags, out)?;
    std::fs::create_dir_all(&setup.out).map_err(|e| input(format!("{}: {e}", setup.out.display())))?;
    let (backend, device) = setup.backend();
    let job = EloJob {
        plan: setup.plan.clone(),
        judge: setup.judge.clone(),
        players: setup.players.clone(),
        cfg: setup.cfg.clone(),
        template: setup.template.clone(),
        out: setup.out.clone(),
    };
    let t = model::dispatch(backend, device, job).map_err(EvalError::from)??;
    let file = write_elo(&setup, &t)?;
    Ok((setup, t, file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::JudgeResponse;
    use crate::judge::scripted::ScriptedJudge;
    use crate::results::evals::EvalLine;

    /// 2 arms (meta.every) x 2 seeds of the tiny spec, compiled (not run).
    fn sweep_plans(extra: &str) -> Vec<Plan> {
        let text =
            format!("extends: tiny.yaml\nname: elo-pool\n{extra}sweep:\n  grid:\n    meta.every: [never, 2]\n    runtime.seed: [0, 1]\n");
        let loaded = crate::resolve::load_str(Path::new("tests/specs/valid/elo_pool.yaml"), &text, &[]);
        assert!(!loaded.has_errors(), "{:?}", loaded.diags);
        loaded.runs.iter().map(crate::plan::compile).collect()
    }

    fn scratch(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("mpo-elo-unit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    /// Write `plans` as run directories under `root`, each with an evaluation whose responses
    /// carry `quality N` (N: 1 for `meta.every=never`, 2 otherwise); and what `results/NAME/*`
    /// also matches: `slurm/`, `elo/`, `report.md`.
    fn results(root: &Path, plans: &[Plan]) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        for p in plans {
            let dir = RunDir { root: root.join(&p.run_id) };
            dir.write_json("plan.json", p).unwrap();
            let q = if p.spec.meta.every == crate::spec::Every::Never { 1 } else { 2 };
            let lines: Vec<EvalLine> = (0..6)
                .map(|k| EvalLine {
                    // positions differ between runs: pairing is by question text
                    record_index: (k + q as usize) % 6,
                    record_id: None,
                    question: format!("question {k}"),
                    response: format!("answer with quality {q} to question {k}"),
                    score: None,
                    instrument: None,
                })
                .collect();
            dir.write_jsonl("eval/update-000002.jsonl", &lines).unwrap();
            dir.write_jsonl("eval/base.jsonl", &lines[..3]).unwrap();
            dirs.push(dir.root);
        }
        std::fs::create_dir_all(root.join("slurm/logs")).unwrap();
        std::fs::create_dir_all(root.join("elo")).unwrap();
        std::fs::write(root.join("report.md"), "# Report\n").unwrap();
        let mut all: Vec<PathBuf> = std::fs::read_dir(root).unwrap().flatten().map(|e| e.path()).collect();
        all.sort();
        all
    }

    fn judge_file(dir: &Path, yaml: &str) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join("judge.yaml");
        std::fs::write(&p, yaml).unwrap();
        p
    }

    const OPENAI: &str = "backend: openai\nmodel: gpt-4o\nbase_url_env: TOURNAMENT_JUDGE_URL\n";

    #[test]
    fn seeds_share_an_arm_and_arms_differ() {
        let plans = sweep_plans("");
        let ids: Vec<String> = plans.iter().map(Plan::arm_id).collect();
        assert_eq!(plans[0].arm(), "meta.every=never");
        assert_ne!(plans[0].run_id, plans[1].run_id, "two seeds, two runs");
        assert_eq!(ids[0], ids[1]);
        assert_eq!(ids[2], ids[3]);
        assert_ne!(ids[0], ids[2]);
        // the generated training split depends on the seed, unless `task.seed` pins it
        assert_ne!(plans[0].inputs.train.sha256, plans[1].inputs.train.sha256);
    }

    #[test]
    fn results_star_skips_what_is_not_a_run_and_pools_arms() {
        let root = scratch("star");
        let all = results(&root.join("elo-pool"), &sweep_plans(""));
        let judge = judge_file(&root, OPENAI);
        let flags = EloFlags { judge: Some(judge.clone()), ..EloFlags::default() };
        let setup = elo_setup(&all, &flags, None).unwrap();
        assert_eq!(setup.skipped.len(), 3, "{:?}", setup.skipped);
        assert!(setup.skipped.iter().any(|s| s.contains("slurm: not a run directory (no plan.json)")), "{:?}", setup.skipped);
        assert!(setup.skipped.iter().any(|s| s.contains("report.md: not a run directory or an evaluation file")));
        let names: Vec<&str> = setup.players.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["meta.every=never", "meta.every=2"]);
        assert!(setup.players.iter().all(|p| p.members.len() == 2 && p.members[0].name.ends_with("@update-000002")));
        assert_eq!(setup.out, root.join("elo-pool/elo"));
        assert_eq!(setup.cfg.rating, elo::Rating::BradleyTerry);
        assert!(setup.notes.is_empty());
        // one player per run on request
        let per_run = elo_setup(&all, &EloFlags { per_run: true, ..flags.clone() }, None).unwrap();
        assert_eq!(per_run.players.len(), 4);
        // a base-model evaluation is a player of its own, beside the trained arm
        let runs: Vec<PathBuf> = all.iter().filter(|p| p.join("plan.json").exists()).cloned().collect();
        let arm_of = |r: &PathBuf| RunDir::open(r).unwrap().plan().unwrap().arm();
        let never: Vec<PathBuf> = runs.iter().filter(|r| arm_of(r) == "meta.every=never").cloned().collect();
        assert_eq!(never.len(), 2);
        let with_base = [never[0].clone(), never[1].clone(), never[0].join("eval/base.jsonl")];
        let s = elo_setup(&with_base, &flags, None).unwrap();
        let names: Vec<&str> = s.players.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["meta.every=never", "meta.every=never @base"]);
        // the seeds of one arm alone: nothing to compare
        let e = elo_setup(&never, &flags, None).err().unwrap().to_string();
        assert!(e.contains("seeds of one arm") && e.contains("--per-run"), "{e}");
        // nothing but non-runs: at least 2 real players are needed
        let e = elo_setup(&[root.join("elo-pool/slurm"), root.join("elo-pool/elo")], &flags, None).err().unwrap().to_string();
        assert!(e.contains("at least 2 runs") && e.contains("2 argument(s) skipped"), "{e}");
        // the same responses twice is a usage error
        let twice = [runs[0].clone(), runs[0].join("eval/update-000002.jsonl")];
        assert!(matches!(elo_setup(&twice, &flags, None), Err(EvalError::Usage(_))));
        // a missing path is not skipped: it is a typo
        assert!(elo_setup(&[runs[0].clone(), root.join("nope")], &flags, None).err().unwrap().to_string().contains("no such run"));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn the_judge_is_named_explicitly() {
        let root = scratch("judge");
        let all = results(&root.join("elo-pool"), &sweep_plans(""));
        let none = elo_setup(&all, &EloFlags::default(), None).err().unwrap().to_string();
        assert!(none.contains("no tournament judge named") && none.contains("--judge FILE") && none.contains("--training-judge"), "{none}");
        // --training-judge: the runs' reward judge, recorded as such
        let t = elo_setup(&all, &EloFlags { training_judge: true, ..EloFlags::default() }, None).unwrap();
        assert!(t.judge.info.training_judge);
        assert_eq!(t.judge.info.identity.as_deref(), Some("local:tiny-random-llama"));
        assert!(t.judge.info.source.contains("--training-judge"));
        // --judge FILE: a server judge, which runs on the CPU whatever the runs trained on
        let file = judge_file(&root, OPENAI);
        let mut s = elo_setup(&all, &EloFlags { judge: Some(file.clone()), ..EloFlags::default() }, None).unwrap();
        assert!(!s.judge.info.training_judge);
        assert_eq!(s.judge.info.identity.as_deref(), Some("openai-chat:gpt-4o"));
        assert_eq!(s.judge.spec.base_url_env, "TOURNAMENT_JUDGE_URL");
        s.plan.spec.runtime.backend = crate::spec::BackendKind::Cuda;
        assert_eq!(s.backend(), (crate::spec::BackendKind::Cpu, 0));
        // an in-process judge runs where the runs ran; its model resolves against the file
        let local = judge_file(&root.join("l"), "backend: local\nmodel: tiny-random-llama\n");
        let mut s = elo_setup(&all, &EloFlags { judge: Some(local), ..EloFlags::default() }, None).unwrap();
        assert_eq!(s.judge.model, Some(ModelRef::Random { name: "tiny-random-llama".into() }));
        s.plan.spec.runtime.backend = crate::spec::BackendKind::Cuda;
        assert_eq!(s.backend().0, crate::spec::BackendKind::Cuda);
        // both flags, a misspelt key, a local judge without a model: clear errors
        let both = EloFlags { judge: Some(file), training_judge: true, ..EloFlags::default() };
        assert!(matches!(elo_setup(&all, &both, None), Err(EvalError::Usage(_))));
        let bad = judge_file(&root.join("b"), "backend: openai\nmodle: gpt-4o\n");
        let e = elo_setup(&all, &EloFlags { judge: Some(bad), ..EloFlags::default() }, None).err().unwrap().to_string();
        assert!(e.contains("not a judge spec") && e.contains("modle"), "{e}");
        let nomodel = judge_file(&root.join("n"), "backend: local\n");
        let e = elo_setup(&all, &EloFlags { judge: Some(nomodel), ..EloFlags::default() }, None).err().unwrap().to_string();
        assert!(e.contains("names its model"), "{e}");
        // Bradley–Terry refuses sequential Elo's knobs
        let f = judge_file(&root, OPENAI);
        let k = EloFlags { judge: Some(f.clone()), k: Some(16.0), ..EloFlags::default() };
        assert!(matches!(elo_setup(&all, &k, None), Err(EvalError::Usage(_))));
        let k = EloFlags { judge: Some(f), k: Some(16.0), rating: elo::Rating::SequentialElo, ..EloFlags::default() };
        assert_eq!(elo_setup(&all, &k, None).unwrap().cfg.k, 16.0);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn the_specs_tournament_judge_is_used_and_must_agree() {
        let extra = "eval:\n  elo:\n    judge: {backend: local, model: tiny-random-llama}\n";
        let plans = sweep_plans(extra);
        // the tournament judge is not part of a run's identity
        assert_eq!(plans.iter().map(|p| &p.run_id).collect::<Vec<_>>(), sweep_plans("").iter().map(|p| &p.run_id).collect::<Vec<_>>());
        assert_eq!(plans[0].inputs.models.elo, Some(ModelRef::Random { name: "tiny-random-llama".into() }));
        let root = scratch("spec-judge");
        let all = results(&root.join("elo-pool"), &plans);
        let s = elo_setup(&all, &EloFlags::default(), None).unwrap();
        assert_eq!(s.judge.info.source, "eval.elo.judge");
        assert_eq!(s.judge.model, plans[0].inputs.models.elo);
        assert!(!s.judge.info.training_judge);
        // two runs whose specs name different tournament judges
        let mut other = plans[3].clone();
        other.spec.eval.elo.judge = Some(JudgeSpec { backend: JudgeBackend::Openai, model: Some("gpt-4o".into()), ..JudgeSpec::default() });
        other.inputs.models.elo = None;
        RunDir { root: root.join("elo-pool").join(&other.run_id) }.write_json("plan.json", &other).unwrap();
        let e = elo_setup(&all, &EloFlags::default(), None).err().unwrap().to_string();
        assert!(e.contains("different `eval.elo.judge`s") && e.contains("gpt-4o") && e.contains("--judge FILE"), "{e}");
        // --judge settles it
        let f = judge_file(&root, OPENAI);
        assert!(elo_setup(&all, &EloFlags { judge: Some(f), ..EloFlags::default() }, None).is_ok());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_tournament_end_to_end_is_written_and_reported() {
        let root = scratch("e2e");
        let all = results(&root.join("elo-pool"), &sweep_plans(""));
        let f = judge_file(&root, OPENAI);
        let setup = elo_setup(&all, &EloFlags { judge: Some(f), bootstrap: 50, ..EloFlags::default() }, None).unwrap();
        let quality = |s: &str| s.split("quality ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or("0").to_string();
        let mut judge = ScriptedJudge::new("q", |r, _| {
            let a = quality(r.prompt.split("Response A:").nth(1).unwrap_or(""));
            let b = quality(r.prompt.split("Response B:").nth(1).unwrap_or(""));
            // both responses answer the question shown
            let q = r.prompt.lines().find_map(|l| l.strip_prefix("question ")).map(str::to_string);
            assert!(r.prompt.matches(&format!("to question {}", q.unwrap_or_default())).count() == 2, "{}", r.prompt);
            Ok(JudgeResponse::answer(format!("Winner: {}", if a > b { "A" } else { "B" })))
        });
        let t = elo::tournament(&mut judge, &setup.players, (&setup.template.0, &setup.template.1), "math", &setup.cfg).unwrap();
        assert_eq!(judge.calls, 2 * 32);
        assert_eq!(t.summary.prompts, 6);
        assert_eq!(t.summary.standings[0].player, "meta.every=2");
        let file = write_elo(&setup, &t).unwrap();
        let back: elo::EloFile = serde_json::from_str(&std::fs::read_to_string(setup.out.join("elo.json")).unwrap()).unwrap();
        assert_eq!(back, file);
        assert_eq!(back.skipped.len(), 3);
        assert_eq!(std::fs::read_to_string(setup.out.join("matches.jsonl")).unwrap().lines().count(), 32);
        let md = crate::report::elo_section(&root.join("elo-pool"));
        assert!(md.contains("`elo/elo.json`, written") && md.contains("| 1 | meta.every=2 |") && md.contains("openai-chat:gpt-4o"), "{md}");
        assert!(md.contains("Bradley–Terry") && md.contains("position consistency 100.0%"), "{md}");
        // a tournament of an older format is named, not shown
        std::fs::create_dir_all(root.join("elo-pool/elo-old")).unwrap();
        std::fs::write(root.join("elo-pool/elo-old/elo.json"), r#"{"config": {}, "standings": []}"#).unwrap();
        let md = crate::report::elo_section(&root.join("elo-pool"));
        assert!(md.contains("| 1 | meta.every=2 |") && md.contains("older: `elo-old/elo.json`"), "{md}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
