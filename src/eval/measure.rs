//! One evaluation of a policy on a held-out split: a fixed seeded sample of the split's
//! prompts (`eval.seed`: the same prompts for every run of a sweep), answered greedily by
//! default, scored with the task's metrics (math accuracy reads answers like the training
//! verifier) and, when the spec names one, by `eval.instrument`'s fixed judge and rubric.
//!
//! Results go to `eval/<label>.{jsonl,json}` (`results::evals`), the transfer split's to
//! `eval/transfer/`. The base policy's evaluation depends only on the model and the evaluation
//! settings, so it is cached under `output.root/.base-eval/<key>/` and a sweep pays for it once.
//! A run's evaluation phase (`run/eval.rs`) and `mpo eval` use the same [`Evaluator`]; its
//! generations use the random streams of the in-run evaluation of the same weights, so both
//! give the same responses.

use std::cell::RefCell;
use std::collections::BTreeMap;

use burn::prelude::*;
use rand::seq::SliceRandom;
use serde_json::{Value as J, json};

use super::EvalError;
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
use crate::template::{TemplateFile, TemplateKind};

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
    pub fn build<B: Backend>(plan: &Plan, env: &JudgeEnv<'_, B>) -> Result<Option<Instrument>, EvalError> {
        let spec = &plan.spec;
        let Some(is) = &spec.eval.instrument else { return Ok(None) };
        let rubric_t = plan.template(TemplateKind::InstrumentRubric)?;
        let prompt_t = plan.template(TemplateKind::InstrumentJudge)?;
        let ctx = crate::template::context::RubricContext { task: spec.task.kind.as_str() };
        let text = crate::template::render(&rubric_t.path.display().to_string(), &rubric_t.text, &ctx)?;
        let rubric =
            Rubric::parse(&text).map_err(|e| EvalError::Rubric { what: "the instrument rubric".into(), message: e.to_string() })?;
        let reward = is.as_reward(spec.reward.failure.retry_temperature);
        let cfg = RewardConfig::new(reward, spec.task.kind.as_str(), prompt_t.text.clone(), prompt_t.path.display().to_string())?;
        let judge = factory::build::<B>("instrument", &is.judge, plan.inputs.models.instrument.as_ref(), env)?;
        let info = InstrumentInfo {
            judge: judge.identity(),
            training_judge: is.training_judge,
            rubric_sha256: crate::hash::sha256_hex(rubric.to_markdown().as_bytes()),
            prompt_sha256: prompt_t.sha256.clone(),
            items: rubric.items.iter().map(|i| format!("{} ({}-{})", i.name, i.min, i.max)).collect(),
            aggregate: crate::spec::name_of(&is.aggregate),
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
    ) -> Result<(Vec<Option<f64>>, InstrumentInfo), EvalError> {
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
    ) -> Result<EvalSummary, EvalError> {
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
            prompts.push(crate::policy::prompt(spec, self.template, self.tok, self.chat_override, &records[i])?);
        }
        let s = crate::policy::sampling(spec, self.tok, spec.eval.temperature);
        let stream = if split == "test" { String::from("eval") } else { format!("eval/{split}") };
        let mut responses = Vec::with_capacity(prompts.len());
        for (c, chunk) in prompts.chunks(spec.runtime.rollout_batch.max(1)).enumerate() {
            let ids: Vec<Vec<u32>> = chunk.iter().map(|p| p.1.clone()).collect();
            let mut rng = crate::rng::stream(seed, &format!("{stream}/u{update:06}/c{c}"));
            responses.extend(generate(policy, self.tok, &ids, &s, adapter, &mut rng)?.into_iter().map(|g| g.text));
        }
        let recs: Vec<J> = idx.iter().map(|&i| records[i].clone()).collect();
        let mut e = super::metrics::evaluate(spec.task.kind, &recs, &responses, &spec.reward.verifiers);
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
                .then(|| super::metrics::math_check_note(&spec.reward.verifiers).to_string()),
            instrument: instrument_info,
        };
        dir.write_eval(&summary, &lines)?;
        Ok(summary)
    }
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
    measure: impl FnOnce() -> Result<EvalSummary, EvalError>,
) -> Result<bool, EvalError> {
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
