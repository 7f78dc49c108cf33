//! Cases scored exactly as a run scores its rollouts (`reward::score_batch`), with a judge
//! that is replayed, recorded or live, and the outcome of each case.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::Case;
use crate::judge::cache::{self, CachedJudge};
use crate::judge::{Judge, JudgeError, JudgeRequest, JudgeResponse, TokenUsage};
use crate::reward::{self, RewardConfig, Rollout};
use crate::rubric::Rubric;
use crate::spec::{FailurePolicy, MixSpec, RewardSpec};
use crate::template::TemplateFile;

/// Why cases could not be scored.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error("case `{case}`: the policy template cannot render its record: {error}")]
    Question { case: String, error: crate::template::TemplateError },
    #[error(transparent)]
    Reward(#[from] crate::reward::RewardError),
}

/// One case's outcome: what is compared (items, total, failure) and what is kept for reading
/// (the judge's answers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub id: String,
    pub kind: String,
    /// Item scores in rubric order; empty when the answer could not be used.
    pub items: Vec<(String, f64)>,
    pub total: Option<f64>,
    /// Why the judge's answer could not be used (`None`: scored).
    pub failure: Option<String>,
    /// The judge's raw answers, one per attempt (stored, not compared).
    #[serde(default)]
    pub answers: Vec<String>,
}

#[cfg(test)]
impl Outcome {
    /// A case's outcome from its item scores (its total their sum), or its failure.
    pub(crate) fn of(id: &str, items: &[(&str, f64)], failure: Option<&str>) -> Outcome {
        let items: Vec<(String, f64)> = items.iter().map(|(n, s)| (n.to_string(), *s)).collect();
        let total = failure.is_none().then(|| items.iter().map(|(_, s)| s).sum());
        Outcome { id: id.into(), kind: "case".into(), items, total, failure: failure.map(str::to_string), answers: vec![] }
    }
}

/// A judge that remembers which requests it was asked and which had no answer.
struct Watched<'a> {
    inner: &'a mut dyn Judge,
    asked: BTreeSet<String>,
    missing: BTreeSet<String>,
}

impl Judge for Watched<'_> {
    fn identity(&self) -> String {
        self.inner.identity()
    }
    fn complete(&mut self, requests: &[JudgeRequest]) -> Vec<Result<JudgeResponse, JudgeError>> {
        let out = self.inner.complete(requests);
        for (q, a) in requests.iter().zip(&out) {
            self.asked.insert(cache::key(q));
            if matches!(a, Err(JudgeError::CacheMiss { .. })) {
                self.missing.insert(q.prompt.clone());
            }
        }
        out
    }
}

/// A judge that answers from `first` and asks `then` only what `first` has not recorded.
pub struct Fallback<'a> {
    pub first: CachedJudge<'a>,
    pub then: Box<dyn Judge + 'a>,
}

impl Judge for Fallback<'_> {
    fn identity(&self) -> String {
        self.then.identity()
    }
    fn transport(&self) -> Option<crate::judge::Transport> {
        self.then.transport()
    }
    fn complete(&mut self, requests: &[JudgeRequest]) -> Vec<Result<JudgeResponse, JudgeError>> {
        let mut out = self.first.complete(requests);
        let missing: Vec<usize> = (0..out.len()).filter(|&i| matches!(out[i], Err(JudgeError::CacheMiss { .. }))).collect();
        if !missing.is_empty() {
            let batch: Vec<JudgeRequest> = missing.iter().map(|&i| requests[i].clone()).collect();
            for (&i, a) in missing.iter().zip(self.then.complete(&batch)) {
                out[i] = a;
            }
        }
        out
    }
}

/// The outcome of a case whose judge prompt has no recorded answer.
pub const NO_RECORDING: &str = "no recorded judge answer";

/// What scoring the cases produced.
pub struct Scored {
    pub outcomes: Vec<Outcome>,
    /// Cases whose judge prompt has no recorded answer.
    pub unrecorded: Vec<String>,
    /// Recording keys this test used.
    pub used: BTreeSet<String>,
    pub usage: TokenUsage,
}

/// What scoring a case needs besides the judge and the rubric: the reward settings and the
/// policy template that turns a case's record into the question.
pub struct Scorer {
    cfg: RewardConfig,
    policy: TemplateFile,
    seed: u64,
}

impl Scorer {
    pub fn new(reward: &RewardSpec, task: &str, judge_t: &TemplateFile, policy_t: TemplateFile, seed: u64) -> Result<Self, ScoreError> {
        let mut spec = reward.clone();
        // A judge failure is an outcome here, whatever the run's policy; and every case goes to
        // the judge, whatever share of a run's rollouts the verifier scores.
        if spec.failure.policy == FailurePolicy::Fail {
            spec.failure.policy = FailurePolicy::Skip;
        }
        spec.mix = MixSpec::Weighted { judge_weight: 1.0, verifier_weight: 1.0 };
        let cfg = RewardConfig::new(spec, task, judge_t.text.clone(), judge_t.path.display().to_string())?;
        Ok(Scorer { cfg, policy: policy_t, seed })
    }

    /// Score `cases` under `rubric` with `judge` (replaying, recording or live), exactly as a
    /// run scores its rollouts (`reward::score_batch`).
    pub fn score(&self, judge: &mut dyn Judge, rubric: &Rubric, cases: &[Case]) -> Result<Scored, ScoreError> {
        let name = self.policy.path.display().to_string();
        let mut questions = Vec::new();
        for c in cases {
            let q = crate::template::render(&name, &self.policy.text, &c.record)
                .map_err(|error| ScoreError::Question { case: c.id.clone(), error })?;
            questions.push(q);
        }
        let rollouts: Vec<Rollout> = cases
            .iter()
            .zip(&questions)
            .map(|(c, q)| Rollout { id: c.id.clone(), question: q.clone(), response: c.response.clone(), record: &c.record })
            .collect();
        let mut watched = Watched { inner: judge, asked: BTreeSet::new(), missing: BTreeSet::new() };
        let mut usage = TokenUsage::default();
        let scored = reward::score_batch(&mut watched, &self.cfg, rubric, &rollouts, self.seed, 0, &mut usage)?;
        let mut unrecorded = Vec::new();
        let outcomes = cases
            .iter()
            .zip(scored)
            .map(|(c, s)| {
                if s.judge_prompt.as_ref().is_some_and(|p| watched.missing.contains(p)) {
                    unrecorded.push(c.id.clone());
                    return Outcome {
                        id: c.id.clone(),
                        kind: c.kind.clone(),
                        items: vec![],
                        total: None,
                        failure: Some(NO_RECORDING.into()),
                        answers: vec![],
                    };
                }
                let items = s.item_scores.as_ref().map(|i| i.scores.clone()).unwrap_or_default();
                Outcome {
                    id: c.id.clone(),
                    kind: c.kind.clone(),
                    total: s.item_scores.as_ref().map(|i| i.total()),
                    items,
                    failure: s.failure.as_ref().map(|f| f.to_string()),
                    answers: s.judge_answers.clone(),
                }
            })
            .collect();
        Ok(Scored { outcomes, unrecorded, used: watched.asked, usage })
    }
}
