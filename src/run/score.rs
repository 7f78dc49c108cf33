//! Phase 2 of an update: every rollout's reward under the rubric in force (judge, verifiers,
//! their mix, the failure policy: `reward/`), and the reward-hacking signals of the batch,
//! measured on the rubric the rollouts were scored under.

use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;

use super::rollout::Batch;
use super::{RunError, Runner};
use crate::judge::{TokenUsage, Transport};
use crate::reward::signals::Signals;
use crate::reward::{self, Rollout, Scored};
use crate::task::Dataset;

/// What scoring an update's rollouts produced.
pub struct Scoring<'d> {
    pub rollouts: Vec<Rollout<'d>>,
    pub scored: Vec<Scored>,
    /// This update's reward-judge calls.
    pub usage: TokenUsage,
    /// The reward judge's retries and failures this update (`None`: it talks to no server).
    pub transport: Option<Transport>,
    pub signals: Signals,
    /// The rubric version the rollouts were scored under (the meta step may write the next);
    /// with rubric families their sum, and each family's in `rubric_versions`.
    pub rubric_version: u32,
    pub rubric_versions: Option<std::collections::BTreeMap<String, u32>>,
    /// Per rollout: the lowest and highest total of the rubric it was scored under.
    pub ranges: Vec<(f64, f64)>,
    /// Mean response tokens of the run's first update (the length-collapse baseline).
    pub first_response_tokens: f64,
    pub seconds: f64,
}

/// Score the rollouts of `update`.
pub fn score<'d, B: AutodiffBackend>(
    r: &mut Runner<'_, B>,
    batch: &Batch,
    train: &'d Dataset,
    update: u32,
) -> Result<Scoring<'d>, RunError> {
    let t0 = Instant::now();
    r.progress.stage(&format!("update {update}: judging {} rollouts", batch.gens.len()));
    let rollouts: Vec<Rollout> = batch
        .prompts
        .iter()
        .zip(&batch.gens)
        .enumerate()
        .map(|(k, (p, g))| Rollout {
            id: format!("u{update:06}-r{k:03}"),
            question: p.text.clone(),
            response: g.text.clone(),
            record: &train.records[p.record],
        })
        .collect();
    let mut usage = TokenUsage::default();
    let before = r.reward_judge.transport();
    // Each rollout under its family's rubric (the run's one rubric when there are none).
    let which: Vec<usize> = rollouts.iter().map(|ro| r.rubrics.index_of(ro.record)).collect::<Result<_, _>>()?;
    let rubrics: Vec<&crate::rubric::Rubric> = r.rubrics.families.iter().map(|f| &f.rubric).collect();
    let scored = reward::score_batch_by(
        r.reward_judge.as_mut(),
        &r.reward_cfg,
        &rubrics,
        &which,
        &rollouts,
        r.spec.runtime.seed,
        update,
        &mut usage,
    )?;
    let transport = r.reward_judge.transport().map(|t| t.since(&before.unwrap_or_default()));
    r.state.usage.entry("reward".into()).or_default().add(&usage);
    let seconds = t0.elapsed().as_secs_f64();
    let resp_tokens: Vec<(&str, usize)> = batch.gens.iter().map(|g| (g.text.as_str(), g.tokens.len())).collect();
    let ranges: Vec<(f64, f64)> = which.iter().map(|&i| (rubrics[i].min_score() as f64, rubrics[i].max_score() as f64)).collect();
    let signals = reward::signals::compute(&resp_tokens, &scored, &ranges);
    let first_response_tokens = *r.state.first_response_tokens.get_or_insert(signals.mean_response_tokens);
    Ok(Scoring {
        rollouts,
        scored,
        usage,
        transport,
        signals,
        rubric_version: r.state.rubric_version,
        rubric_versions: r.rubrics.versions(&r.state),
        ranges,
        first_response_tokens,
        seconds,
    })
}
