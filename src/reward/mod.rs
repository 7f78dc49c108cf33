//! The reward: judge scores against the current rubric, programmatic verifiers, how they mix,
//! and what happens when an answer is unusable.
//!
//! [`score_batch`] takes a batch of rollouts and returns one [`Scored`] per rollout with
//! everything that went into its reward (prompt, every raw answer, parsed item scores,
//! verifier verdicts). A judge answer that cannot be used is asked again up to
//! `failure.retries` times, then the declared policy applies: skip the sample, give it a
//! penalty, or fail the run. Nothing becomes a silent 0.

pub mod math_eq;
pub mod score;
pub mod signals;
pub mod verify;

use rand::Rng;
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value as J;

use crate::judge::{Judge, JudgeRequest, TokenUsage};
use crate::rubric::Rubric;
use crate::spec::{Aggregate, AnswerMode, Extraction, FailurePolicy, MixSpec, RewardSpec};
use score::{AnswerShape, ItemScores, ScoreFailure};
use verify::Verdict;

/// One rollout to score.
#[derive(Debug, Clone)]
pub struct Rollout<'a> {
    pub id: String,
    /// The policy prompt as rendered (before the chat template).
    pub question: String,
    pub response: String,
    pub record: &'a J,
}

/// Which signal a rollout's reward came from (as `samples/*.jsonl` writes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The judge's reward alone.
    Judge,
    /// The verifier's alone (the judge was not asked: `mix: coin`).
    Verifier,
    /// The judge's and the verifier's, weighted (`mix: weighted`).
    Mixed,
    /// `reward.failure.policy: {penalty: x}` for an unusable judge answer.
    Penalty,
    /// The penalty and the verifier's, weighted.
    #[serde(rename = "penalty+verifier")]
    PenaltyVerifier,
    /// No reward: the judge's answer was unusable under `reward.failure.policy: skip`.
    Skipped,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Judge => "judge",
            Source::Verifier => "verifier",
            Source::Mixed => "mixed",
            Source::Penalty => "penalty",
            Source::PenaltyVerifier => "penalty+verifier",
            Source::Skipped => "skipped",
        }
    }
}

/// Everything about one rollout's reward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub id: String,
    /// The reward used for training; `None` when the sample is skipped.
    pub reward: Option<f64>,
    /// Which signal the reward came from.
    pub source: Source,
    pub verdicts: Vec<Verdict>,
    /// Mean of the verifier scores, in [0, 1].
    pub verifier_score: Option<f64>,
    /// The judge's reward: its item scores aggregated by `reward.aggregate`.
    pub judge_reward: Option<f64>,
    pub item_scores: Option<ItemScores>,
    /// The judge prompt and every raw answer (one per attempt).
    pub judge_prompt: Option<String>,
    pub judge_answers: Vec<String>,
    /// The failure of the last attempt, when the judge's answer could not be used.
    pub failure: Option<ScoreFailure>,
}

#[derive(Debug, thiserror::Error)]
pub enum RewardError {
    #[error("rollout {id}: {failure} (reward.failure.policy is `fail`)")]
    Failed { id: String, failure: ScoreFailure },
    #[error("judge template: {0}")]
    Template(String),
    #[error("reward settings: {0}")]
    Config(String),
}

impl RewardError {
    /// What the user can do about it, where there is something.
    pub fn help(&self) -> Option<String> {
        match self {
            RewardError::Failed { .. } => {
                Some("`reward.failure.policy: fail` stops at the first unusable answer; `skip` or `{penalty: x}` keep training".into())
            }
            _ => None,
        }
    }
}

/// Reward settings for one run, with the compiled regex.
pub struct RewardConfig {
    pub spec: RewardSpec,
    pub task: String,
    pub judge_template: String,
    pub judge_template_name: String,
    /// GRPO's group size (1 for PPO): a coin toss covers whole groups, so no group mixes
    /// verifier and judge scores.
    pub group: usize,
    regex: Option<Regex>,
}

impl RewardConfig {
    pub fn new(spec: RewardSpec, task: &str, judge_template: String, judge_template_name: String) -> Result<Self, RewardError> {
        let regex = match &spec.extraction {
            Extraction::Regex { pattern } => Some(Regex::new(pattern).map_err(|e| RewardError::Config(e.to_string()))?),
            _ => None,
        };
        Ok(RewardConfig { spec, task: task.to_string(), judge_template, judge_template_name, group: 1, regex })
    }

    /// Toss the coin per group of `group` consecutive rollouts (GRPO).
    pub fn with_group(mut self, group: usize) -> Self {
        self.group = group.max(1);
        self
    }

    fn extract(&self, rubric: &Rubric, resp: &crate::judge::JudgeResponse) -> Result<ItemScores, ScoreFailure> {
        match &self.spec.extraction {
            Extraction::Regex { .. } => score::by_regex(rubric, self.regex.as_ref().expect("compiled in new"), &resp.text),
            Extraction::Json => score::by_json(rubric, &resp.text),
            Extraction::Logprobs { .. } => match &resp.logprobs {
                Some(t) => score::by_logprobs(rubric, t),
                None => Err(ScoreFailure::Unparseable { message: "the judge returned no logprobs".into() }),
            },
        }
    }

    /// The judge prompt for one rollout.
    pub fn judge_prompt(&self, rubric: &Rubric, r: &Rollout) -> Result<String, RewardError> {
        let ctx = crate::template::context::JudgeContext::new(&self.task, rubric, &r.question, &r.response, r.record);
        crate::template::render(&self.judge_template_name, &self.judge_template, &ctx).map_err(|e| RewardError::Template(e.to_string()))
    }
}

/// Width of the reward's range when the rubric's totals span `rubric_span` (`max - min`): the
/// judge's (1 when aggregated into [0, 1], the span for `sum`) times its weight, plus the
/// verifier's weight (verifiers score 0..1). The scale a relative missing-EOS penalty is
/// measured on.
pub fn reward_range(spec: &RewardSpec, rubric_span: f64) -> f64 {
    let judge = if spec.aggregate.is_normalized() { 1.0 } else { rubric_span };
    let verifier = if spec.verifiers.is_empty() { 0.0 } else { 1.0 };
    match &spec.mix {
        MixSpec::Weighted { judge_weight, verifier_weight } => judge_weight.abs() * judge + verifier_weight.abs() * verifier,
        MixSpec::Coin { .. } => judge.max(verifier),
    }
}

/// The judge's reward for `scores` (in the rubric's item order) under `aggregate`.
pub fn judge_value(scores: &ItemScores, rubric: &Rubric, aggregate: Aggregate) -> f64 {
    let total = scores.total();
    match aggregate {
        Aggregate::Sum => total,
        Aggregate::RangeShare => {
            let (lo, hi) = (rubric.min_score() as f64, rubric.max_score() as f64);
            if hi > lo { (total - lo) / (hi - lo) } else { 0.0 }
        }
        Aggregate::ItemMean => {
            let shares: Vec<f64> = rubric
                .items
                .iter()
                .map(|it| {
                    let s = scores.scores.iter().find(|(n, _)| *n == it.name).map_or(it.min as f64, |(_, s)| *s);
                    let span = (it.max - it.min) as f64;
                    if span > 0.0 { ((s - it.min as f64) / span).clamp(0.0, 1.0) } else { 0.0 }
                })
                .collect();
            if shares.is_empty() { 0.0 } else { shares.iter().sum::<f64>() / shares.len() as f64 }
        }
    }
}

/// Score a batch. `seed` and `update` fix the coin tosses and judge sampling.
pub fn score_batch(
    judge: &mut dyn Judge,
    cfg: &RewardConfig,
    rubric: &Rubric,
    rollouts: &[Rollout],
    seed: u64,
    update: u32,
    usage: &mut TokenUsage,
) -> Result<Vec<Scored>, RewardError> {
    score_batch_by(judge, cfg, &[rubric], &vec![0; rollouts.len()], rollouts, seed, update, usage)
}

/// Score a batch whose rollouts are graded under different rubrics (rubric families): rollout
/// `i` under `rubrics[which[i]]`. One batch of judge requests, one coin stream, as for one
/// rubric.
#[allow(clippy::too_many_arguments)]
pub fn score_batch_by(
    judge: &mut dyn Judge,
    cfg: &RewardConfig,
    rubrics: &[&Rubric],
    which: &[usize],
    rollouts: &[Rollout],
    seed: u64,
    update: u32,
    usage: &mut TokenUsage,
) -> Result<Vec<Scored>, RewardError> {
    if which.len() != rollouts.len() || which.iter().any(|&w| w >= rubrics.len()) {
        return Err(RewardError::Config(format!(
            "{} rollouts with {} rubric choices among {} rubrics",
            rollouts.len(),
            which.len(),
            rubrics.len()
        )));
    }
    let spec = &cfg.spec;
    let rubric_of = |i: usize| rubrics[which[i]];
    let mut out: Vec<Scored> = rollouts
        .iter()
        .map(|r| {
            let verdicts: Vec<Verdict> = spec.verifiers.iter().map(|v| verify::verify(v, &r.response, r.record)).collect();
            let verifier_score = (!verdicts.is_empty()).then(|| verdicts.iter().map(|v| v.score).sum::<f64>() / verdicts.len() as f64);
            Scored {
                id: r.id.clone(),
                reward: None,
                // set for every rollout below, once the judge and the verifiers have spoken
                source: Source::Skipped,
                verdicts,
                verifier_score,
                judge_reward: None,
                item_scores: None,
                judge_prompt: None,
                judge_answers: Vec::new(),
                failure: None,
            }
        })
        .collect();
    // Which rollouts the judge scores.
    let use_judge: Vec<bool> = match &spec.mix {
        MixSpec::Weighted { judge_weight, .. } => vec![*judge_weight != 0.0; rollouts.len()],
        MixSpec::Coin { verifier_prob, chunk } => {
            let mut rng = crate::rng::stream(seed, &format!("reward/coin/u{update:06}"));
            let mut v = Vec::with_capacity(rollouts.len());
            let mut pick = false;
            let unit = (*chunk).max(cfg.group).max(1);
            for i in 0..rollouts.len() {
                if i % unit == 0 {
                    pick = rng.random::<f64>() >= *verifier_prob;
                }
                v.push(pick);
            }
            v
        }
    };
    let mut pending: Vec<usize> = (0..rollouts.len()).filter(|&i| use_judge[i]).collect();
    for &i in &pending {
        out[i].judge_prompt = Some(cfg.judge_prompt(rubric_of(i), &rollouts[i])?);
    }
    let guided = spec.answer == AnswerMode::Guided;
    // Each rubric's answer schema and shape, built once.
    let schemas: Vec<_> = rubrics
        .iter()
        .map(|rubric| {
            let names = || rubric.items.iter().map(|i| i.name.as_str());
            let schema = matches!(spec.extraction, Extraction::Json).then(|| {
                score::json_schema(rubric, score::answer_budget(AnswerShape::Json, names(), spec.judge.max_tokens).rationale_chars)
            });
            let shape = spec.holds_free_answers().then(|| {
                score::free_shape(rubric, score::answer_budget(AnswerShape::Free, names(), spec.judge.max_tokens).rationale_chars)
            });
            (schema, shape)
        })
        .collect();
    let top_logprobs = match spec.extraction {
        Extraction::Logprobs { top_logprobs } => Some(top_logprobs),
        _ => None,
    };
    for attempt in 0..=spec.failure.retries {
        if pending.is_empty() {
            break;
        }
        // A retry must be able to answer differently: a fresh seed and at least
        // `failure.retry_temperature` (an identical request to a greedy judge repeats itself).
        let (temperature, suffix) = match attempt {
            0 => (spec.judge.temperature, String::new()),
            a => (spec.judge.temperature.max(spec.failure.retry_temperature), format!("/retry{a}")),
        };
        let reqs: Vec<JudgeRequest> = pending
            .iter()
            .map(|&i| {
                let (rubric, (schema, shape)) = (rubric_of(i), &schemas[which[i]]);
                JudgeRequest {
                    prompt: out[i].judge_prompt.clone().expect("rendered above"),
                    max_tokens: spec.judge.max_tokens,
                    temperature,
                    seed: crate::rng::sub_seed(seed, &format!("reward/judge/{}{suffix}", rollouts[i].id)),
                    top_logprobs,
                    json_schema: schema.clone(),
                    attempt,
                    guided: if guided { rubric.items.iter().map(|it| it.name.clone()).collect() } else { vec![] },
                    guided_ranges: if guided { rubric.items.iter().map(|it| (it.min, it.max)).collect() } else { vec![] },
                    ..Default::default()
                }
                .held_to(shape.clone())
            })
            .collect();
        let answers = judge.complete(&reqs);
        let mut still = Vec::new();
        for (&i, a) in pending.iter().zip(answers) {
            usage.record(&a);
            let s = &mut out[i];
            match a {
                Ok(resp) if resp.truncated => {
                    s.judge_answers.push(resp.text.clone());
                    s.failure = Some(ScoreFailure::Truncated { max_tokens: spec.judge.max_tokens });
                    still.push(i);
                }
                Ok(resp) => {
                    s.judge_answers.push(resp.text.clone());
                    match cfg.extract(rubric_of(i), &resp) {
                        Ok(scores) => {
                            s.judge_reward = Some(judge_value(&scores, rubric_of(i), spec.aggregate));
                            s.item_scores = Some(scores);
                            s.failure = None;
                        }
                        Err(f) => {
                            s.failure = Some(f);
                            still.push(i);
                        }
                    }
                }
                Err(e) => {
                    s.failure = Some(ScoreFailure::JudgeFailed { message: e.to_string() });
                    still.push(i);
                }
            }
        }
        pending = still;
    }
    for (i, s) in out.iter_mut().enumerate() {
        let v = s.verifier_score;
        if !use_judge[i] {
            s.reward = match &spec.mix {
                MixSpec::Weighted { verifier_weight, .. } => v.map(|v| verifier_weight * v),
                MixSpec::Coin { .. } => v,
            };
            s.source = Source::Verifier;
            if s.reward.is_none() {
                return Err(RewardError::Config("the judge is off for this rollout but there is no verifier to score it".into()));
            }
            continue;
        }
        let (j, source) = match (&s.failure, s.judge_reward) {
            (None, Some(j)) => (j, Source::Judge),
            (Some(f), _) => match &spec.failure.policy {
                FailurePolicy::Skip => {
                    s.reward = None;
                    s.source = Source::Skipped;
                    continue;
                }
                FailurePolicy::Penalty(x) => (*x, Source::Penalty),
                FailurePolicy::Fail => return Err(RewardError::Failed { id: s.id.clone(), failure: f.clone() }),
            },
            (None, None) => return Err(RewardError::Config(format!("rollout {} has neither a score nor a failure", s.id))),
        };
        (s.reward, s.source) = match (&spec.mix, v) {
            (MixSpec::Weighted { judge_weight, verifier_weight }, Some(v)) => (
                Some(judge_weight * j + verifier_weight * v),
                if source == Source::Judge { Source::Mixed } else { Source::PenaltyVerifier },
            ),
            (MixSpec::Weighted { judge_weight, .. }, None) => (Some(judge_weight * j), source),
            (MixSpec::Coin { .. }, _) => (Some(j), source),
        };
    }
    Ok(out)
}

/// Failures of a batch by kind (`missing`, `out_of_range`, `unparseable`, `judge_failed`,
/// `truncated`).
pub fn failure_counts(scored: &[Scored]) -> std::collections::BTreeMap<String, u64> {
    let mut m = std::collections::BTreeMap::new();
    for s in scored {
        if let Some(f) = &s.failure {
            *m.entry(f.kind().to_string()).or_insert(0) += 1;
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_under_the_fail_policy_says_which_policies_keep_training() {
        let e = RewardError::Failed { id: "r1".into(), failure: ScoreFailure::Unparseable { message: "x".into() } };
        assert!(e.help().unwrap().contains("`skip` or `{penalty: x}` keep training"));
        assert_eq!(RewardError::Config("x".into()).help(), None);
    }
    use crate::judge::scripted::ScriptedJudge;
    use crate::judge::{JudgeError, JudgeResponse};
    use crate::spec::{FailureSpec, JudgeSpec, VerifierSpec};
    use serde_json::json;

    /// Call k gets `answers[k]` (or the last one).
    fn scripted(answers: Vec<Result<String, JudgeError>>) -> impl Judge + HasCalls {
        ScriptedJudge::new("test:scripted", move |_, k| {
            let a = answers.get(k).or(answers.last()).cloned().expect("scripted");
            a.map(|text| JudgeResponse { prompt_tokens: 10, completion_tokens: 5, ..JudgeResponse::answer(text) })
        })
    }

    trait HasCalls {
        fn calls(&self) -> usize;
    }

    impl<F> HasCalls for ScriptedJudge<F> {
        fn calls(&self) -> usize {
            self.calls
        }
    }

    fn cfg(policy: FailurePolicy, mix: MixSpec, verifiers: Vec<VerifierSpec>) -> RewardConfig {
        let spec = RewardSpec {
            judge: JudgeSpec::default(),
            rubric: "r.md".into(),
            prompt: "j.j2".into(),
            extraction: Extraction::default(),
            answer: AnswerMode::Free,
            aggregate: Aggregate::RangeShare,
            failure: FailureSpec { retries: 1, policy, ..FailureSpec::default() },
            verifiers,
            mix,
            cases: None,
        };
        RewardConfig::new(spec, "math", "Grade {{ response }} for {{ question }} with\n{{ rubric }}".into(), "judge".into()).unwrap()
    }

    fn span() -> f64 {
        (rubric().max_score() - rubric().min_score()) as f64
    }

    fn rubric() -> Rubric {
        Rubric::parse("## Correct (0-4)\n## Clear (0-2)\n").unwrap()
    }

    #[test]
    fn judge_scores_normalize_and_mix() {
        let rec = json!({"answer": "4"});
        let rs = vec![Rollout { id: "a".into(), question: "2+2?".into(), response: "\\boxed{4}".into(), record: &rec }];
        let mut j = scripted(vec![Ok("Correct: 4\nClear: 1".into())]);
        let c = cfg(
            FailurePolicy::Skip,
            MixSpec::Weighted { judge_weight: 0.5, verifier_weight: 1.0 },
            vec![VerifierSpec::MathAnswer { tolerance: 1e-6, accept_unboxed: false }],
        );
        let mut u = TokenUsage::default();
        let s = score_batch(&mut j, &c, &rubric(), &rs, 0, 1, &mut u).unwrap();
        assert!((s[0].judge_reward.unwrap() - 5.0 / 6.0).abs() < 1e-12);
        assert!((s[0].reward.unwrap() - (0.5 * 5.0 / 6.0 + 1.0)).abs() < 1e-12);
        assert_eq!(s[0].source, Source::Mixed);
        assert_eq!((u.calls, u.prompt_tokens), (1, 10));
        assert!(s[0].judge_prompt.as_ref().unwrap().contains("## Correct (0-4)"));
    }

    #[test]
    fn aggregates_weigh_items_as_documented() {
        // The issue's example: a meta judge widened one item to 0-10; a response earns 10/0/0.
        let r = Rubric::parse("## Correct (0-10)\n## Clear (0-2)\n## Brief (0-2)\n").unwrap();
        let s = ItemScores { scores: vec![("Correct".into(), 10.0), ("Clear".into(), 0.0), ("Brief".into(), 0.0)] };
        assert_eq!(judge_value(&s, &r, Aggregate::Sum), 10.0);
        assert!((judge_value(&s, &r, Aggregate::RangeShare) - 10.0 / 14.0).abs() < 1e-12);
        assert!((judge_value(&s, &r, Aggregate::ItemMean) - 1.0 / 3.0).abs() < 1e-12, "equal item weights");
        // items with a non-zero minimum are shares of their range, clamped
        let r = Rubric::parse("## A (2-6)\n## B (0-4)\n").unwrap();
        let s = ItemScores { scores: vec![("A".into(), 4.0), ("B".into(), 4.0)] };
        assert!((judge_value(&s, &r, Aggregate::ItemMean) - 0.75).abs() < 1e-12);
        // through score_batch: the default aggregate is the item mean
        let rec = json!({});
        let rs = vec![Rollout { id: "a".into(), question: "q".into(), response: "r".into(), record: &rec }];
        let mut c = cfg(FailurePolicy::Skip, MixSpec::default(), vec![]);
        c.spec.aggregate = Aggregate::default();
        let mut j = scripted(vec![Ok("Correct: 4\nClear: 0".into())]);
        let s = score_batch(&mut j, &c, &rubric(), &rs, 0, 1, &mut TokenUsage::default()).unwrap();
        assert_eq!(s[0].reward, Some(0.5), "4/4 and 0/2 average to 0.5 (range share would say 4/6)");
    }

    #[test]
    fn failures_retry_then_follow_the_policy() {
        let rec = json!({});
        let rs = vec![Rollout { id: "a".into(), question: "q".into(), response: "r".into(), record: &rec }];
        let rub = rubric();
        // first answer unusable, retry succeeds
        let mut j = scripted(vec![Ok("Correct: 9\nClear: 1".into()), Ok("Correct: 2\nClear: 1".into())]);
        let c = cfg(FailurePolicy::Skip, MixSpec::default(), vec![]);
        let s = score_batch(&mut j, &c, &rub, &rs, 0, 1, &mut TokenUsage::default()).unwrap();
        assert_eq!(s[0].judge_answers.len(), 2);
        assert!(s[0].failure.is_none() && s[0].reward.is_some());
        // always unusable: skip, penalty, fail
        let bad = || scripted(vec![Ok("no scores".into())]);
        let s = score_batch(&mut bad(), &c, &rub, &rs, 0, 1, &mut TokenUsage::default()).unwrap();
        assert_eq!((s[0].reward, s[0].source.as_str()), (None, "skipped"));
        assert!(matches!(s[0].failure, Some(ScoreFailure::Unparseable { .. })));
        assert_eq!(failure_counts(&s).get("unparseable"), Some(&1));
        let c = cfg(FailurePolicy::Penalty(-1.0), MixSpec::default(), vec![]);
        let s = score_batch(&mut bad(), &c, &rub, &rs, 0, 1, &mut TokenUsage::default()).unwrap();
        assert_eq!((s[0].reward, s[0].source.as_str()), (Some(-1.0), "penalty"));
        let c = cfg(FailurePolicy::Fail, MixSpec::default(), vec![]);
        assert!(matches!(score_batch(&mut bad(), &c, &rub, &rs, 0, 1, &mut TokenUsage::default()), Err(RewardError::Failed { .. })));
        // judge errors are failures too
        let mut down = scripted(vec![Err(JudgeError::Timeout { seconds: 1.0 })]);
        let c = cfg(FailurePolicy::Skip, MixSpec::default(), vec![]);
        let s = score_batch(&mut down, &c, &rub, &rs, 0, 1, &mut TokenUsage::default()).unwrap();
        assert!(matches!(s[0].failure, Some(ScoreFailure::JudgeFailed { .. })));
    }

    #[test]
    fn verifier_weight_applies_without_the_judge() {
        let rec = json!({"answer": "4"});
        let rs = vec![Rollout { id: "a".into(), question: "2+2?".into(), response: "\\boxed{4}".into(), record: &rec }];
        let c = cfg(
            FailurePolicy::Skip,
            MixSpec::Weighted { judge_weight: 0.0, verifier_weight: 2.0 },
            vec![VerifierSpec::MathAnswer { tolerance: 1e-6, accept_unboxed: false }],
        );
        let mut j = scripted(vec![Ok("Correct: 4\nClear: 1".into())]);
        let s = score_batch(&mut j, &c, &rubric(), &rs, 0, 1, &mut TokenUsage::default()).unwrap();
        assert_eq!((s[0].reward, s[0].source.as_str(), j.calls()), (Some(2.0), "verifier", 0));
        assert_eq!(reward_range(&c.spec, span()), 2.0);
        // a relative missing-EOS penalty follows the reward's scale
        use crate::spec::EosPenalty;
        assert_eq!(EosPenalty::ShareOfRange { share_of_range: 0.2 }.amount(reward_range(&c.spec, span())), 0.4);
        let raw =
            RewardSpec { aggregate: Aggregate::Sum, mix: MixSpec::Weighted { judge_weight: 1.0, verifier_weight: 0.0 }, ..c.spec.clone() };
        assert_eq!(reward_range(&raw, span()), 6.0, "raw totals span the rubric's 0..6");
        assert_eq!(EosPenalty::Absolute(1.0).amount(6.0), 1.0);
    }

    #[test]
    fn truncated_answers_fail_as_such_and_retries_answer_anew() {
        // Records every request; the first answer is cut off, the rest complete.
        let seen = std::cell::RefCell::new(Vec::<JudgeRequest>::new());
        let cut = || {
            ScriptedJudge::new("test:cut", |r: &JudgeRequest, k| {
                seen.borrow_mut().push(r.clone());
                Ok(JudgeResponse { truncated: k == 0, ..JudgeResponse::answer("Correct: 4\nClear: 1") })
            })
        };
        let rec = json!({});
        let rs = vec![Rollout { id: "a".into(), question: "q".into(), response: "r".into(), record: &rec }];
        let c = cfg(FailurePolicy::Skip, MixSpec::default(), vec![]);
        let mut j = cut();
        let s = score_batch(&mut j, &c, &rubric(), &rs, 0, 1, &mut TokenUsage::default()).unwrap();
        assert!(s[0].reward.is_some() && s[0].failure.is_none());
        drop(j);
        let asked = seen.take();
        assert_eq!(asked.len(), 2);
        // the retry is a different request: new seed, a temperature that can change the answer
        assert_ne!(asked[0].seed, asked[1].seed);
        assert_eq!((asked[0].temperature, asked[1].temperature), (0.0, 0.7));
        // with no retries left the truncation is the recorded failure, counted by its own name
        let c = RewardConfig { spec: RewardSpec { failure: FailureSpec { retries: 0, ..c.spec.failure.clone() }, ..c.spec.clone() }, ..c };
        let s = score_batch(&mut cut(), &c, &rubric(), &rs, 0, 1, &mut TokenUsage::default()).unwrap();
        assert_eq!(s[0].failure, Some(ScoreFailure::Truncated { max_tokens: c.spec.judge.max_tokens }));
        assert_eq!(failure_counts(&s).get("truncated"), Some(&1));
    }

    #[test]
    fn under_grpo_the_coin_covers_whole_groups() {
        let rec = json!({"answer": "1"});
        let rs: Vec<Rollout> =
            (0..64).map(|i| Rollout { id: format!("r{i}"), question: "q".into(), response: "\\boxed{1}".into(), record: &rec }).collect();
        let c = cfg(
            FailurePolicy::Skip,
            MixSpec::Coin { verifier_prob: 0.5, chunk: 1 },
            vec![VerifierSpec::MathAnswer { tolerance: 1e-6, accept_unboxed: false }],
        )
        .with_group(4);
        let mut j = scripted(vec![Ok("Correct: 0\nClear: 0".into())]);
        let s = score_batch(&mut j, &c, &rubric(), &rs, 7, 3, &mut TokenUsage::default()).unwrap();
        let src: Vec<&str> = s.iter().map(|x| x.source.as_str()).collect();
        for g in src.chunks(4) {
            assert!(g.iter().all(|x| *x == g[0]), "a group mixes judge and verifier: {g:?}");
        }
        assert!(src.contains(&"judge") && src.contains(&"verifier"));
    }

    #[test]
    fn coin_is_seeded_and_skips_the_judge() {
        let rec = json!({"answer": "1"});
        let rs: Vec<Rollout> =
            (0..40).map(|i| Rollout { id: format!("r{i}"), question: "q".into(), response: "\\boxed{1}".into(), record: &rec }).collect();
        let c = cfg(
            FailurePolicy::Skip,
            MixSpec::Coin { verifier_prob: 0.5, chunk: 4 },
            vec![VerifierSpec::MathAnswer { tolerance: 1e-6, accept_unboxed: false }],
        );
        let run = || {
            let mut j = scripted(vec![Ok("Correct: 0\nClear: 0".into())]);
            let s = score_batch(&mut j, &c, &rubric(), &rs, 7, 3, &mut TokenUsage::default()).unwrap();
            (s.iter().map(|x| x.source).collect::<Vec<_>>(), j.calls())
        };
        let (a, calls) = run();
        assert_eq!(a, run().0);
        let judged = a.iter().filter(|s| **s == Source::Judge).count();
        assert_eq!(judged, calls);
        assert!(judged > 0 && judged < 40);
        // chunks of 4 share a toss
        for c in a.chunks(4) {
            assert!(c.iter().all(|x| *x == c[0]));
        }
    }
}
