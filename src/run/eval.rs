//! Phase 5 of an update: evaluation on the held-out splits at the planned updates, and of the
//! base policy before the first one (from the cache when another run measured it). What one
//! evaluation is, and the cache, live in `eval/measure.rs`; this file decides when.

use std::collections::BTreeMap;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use serde_json::Value as J;

use super::setup::Data;
use super::{RunError, Runner};
use crate::eval::measure::{Evaluator, base_cache, base_cached};

/// What the evaluation phase of an update measured (no metrics when none was planned).
pub struct EvalPhase {
    pub metrics: Option<BTreeMap<String, f64>>,
    pub seconds: f64,
}

/// The evaluator of a run in progress.
fn evaluator<'a, B: AutodiffBackend>(r: &'a Runner<'_, B>) -> Evaluator<'a> {
    Evaluator {
        plan: r.plan,
        tok: &r.tok,
        template: &r.policy_template,
        chat_override: r.chat_template.as_deref(),
        instrument: r.instrument.as_ref(),
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
    let ev = evaluator(r);
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
    let ev = evaluator(r);
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
