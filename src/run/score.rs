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
    /// The rubric version the rollouts were scored under (the meta step may write the next).
    pub rubric_version: u32,
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
    let scored =
        reward::score_batch(r.reward_judge.as_mut(), &r.reward_cfg, &r.rubric, &rollouts, r.spec.runtime.seed, update, &mut usage)?;
    let transport = r.reward_judge.transport().map(|t| t.since(&before.unwrap_or_default()));
    r.state.usage.entry("reward".into()).or_default().add(&usage);
    let seconds = t0.elapsed().as_secs_f64();
    let resp_tokens: Vec<(&str, usize)> = batch.gens.iter().map(|g| (g.text.as_str(), g.tokens.len())).collect();
    let signals = reward::signals::compute(&resp_tokens, &scored, r.rubric.min_score() as f64, r.rubric.max_score() as f64);
    let first_response_tokens = *r.state.first_response_tokens.get_or_insert(signals.mean_response_tokens);
    Ok(Scoring { rollouts, scored, usage, transport, signals, rubric_version: r.state.rubric_version, first_response_tokens, seconds })
}
