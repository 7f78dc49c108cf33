//! Task metrics on generated responses (an evaluation's, `measure.rs`): answer accuracy (math), verdict accuracy (ethical
//! reasoning), ROUGE-1/2/L F1 x 100 (summarization), and response length for every task.
//!
//! Math accuracy reads answers the way the run's training verifier does (its `accept_unboxed`
//! and tolerance), so the evaluation can see what training rewards; `boxed_accuracy` is the
//! paper's strict `\boxed{}` check beside it.

use std::collections::BTreeMap;

use serde_json::Value as J;

use crate::reward::verify;
use crate::spec::{TaskKind, VerifierSpec};

/// The metrics of one evaluation, and the per-response scores of its headline metric (what
/// intervals and before/after comparisons are computed from).
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub metrics: BTreeMap<String, f64>,
    /// The headline metric's name and its value per response (aligned with the records).
    pub headline: Option<(String, Vec<f64>)>,
}

/// The math answer check an evaluation uses: the spec's `math_answer` verifier, else the
/// strict boxed check.
pub fn math_check(verifiers: &[VerifierSpec]) -> VerifierSpec {
    verifiers
        .iter()
        .find(|v| matches!(v, VerifierSpec::MathAnswer { .. }))
        .cloned()
        .unwrap_or(VerifierSpec::MathAnswer { tolerance: 1e-6, accept_unboxed: false })
}

/// How `math_check` reads answers, for people.
pub fn math_check_note(verifiers: &[VerifierSpec]) -> &'static str {
    match math_check(verifiers) {
        VerifierSpec::MathAnswer { accept_unboxed: true, .. } => {
            "answers read like the training verifier: the \\boxed{} answer, else the final number"
        }
        _ => "answers read like the training verifier: \\boxed{} answers only",
    }
}

/// Metrics of `responses` to `records` (aligned); `verifiers` are the run's (math accuracy
/// follows its answer check).
pub fn evaluate(kind: TaskKind, records: &[J], responses: &[String], verifiers: &[VerifierSpec]) -> Evaluation {
    let mut m = BTreeMap::new();
    let mut headline = None;
    let n = responses.len().max(1) as f64;
    m.insert("response_words".into(), responses.iter().map(|r| r.split_whitespace().count() as f64).sum::<f64>() / n);
    match kind {
        TaskKind::Math => {
            let check = math_check(verifiers);
            let strict = VerifierSpec::MathAnswer { tolerance: 1e-6, accept_unboxed: false };
            let scores: Vec<f64> = records.iter().zip(responses).map(|(rec, resp)| verify::verify(&check, resp, rec).score).collect();
            let boxed_correct: f64 = records.iter().zip(responses).map(|(rec, resp)| verify::verify(&strict, resp, rec).score).sum();
            let boxed = responses.iter().filter(|r| crate::task::math::last_boxed(r).is_some()).count();
            m.insert("accuracy".into(), scores.iter().sum::<f64>() / n);
            m.insert("boxed_accuracy".into(), boxed_correct / n);
            m.insert("boxed_rate".into(), boxed as f64 / n);
            headline = Some(("accuracy".to_string(), scores));
        }
        TaskKind::EthicalReasoning => {
            let scores: Vec<f64> = records
                .iter()
                .zip(responses)
                .map(|(rec, resp)| {
                    verify::verdict(resp).is_some_and(|v| Some(v.as_str()) == rec.get("binarized_label").and_then(J::as_str)) as u8 as f64
                })
                .collect();
            let tagged = responses.iter().filter(|r| verify::verdict_tag(r).is_some()).count();
            m.insert("verdict_accuracy".into(), scores.iter().sum::<f64>() / n);
            m.insert("verdict_rate".into(), tagged as f64 / n);
            headline = Some(("verdict_accuracy".to_string(), scores));
        }
        TaskKind::Summarization => {
            let refs: Vec<Vec<String>> = records
                .iter()
                .map(|r| match r.get("summaries").and_then(J::as_array) {
                    Some(a) if !a.is_empty() => a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect(),
                    _ => r.get("summary").and_then(J::as_str).map(|s| vec![s.to_string()]).unwrap_or_default(),
                })
                .collect();
            let mut sums = [0.0; 3];
            let mut per = Vec::with_capacity(responses.len());
            for (resp, rs) in responses.iter().zip(&refs) {
                let s = crate::task::rouge::best_of(resp, rs);
                sums[0] += s.rouge1;
                sums[1] += s.rouge2;
                sums[2] += s.rouge_l;
                per.push(s.rouge_l);
            }
            m.insert("rouge1".into(), sums[0] / n);
            m.insert("rouge2".into(), sums[1] / n);
            m.insert("rougeL".into(), sums[2] / n);
            headline = Some(("rougeL".to_string(), per));
        }
        TaskKind::EssayWriting => {}
    }
    Evaluation { metrics: m, headline }
}
