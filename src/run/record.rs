//! Phase 6 of an update: what it leaves behind. The [`MetricsRow`] (appended to
//! `metrics.jsonl`), the rollouts with everything that went into their reward
//! (`samples/update-NNNNNN.jsonl`), the TensorBoard events rebuilt from the metrics, the
//! manifest's progress, and the progress line.

use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;

use super::eval::EvalPhase;
use super::meta_step::MetaPhase;
use super::rollout::Batch;
use super::score::Scoring;
use super::train::Trained;
use super::{RunError, Runner, tensorboard};
use crate::model::generate::Finish;
use crate::results::SampleRow;
use crate::results::metrics::{Calls, Losses, MetricsRow, RolloutsRow, SignalsRow, Spread, Times, TokenCount, Tokens, finite, mean};
use crate::reward;
use crate::spec::RolloutEngine;

/// What the phases of one update produced.
pub struct Update<'a, 'd> {
    pub update: u32,
    pub started: Instant,
    pub batch: &'a Batch,
    pub scoring: &'a Scoring<'d>,
    pub trained: &'a Trained,
    pub meta: MetaPhase,
    pub eval: EvalPhase,
}

/// Write everything the update produced.
pub fn record<B: AutodiffBackend>(r: &mut Runner<'_, B>, u: Update) -> Result<(), RunError> {
    let (update, batch, scoring) = (u.update, u.batch, u.scoring);
    r.state.update = update;
    let row = metrics_row(r, u);
    r.dir.append_metrics(&row)?;
    if r.spec.output.samples {
        let rows: Vec<SampleRow> = batch
            .prompts
            .iter()
            .zip(&batch.gens)
            .zip(scoring.rollouts.iter().zip(&scoring.scored))
            .map(|((p, g), (ro, s))| SampleRow::new(ro, p.record, g, s))
            .collect();
        r.dir.write_jsonl(&format!("samples/update-{update:06}.jsonl"), &rows)?;
    }
    tensorboard::write(&r.dir.path("events.out.tfevents.mpo"), &r.dir.metrics()?)?;
    r.manifest.updates_done = update;
    r.dir.write_manifest(r.manifest)?;
    r.progress.done(update as u64, &progress_line(&row, r.plan.schedule.updates, scoring));
    Ok(())
}

fn metrics_row<B: AutodiffBackend>(r: &Runner<'_, B>, u: Update) -> MetricsRow {
    let Update { update, started, batch, scoring, trained, meta, eval } = u;
    let (scored, stats, signals) = (&scoring.scored, &trained.stats, &scoring.signals);
    let rewards: Vec<f64> = scored.iter().filter_map(|s| s.reward).collect();
    let judge_rewards: Vec<f64> = scored.iter().filter_map(|s| s.judge_reward).collect();
    let verifier: Vec<f64> = scored.iter().filter_map(|s| s.verifier_score).collect();
    let eos = batch.gens.iter().filter(|g| g.finish == Finish::Eos).count();
    let total = |role: &str| {
        let u = r.state.usage.get(role).copied().unwrap_or_default();
        TokenCount { prompt: u.prompt_tokens, completion: u.completion_tokens }
    };
    let usage = &scoring.usage;
    MetricsRow {
        update,
        rubric_version: scoring.rubric_version,
        rubric_versions: scoring.rubric_versions.clone(),
        episodes: update as u64 * r.spec.ppo.batch_size as u64,
        reward: Spread::of(&rewards),
        judge_reward_mean: finite(mean(&judge_rewards)),
        verifier_mean: finite(mean(&verifier)),
        score_mean: finite(stats.score),
        kl: finite(stats.kl),
        non_score_reward: finite(stats.non_score_reward),
        entropy: finite(stats.entropy),
        loss: Losses {
            policy: finite(stats.policy_loss),
            value: stats.value_loss.and_then(finite),
            total: finite(stats.policy_loss + r.spec.ppo.vf_coef * stats.value_loss.unwrap_or(0.0)),
        },
        clipfrac: finite(stats.clipfrac),
        approxkl: finite(stats.approxkl),
        lr: stats.lr,
        trained_sequences: stats.sequences,
        optimizer_steps: stats.optimizer_steps,
        grad_norm: finite(stats.grad_norm),
        critic_shift: stats.critic_shift.and_then(finite),
        groups_dropped: trained.groups_dropped,
        missing_eos_penalty: finite(trained.penalty),
        judge_failures: reward::failure_counts(scored),
        judge_transport: [("reward", &scoring.transport), ("meta", &meta.transport), ("gate", &meta.gate_transport)]
            .into_iter()
            .filter_map(|(role, t)| Some((role.to_string(), t.clone()?)))
            .collect(),
        rollouts: RolloutsRow {
            engine: batch.engine.as_ref().map_or(RolloutEngine::InProcess, |e| e.engine).as_str().to_string(),
            drift: stats.drift.clone(),
            load_s: batch.engine.as_ref().and_then(|e| finite(e.load_s)),
            transport: batch.engine.as_ref().map(|e| e.transport.clone()),
        },
        skipped: scored.iter().filter(|s| s.reward.is_none()).count(),
        eos_rate: finite(eos as f64 / batch.gens.len().max(1) as f64),
        signals: SignalsRow {
            mean_response_tokens: finite(signals.mean_response_tokens),
            length_ratio_to_first_update: finite(signals.mean_response_tokens / scoring.first_response_tokens.max(1e-9)),
            repetition_rate: finite(signals.repetition_rate),
            identical_share: finite(signals.identical_share),
            max_score_share: finite(signals.max_score_share),
            judge_verifier_disagreement: signals.judge_verifier_disagreement.and_then(finite),
        },
        tokens: Tokens {
            policy_generated: batch.gens.iter().map(|g| g.tokens.len()).sum(),
            reward_judge: Calls {
                calls: usage.calls,
                cached: usage.cached_calls,
                prompt: usage.prompt_tokens,
                completion: usage.completion_tokens,
            },
            reward_judge_total: total("reward"),
            meta_judge_total: total("meta"),
        },
        meta: meta.row,
        eval: eval.metrics,
        time_s: Times {
            generate: finite(batch.seconds),
            judge: finite(scoring.seconds),
            ppo: finite(trained.seconds),
            meta: finite(meta.seconds),
            eval: finite(eval.seconds),
            total: finite(started.elapsed().as_secs_f64()),
        },
        wall_time: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
    }
}

fn fmt3(x: Option<f64>) -> String {
    x.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into())
}

/// The one line an update prints (with the judges' retries and failures when there were any).
fn progress_line(row: &MetricsRow, updates: u32, scoring: &Scoring) -> String {
    let t = &row.time_s;
    let secs = |x: Option<f64>| x.unwrap_or(0.0);
    let mut transport: String =
        row.judge_transport.iter().filter(|(_, t)| !t.is_clean()).map(|(role, t)| format!(" | {role} judge: {}", t.summary())).collect();
    if let Some(t) = row.rollouts.transport.as_ref().filter(|t| !t.is_clean()) {
        transport += &format!(" | rollout engine: {}", t.summary());
    }
    format!(
        "update {}/{updates}: reward {} (judge {}, verifier {}) kl {:.4} len {:.0} failures {} {} | gen {:.0}s judge {:.0}s ppo {:.0}s{}",
        row.update,
        fmt3(row.reward.mean),
        fmt3(row.judge_reward_mean),
        fmt3(row.verifier_mean),
        secs(row.kl),
        scoring.signals.mean_response_tokens,
        scoring.scored.iter().filter(|s| s.failure.is_some()).count(),
        match &row.rubric_versions {
            Some(v) => format!("rubrics: {} rewrites in force over {} families", row.rubric_version, v.len()),
            None => format!("rubric v{:03}", row.rubric_version),
        },
        secs(t.generate),
        secs(t.judge),
        secs(t.ppo),
        if secs(t.meta) > 0.0 { format!(" meta {:.0}s", secs(t.meta)) } else { String::new() }
    ) + &transport
}
