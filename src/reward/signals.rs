//! Reward-hacking signals of one update's rollouts: the symptoms the paper describes
//! (responses collapsing to a title, repeated text, every response the same, every score the
//! maximum) and disagreement between the judge and the verifiers.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::Scored;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Signals {
    /// Mean response length in tokens.
    pub mean_response_tokens: f64,
    /// Mean share of repeated word trigrams within a response.
    pub repetition_rate: f64,
    /// Share of responses identical to another response of the batch.
    pub identical_share: f64,
    /// Share of judged responses with the rubric's maximum total.
    pub max_score_share: f64,
    /// Among responses both judged and verified: share where the judge (at least half of the
    /// rubric's range, whatever the reward scale) and the verifiers (>= 0.5) disagree.
    pub judge_verifier_disagreement: Option<f64>,
}

/// Share of word trigrams in `text` that occurred earlier in it.
pub fn repetition(text: &str) -> f64 {
    let w: Vec<&str> = text.split_whitespace().collect();
    if w.len() < 4 {
        return 0.0;
    }
    let mut seen = HashSet::new();
    let mut rep = 0;
    for t in w.windows(3) {
        if !seen.insert(t) {
            rep += 1;
        }
    }
    rep as f64 / (w.len() - 2) as f64
}

/// Signals of a batch: `responses` with their token counts, and their scores; `ranges[i]`: the
/// lowest and highest total of the rubric `scored[i]` was scored under (rubric families differ).
pub fn compute(responses: &[(&str, usize)], scored: &[Scored], ranges: &[(f64, f64)]) -> Signals {
    let n = responses.len().max(1) as f64;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for (r, _) in responses {
        *counts.entry(r.trim()).or_default() += 1;
    }
    let identical = responses.iter().filter(|(r, _)| counts[r.trim()] > 1).count();
    let judged: Vec<(&Scored, (f64, f64))> = scored.iter().zip(ranges.iter().copied()).filter(|(s, _)| s.item_scores.is_some()).collect();
    let at_max = judged.iter().filter(|(s, (_, max))| s.item_scores.as_ref().is_some_and(|i| (i.total() - max).abs() < 1e-9)).count();
    // The judge's verdict as a share of the rubric's range: `judge_reward` is on the reward's
    // scale (summed points under `aggregate: sum`, equal-weight item shares by default), so it cannot be compared with 0.5 directly.
    let share = |t: f64, (lo, hi): (f64, f64)| if hi > lo { (t - lo) / (hi - lo) } else { 0.0 };
    let both: Vec<(f64, f64)> = scored
        .iter()
        .zip(ranges.iter().copied())
        .filter_map(|(s, range)| Some((share(s.item_scores.as_ref()?.total(), range), s.verifier_score?)))
        .collect();
    Signals {
        mean_response_tokens: responses.iter().map(|(_, t)| *t as f64).sum::<f64>() / n,
        repetition_rate: responses.iter().map(|(r, _)| repetition(r)).sum::<f64>() / n,
        identical_share: identical as f64 / n,
        max_score_share: if judged.is_empty() { 0.0 } else { at_max as f64 / judged.len() as f64 },
        judge_verifier_disagreement: (!both.is_empty())
            .then(|| both.iter().filter(|(j, v)| (*j >= 0.5) != (*v >= 0.5)).count() as f64 / both.len() as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_and_identity() {
        assert_eq!(repetition("a b c a b c a b c"), 4.0 / 7.0);
        assert_eq!(repetition("the cat sat on the mat"), 0.0);
        let s = compute(&[("x y", 2), ("x y", 2), ("z", 1)], &[], &[]);
        assert!((s.identical_share - 2.0 / 3.0).abs() < 1e-12);
        assert!((s.mean_response_tokens - 5.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.judge_verifier_disagreement, None);
    }

    #[test]
    fn disagreement_reads_raw_totals_on_the_rubric_scale() {
        let scored = |total: f64, verifier: f64| Scored {
            id: "a".into(),
            reward: Some(total),
            source: crate::reward::Source::Mixed,
            verdicts: vec![],
            verifier_score: Some(verifier),
            judge_reward: Some(total),
            item_scores: Some(crate::reward::score::ItemScores { scores: vec![("Correct".into(), total)] }),
            judge_prompt: None,
            judge_answers: vec![],
            failure: None,
        };
        // un-normalised rewards on a 0..10 rubric: 3/10 is a "wrong" verdict, agreeing with a
        // failed verifier; 8/10 agrees with a passed one
        let s = compute(&[("a", 1), ("b", 1)], &[scored(3.0, 0.0), scored(8.0, 1.0)], &[(0.0, 10.0); 2]);
        assert_eq!(s.judge_verifier_disagreement, Some(0.0));
        let s = compute(&[("a", 1)], &[scored(3.0, 1.0)], &[(0.0, 10.0)]);
        assert_eq!(s.judge_verifier_disagreement, Some(1.0));
    }
}
