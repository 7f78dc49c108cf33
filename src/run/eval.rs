//! Phase 5 of an update: evaluation on the held-out splits at the planned updates, and of the
//! base policy before the first one. A fixed seeded sample of each split's prompts
//! (`eval.seed`: the same prompts for every run of a sweep), answered greedily by default,
//! scored with the task's metrics (math accuracy reads answers like the training verifier).
//!
//! Results go to `eval/<label>.{jsonl,json}` (`results::evals`), the transfer split's to
//! `eval/transfer/`. The base policy's evaluation depends only on the model and the evaluation
//! settings, so it is cached under `output.root/.base-eval/<key>/` and a sweep pays for it once.
//! `mpo eval` uses the same [`Evaluator`]; its generations use the random streams of the in-run
//! evaluation of the same weights, so both give the same responses.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use rand::seq::SliceRandom;
use serde_json::{Value as J, json};

use super::rollout::{policy_prompt, policy_sampling};
use super::setup::{Data, plan_template};
use super::{RunError, Runner};
use crate::judge::factory::{self, JudgeEnv};
use crate::judge::{Judge, TokenUsage};
use crate::model::Llama;
use crate::model::generate::generate;
use crate::model::tokenizer::Tok;
use crate::plan::Plan;
use crate::results::RunDir;
use crate::results::evals::{EvalLine, EvalSummary, INSTRUMENT_METRIC, InstrumentInfo};
use crate::reward::{self, RewardConfig, Rollout};
use crate::rubric::Rubric;
use crate::spec::Spec;
use crate::spec::validate::TemplateFile;
use crate::template::TemplateKind;

/// What the evaluation phase of an update measured (no metrics when none was planned).
pub struct EvalPhase {
    pub metrics: Option<BTreeMap<String, f64>>,
    pub seconds: f64,
}

/// The test records an evaluation uses: the same ones at every evaluation of a run.
pub fn eval_indices(seed: u64, available: usize, used: usize, samples: usize) -> Vec<usize> {
    let mut pool: Vec<usize> = (0..available).collect();
    pool.shuffle(&mut crate::rng::stream(seed, "eval/subset"));
    pool.truncate(used.max(1).min(available));
    pool.truncate(samples.max(1));
    pool.sort();
    pool
}

/// What every evaluation of a plan shares.
pub struct Evaluator<'a> {
    pub plan: &'a Plan,
    pub tok: &'a Tok,
    pub template: &'a TemplateFile,
    pub chat_override: Option<&'a str>,
    /// `eval.instrument`, when the spec names one.
    pub instrument: Option<&'a Instrument>,
}

/// `eval.instrument` ready to score: its judge (behind the run's judge cache), its settings and
/// its fixed rubric. A response's judge seed depends only on the split and record, so the same
/// response is asked the same way at every evaluation, in every run.
pub struct Instrument {
    judge: RefCell<Box<dyn Judge>>,
    cfg: RewardConfig,
    rubric: Rubric,
    info: InstrumentInfo,
}

impl Instrument {
    /// The plan's instrument, built from `env` (`None` when the spec names none).
    pub fn build<B: Backend>(plan: &Plan, env: &JudgeEnv<'_, B>) -> Result<Option<Instrument>, RunError> {
        let spec = &plan.spec;
        let Some(is) = &spec.eval.instrument else { return Ok(None) };
        let rubric_t = plan_template(plan, TemplateKind::InstrumentRubric)?;
        let prompt_t = plan_template(plan, TemplateKind::InstrumentJudge)?;
        let ctx = crate::template::context::RubricContext { task: spec.task.kind.as_str() };
        let text = crate::template::render(&rubric_t.path.display().to_string(), &rubric_t.text, &ctx)?;
        let rubric = Rubric::parse(&text).map_err(|e| RunError::Rubric { what: "the instrument rubric".into(), message: e.to_string() })?;
        let reward = is.as_reward(spec.reward.failure.retry_temperature);
        let cfg = RewardConfig::new(reward, spec.task.kind.as_str(), prompt_t.text.clone(), prompt_t.path.display().to_string())?;
        let judge = factory::build::<B>("instrument", &is.judge, plan.inputs.models.instrument.as_ref(), env)?;
        let info = InstrumentInfo {
            judge: judge.identity(),
            training_judge: is.training_judge,
            rubric_sha256: crate::hash::sha256_hex(rubric.to_markdown().as_bytes()),
            prompt_sha256: prompt_t.sha256.clone(),
            items: rubric.items.iter().map(|i| format!("{} ({}-{})", i.name, i.min, i.max)).collect(),
            aggregate: serde_json::to_value(is.aggregate).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
            scored: 0,
            retries: 0,
            failures: BTreeMap::new(),
        };
        Ok(Some(Instrument { judge: RefCell::new(judge), cfg, rubric, info }))
    }

    /// The judge's identity, for the manifest.
    pub fn identity(&self) -> String {
        self.info.judge.clone()
    }

    /// Score `responses` to the prompts of `records` (by record index `idx`) of `split`: one
    /// score per response (`None`: unusable after every retry), and how it went.
    fn score(
        &self,
        seed: u64,
        split: &str,
        idx: &[usize],
        questions: &[String],
        responses: &[String],
        records: &[J],
    ) -> Result<(Vec<Option<f64>>, InstrumentInfo), RunError> {
        let rollouts: Vec<Rollout> = idx
            .iter()
            .zip(questions.iter().zip(responses))
            .map(|(&i, (q, r))| Rollout {
                id: format!("instrument/{split}/r{i:06}"),
                question: q.clone(),
                response: r.clone(),
                record: &records[i],
            })
            .collect();
        let mut usage = TokenUsage::default();
        let scored = reward::score_batch(self.judge.borrow_mut().as_mut(), &self.cfg, &self.rubric, &rollouts, seed, 0, &mut usage)?;
        let mut info = self.info.clone();
        info.scored = scored.iter().filter(|s| s.judge_reward.is_some() && s.failure.is_none()).count();
        info.retries = scored.iter().map(|s| s.judge_answers.len().saturating_sub(1) as u64).sum();
        info.failures = reward::failure_counts(&scored);
        Ok((scored.iter().map(|s| s.failure.is_none().then_some(s.judge_reward).flatten()).collect(), info))
    }
}

impl<'a> Evaluator<'a> {
    /// The evaluator of a run in progress.
    fn of<B: AutodiffBackend>(r: &'a Runner<'_, B>) -> Self {
        Evaluator {
            plan: r.plan,
            tok: &r.tok,
            template: &r.policy_template,
            chat_override: r.chat_template.as_deref(),
            instrument: r.instrument.as_ref(),
        }
    }
    /// Evaluate `policy` (its adapters on or off) on `split`'s `records` as the weights after
    /// `update` (0: the base policy), written as `label` into `dir`.
    #[allow(clippy::too_many_arguments)]
    pub fn run<B: Backend>(
        &self,
        policy: &Llama<B>,
        adapter: bool,
        split: &str,
        records: &[J],
        update: u32,
        label: &str,
        dir: &RunDir,
    ) -> Result<EvalSummary, RunError> {
        let spec: &Spec = &self.plan.spec;
        let used = match split {
            "transfer" => self.plan.inputs.transfer.as_ref(),
            _ => self.plan.inputs.test.as_ref(),
        }
        .map(|d| d.used)
        .unwrap_or(records.len());
        // `eval.seed`, not `runtime.seed`: every run of a sweep answers the same test prompts.
        let seed = spec.eval.seed;
        let idx = eval_indices(seed, records.len(), used, spec.eval.samples);
        let mut prompts = Vec::with_capacity(idx.len());
        for &i in &idx {
            prompts.push(policy_prompt(spec, self.template, self.tok, self.chat_override, &records[i])?);
        }
        let s = policy_sampling(spec, self.tok, spec.eval.temperature);
        let stream = if split == "test" { String::from("eval") } else { format!("eval/{split}") };
        let mut responses = Vec::with_capacity(prompts.len());
        for (c, chunk) in prompts.chunks(spec.runtime.rollout_batch.max(1)).enumerate() {
            let ids: Vec<Vec<u32>> = chunk.iter().map(|p| p.1.clone()).collect();
            let mut rng = crate::rng::stream(seed, &format!("{stream}/u{update:06}/c{c}"));
            responses.extend(generate(policy, self.tok, &ids, &s, adapter, &mut rng)?.into_iter().map(|g| g.text));
        }
        let recs: Vec<J> = idx.iter().map(|&i| records[i].clone()).collect();
        let mut e = crate::task::metrics::evaluate(spec.task.kind, &recs, &responses, &spec.reward.verifiers);
        let scores = e.headline.as_ref().map(|(_, s)| s.clone());
        let questions: Vec<String> = prompts.iter().map(|p| p.0.clone()).collect();
        let (instrument, instrument_info) = match self.instrument {
            Some(inst) => {
                let (v, info) = inst.score(seed, split, &idx, &questions, &responses, records)?;
                let got: Vec<f64> = v.iter().flatten().copied().collect();
                if !got.is_empty() {
                    e.metrics.insert(INSTRUMENT_METRIC.into(), got.iter().sum::<f64>() / got.len() as f64);
                }
                e.metrics.insert("instrument_failures".into(), (v.len() - got.len()) as f64);
                (v, Some(info))
            }
            None => (vec![None; idx.len()], None),
        };
        let lines: Vec<EvalLine> = idx
            .iter()
            .zip(&prompts)
            .zip(&responses)
            .enumerate()
            .map(|(k, ((&i, p), r))| EvalLine {
                record_index: i,
                record_id: records[i].get("id").cloned(),
                question: p.0.clone(),
                response: r.clone(),
                score: scores.as_ref().map(|s| s[k]),
                instrument: instrument[k],
            })
            .collect();
        let summary = EvalSummary {
            run_id: self.plan.run_id.clone(),
            weights: label.to_string(),
            split: split.to_string(),
            samples: idx.len(),
            metrics: e.metrics,
            headline: e.headline.map(|(name, _)| name),
            note: (spec.task.kind == crate::spec::TaskKind::Math)
                .then(|| crate::task::metrics::math_check_note(&spec.reward.verifiers).to_string()),
            instrument: instrument_info,
        };
        dir.write_eval(&summary, &lines)?;
        Ok(summary)
    }
}

/// The splits of `data` a run evaluates, by name.
fn splits(data: &Data) -> Vec<(&'static str, &[J])> {
    let mut v = Vec::new();
    if let Some(t) = &data.test {
        v.push(("test", t.records.as_slice()));
    }
    if let Some(t) = &data.transfer {
        v.push(("transfer", t.records.as_slice()));
    }
    v
}

/// A split's metrics as they go into a metrics row: the test split's as they are, another
/// split's as `<split>/<metric>`.
fn prefixed(split: &str, metrics: BTreeMap<String, f64>) -> impl Iterator<Item = (String, f64)> + '_ {
    metrics.into_iter().map(move |(k, v)| (if split == "test" { k } else { format!("{split}/{k}") }, v))
}

/// Evaluate the policy when the plan has an evaluation at `update`.
pub fn maybe_evaluate<B: AutodiffBackend>(r: &Runner<'_, B>, data: &Data, update: u32) -> Result<EvalPhase, RunError> {
    if !r.plan.schedule.eval_at.contains(&update) || data.test.is_none() {
        return Ok(EvalPhase { metrics: None, seconds: 0.0 });
    }
    r.progress.stage(&format!("update {update}: evaluating"));
    let t0 = Instant::now();
    let policy = r.tr.policy.valid();
    let ev = Evaluator::of(r);
    let mut metrics = BTreeMap::new();
    for (split, records) in splits(data) {
        let s = ev.run(&policy, true, split, records, update, &format!("update-{update:06}"), r.dir)?;
        metrics.extend(prefixed(split, s.metrics));
    }
    Ok(EvalPhase { metrics: Some(metrics), seconds: t0.elapsed().as_secs_f64() })
}

/// Before the first update: the base policy (adapters off) on every held-out split, from the
/// cache when another run already measured it with the same model and settings.
pub fn evaluate_base<B: AutodiffBackend>(r: &Runner<'_, B>, data: &Data) -> Result<(), RunError> {
    if r.plan.schedule.eval_at.is_empty() {
        return Ok(());
    }
    let policy = r.tr.policy.valid();
    let ev = Evaluator::of(r);
    for (split, records) in splits(data) {
        if r.dir.read_eval(split, "base").is_some() {
            continue;
        }
        r.progress.stage(&format!("evaluating the base policy on the {split} split"));
        let from_cache = base_cached(&ev, split, r.dir, || ev.run(&policy, false, split, records, 0, "base", r.dir))?;
        if from_cache {
            r.progress.log(&format!("base policy on the {split} split: from the cache in {}", base_cache(r.plan, split).root.display()));
        }
    }
    Ok(())
}

/// The cache folder of the base evaluation of `plan` on `split`: everything the responses and
/// their scores depend on, hashed.
pub fn base_cache(plan: &Plan, split: &str) -> RunDir {
    let s = &plan.spec;
    let model_file = |p: &std::path::Path| std::fs::metadata(p).ok().map(|m| (m.len(), m.modified().ok().map(|t| format!("{t:?}"))));
    let model_identity = match &plan.inputs.models.policy {
        crate::model::registry::ModelRef::Gguf { path, .. } | crate::model::registry::ModelRef::HfDir { path, .. } => {
            json!(model_file(path).map(|(len, t)| json!([len, t])))
        }
        _ => J::Null,
    };
    let chat = s.policy.chat_template.as_ref().and_then(|p| std::fs::read_to_string(p).ok());
    let mut key = json!({
        "mpo": env!("CARGO_PKG_VERSION"),
        "model": plan.inputs.models.policy,
        "model_file": model_identity,
        "task": s.task.kind.as_str(),
        "split": split,
        "data": if split == "test" { &plan.inputs.test } else { &plan.inputs.transfer },
        "template": plan.inputs.templates.get("policy").map(|t| &t.sha256),
        "chat_template": chat,
        "system": s.policy.system,
        "sampling": [s.ppo.response_length, s.policy.top_p, s.policy.top_k],
        "stop": s.policy.stop,
        "eval": [s.eval.seed, s.eval.samples as u64],
        "temperature": s.eval.temperature,
        "rollout_batch": s.runtime.rollout_batch,
        "backend": s.runtime.backend.as_str(),
        // the decode arithmetic: a cache measured with the other one is another instrument
        "quantized_decode": s.runtime.quantized_decode,
        "verifiers": s.reward.verifiers,
        // the instrument's settings, its files by content, its in-process model
        "instrument": s.eval.instrument.as_ref().map(|i| json!({
            "judge": i.judge,
            "reading": [serde_json::to_value(&i.extraction).ok(), serde_json::to_value(i.answer).ok(), serde_json::to_value(i.aggregate).ok()],
            "retries": [i.retries, s.reward.failure.retry_temperature.to_bits()],
            "rubric": plan.inputs.templates.get(TemplateKind::InstrumentRubric.as_str()).map(|t| &t.sha256),
            "prompt": plan.inputs.templates.get(TemplateKind::InstrumentJudge.as_str()).map(|t| &t.sha256),
            "model": plan.inputs.models.instrument,
        })),
    });
    // bf16 is another arithmetic (another instrument); f32 caches keep their keys
    if !s.runtime.precision.is_f32() {
        key["precision"] = json!(s.runtime.precision.as_str());
    }
    let hash = crate::hash::sha256_json(&key);
    RunDir { root: s.output.root.join(".base-eval").join(&hash[..16]) }
}

/// Put the base evaluation of `split` into `dir`: copied from the cache, or measured by
/// `measure` (which writes it into `dir`) and then cached. Returns whether it came from the cache.
pub fn base_cached(
    ev: &Evaluator,
    split: &str,
    dir: &RunDir,
    measure: impl FnOnce() -> Result<EvalSummary, RunError>,
) -> Result<bool, RunError> {
    let cache = base_cache(ev.plan, split);
    if let Some((mut summary, lines)) = cache.read_eval(split, "base") {
        summary.run_id = ev.plan.run_id.clone();
        dir.write_eval(&summary, &lines)?;
        return Ok(true);
    }
    measure()?;
    if let Some((summary, lines)) = dir.read_eval(split, "base") {
        cache.write_eval(&summary, &lines)?;
    }
    Ok(false)
}
