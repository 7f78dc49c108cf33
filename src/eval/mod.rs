//! `mpo eval`: the task metrics of a run's saved checkpoint (or of the base model) on the test
//! split, and Elo tournaments between runs (`elo.rs`).
//!
//! A checkpoint's evaluation writes `eval/checkpoint-NNNNNN.jsonl` (responses) and
//! `eval/checkpoint-NNNNNN.json` (metrics) into the run; `--checkpoint base` evaluates the
//! policy with its adapter switched off (`eval/base.*`). Tournaments read those response files.

pub mod elo;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::AutodiffBackend;
use serde_json::{Value as J, json};

use crate::judge::factory::{self, JudgeEnv};
use crate::model::{self, BackendJob, LoraConfig};
use crate::plan::Plan;
use crate::results::evals::EvalSummary;
use crate::results::{ResultsError, RunDir};
use crate::run::RunError;
use crate::run::eval::{Evaluator, base_cached};
use crate::run::setup::plan_template;
use crate::task::Split;
use crate::template::TemplateKind;

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

impl std::str::FromStr for Which {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "latest" => Ok(Which::Latest),
            "base" => Ok(Which::Base),
            n => n.parse().map(Which::Update).map_err(|_| format!("`{n}`: expected an update number, `latest` or `base`")),
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
    Run(#[from] RunError),
}

impl EvalError {
    pub fn help(&self) -> Option<String> {
        match self {
            EvalError::Run(e) => e.help(),
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
        if let (Some(h), Some((_, lines))) = (&s.headline, RunDir { root: subject.dir() }.read_eval(&s.split, &res.label)) {
            let scores: Vec<f64> = lines.iter().filter_map(|l| l.score).collect();
            let e = crate::results::evals::estimate(&scores, 0);
            out.push_str(&format!(
                "  {h} 95% interval       [{:.4}, {:.4}]{}\n",
                e.lo,
                e.hi,
                s.note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
            ));
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
        let lora = LoraConfig::from_spec(&spec.policy.lora);
        let seed = spec.runtime.seed;
        let mut log = |m: &str| eprintln!("{m}");
        // The base model is the policy without adapters (a fresh adapter is the base anyway).
        let adapters = self.checkpoint.as_ref().map(|_| &lora);
        let loaded = model::load::<B::InnerBackend>(
            &self.plan.inputs.models.policy,
            adapters,
            crate::rng::sub_seed(seed, "model/init"),
            &device,
            &mut log,
        )
        .map_err(RunError::from)?
        .quantized_decode(spec.runtime.quantized_decode);
        let (policy, update, label) = match &self.checkpoint {
            Some((u, d)) => {
                let m = crate::model::adapter::load(loaded.model, &d.join("policy.safetensors"))
                    .map_err(|e| input(format!("{}: {e}", d.display())))?;
                (m, *u, format!("checkpoint-{u:06}"))
            }
            None => (loaded.model, 0, "base".to_string()),
        };
        let tmpl = plan_template(&self.plan, TemplateKind::Policy)?;
        let chat = match &spec.policy.chat_template {
            Some(p) => {
                Some(std::fs::read_to_string(p).map_err(|e| RunError::Read { path: p.display().to_string(), message: e.to_string() })?)
            }
            None => None,
        };
        let dir = RunDir { root: self.run.clone() };
        let ev = Evaluator { plan: &self.plan, tok: &loaded.tok, template: &tmpl, chat_override: chat.as_deref() };
        let mut res = EvalResult { label: label.clone(), splits: Vec::new(), comparisons: Vec::new() };
        for (split, src) in [("test", &spec.task.test), ("transfer", &spec.task.transfer)] {
            let Some(src) = src else { continue };
            let data = crate::task::load(spec.task.kind, src, spec.test_seed(), Split::Test).map_err(RunError::from)?;
            let measure = || ev.run(&policy, true, split, &data.records, update, &label, &dir);
            if self.checkpoint.is_none() {
                base_cached(&ev, split, &dir, measure)?;
            } else {
                measure()?;
            }
            let (summary, _) =
                dir.read_eval(split, &label).ok_or_else(|| input(format!("{}: the evaluation was not written", dir.root.display())))?;
            res.splits.push(summary);
            if self.checkpoint.is_some()
                && let Some(c) = crate::results::evals::compare(&dir, split, "base", &label)
            {
                res.comparisons.extend(c.lines());
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
        dir.write_json("plan.json", plan).map_err(RunError::from)?;
    }
    eval_run(&dir.root, Which::Base)
}

/// Evaluate a run's checkpoint (or the base model) on its test split.
pub fn eval_run(run: &Path, which: Which) -> Result<EvalResult, EvalError> {
    let dir = RunDir::open(run)?;
    let plan = dir.plan()?;
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
                    "{} has no checkpoint of update {u}; saved: {} (older ones are pruned: `output.keep_checkpoints`)",
                    run.display(),
                    if have.is_empty() { "none".into() } else { have.join(", ") }
                ))
            })?),
        };
    let job = EvalJob { run: run.to_path_buf(), plan: plan.clone(), checkpoint };
    model::dispatch(plan.spec.runtime.backend, plan.spec.runtime.device, job).map_err(|e| EvalError::Run(RunError::Backend(e)))?
}

/// One player of a tournament: a run directory (its newest evaluation) or an evaluation file.
pub fn load_player(arg: &Path) -> Result<(elo::Player, Plan), EvalError> {
    let (file, run) = if arg.is_file() {
        let run = arg.parent().and_then(Path::parent).ok_or_else(|| input(format!("{}: expected RUN/eval/FILE.jsonl", arg.display())))?;
        (arg.to_path_buf(), run.to_path_buf())
    } else {
        let mut files: Vec<PathBuf> = std::fs::read_dir(arg.join("eval"))
            .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "jsonl")).collect())
            .unwrap_or_default();
        // newest weights: the highest update among update-N / checkpoint-N; base last
        files.sort_by_key(|p| {
            let n = p.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
            n.rsplit('-').next().and_then(|u| u.parse::<u32>().ok()).map(|u| (1, u)).unwrap_or((0, 0))
        });
        let f = files.pop().ok_or_else(|| {
            input(format!(
                "{} has no evaluation responses: run `mpo eval {}` first (or set `eval.every` in the spec)",
                arg.display(),
                arg.display()
            ))
        })?;
        (f, arg.to_path_buf())
    };
    let plan = RunDir::open(&run)?.plan()?;
    let text = std::fs::read_to_string(&file).map_err(|e| input(format!("{}: {e}", file.display())))?;
    let mut responses = BTreeMap::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: J = serde_json::from_str(line).map_err(|e| input(format!("{}:{}: {e}", file.display(), n + 1)))?;
        let key = v["record_index"].to_string();
        let q = v["question"].as_str().unwrap_or_default().to_string();
        let r = v["response"].as_str().unwrap_or_default().to_string();
        responses.insert(key, (q, r));
    }
    let stem = file.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    let label = plan.cell.as_ref().map(|c| format!(" {}", c.label)).unwrap_or_default();
    Ok((elo::Player { name: format!("{}/{}{label} @{stem}", plan.name, plan.run_id), responses }, plan))
}

/// The built-in pairwise template (`--template` overrides it).
pub const PAIRWISE_TEMPLATE: &str = include_str!("../../prompt_templates/elo/pairwise.j2");

struct EloJob {
    plan: Plan,
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
        let mut judge = factory::build::<B::InnerBackend>("elo", &spec.reward.judge, self.plan.inputs.models.judge.as_ref(), &env)
            .map_err(RunError::from)?;
        let t = elo::tournament(judge.as_mut(), &self.players, (&self.template.0, &self.template.1), spec.task.kind.as_str(), &self.cfg)
            .map_err(input)?;
        Ok(t)
    }
}

/// Command-line choices of a tournament; unset ones come from the first run's `eval.elo`.
#[derive(Debug, Clone, Default)]
pub struct EloFlags {
    pub k: Option<f64>,
    pub matches_per_pair: Option<usize>,
    pub repeats: Option<usize>,
    pub bootstrap: usize,
    pub seed: u64,
    pub template: Option<PathBuf>,
}

/// Run an Elo tournament between `runs` (run directories or evaluation files), judged by the
/// first run's reward judge; writes `elo.json` and `matches.jsonl` into `out`.
pub fn elo_cmd(runs: &[PathBuf], flags: &EloFlags, out: Option<&Path>) -> Result<(elo::Tournament, PathBuf), EvalError> {
    let mut players = Vec::new();
    let mut plans = Vec::new();
    for r in runs {
        let (p, plan) = load_player(r)?;
        players.push(p);
        plans.push(plan);
    }
    if let Some(other) = plans.iter().find(|p| p.spec.task.kind != plans[0].spec.task.kind) {
        return Err(input(format!(
            "players come from different tasks ({} and {}): a tournament compares one task",
            plans[0].spec.task.kind.as_str(),
            other.spec.task.kind.as_str()
        )));
    }
    let spec_elo = &plans[0].spec.eval.elo;
    let cfg = elo::EloConfig {
        k: flags.k.unwrap_or(spec_elo.k),
        initial: spec_elo.start,
        matches_per_pair: flags.matches_per_pair.unwrap_or(spec_elo.matches),
        repeats: flags.repeats.unwrap_or(spec_elo.repeats),
        bootstrap: flags.bootstrap,
        seed: flags.seed,
    };
    let template = match flags.template.as_deref().or(spec_elo.prompt.as_deref()) {
        Some(p) => (p.display().to_string(), std::fs::read_to_string(p).map_err(|e| input(format!("{}: {e}", p.display())))?),
        None => ("prompt_templates/elo/pairwise.j2 (built in)".into(), PAIRWISE_TEMPLATE.to_string()),
    };
    let out = match out {
        Some(o) => o.to_path_buf(),
        None => runs[0].parent().filter(|_| runs[0].is_dir()).map(|p| p.join("elo")).unwrap_or_else(|| PathBuf::from("elo")),
    };
    std::fs::create_dir_all(&out).map_err(|e| input(format!("{}: {e}", out.display())))?;
    let plan = plans.swap_remove(0);
    let (backend, device) = (plan.spec.runtime.backend, plan.spec.runtime.device);
    let job = EloJob { plan, players, cfg, template, out: out.clone() };
    let t = model::dispatch(backend, device, job).map_err(|e| EvalError::Run(RunError::Backend(e)))??;
    let w = |name: &str, text: String| {
        crate::fsx::write_atomic(&out.join(name), text.as_bytes()).map_err(|e| input(format!("{}: {e}", out.join(name).display())))
    };
    let summary =
        json!({"config": t.config, "prompts": t.prompts, "matches": t.matches.len(), "unreadable": t.unreadable, "standings": t.standings});
    w("elo.json", serde_json::to_string_pretty(&summary).unwrap_or_default() + "\n")?;
    w("matches.jsonl", t.matches.iter().map(|m| serde_json::to_string(m).unwrap_or_default() + "\n").collect())?;
    Ok((t, out))
}
