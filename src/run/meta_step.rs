//! Phase 4 of an update: the meta-reward step. Every update adds its judge-scored rollouts to
//! the evidence pool; at the planned updates the meta judge reads a sample of it and may
//! rewrite the rubric (`meta/`). The outcome, kept or new, is recorded in the rubric history.

use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;

use super::score::Scoring;
use super::{RunError, Runner};
use crate::judge::{Judge, Transport};
use crate::meta::MetaShapes;
use crate::meta::{self, MetaConfig, MetaSample};
use crate::plan::Plan;
use crate::results::metrics::{FamilyStep, MetaRow, finite};
use crate::reward::{Rollout, Scored};
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

/// Pool the update's evidence; run the meta step when the plan has one at `update`: one for the
/// run's rubric, or one per rubric family that has rollouts in the pool.
pub fn maybe_run<B: AutodiffBackend>(r: &mut Runner<'_, B>, scoring: &Scoring, update: u32) -> Result<MetaPhase, RunError> {
    if pools_evidence(&r.plan.schedule.meta_at, update) {
        r.state.meta_candidates.extend(evidence(&scoring.rollouts, &scoring.scored, &scoring.ranges));
    }
    if !r.plan.schedule.meta_at.contains(&update) {
        return Ok(MetaPhase { row: None, transport: None, gate_transport: None, seconds: 0.0 });
    }
    r.progress.stage(&format!("update {update}: meta-reward step ({} candidates)", r.state.meta_candidates.len()));
    let t0 = Instant::now();
    let mut pools: Vec<Vec<MetaSample>> = vec![Vec::new(); r.rubrics.families.len()];
    for c in std::mem::take(&mut r.state.meta_candidates) {
        let i = r.rubrics.index_of(&c.record)?;
        pools[i].push(c);
    }
    let whole = r.rubrics.is_whole();
    let (mut transport, mut gate_transport) = (None::<Transport>, None::<Transport>);
    let (mut samples, mut families, mut kept, mut new_version) = (0, Vec::new(), None, None);
    let mut usage = crate::judge::TokenUsage::default();
    let before_total = r.state.rubric_version;
    for (i, pool) in pools.iter().enumerate() {
        // A family with no rollouts since the last step keeps its rubric: there is nothing to
        // learn from (the reference rewrites it from no cases).
        if pool.is_empty() && !whole {
            continue;
        }
        let step = family_step(r, i, pool, update)?;
        add(&mut transport, step.transport);
        add(&mut gate_transport, step.gate_transport);
        usage.add(&step.usage);
        samples += step.samples;
        if !whole {
            let key = r.rubrics.families[i].key.clone();
            families.push(FamilyStep {
                family: key,
                samples: step.samples,
                new_version: step.new_version,
                kept_because: step.kept.as_ref().map(ToString::to_string),
            });
        }
        kept = step.kept;
        new_version = step.new_version;
    }
    let state = &mut r.state;
    let changed = state.rubric_version != before_total;
    let row = MetaRow {
        ran: true,
        samples,
        new_version: if whole { new_version } else { changed.then_some(state.rubric_version) },
        kept_because: match whole {
            true => kept.as_ref().map(ToString::to_string),
            false if changed => None,
            false if families.is_empty() => Some("no family had rollouts to learn from".into()),
            false => Some(format!("no family's rubric changed ({} stepped; `meta.families` says why)", families.len())),
        },
        steps: state.meta_steps,
        accepted: state.meta_accepted,
        acceptance_rate: finite(state.meta_accepted as f64 / state.meta_steps as f64),
        families,
        calls: Some(usage.calls),
        cached: Some(usage.cached_calls),
    };
    Ok(MetaPhase { row: Some(row), transport, gate_transport, seconds: t0.elapsed().as_secs_f64() })
}

fn add(total: &mut Option<Transport>, t: Option<Transport>) {
    if let Some(t) = t {
        total.get_or_insert_with(Transport::default).add(&t);
    }
}

/// What one rubric's meta step did.
struct Step {
    samples: usize,
    new_version: Option<u32>,
    kept: Option<crate::meta::Kept>,
    transport: Option<Transport>,
    gate_transport: Option<Transport>,
    /// Judge calls of the step, `meta.gate`'s included.
    usage: crate::judge::TokenUsage,
}

/// The meta step of family `i` on its `pool`: run the pipeline, gate it, record it in the
/// family's history and switch the family's rubric when a new one was accepted.
fn family_step<B: AutodiffBackend>(r: &mut Runner<'_, B>, i: usize, pool: &[MetaSample], update: u32) -> Result<Step, RunError> {
    let cfg = r.meta_cfg.as_ref().ok_or(crate::plan::PlanFileError::Missing("meta stage"))?;
    let judge: &mut dyn Judge = match r.meta_judge.as_mut() {
        Some(j) => j.as_mut(),
        None => r.reward_judge.as_mut(),
    };
    let family = &r.rubrics.families[i];
    let before = judge.transport();
    let mut outcome = meta::run(judge, cfg, &family.rubric, pool, r.spec.runtime.seed, update, &family.key);
    let transport = judge.transport().map(|t| t.since(&before.unwrap_or_default()));
    let mut gate_transport = None;
    if let (Some(gate), Ok(candidate)) = (r.gate.as_mut(), &outcome.result) {
        r.progress.stage(&format!("update {update}: meta gate (rubric test cases under the rubric in force and the merged one)"));
        let before = r.reward_judge.transport();
        let (verdict, usage) = gate.verdict(r.reward_judge.as_mut(), &family.rubric, candidate)?;
        gate_transport = r.reward_judge.transport().map(|t| t.since(&before.unwrap_or_default()));
        // Part of the meta step's cost: counted in its totals (`tokens.meta_judge_total`).
        outcome.usage.add(&usage);
        outcome.result = verdict.apply(outcome.result);
        outcome.gate = Some(verdict);
    }
    let state = &mut r.state;
    state.usage.entry("meta".into()).or_default().add(&outcome.usage);
    let current = state.version_of(&family.key);
    let new_version = family.history.record(&outcome, &family.rubric, current)?;
    state.meta_steps += 1;
    state.meta_accepted += u32::from(new_version.is_some() && outcome.result.is_ok());
    let whose = if family.key.is_empty() { String::new() } else { format!(" {}", family.key) };
    if !outcome.repeats_dropped.is_empty() {
        let stage = if cfg.review == crate::spec::MetaReview::Joint { "refinement" } else { "merge" };
        r.progress.log(&format!("update {update}: the {stage}{whose} wrote an item again; dropped {}", outcome.repeats_dropped.join(", ")));
    }
    let kept = outcome.result.as_ref().err().cloned();
    match (new_version, outcome.result) {
        (Some(v), Ok(rubric)) => {
            let changes = rubric.changes_from(&family.rubric);
            let n = rubric.items.len();
            r.progress.log(&format!(
                "update {update}: rubric{whose} v{v:03} ({n} item{}: {})",
                if n == 1 { "" } else { "s" },
                changes.join("; ")
            ));
            state.switch(&family.key, v, update);
            r.rubrics.families[i].rubric = rubric;
        }
        (_, Err(why)) => r.progress.log(&format!("update {update}: rubric{whose} kept ({why})")),
        _ => {}
    }
    Ok(Step { samples: outcome.evidence.len(), new_version, kept, transport, gate_transport, usage: outcome.usage })
}

/// Whether `update`'s rollouts can still reach a meta step: none is planned at or after it
/// (`meta.every: never`, or past the last step), so pooling them would only grow every
/// checkpoint.
pub fn pools_evidence(meta_at: &[u32], update: u32) -> bool {
    meta_at.iter().any(|&m| m >= update)
}

/// The rollouts a meta step may learn from: those the judge scored. A verifier-scored or
/// skipped rollout has no grade for the meta judge to audit.
/// `ranges[i]`: the lowest and highest total of the rubric rollout `i` was scored under.
pub fn evidence(rollouts: &[Rollout], scored: &[Scored], ranges: &[(f64, f64)]) -> Vec<MetaSample> {
    rollouts
        .iter()
        .zip(scored)
        .zip(ranges)
        .filter(|((_, s), _)| s.item_scores.is_some())
        .map(|((r, s), &(_, max_score))| MetaSample {
            id: r.id.clone(),
            question: r.question.clone(),
            response: r.response.clone(),
            score: s.item_scores.as_ref().map(|i| i.total()),
            max_score,
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
    let t = |k: TemplateKind| plan.template(k).map(|f| (f.path.display().to_string(), f.text));
    let js = spec.meta.judge.as_ref().unwrap_or(&spec.reward.judge);
    Ok(Some(MetaConfig {
        task: spec.task.kind.as_str().into(),
        prescreen: if plan.inputs.templates.contains_key("prescreen") { Some(t(TemplateKind::Prescreen)?) } else { None },
        analyze: t(TemplateKind::Analyze)?,
        refine: t(TemplateKind::Refine)?,
        merge: if plan.inputs.templates.contains_key("merge") { Some(t(TemplateKind::Merge)?) } else { None },
        review: spec.meta.review,
        samples: spec.meta.samples,
        sampling: spec.meta.sampling,
        domain_guidelines: spec.meta.domain_guidelines,
        max_tokens: spec.meta.max_tokens,
        temperature: js.temperature,
        shapes: MetaShapes::fit(spec.meta.max_items, spec.meta.max_tokens)
            .map_err(|e| RunError::Rubric { what: "meta stages".into(), message: e.to_string() })?
            .with_max_points(spec.meta.max_points),
        held: js.holds_shapes(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rubric::Rubric;

    #[test]
    fn meta_evidence_is_what_the_judge_scored() {
        let rec = serde_json::json!({});
        let rollouts: Vec<Rollout> =
            (0..3).map(|k| Rollout { id: format!("r{k}"), question: "q".into(), response: "a".into(), record: &rec }).collect();
        use crate::reward::Source;
        let scored = |source: Source, reward: Option<f64>, items: Option<f64>| Scored {
            id: String::new(),
            reward,
            source,
            verdicts: vec![],
            verifier_score: None,
            judge_reward: reward,
            item_scores: items.map(|x| crate::reward::score::ItemScores { scores: vec![("Correct".into(), x)] }),
            judge_prompt: None,
            judge_answers: vec![],
            failure: None,
        };
        // r0 judged, r1 scored by the verifier (coin), r2 skipped
        let scored =
            vec![scored(Source::Judge, Some(1.0), Some(3.0)), scored(Source::Verifier, Some(1.0), None), scored(Source::Judge, None, None)];
        let rubric = Rubric::parse("## Correct (0-4)\n").unwrap();
        let ev = evidence(&rollouts, &scored, &[(0.0, rubric.max_score() as f64); 3]);
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
