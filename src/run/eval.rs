//! Phase 5 of an update: evaluation on the test split at the planned updates. A fixed seeded
//! sample of test prompts, answered by the current policy (greedy by default), scored with the
//! task's metrics. Responses go to `eval/update-NNNNNN.jsonl` (for Elo tournaments across runs).
//! `mpo eval` reuses [`evaluate`] on a saved checkpoint; its generations use the same random
//! stream as the in-run evaluation of that update, so both give the same responses.

use std::collections::BTreeMap;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use rand::seq::SliceRandom;
use serde_json::{Value as J, json};

use super::rollout::{policy_prompt, policy_sampling};
use super::{RunError, Runner};
use crate::model::Llama;
use crate::model::generate::generate;
use crate::model::tokenizer::Tok;
use crate::results::RunDir;
use crate::spec::Spec;
use crate::spec::validate::TemplateFile;
use crate::task::Dataset;

/// What the evaluation phase of an update measured (no metrics when none was planned).
pub struct EvalPhase {
    pub metrics: Option<BTreeMap<String, f64>>,
    pub seconds: f64,
}

/// Evaluate the policy when the plan has an evaluation at `update`.
pub fn maybe_evaluate<B: AutodiffBackend>(r: &Runner<'_, B>, test: Option<&Dataset>, update: u32) -> Result<EvalPhase, RunError> {
    let Some(test) = test.filter(|_| r.plan.schedule.eval_at.contains(&update)) else {
        return Ok(EvalPhase { metrics: None, seconds: 0.0 });
    };
    r.progress.stage(&format!("update {update}: evaluating"));
    let t0 = Instant::now();
    let used = r.plan.inputs.test.as_ref().map(|t| t.used).unwrap_or(0);
    let metrics = evaluate(
        &r.tr.policy.valid(),
        &r.tok,
        r.spec,
        &r.policy_template,
        r.chat_template.as_deref(),
        &test.records,
        used,
        r.dir,
        update,
        &format!("update-{update:06}"),
    )?;
    Ok(EvalPhase { metrics: Some(metrics), seconds: t0.elapsed().as_secs_f64() })
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

#[allow(clippy::too_many_arguments)]
pub fn evaluate<B: Backend>(
    policy: &Llama<B>,
    tok: &Tok,
    spec: &Spec,
    template: &TemplateFile,
    chat_override: Option<&str>,
    records: &[J],
    used: usize,
    dir: &RunDir,
    update: u32,
    file: &str,
) -> Result<BTreeMap<String, f64>, RunError> {
    // `eval.seed`, not `runtime.seed`: every run of a sweep answers the same test prompts.
    let seed = spec.eval.seed;
    let idx = eval_indices(seed, records.len(), used, spec.eval.samples);
    let mut prompts = Vec::with_capacity(idx.len());
    for &i in &idx {
        prompts.push(policy_prompt(spec, template, tok, chat_override, &records[i])?);
    }
    let s = policy_sampling(spec, tok, spec.eval.temperature);
    let mut responses = Vec::with_capacity(prompts.len());
    for (c, chunk) in prompts.chunks(spec.runtime.rollout_batch.max(1)).enumerate() {
        let ids: Vec<Vec<u32>> = chunk.iter().map(|p| p.1.clone()).collect();
        let mut rng = crate::rng::stream(seed, &format!("eval/u{update:06}/c{c}"));
        responses.extend(generate(policy, tok, &ids, &s, true, &mut rng)?.into_iter().map(|g| g.text));
    }
    let recs: Vec<J> = idx.iter().map(|&i| records[i].clone()).collect();
    let metrics = crate::task::metrics::evaluate(spec.task.kind, &recs, &responses);
    let lines: Vec<J> = idx
        .iter()
        .zip(&prompts)
        .zip(&responses)
        .map(|((i, p), r)| json!({"record_index": i, "record_id": records[*i].get("id"), "question": p.0, "response": r}))
        .collect();
    dir.write_jsonl(&format!("eval/{file}.jsonl"), &lines)?;
    Ok(metrics)
}
