//! Phase 4 of an update: the meta-reward step. Every update adds its judge-scored rollouts to
//! the evidence pool; at the planned updates the meta judge reads a sample of it and may
//! rewrite the rubric (`meta/`). The outcome, kept or new, is recorded in the rubric history.

use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;

use super::score::Scoring;
use super::setup::plan_template;
use super::{RunError, Runner};
use crate::judge::{Judge, Transport};
use crate::meta::MetaShapes;
use crate::meta::{self, MetaConfig, MetaSample};
use crate::plan::Plan;
use crate::results::metrics::{MetaRow, round6};
use crate::reward::{Rollout, Scored};
use crate::rubric::Rubric;
use crate::spec::Every;
use crate::template::TemplateKind;

/// What the meta phase did at one update: its metrics row (none when no step was planned).
pub struct MetaPhase {
    pub row: Option<MetaRow>,
    /// The meta judge's retries and failures (`None`: no step, or a judge without a server).
    pub transport: Option<Transport>,
    /// The reward judge's, while `meta.gate` scored the cases.
    pub gate_transport: Option<Transport>,
    pub seconds: f64,
}

/// Pool the update's evidence; run the meta step when the plan has one at `update`.
pub fn maybe_run<B: AutodiffBackend>(r: &mut Runner<'_, B>, scoring: &Scoring, update: u32) -> Result<MetaPhase, RunError> {
    if pools_evidence(&r.plan.schedule.meta_at, update) {
        r.state.meta_candidates.extend(evidence(&scoring.rollouts, &scoring.scored, &r.rubric));
    }
    if !r.plan.schedule.meta_at.contains(&update) {
        return Ok(MetaPhase { row: None, transport: None, gate_transport: None, seconds: 0.0 });
    }
    r.progress.stage(&format!("update {update}: meta-reward step ({} candidates)", r.state.meta_candidates.len()));
    let t0 = Instant::now();
    let cfg = r.meta_cfg.as_ref().ok_or(RunError::MissingTemplate("meta stage"))?;
    let judge: &mut dyn Judge = match r.meta_judge.as_mut() {
        Some(j) => j.as_mut(),
        None => r.reward_judge.as_mut(),
    };
    let before = judge.transport();
    let mut outcome = meta::run(judge, cfg, &r.rubric, &r.state.meta_candidates, r.spec.runtime.seed, update);
    let transport = judge.transport().map(|t| t.since(&before.unwrap_or_default()));
    let mut gate_transport = None;
    if let (Some(gate), Ok(candidate)) = (r.gate.as_mut(), &outcome.result) {
        r.progress.stage(&format!("update {update}: meta gate (rubric test cases under the rubric in force and the merged one)"));
        let before = r.reward_judge.transport();
        let (verdict, usage) = gate
            .verdict(r.reward_judge.as_mut(), &r.rubric, candidate)
            .map_err(|message| RunError::Rubric { what: "meta.gate".into(), message })?;
        gate_transport = r.reward_judge.transport().map(|t| t.since(&before.unwrap_or_default()));
        // Part of the meta step's cost: counted in its totals (`tokens.meta_judge_total`).
        outcome.usage.add(&usage);
        outcome.result = verdict.apply(outcome.result);
        outcome.gate = Some(verdict);
    }
    let state = &mut r.state;
    state.usage.entry("meta".into()).or_default().add(&outcome.usage);
    let new_version = r.history.record(&outcome, &r.rubric, state.rubric_version)?;
    state.meta_steps += 1;
    state.meta_accepted += u32::from(new_version.is_some() && outcome.result.is_ok());
    let row = MetaRow {
        ran: true,
        samples: outcome.evidence.len(),
        new_version,
        kept_because: outcome.result.as_ref().err().cloned(),
        steps: state.meta_steps,
        accepted: state.meta_accepted,
        acceptance_rate: round6(state.meta_accepted as f64 / state.meta_steps as f64),
    };
    if !outcome.repeats_dropped.is_empty() {
        r.progress.log(&format!("update {update}: the merge wrote an item again; dropped {}", outcome.repeats_dropped.join(", ")));
    }
    match (new_version, outcome.result) {
        (Some(v), Ok(rubric)) => {
            state.rubric_since = update;
            let changes = rubric.changes_from(&r.rubric);
            let n = rubric.items.len();
            r.progress.log(&format!("update {update}: rubric v{v:03} ({n} item{}: {})", if n == 1 { "" } else { "s" }, changes.join("; ")));
            r.rubric = rubric;
            state.rubric_version = v;
        }
        (_, Err(why)) => r.progress.log(&format!("update {update}: rubric kept ({why})")),
        _ => {}
    }
    state.meta_candidates.clear();
    Ok(MetaPhase { row: Some(row), transport, gate_transport, seconds: t0.elapsed().as_secs_f64() })
}

/// Whether `update`'s rollouts can still reach a meta step: none is planned at or after it
/// (`meta.every: never`, or past the last step), so pooling them would only grow every
/// checkpoint.
pub fn pools_evidence(meta_at: &[u32], update: u32) -> bool {
    meta_at.iter().any(|&m| m >= update)
}

/// The rollouts a meta step may learn from: those the judge scored. A verifier-scored or
/// skipped rollout has no grade for the meta judge to audit.
pub fn evidence(rollouts: &[Rollout], scored: &[Scored], rubric: &Rubric) -> Vec<MetaSample> {
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

/// The meta pipeline's templates and settings (`None` when `meta.every` is `never`).
pub fn config(plan: &Plan) -> Result<Option<MetaConfig>, RunError> {
    let spec = &plan.spec;
    if spec.meta.every == Every::Never {
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
        sampling: spec.meta.sampling,
        domain_guidelines: spec.meta.domain_guidelines,
        max_tokens: spec.meta.max_tokens,
        temperature: js.temperature,
        shapes: MetaShapes::fit(spec.meta.max_items, spec.meta.max_tokens)
            .map_err(|message| RunError::Rubric { what: "meta stages".into(), message })?
            .with_max_points(spec.meta.max_points),
        held: js.holds_shapes(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_evidence_is_what_the_judge_scored() {
        let rec = serde_json::json!({});
        let rollouts: Vec<Rollout> =
            (0..3).map(|k| Rollout { id: format!("r{k}"), question: "q".into(), response: "a".into(), record: &rec }).collect();
        let scored = |source: &str, reward: Option<f64>, items: Option<f64>| Scored {
            id: String::new(),
            reward,
            source: source.into(),
            verdicts: vec![],
            verifier_score: None,
            judge_reward: reward,
            item_scores: items.map(|x| crate::reward::score::ItemScores { scores: vec![("Correct".into(), x)] }),
            judge_prompt: None,
            judge_answers: vec![],
            failure: None,
        };
        // r0 judged, r1 scored by the verifier (coin), r2 skipped
        let scored = vec![scored("judge", Some(1.0), Some(3.0)), scored("verifier", Some(1.0), None), scored("judge", None, None)];
        let rubric = Rubric::parse("## Correct (0-4)\n").unwrap();
        let ev = evidence(&rollouts, &scored, &rubric);
        assert_eq!(ev.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), vec!["r0"]);
        assert_eq!(ev[0].score, Some(3.0));
    }

    #[test]
    fn evidence_is_pooled_only_for_a_meta_step_to_come() {
        assert!(!pools_evidence(&[], 1), "meta.every: never pools nothing");
        assert!(pools_evidence(&[4, 8], 1) && pools_evidence(&[4, 8], 8));
        assert!(!pools_evidence(&[4, 8], 9), "after the last step nothing reads the pool");
    }
}
