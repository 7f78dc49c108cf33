//! Before the first update: the policy (and critic) with their optimizers, the judges, the
//! templates, the data, and where the run stands: a fresh start writes rubric v0; a resumed run
//! loads its latest checkpoint, the rubric version in force then, and sets aside what a crashed
//! process wrote after it.
//!
//! Everything the update phases share lives in one [`Runner`]; the task data is returned beside
//! it, so the rollouts of an update can borrow their records while the phases change the runner.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;

use super::checkpoint::{self, State};
use super::progress::Progress;
use super::rubrics::Rubrics;
use super::train::Trainer;
use super::{RunError, RunOptions};
use crate::judge::Judge;
use crate::judge::factory::{self, JudgeEnv};
use crate::meta::MetaConfig;
use crate::meta::family::Partition;
use crate::model::tokenizer::Tok;
use crate::model::{Llama, LoraConfig};
use crate::plan::Plan;
use crate::results::{self, Manifest, RunDir};
use crate::reward::RewardConfig;
use crate::rubric::Rubric;
use crate::spec::{Algorithm, Critic, Every, Spec};
use crate::task::{Dataset, Split};
use crate::template::TemplateFile;
use crate::template::TemplateKind;

/// The state of a run between updates: what the phases read and change.
pub struct Runner<'p, B: AutodiffBackend> {
    pub plan: &'p Plan,
    pub spec: &'p Spec,
    pub dir: &'p RunDir,
    pub manifest: &'p mut Manifest,
    pub progress: Progress,
    pub tok: Tok,
    /// The trained models and their optimizers.
    pub tr: Trainer<B>,
    pub reward_judge: Box<dyn Judge>,
    /// The meta judge when the spec names its own (else the reward judge serves).
    pub meta_judge: Option<Box<dyn Judge>>,
    pub reward_cfg: RewardConfig,
    pub meta_cfg: Option<MetaConfig>,
    pub policy_template: TemplateFile,
    /// `policy.chat_template`'s text, when the spec overrides the model's.
    pub chat_template: Option<String>,
    /// The rubrics in force: one, or one per family (`meta.partition_by`).
    pub rubrics: Rubrics,
    /// What a checkpoint saves besides the weights.
    pub state: State,
    /// Seeds the training data's subset and order.
    pub data_seed: u64,
    /// `meta.gate`: the cases a merged rubric must do no worse on than the rubric in force.
    pub gate: Option<crate::meta::gate::Gate>,
    /// `eval.instrument`, built when the run evaluates.
    pub instrument: Option<crate::eval::measure::Instrument>,
    /// `runtime.rollouts`' engine (`None`: the in-process decoder).
    pub engine: Option<crate::engine::Engine>,
}

/// The task's records.
pub struct Data {
    pub train: Dataset,
    pub test: Option<Dataset>,
    pub transfer: Option<Dataset>,
}

impl<B: AutodiffBackend> Runner<'_, B> {
    /// GRPO's group size; 1 under PPO.
    pub fn group_size(&self) -> usize {
        if self.spec.ppo.algorithm == Algorithm::Grpo { self.spec.ppo.group_size } else { 1 }
    }
}

/// Build the runner of `plan` in `dir`, resuming from the latest checkpoint if there is one.
pub fn start<'p, B: AutodiffBackend>(
    plan: &'p Plan,
    opts: &RunOptions,
    dir: &'p RunDir,
    device: &B::Device,
    manifest: &'p mut Manifest,
) -> Result<(Runner<'p, B>, Data), RunError> {
    let spec = &plan.spec;
    let seed = spec.runtime.seed;
    let progress = Progress::new(plan.schedule.updates as u64, manifest.updates_done as u64, opts.quiet);
    let t_setup = Instant::now();

    if let Some(a) = &manifest.adapter {
        progress.log(&format!("{} adapter: {a}", manifest.backend));
    }
    progress.stage("loading the policy model");
    let policy = crate::policy::load::<B>(plan, crate::policy::Adapters::Fresh, device, &mut |m| progress.log(m))?;
    let (tok, policy_template, chat_template) = (policy.tok, policy.template, policy.chat);
    let tr = trainer::<B>(spec, policy.model, device);

    let data_seed = spec.data_seed();
    let train = crate::task::train(spec)?;
    // A fixed-rubric run keeps one rubric (its plan identity drops every meta setting).
    let partition = if spec.meta.every == Every::Never { Partition::default() } else { Partition::new(&spec.meta.partition_by) };
    let keys = partition.keys(&train.records).map_err(|e| RunError::Rubric { what: "meta.partition_by".into(), message: e.to_string() })?;
    let rubrics = Rubrics::start(&dir.root, partition, &keys, &plan_rubric(plan)?);
    let (tr, rubrics, state) = resume_or_start(plan, dir, tr, device, rubrics, manifest, &progress)?;

    let judge_inner = tr.policy.valid();
    let cache_dir = dir.path("judge-cache");
    let env = JudgeEnv {
        policy_ref: &plan.inputs.models.policy,
        shared: Some((&judge_inner, &tok)),
        batch: spec.runtime.rollout_batch,
        seed,
        device,
        cache: &cache_dir,
        quantized_decode: spec.runtime.quantized_decode,
    };
    let reward_judge = factory::build::<B::InnerBackend>("reward", &spec.reward.judge, plan.inputs.models.judge.as_ref(), &env)?;
    let meta_judge = match &spec.meta.judge {
        Some(js) if spec.meta.every != Every::Never => {
            Some(factory::build::<B::InnerBackend>("meta", js, plan.inputs.models.meta.as_ref(), &env)?)
        }
        _ => None,
    };
    // the instrument's model is loaded only when this run evaluates
    let instrument =
        if plan.schedule.eval_at.is_empty() { None } else { crate::eval::measure::Instrument::build::<B::InnerBackend>(plan, &env)? };
    if let Some(i) = &instrument {
        manifest.judges.insert("instrument".into(), i.identity());
    }
    manifest.judges.insert("reward".into(), reward_judge.identity());
    if let Some(j) = &meta_judge {
        manifest.judges.insert("meta".into(), j.identity());
    }
    let judge_template = plan.template(TemplateKind::Judge)?;
    let grpo = spec.ppo.algorithm == Algorithm::Grpo;
    let reward_cfg = RewardConfig::new(
        spec.reward.clone(),
        spec.task.kind.as_str(),
        judge_template.text.clone(),
        judge_template.path.display().to_string(),
    )?
    .with_group(if grpo { spec.ppo.group_size } else { 1 });
    let meta_cfg = super::meta_step::config(plan)?;

    let held_out = |src: &Option<crate::spec::DataSource>| match src {
        Some(t) => crate::task::load(spec.task.kind, t, spec.test_seed(), Split::Test).map(Some),
        None => Ok(None),
    };
    let (test, transfer) = (held_out(&spec.task.test)?, held_out(&spec.task.transfer)?);
    let gate = match &plan.inputs.cases {
        Some(info) => {
            let f = info.read()?;
            let file = crate::cases::CaseFile::parse(&f.text).map_err(|error| RunError::CaseFile { path: info.path.clone(), error })?;
            let scorer = crate::cases::Scorer::new(&spec.reward, spec.task.kind.as_str(), &judge_template, policy_template.clone(), seed)?;
            Some(crate::meta::gate::Gate::new(file, &train.records, spec.task.kind.as_str(), &plan_rubric(plan)?, scorer))
        }
        None => None,
    };
    manifest.warmup_s = t_setup.elapsed().as_secs_f64();
    dir.write_manifest(manifest)?;
    let engine = match spec.runtime.rollouts.is_in_process() {
        true => None,
        false => Some(crate::engine::Engine::start(plan, tr.policy.num_layers())?),
    };
    let runner = Runner {
        plan,
        spec,
        dir,
        manifest,
        progress,
        tok,
        tr,
        reward_judge,
        meta_judge,
        reward_cfg,
        meta_cfg,
        policy_template,
        chat_template,
        rubrics,
        state,
        data_seed,
        gate,
        instrument,
        engine,
    };
    Ok((runner, Data { train, test, transfer }))
}

/// The trained models and their optimizers: the policy (with a value head when the critic is
/// shared), and the critic when it is separate.
fn trainer<B: AutodiffBackend>(spec: &Spec, mut policy: Llama<B>, device: &B::Device) -> Trainer<B> {
    let seed = spec.runtime.seed;
    let lora = LoraConfig::from_spec(&spec.policy.lora);
    // No optimizer-side clipping: burn's clips each tensor on its own; `train::update` clips
    // the global norm over every trained tensor instead.
    let adam = || burn::optim::AdamWConfig::new().with_epsilon(1e-8).with_weight_decay(spec.ppo.weight_decay as f32).init::<B, Llama<B>>();
    let mut critic = None;
    if spec.ppo.algorithm != Algorithm::Grpo {
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
    Trainer { policy, optim: adam(), critic }
}

/// Where the run stands: the trainer, the rubric in force and the state, from the newest intact
/// checkpoint or from scratch. Nothing is deleted: what the checkpoint does not cover is set
/// aside (`results::Aside`) and redone.
fn resume_or_start<B: AutodiffBackend>(
    plan: &Plan,
    dir: &RunDir,
    tr: Trainer<B>,
    device: &B::Device,
    mut rubrics: Rubrics,
    manifest: &mut Manifest,
    progress: &Progress,
) -> Result<(Trainer<B>, Rubrics, State), RunError> {
    if let Some(found) = checkpoint::latest(dir)? {
        for d in &found.skipped {
            progress.log(&format!("warning: passing over a damaged checkpoint: {d}"));
        }
        let st = found.state;
        progress.log(&format!("resuming from {} (update {} of {})", found.dir.display(), st.update, plan.schedule.updates));
        let tr = checkpoint::load(&found.dir, tr, device)?;
        let aside = set_aside_after(dir, st.update, &rubrics, &st)?;
        if !aside.moved.is_empty() {
            progress.log(&format!(
                "what was written after update {} is redone; the earlier copy is kept in {} ({})",
                st.update,
                aside.folder.display(),
                aside.moved.join(", ")
            ));
            super::tensorboard::write(&dir.path("events.out.tfevents.mpo"), &dir.metrics()?)?;
        }
        rubrics.resume(&st)?;
        manifest.resumed_from.push(st.update);
        manifest.updates_done = st.update;
        return Ok((tr, rubrics, st));
    }
    // No checkpoint: an earlier attempt (if any) stopped before its first one.
    let mut aside = dir.aside("before-first-checkpoint");
    for rel in ["metrics.jsonl", "rubrics", "samples", "events.out.tfevents.mpo"] {
        aside.take(rel)?;
    }
    // The base model's evaluation (`mpo eval SPEC`) stays: it does not depend on training.
    for name in file_names(&dir.path("eval")).into_iter().filter(|n| !n.starts_with("base.")) {
        aside.take(&format!("eval/{name}"))?;
    }
    if !aside.moved.is_empty() {
        progress.log(&format!(
            "an earlier attempt stopped before its first checkpoint: starting over; its files are kept in {}",
            aside.folder.display()
        ));
    }
    manifest.updates_done = 0;
    rubrics.init()?;
    Ok((tr, rubrics, State::default()))
}

fn file_names(d: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(d).map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect()).unwrap_or_default();
    v.sort();
    v
}

/// Set aside what a stopped process wrote after the checkpoint of `update` (metrics rows,
/// samples, evaluations, rubric versions and history lines): the resumed run writes them again.
fn set_aside_after(dir: &RunDir, update: u32, rubrics: &Rubrics, state: &State) -> Result<results::Aside, RunError> {
    let mut aside = dir.aside(&format!("after-update-{update:06}"));
    let upto = |field: &'static str| move |r: &serde_json::Value| r[field].as_u64().is_some_and(|u| u <= update as u64);
    aside.split_jsonl("metrics.jsonl", upto("update"))?;
    for sub in ["samples", "eval"] {
        for n in file_names(&dir.path(sub)) {
            let u = n.strip_prefix("update-").and_then(|s| s.strip_suffix(".jsonl")).and_then(|s| s.parse::<u32>().ok());
            if u.is_some_and(|u| u > update) {
                aside.take(&format!("{sub}/{n}"))?;
            }
        }
    }
    for f in &rubrics.families {
        let folder = f.history.folder();
        let rel = folder.strip_prefix(&dir.root).unwrap_or(folder).display().to_string();
        aside.split_jsonl(&format!("{rel}/history.jsonl"), upto("trigger_update"))?;
        let version = state.version_of(&f.key);
        for n in file_names(folder) {
            let v = n.strip_prefix('v').and_then(|s| s.strip_suffix(".md")).and_then(|s| s.parse::<u32>().ok());
            if v.is_some_and(|v| v > version) {
                aside.take(&format!("{rel}/{n}"))?;
            }
        }
    }
    Ok(aside)
}

/// `mpo run --restart`: set the whole run aside (the judge cache stays: its answers are keyed
/// by request, so they are as valid for the new attempt).
pub fn restart(dir: &RunDir) -> Result<Option<PathBuf>, RunError> {
    let mut aside = dir.aside("restart");
    for n in file_names(&dir.root) {
        if !["superseded", "judge-cache", "run.lock"].contains(&n.as_str()) {
            aside.take(&n)?;
        }
    }
    Ok((!aside.moved.is_empty()).then_some(aside.folder))
}

/// Rubric v0: the plan's rubric template, rendered.
fn plan_rubric(plan: &Plan) -> Result<Rubric, RunError> {
    let t = plan.template(TemplateKind::Rubric)?;
    let ctx = crate::template::context::RubricContext { task: plan.spec.task.kind.as_str() };
    let text = crate::template::render(&t.path.display().to_string(), &t.text, &ctx)?;
    Rubric::parse(&text).map_err(|e| RunError::Rubric { what: "the initial rubric".into(), message: e.to_string() })
}
