//! Task metrics on generated responses: answer accuracy (math), verdict accuracy (ethical
//! reasoning), ROUGE-1/2/L F1 x 100 (summarization), and response length for every task.

use std::collections::BTreeMap;

use serde_json::Value as J;

use crate::reward::{math_eq, verify};
use crate::spec::TaskKind;

/// Metrics of `responses` to `records` (aligned).
pub fn evaluate(kind: TaskKind, records: &[J], responses: &[String]) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    let n = responses.len().max(1) as f64;
    m.insert("response_words".into(), responses.iter().map(|r| r.split_whitespace().count() as f64).sum::<f64>() / n);
    match kind {
        TaskKind::Math => {
            let correct = records
                .iter()
                .zip(responses)
                .filter(|(rec, resp)| matches!((crate::task::math::last_boxed(resp), verify::math_reference(rec)), (Some(g), Some(w)) if math_eq::equivalent(&g, &w, 1e-6)))
                .count();
            let boxed = responses.iter().filter(|r| crate::task::math::last_boxed(r).is_some()).count();
            m.insert("accuracy".into(), correct as f64 / n);
            m.insert("boxed_rate".into(), boxed as f64 / n);
        }
        TaskKind::EthicalReasoning => {
            let correct = records
                .iter()
                .zip(responses)
                .filter(|(rec, resp)| {
                    verify::verdict_tag(resp).is_some_and(|v| Some(v.as_str()) == rec.get("binarized_label").and_then(J::as_str))
                })
                .count();
            let tagged = responses.iter().filter(|r| verify::verdict_tag(r).is_some()).count();
            m.insert("verdict_accuracy".into(), correct as f64 / n);
            m.insert("verdict_rate".into(), tagged as f64 / n);
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
            for (resp, rs) in responses.iter().zip(&refs) {
                let s = crate::task::rouge::best_of(resp, rs);
                sums[0] += s.rouge1;
                sums[1] += s.rouge2;
                sums[2] += s.rouge_l;
            }
            m.insert("rouge1".into(), sums[0] / n);
            m.insert("rouge2".into(), sums[1] / n);
            m.insert("rougeL".into(), sums[2] / n);
        }
        TaskKind::EssayWriting => {}
    }
    m
}
