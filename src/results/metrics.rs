//! `metrics.jsonl`: one [`MetricsRow`] per update, the one record every reader goes through
//! (reports, sweeps, evaluation, TensorBoard). Fields are documented here once; the README's
//! results section lists them.
//!
//! Numbers are rounded to 6 decimals when written (a non-finite value is `null`), by the
//! serializer (`crate::round`): a row in memory keeps full precision. Rows written
//! by older mpo versions keep loading: a field they lack takes its default, one they have and
//! this version does not know is ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::round::finite;

/// One update of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricsRow {
    /// The update this row describes (1-based).
    pub update: u32,
    /// The rubric version the update's rollouts were scored under (a meta step at this update
    /// writes the next one: `meta.new_version`, in force from the next row). With rubric
    /// families (`meta.partition_by`): the sum of their versions, the rewrites in force.
    pub rubric_version: u32,
    /// With rubric families: each family's version, by key (absent for one rubric).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rubric_versions: Option<std::collections::BTreeMap<String, u32>>,
    /// Rollouts generated so far (updates x `ppo.batch_size`).
    pub episodes: u64,
    /// Training reward of the scored rollouts (skipped ones left out), under the current rubric.
    pub reward: Spread,
    /// Mean judge reward of the judge-scored rollouts.
    #[serde(serialize_with = "crate::round::six")]
    pub judge_reward_mean: Option<f64>,
    /// Mean programmatic verifier score (0..1) of the verified rollouts: a fixed instrument.
    #[serde(serialize_with = "crate::round::six")]
    pub verifier_mean: Option<f64>,
    /// Mean score PPO trained on (reward minus any missing-EOS penalty).
    #[serde(serialize_with = "crate::round::six")]
    pub score_mean: Option<f64>,
    /// Mean over sequences of the summed per-token KL to the reference policy.
    #[serde(serialize_with = "crate::round::six")]
    pub kl: Option<f64>,
    /// Mean over sequences of the summed KL penalty (`-kl_coef * kl`).
    #[serde(serialize_with = "crate::round::six")]
    pub non_score_reward: Option<f64>,
    #[serde(serialize_with = "crate::round::six")]
    pub entropy: Option<f64>,
    pub loss: Losses,
    #[serde(serialize_with = "crate::round::six")]
    pub clipfrac: Option<f64>,
    #[serde(serialize_with = "crate::round::six")]
    pub approxkl: Option<f64>,
    /// Learning rate of the update (after the schedule).
    pub lr: f64,
    pub trained_sequences: usize,
    pub optimizer_steps: usize,
    /// Mean global gradient norm before clipping.
    #[serde(serialize_with = "crate::round::six")]
    pub grad_norm: Option<f64>,
    /// `ppo.recenter_critic`: the shift added to the rollout-time values at the first update
    /// under a new rubric (absent otherwise).
    #[serde(serialize_with = "crate::round::six", default, skip_serializing_if = "Option::is_none")]
    pub critic_shift: Option<f64>,
    /// GRPO groups left with fewer than two scored members.
    pub groups_dropped: usize,
    /// The amount subtracted from a response cut off by `ppo.response_length`.
    /// With rubric families whose ranges differ under `reward.aggregate: sum`, the largest.
    #[serde(serialize_with = "crate::round::six")]
    pub missing_eos_penalty: Option<f64>,
    /// Judge answers that gave no score, by kind (`unparseable`, `truncated`, ...).
    pub judge_failures: BTreeMap<String, u64>,
    /// Per role (`reward`, `meta`) whose judge talks to a server: HTTP attempts, failed
    /// attempts retried and requests failed for good, by cause (`timeout`, `connect`,
    /// `http_503`, `bad_body`, ...), and seconds spent waiting to retry, this update. Absent for
    /// in-process judges.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub judge_transport: BTreeMap<String, crate::judge::Transport>,
    /// Where the rollouts were generated and how far the generator's log-probs sat from the
    /// trainer's.
    pub rollouts: RolloutsRow,
    /// Rollouts left out of training (no reward under the failure policy).
    pub skipped: usize,
    /// Share of responses that ended with EOS.
    #[serde(serialize_with = "crate::round::six")]
    pub eos_rate: Option<f64>,
    pub signals: SignalsRow,
    pub tokens: Tokens,
    /// The meta step of this update, `null` when none ran.
    pub meta: Option<MetaRow>,
    /// Task metrics of the evaluation at this update, `null` when none ran.
    pub eval: Option<BTreeMap<String, f64>>,
    pub time_s: Times,
    /// Seconds since the Unix epoch when the row was written.
    pub wall_time: f64,
}

impl MetricsRow {
    /// The rubric in force after this update: the one its meta step wrote, else the one it was
    /// scored under.
    pub fn rubric_after(&self) -> u32 {
        self.meta.as_ref().and_then(|m| m.new_version).unwrap_or(self.rubric_version)
    }
}

/// Mean, standard deviation (population), minimum and maximum.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Spread {
    #[serde(serialize_with = "crate::round::six")]
    pub mean: Option<f64>,
    #[serde(serialize_with = "crate::round::six")]
    pub std: Option<f64>,
    #[serde(serialize_with = "crate::round::six")]
    pub min: Option<f64>,
    #[serde(serialize_with = "crate::round::six")]
    pub max: Option<f64>,
}

/// Mean and population standard deviation (`None` when empty).
pub fn mean_std(xs: &[f64]) -> Option<(f64, f64)> {
    if xs.is_empty() {
        return None;
    }
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    Some((m, (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n).sqrt()))
}

impl Spread {
    /// The spread of `xs` (all `None` when empty).
    pub fn of(xs: &[f64]) -> Spread {
        let Some((m, sd)) = mean_std(xs) else { return Spread::default() };
        let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
        let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Spread { mean: finite(m), std: finite(sd), min: finite(min), max: finite(max) }
    }
}

/// Mean of `xs`, NaN when empty (so that a row writes `null`).
pub fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() { f64::NAN } else { xs.iter().sum::<f64>() / xs.len() as f64 }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Losses {
    #[serde(serialize_with = "crate::round::six")]
    pub policy: Option<f64>,
    /// `null` under GRPO (no critic).
    #[serde(serialize_with = "crate::round::six")]
    pub value: Option<f64>,
    /// `policy + vf_coef * value`.
    #[serde(serialize_with = "crate::round::six")]
    pub total: Option<f64>,
}

/// Reward-hacking signals (see `reward::signals`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SignalsRow {
    #[serde(serialize_with = "crate::round::six")]
    pub mean_response_tokens: Option<f64>,
    /// Mean response length over that of the run's first update (length collapse).
    #[serde(serialize_with = "crate::round::six")]
    pub length_ratio_to_first_update: Option<f64>,
    #[serde(serialize_with = "crate::round::six")]
    pub repetition_rate: Option<f64>,
    #[serde(serialize_with = "crate::round::six")]
    pub identical_share: Option<f64>,
    #[serde(serialize_with = "crate::round::six")]
    pub max_score_share: Option<f64>,
    #[serde(serialize_with = "crate::round::six")]
    pub judge_verifier_disagreement: Option<f64>,
}

/// The generator of an update's rollouts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RolloutsRow {
    /// `in_process`, `llama_server`, `vllm` or `sglang` (`runtime.rollouts.engine`).
    pub engine: String,
    /// PPO's old log-probs (the trainer's) minus the generator's, over every trained response
    /// token. In process the two differ only in summation order (KV cache, batch padding,
    /// quantized decode products); on an engine this is the off-policy drift of its rollouts.
    pub drift: Option<crate::ppo::Drift>,
    /// Seconds writing the adapter and having the engine load it (absent in process).
    #[serde(serialize_with = "crate::round::six")]
    pub load_s: Option<f64>,
    /// The engine's HTTP attempts, retries and failures by cause, this update (absent in
    /// process).
    pub transport: Option<crate::judge::Transport>,
}

/// Tokens spent, by role.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Tokens {
    pub policy_generated: usize,
    /// This update's reward-judge calls.
    pub reward_judge: Calls,
    /// Totals since the run started.
    pub reward_judge_total: TokenCount,
    /// The meta step's, `meta.gate`'s scoring of merged rubrics included.
    pub meta_judge_total: TokenCount,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Calls {
    pub calls: u64,
    /// Answered from the judge cache.
    pub cached: u64,
    pub prompt: u64,
    pub completion: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenCount {
    pub prompt: u64,
    pub completion: u64,
}

/// A meta step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MetaRow {
    pub ran: bool,
    /// Rollouts the step learned from.
    pub samples: usize,
    /// The version it produced, `null` when the rubric was kept. With rubric families: the
    /// sum of their versions after the step, `null` when no family changed.
    pub new_version: Option<u32>,
    pub kept_because: Option<String>,
    /// Meta steps so far, rubrics accepted so far, and their ratio (with families: one step
    /// per family that had rollouts to learn from).
    pub steps: u32,
    pub accepted: u32,
    #[serde(serialize_with = "crate::round::six")]
    pub acceptance_rate: Option<f64>,
    /// With rubric families: each family's step, in key order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub families: Vec<FamilyStep>,
    /// The step's judge calls (`meta.gate`'s scoring included), and how many of them the judge
    /// cache answered: a step answered from the cache says nothing of the judge's speed.
    /// Absent in rows written before 2026-12-06.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calls: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached: Option<u64>,
}

/// One rubric family's meta step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FamilyStep {
    pub family: String,
    pub samples: usize,
    pub new_version: Option<u32>,
    pub kept_because: Option<String>,
}

/// Seconds spent per phase of the update.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Times {
    #[serde(serialize_with = "crate::round::six")]
    pub generate: Option<f64>,
    #[serde(serialize_with = "crate::round::six")]
    pub judge: Option<f64>,
    #[serde(serialize_with = "crate::round::six")]
    pub ppo: Option<f64>,
    #[serde(serialize_with = "crate::round::six")]
    pub meta: Option<f64>,
    #[serde(serialize_with = "crate::round::six")]
    pub eval: Option<f64>,
    #[serde(serialize_with = "crate::round::six")]
    pub total: Option<f64>,
}

impl MetricsRow {
    /// Total judge answers that gave no score.
    pub fn judge_failure_total(&self) -> u64 {
        self.judge_failures.values().sum()
    }

    /// Numeric leaves as `section/name` (TensorBoard tags), `update` excluded.
    pub fn scalars(&self) -> Vec<(String, f64)> {
        fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, f64)>) {
            match v {
                serde_json::Value::Number(n) => out.extend(n.as_f64().map(|x| (prefix.to_string(), x))),
                serde_json::Value::Object(o) => {
                    for (k, c) in o {
                        walk(&if prefix.is_empty() { k.clone() } else { format!("{prefix}/{k}") }, c, out);
                    }
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk("", &serde_json::to_value(self).unwrap_or_default(), &mut out);
        out.retain(|(k, _)| k != "update");
        out
    }
}

/// A line of `metrics.jsonl` that is not a metrics row.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {source}")]
pub struct LineError {
    /// 1-based.
    pub line: usize,
    pub source: serde_json::Error,
}

/// Rows of a `metrics.jsonl` text; a line that does not parse is an error naming its number.
pub fn parse(text: &str) -> Result<Vec<MetricsRow>, LineError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|source| LineError { line: i + 1, source }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_and_spread() {
        let s = Spread::of(&[1.0, 3.0]);
        assert_eq!((s.mean, s.std, s.min, s.max), (Some(2.0), Some(1.0), Some(1.0), Some(3.0)));
        assert_eq!(Spread::of(&[]), Spread::default());
    }

    #[test]
    fn a_row_writes_nulls_for_missing_values_and_reads_back() {
        let row = MetricsRow { update: 3, lr: 1e-4, ..MetricsRow::default() };
        let text = serde_json::to_string(&row).unwrap();
        assert!(text.starts_with(r#"{"update":3,"rubric_version":0,"episodes":0,"reward":{"mean":null"#), "{text}");
        assert!(text.contains(r#""meta":null,"eval":null"#), "{text}");
        assert_eq!(parse(&text).unwrap(), vec![row]);
    }

    #[test]
    fn older_rows_load() {
        // a row from before optimizer_steps, grad_norm, groups_dropped and meta's counters
        let old = r#"{"update":1,"rubric_version":0,"episodes":4,"reward":{"mean":0.5,"std":0.1,"min":0.4,"max":0.6},"kl":0.0,"lr":0.0001,"meta":{"ran":true,"samples":1,"new_version":1,"kept_because":null},"eval":{"accuracy":0.25},"unknown_future_field":7}"#;
        let r = &parse(old).unwrap()[0];
        assert_eq!((r.update, r.reward.mean, r.optimizer_steps), (1, Some(0.5), 0));
        assert_eq!(r.meta.as_ref().map(|m| (m.new_version, m.steps)), Some((Some(1), 0)));
        assert_eq!(r.eval.as_ref().and_then(|e| e.get("accuracy")), Some(&0.25));
        assert!(parse("{\"update\": \"one\"}").unwrap_err().to_string().starts_with("line 1:"));
    }

    #[test]
    fn the_committed_worked_example_loads_through_the_type() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("results/math-meta-every-cpu");
        let mut n = 0;
        for e in std::fs::read_dir(&root).unwrap().flatten() {
            if let Ok(text) = std::fs::read_to_string(e.path().join("metrics.jsonl")) {
                let rows = parse(&text).unwrap();
                assert!(rows.iter().all(|r| r.update > 0 && r.reward.mean.is_some()));
                // every field the file holds reads back through the type unchanged
                for (line, row) in text.lines().zip(&rows) {
                    let again = serde_json::to_value(row).unwrap();
                    let orig: serde_json::Value = serde_json::from_str(line).unwrap();
                    for (k, v) in orig.as_object().unwrap() {
                        assert_eq!(again.get(k), Some(v), "{}: `{k}`", e.path().display());
                    }
                }
                n += rows.len();
            }
        }
        assert!(n >= 6, "no committed metrics found under {}", root.display());
    }
}
