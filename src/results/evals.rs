//! Evaluations in a run directory: `eval/<label>.jsonl` (one line per test prompt: the
//! response and its headline score) and `eval/<label>.json` (the metrics), with the transfer
//! split's under `eval/transfer/`. Labels: `base` (the policy before training), `update-N`
//! (during a run), `checkpoint-N` (`mpo eval`).
//!
//! [`compare`] pairs two evaluations of the same prompts (base and trained) into the before /
//! after numbers a run ends with: each with its 95% interval, and the change with a paired
//! bootstrap interval.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value as J;

use super::RunDir;
use crate::stats;

/// Which held-out split: `test` (the task's own distribution) or `transfer` (another one).
pub const SPLITS: [&str; 2] = ["test", "transfer"];

/// `eval/<label>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSummary {
    pub run_id: String,
    /// `base`, `update-N` or `checkpoint-N`.
    pub weights: String,
    #[serde(default = "default_split")]
    pub split: String,
    pub samples: usize,
    pub metrics: BTreeMap<String, f64>,
    /// The metric each line's `score` is, with how it reads answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

fn default_split() -> String {
    "test".into()
}

/// One line of `eval/<label>.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalLine {
    pub record_index: usize,
    pub record_id: Option<J>,
    pub question: String,
    pub response: String,
    /// The headline metric on this response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
}

/// The folder of `split`'s evaluations, relative to the run.
pub fn folder(split: &str) -> String {
    if split == "test" { "eval".into() } else { format!("eval/{split}") }
}

impl RunDir {
    /// Write one evaluation (lines first: a summary always has its lines).
    pub fn write_eval(&self, summary: &EvalSummary, lines: &[EvalLine]) -> std::io::Result<()> {
        let base = format!("{}/{}", folder(&summary.split), summary.weights);
        self.write_jsonl(&format!("{base}.jsonl"), lines)?;
        self.write_json(&format!("{base}.json"), summary)
    }

    /// One evaluation, if it was written (`None` also for files of another format).
    pub fn read_eval(&self, split: &str, label: &str) -> Option<(EvalSummary, Vec<EvalLine>)> {
        let base = self.path(&format!("{}/{label}", folder(split)));
        let summary: EvalSummary = serde_json::from_str(&std::fs::read_to_string(base.with_extension("json")).ok()?).ok()?;
        let text = std::fs::read_to_string(base.with_extension("jsonl")).ok()?;
        let lines = text.lines().filter(|l| !l.trim().is_empty()).map(serde_json::from_str).collect::<Result<Vec<EvalLine>, _>>().ok()?;
        Some((summary, lines))
    }
}

/// A value with its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
}

/// Base against trained on the same prompts.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub split: String,
    pub metric: String,
    pub note: Option<String>,
    /// Prompts both evaluations answered.
    pub n: usize,
    /// Proportions get Wilson intervals; other means a bootstrap.
    pub proportion: bool,
    pub base: Estimate,
    pub trained: Estimate,
    /// Trained minus base, with a paired-bootstrap interval.
    pub change: Estimate,
    /// Prompts whose score went up, and down.
    pub better: usize,
    pub worse: usize,
}

/// The interval of one evaluation's headline scores.
pub fn estimate(scores: &[f64], seed: u64) -> Estimate {
    let n = scores.len();
    let value = scores.iter().sum::<f64>() / n.max(1) as f64;
    let (lo, hi) = if crate::task::metrics::is_proportion(scores) {
        stats::wilson(scores.iter().filter(|&&x| x == 1.0).count(), n)
    } else {
        stats::bootstrap_mean(scores, seed, 2000)
    };
    Estimate { value, lo, hi }
}

/// Pair `base_label` and `trained_label` of `split` by prompt.
pub fn compare(dir: &RunDir, split: &str, base_label: &str, trained_label: &str) -> Option<Comparison> {
    let (bs, bl) = dir.read_eval(split, base_label)?;
    let (ts, tl) = dir.read_eval(split, trained_label)?;
    let base: BTreeMap<usize, f64> = bl.iter().filter_map(|l| Some((l.record_index, l.score?))).collect();
    let pairs: Vec<(f64, f64)> = tl.iter().filter_map(|l| Some((*base.get(&l.record_index)?, l.score?))).collect();
    if pairs.is_empty() || bs.headline != ts.headline {
        return None;
    }
    let better = pairs.iter().filter(|(b, t)| t > b).count();
    let worse = pairs.iter().filter(|(b, t)| t < b).count();
    let (b, t): (Vec<f64>, Vec<f64>) = pairs.into_iter().unzip();
    let (value, lo, hi) = stats::paired_difference(&b, &t, 0, 2000);
    Some(Comparison {
        split: split.to_string(),
        metric: ts.headline.clone().unwrap_or_default(),
        note: ts.note.clone(),
        n: b.len(),
        proportion: crate::task::metrics::is_proportion(&b) && crate::task::metrics::is_proportion(&t),
        base: estimate(&b, 0),
        trained: estimate(&t, 0),
        change: Estimate { value, lo, hi },
        better,
        worse,
    })
}

impl Comparison {
    /// What a reader needs: both values with intervals, the change, and whether the change is
    /// distinguishable from none.
    pub fn lines(&self) -> Vec<String> {
        let f = |e: &Estimate| format!("{:.3}  [{:.3}, {:.3}]", e.value, e.lo, e.hi);
        let how = if self.proportion { "95% Wilson" } else { "95% bootstrap" };
        let verdict = if self.change.lo > 0.0 {
            "training raised it"
        } else if self.change.hi < 0.0 {
            "training lowered it"
        } else {
            "no change distinguishable from none at this sample size"
        };
        let mut v = vec![format!(
            "{} on {} held-out {} prompts{}:",
            self.metric,
            self.n,
            self.split,
            self.note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
        )];
        v.push(format!("  base     {}  {how}", f(&self.base)));
        v.push(format!("  trained  {}", f(&self.trained)));
        v.push(format!(
            "  change   {:+.3}  [{:+.3}, {:+.3}]  paired bootstrap ({} better, {} worse): {verdict}",
            self.change.value,
            self.change.lo,
            self.change.hi,
            if self.better == 1 { "1 prompt".to_string() } else { format!("{} prompts", self.better) },
            self.worse
        ));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &RunDir, split: &str, label: &str, scores: &[f64]) {
        let lines: Vec<EvalLine> = scores
            .iter()
            .enumerate()
            .map(|(i, s)| EvalLine { record_index: i, record_id: None, question: "q".into(), response: "r".into(), score: Some(*s) })
            .collect();
        let summary = EvalSummary {
            run_id: "x".into(),
            weights: label.into(),
            split: split.into(),
            samples: scores.len(),
            metrics: BTreeMap::from([("accuracy".to_string(), scores.iter().sum::<f64>() / scores.len() as f64)]),
            headline: Some("accuracy".into()),
            note: None,
        };
        dir.write_eval(&summary, &lines).unwrap();
    }

    #[test]
    fn base_and_trained_pair_by_prompt() {
        let dir = RunDir { root: std::env::temp_dir().join(format!("mpo-evals-{}", std::process::id())) };
        write(&dir, "test", "base", &[0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
        write(&dir, "test", "update-000006", &[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]);
        write(&dir, "transfer", "base", &[0.0; 4]);
        assert!(dir.path("eval/transfer/base.jsonl").is_file());
        let c = compare(&dir, "test", "base", "update-000006").unwrap();
        assert_eq!((c.n, c.proportion), (8, true));
        assert_eq!((c.base.value, c.trained.value, c.change.value), (0.25, 0.875, 0.625));
        assert!(c.change.lo > 0.0, "{c:?}");
        let text = c.lines().join("\n");
        assert!(text.contains("accuracy on 8 held-out test prompts") && text.contains("training raised it"), "{text}");
        assert!(text.contains("(5 prompts better, 0 worse)"), "{text}");
        // no trained transfer evaluation: nothing to compare
        assert!(compare(&dir, "transfer", "base", "update-000006").is_none());
        let _ = std::fs::remove_dir_all(&dir.root);
    }
}
