//! Evaluations in a run directory: `eval/<label>.jsonl` (one line per test prompt: the
//! response and its headline score) and `eval/<label>.json` (the metrics), with the transfer
//! split's under `eval/transfer/`. Labels: `base` (the policy before training), `update-N`
//! (during a run), `checkpoint-N` (`mpo eval`).
//!
//! [`Comparison`] pairs evaluations of the same prompts (by question, never by position) into
//! the numbers a run ends with and `mpo eval compare` prints: each side with its 95% interval,
//! the paired change with its interval, and the exact test of no change with its p.

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
    /// How each line's `instrument` score was computed (`eval.instrument`), when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instrument: Option<InstrumentInfo>,
}

/// The fixed instrument an evaluation was scored with: what makes two evaluations' instrument
/// scores comparable (`same_as`), and what it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstrumentInfo {
    /// The judge's identity (`local:sha256:…`, `openai:MODEL`).
    pub judge: String,
    /// The instrument's judge is the training judge (`training_judge: true`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub training_judge: bool,
    /// sha256 of the rendered rubric and of the judge template.
    pub rubric_sha256: String,
    pub prompt_sha256: String,
    /// `Name (min-max)` per item.
    pub items: Vec<String>,
    /// How item scores became a score (`item_mean`, `range_share`).
    pub aggregate: String,
    /// Responses with a score; the rest failed after every retry.
    pub scored: usize,
    /// Judge answers asked again, and responses left unscored, by cause.
    pub retries: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failures: BTreeMap<String, u64>,
}

impl InstrumentInfo {
    /// Whether `other` measured with the same judge, rubric, template and aggregation.
    pub fn same_as(&self, other: &InstrumentInfo) -> bool {
        (&self.judge, &self.rubric_sha256, &self.prompt_sha256, &self.aggregate)
            == (&other.judge, &other.rubric_sha256, &other.prompt_sha256, &other.aggregate)
    }

    /// One line saying how the instrument's scores were computed.
    pub fn describe(&self) -> String {
        format!(
            "judge {}{}, fixed rubric sha256 {} ({} items), {}",
            self.judge,
            if self.training_judge { " (the training judge)" } else { "" },
            &self.rubric_sha256[..12.min(self.rubric_sha256.len())],
            self.items.len(),
            self.aggregate
        )
    }
}

/// What a comparison pairs: each line's headline score (the task's metric) or its score by the
/// fixed instrument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    Headline,
    Instrument,
}

impl Measure {
    pub fn score(self, l: &EvalLine) -> Option<f64> {
        match self {
            Measure::Headline => l.score,
            Measure::Instrument => l.instrument,
        }
    }

    /// The measures an evaluation has, headline first.
    pub fn of(s: &EvalSummary) -> Vec<Measure> {
        let mut v = Vec::new();
        if s.headline.is_some() {
            v.push(Measure::Headline);
        }
        if s.instrument.is_some() {
            v.push(Measure::Instrument);
        }
        v
    }

    /// The metric's name in `s`.
    pub fn name(self, s: &EvalSummary) -> Option<String> {
        match self {
            Measure::Headline => s.headline.clone(),
            Measure::Instrument => s.instrument.as_ref().map(|_| INSTRUMENT_METRIC.to_string()),
        }
    }
}

/// The metric of `eval.instrument`: the mean score of the responses it scored.
pub const INSTRUMENT_METRIC: &str = "instrument_score";

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
    /// The fixed instrument's score of this response (`eval.instrument`; none when its judge
    /// failed after every retry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instrument: Option<f64>,
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
        Some((summary, read_lines(&base.with_extension("jsonl")).ok()?))
    }
}

/// Why evaluation files cannot be read or compared.
#[derive(Debug, thiserror::Error)]
pub enum EvalsError {
    #[error("{}: {source}", path.display())]
    Read { path: std::path::PathBuf, source: std::io::Error },
    #[error("{}:{line}: not an evaluation line: {source}", path.display())]
    Line { path: std::path::PathBuf, line: usize, source: serde_json::Error },
    #[error("record {record} has no headline score")]
    NoHeadline { record: usize },
    #[error(
        "the evaluations asked different questions ({common} in common of {a} and {b}): compare evaluations of the same test split \
         (same task data, prompt template, eval.samples and eval.seed)"
    )]
    DifferentQuestions { common: usize, a: usize, b: usize },
    #[error("no paired prompts to compare")]
    NoPairs,
    #[error("the evaluations of different seeds asked different questions: compare runs of one test split")]
    SeedsDiffer,
}

/// The lines of an evaluation file (`eval/<label>.jsonl`); an error names the file and line.
pub fn read_lines(path: &std::path::Path) -> Result<Vec<EvalLine>, EvalsError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalsError::Read { path: path.to_path_buf(), source })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| serde_json::from_str(l).map_err(|source| EvalsError::Line { path: path.to_path_buf(), line: n + 1, source }))
        .collect()
}

/// The significance level verdicts are read at.
pub const ALPHA: f64 = 0.05;

/// A mean with its 95% interval and how the interval was computed; `ci` is `None` when no
/// interval can be drawn (every value equal and not a proportion), never a zero width.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub value: f64,
    pub ci: Option<(f64, f64)>,
    pub how: &'static str,
}

impl Estimate {
    fn show(&self, signed: bool) -> String {
        let v = |x: f64| if signed { format!("{x:+.3}") } else { format!("{x:.3}") };
        match self.ci {
            Some((lo, hi)) => format!("{}  [{}, {}]  {}", v(self.value), v(lo), v(hi), self.how),
            None => format!("{}  ({})", v(self.value), self.how),
        }
    }
}

/// The interval of one evaluation's headline scores: Wilson for 0/1 outcomes, else BCa.
pub fn estimate(scores: &[f64], seed: u64) -> Estimate {
    let n = scores.len();
    let value = scores.iter().sum::<f64>() / n.max(1) as f64;
    if crate::stats::is_proportion(scores) {
        return Estimate { value, ci: Some(stats::wilson(scores.iter().filter(|&&x| x == 1.0).count(), n)), how: "95% Wilson" };
    }
    match stats::bca_mean(scores, seed, 4000) {
        Some(ci) => Estimate { value, ci: Some(ci), how: "95% BCa bootstrap" },
        None => Estimate { value, ci: None, how: "every score equal: no interval" },
    }
}

/// The key a prompt is paired by: the sha256 of the question as the policy saw it, with its
/// occurrence number (a test split may hold one question twice). Record indices are not
/// trusted across runs: two runs pair only where they asked the same question.
pub fn prompt_keys(lines: &[EvalLine]) -> Vec<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    lines
        .iter()
        .map(|l| {
            let h = crate::hash::sha256_hex(l.question.as_bytes());
            let k = seen.entry(h.clone()).or_default();
            *k += 1;
            format!("{h}#{k}")
        })
        .collect()
}

/// One prompt's scores on two sides: `(key, a, b)`.
pub type Pair = (String, f64, f64);

/// Pair the headline scores of two evaluations by prompt: `(key, a, b)` per prompt. Refused
/// (with why) when a line has no score or the two asked different questions: a comparison on
/// different prompts is not a paired comparison.
pub fn pair(a: &[EvalLine], b: &[EvalLine]) -> Result<Vec<(String, f64, f64)>, EvalsError> {
    pair_on(a, b, Measure::Headline).map(|(p, _)| p)
}

/// Pair two evaluations by prompt on `measure`, with the number of prompts left out. A headline
/// score is never missing (a missing one refuses the pairing); an instrument score is missing
/// where its judge failed, and such a prompt is left out of both sides.
pub fn pair_on(a: &[EvalLine], b: &[EvalLine], measure: Measure) -> Result<(Vec<Pair>, usize), EvalsError> {
    let score = |l: &EvalLine| match (measure, measure.score(l)) {
        (_, Some(s)) => Ok(Some(s)),
        (Measure::Instrument, None) => Ok(None),
        (Measure::Headline, None) => Err(EvalsError::NoHeadline { record: l.record_index }),
    };
    let bs: BTreeMap<String, Option<f64>> =
        prompt_keys(b).into_iter().zip(b).map(|(k, l)| Ok((k, score(l)?))).collect::<Result<_, EvalsError>>()?;
    let ka = prompt_keys(a);
    let common = ka.iter().filter(|k| bs.contains_key(*k)).count();
    if common != ka.len() || common != bs.len() {
        return Err(EvalsError::DifferentQuestions { common, a: ka.len(), b: bs.len() });
    }
    let mut pairs = Vec::new();
    let mut left_out = 0;
    for (k, l) in ka.into_iter().zip(a) {
        match (score(l)?, bs[&k]) {
            (Some(x), Some(y)) => pairs.push((k, x, y)),
            _ => left_out += 1,
        }
    }
    Ok((pairs, left_out))
}

/// Two sides measured on the same prompts: values with intervals, the paired change (B - A)
/// with its interval, and the exact test of no change.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub split: String,
    pub metric: String,
    pub note: Option<String>,
    /// What A and B are (`base`, `trained`; or arm names).
    pub labels: (String, String),
    /// Distinct prompts.
    pub n: usize,
    /// Independent pairs of evaluations (seeds) the prompts were answered in.
    pub strata: usize,
    /// Every score 0 or 1.
    pub proportion: bool,
    pub a: Estimate,
    pub b: Estimate,
    /// Mean of B - A over prompts (and strata).
    pub change: Estimate,
    /// (prompt, stratum) pairs where B scored higher, and lower.
    pub better: usize,
    pub worse: usize,
    /// The test of no change and its two-sided p.
    pub test: String,
    pub p: f64,
}

impl Comparison {
    /// Compare A and B from one or more strata of paired scores (`pair`'s output, one per
    /// seed; every stratum must hold the same prompts). One stratum of 0/1 outcomes: the exact
    /// McNemar test on the discordant pairs and Newcombe's paired interval. Otherwise each
    /// prompt's scores are averaged over the strata first, so a prompt counts once in the test
    /// (the sign-flip permutation test on per-prompt changes) and in every BCa interval: seeds
    /// answer the same prompts, and (prompt, seed) pairs counted as independent would overstate
    /// the evidence.
    pub fn new(
        split: &str,
        metric: &str,
        labels: (&str, &str),
        strata: &[Vec<(String, f64, f64)>],
        seed: u64,
    ) -> Result<Comparison, EvalsError> {
        let first = strata.first().filter(|s| !s.is_empty()).ok_or(EvalsError::NoPairs)?;
        let keys: Vec<&String> = first.iter().map(|p| &p.0).collect();
        let mut per_prompt: BTreeMap<&String, (f64, f64)> = keys.iter().map(|k| (*k, (0.0, 0.0))).collect();
        for s in strata {
            if s.len() != keys.len() || s.iter().any(|p| !per_prompt.contains_key(&p.0)) {
                return Err(EvalsError::SeedsDiffer);
            }
            for (k, a, b) in s {
                let e = per_prompt.get_mut(k).expect("checked above");
                e.0 += a / strata.len() as f64;
                e.1 += b / strata.len() as f64;
            }
        }
        let all: Vec<(f64, f64)> = strata.iter().flatten().map(|p| (p.1, p.2)).collect();
        let proportion = all.iter().all(|(a, b)| [0.0, 1.0].contains(a) && [0.0, 1.0].contains(b));
        let better = all.iter().filter(|(a, b)| b > a).count();
        let worse = all.iter().filter(|(a, b)| b < a).count();
        let (a, b): (Vec<f64>, Vec<f64>) = per_prompt.values().cloned().unzip();
        let d: Vec<f64> = per_prompt.values().map(|(a, b)| b - a).collect();
        let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
        let side = |xs: &[f64], stream: u64| {
            if strata.len() == 1 {
                estimate(xs, seed ^ stream)
            } else {
                match stats::bca_mean(xs, seed ^ stream, 4000) {
                    Some(ci) => Estimate { value: mean(xs), ci: Some(ci), how: "95% BCa bootstrap over prompts" },
                    // every prompt's mean alike: a proportion still has Wilson's interval on
                    // the prompts, which is wider than the truth; anything else has none
                    None if proportion => Estimate {
                        value: mean(xs),
                        ci: Some(stats::wilson((mean(xs) * xs.len() as f64).round() as usize, xs.len())),
                        how: "95% Wilson over prompts",
                    },
                    None => Estimate { value: mean(xs), ci: None, how: "every prompt alike: no interval" },
                }
            }
        };
        let (ea, eb) = (side(&a, 1), side(&b, 2));
        // Seeds answer the same prompts, so (prompt, seed) pairs are not independent: with
        // several seeds the unit is the prompt, and the test is on its seed-averaged change.
        let (test, p) = if proportion && strata.len() == 1 {
            ("exact McNemar test".to_string(), stats::mcnemar_exact(better, worse))
        } else {
            let how = if d.len() <= 16 { "exact sign-flip permutation test" } else { "sign-flip permutation test (20000 draws)" };
            let on = if strata.len() > 1 { format!(" on per-prompt changes averaged over {} seeds", strata.len()) } else { String::new() };
            (format!("{how}{on}"), stats::sign_flip_test(&d, seed ^ 3, 20_000))
        };
        let change = if proportion && better + worse == 0 {
            Estimate { value: 0.0, ci: None, how: "no discordant pairs: no interval" }
        } else if proportion && strata.len() == 1 {
            let both = all.iter().filter(|(a, b)| *a == 1.0 && *b == 1.0).count();
            let neither = all.len() - both - better - worse;
            Estimate { value: mean(&d), ci: Some(stats::newcombe_paired(both, worse, better, neither)), how: "95% Newcombe paired" }
        } else {
            match stats::bca_mean(&d, seed ^ 4, 4000) {
                Some(ci) => Estimate { value: mean(&d), ci: Some(ci), how: "95% paired BCa bootstrap over prompts" },
                None => Estimate { value: mean(&d), ci: None, how: "every prompt changed alike: no interval" },
            }
        };
        Ok(Comparison {
            split: split.to_string(),
            metric: metric.to_string(),
            note: None,
            labels: (labels.0.to_string(), labels.1.to_string()),
            n: per_prompt.len(),
            strata: strata.len(),
            proportion,
            a: ea,
            b: eb,
            change,
            better,
            worse,
            test,
            p,
        })
    }

    /// Whether the test rejects "no change" at [`ALPHA`].
    pub fn significant(&self) -> bool {
        self.p < ALPHA
    }

    /// What a reader needs: both values with intervals, the change with its interval and the
    /// discordant counts, and the test with its p and alpha.
    pub fn lines(&self) -> Vec<String> {
        let (la, lb) = &self.labels;
        let w = la.len().max(lb.len()).max(6);
        let seeds = if self.strata > 1 { format!(", {} seeds each", self.strata) } else { String::new() };
        let mut v = vec![format!(
            "{} on {} held-out {} prompts{seeds}{}:",
            self.metric,
            self.n,
            self.split,
            self.note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
        )];
        v.push(format!("  {la:<w$}  {}", self.a.show(false)));
        v.push(format!("  {lb:<w$}  {}", self.b.show(false)));
        let unit = match (self.strata > 1, self.better == 1) {
            (true, true) => "prompt-seed pair",
            (true, false) => "prompt-seed pairs",
            (false, true) => "prompt",
            (false, false) => "prompts",
        };
        v.push(format!("  {:<w$}  {}; {} {unit} better, {} worse", "change", self.change.show(true), self.better, self.worse));
        let verdict = if self.proportion && self.better + self.worse == 0 {
            "no discordant pairs: both answered every prompt alike".to_string()
        } else if self.significant() {
            let dir = if self.change.value > 0.0 { "higher" } else { "lower" };
            format!("p = {} < alpha = {ALPHA}: {lb} is {dir} than {la}", fmt_p(self.p))
        } else {
            format!("p = {} >= alpha = {ALPHA}: not distinguishable from chance at this sample size", fmt_p(self.p))
        };
        v.push(format!("  {}: {verdict}", self.test));
        v
    }
}

/// A p-value as a reader wants it: three significant digits, never rounded to 0.
pub fn fmt_p(p: f64) -> String {
    if p >= 0.001 { format!("{p:.3}") } else { format!("{p:.2e}") }
}

/// Pair `base_label` and `trained_label` of `split` by prompt, on the headline and on the fixed
/// instrument (each left out when either side lacks it, they measure different headlines or
/// instruments, or were asked different questions).
pub fn compare(dir: &RunDir, split: &str, base_label: &str, trained_label: &str) -> Vec<Comparison> {
    let (Some((bs, bl)), Some((ts, tl))) = (dir.read_eval(split, base_label), dir.read_eval(split, trained_label)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for m in Measure::of(&ts) {
        let comparable = match m {
            Measure::Headline => bs.headline == ts.headline,
            Measure::Instrument => bs.instrument.as_ref().zip(ts.instrument.as_ref()).is_some_and(|(x, y)| x.same_as(y)),
        };
        let Some((pairs, left_out)) = comparable.then(|| pair_on(&bl, &tl, m).ok()).flatten() else { continue };
        let Ok(mut c) = Comparison::new(split, &m.name(&ts).unwrap_or_default(), ("base", "trained"), &[pairs], 0) else { continue };
        c.note = match m {
            Measure::Headline => ts.note.clone(),
            Measure::Instrument => Some(instrument_note(ts.instrument.as_ref(), left_out)),
        };
        out.push(c);
    }
    out
}

/// How an instrument comparison was measured, and what it left out.
pub fn instrument_note(info: Option<&InstrumentInfo>, left_out: usize) -> String {
    let mut n = info.map(InstrumentInfo::describe).unwrap_or_default();
    if left_out > 0 {
        n.push_str(&format!("; {left_out} prompt(s) unscored on a side left out"));
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(scores: &[f64]) -> Vec<EvalLine> {
        scores
            .iter()
            .enumerate()
            .map(|(i, s)| EvalLine {
                record_index: i,
                record_id: None,
                question: format!("q{i}"),
                response: "r".into(),
                score: Some(*s),
                instrument: None,
            })
            .collect()
    }

    fn write(dir: &RunDir, split: &str, label: &str, scores: &[f64]) {
        let summary = EvalSummary {
            run_id: "x".into(),
            weights: label.into(),
            split: split.into(),
            samples: scores.len(),
            metrics: BTreeMap::from([("accuracy".to_string(), scores.iter().sum::<f64>() / scores.len() as f64)]),
            headline: Some("accuracy".into()),
            note: None,
            instrument: None,
        };
        dir.write_eval(&summary, &lines(scores)).unwrap();
    }

    /// `up` prompts 0 -> 1, `down` 1 -> 0, `same1` 1 -> 1, the rest of `n` 0 -> 0.
    fn flips(n: usize, up: usize, down: usize, same1: usize) -> (Vec<f64>, Vec<f64>) {
        let mut a = vec![0.0; n];
        let mut b = vec![0.0; n];
        b[..up].fill(1.0);
        a[up..up + down].fill(1.0);
        for i in up + down..up + down + same1 {
            (a[i], b[i]) = (1.0, 1.0);
        }
        (a, b)
    }

    fn compared(a: &[f64], b: &[f64]) -> Comparison {
        Comparison::new("test", "accuracy", ("base", "trained"), &[pair(&lines(a), &lines(b)).unwrap()], 0).unwrap()
    }

    #[test]
    fn base_and_trained_pair_by_prompt() {
        let dir = RunDir { root: std::env::temp_dir().join(format!("mpo-evals-{}", std::process::id())) };
        write(&dir, "test", "base", &[0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
        write(&dir, "test", "update-000006", &[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]);
        write(&dir, "transfer", "base", &[0.0; 4]);
        assert!(dir.path("eval/transfer/base.jsonl").is_file());
        let cs = compare(&dir, "test", "base", "update-000006");
        assert_eq!(cs.len(), 1, "no instrument: the headline alone");
        let c = &cs[0];
        assert_eq!((c.n, c.proportion, c.better, c.worse), (8, true, 5, 0));
        assert_eq!((c.a.value, c.b.value, c.change.value), (0.25, 0.875, 0.625));
        // 5 better, 0 worse of 8: the exact test says p = 0.0625, not a change at alpha 0.05
        assert_eq!(c.p, 0.0625);
        let text = c.lines().join("\n");
        assert!(text.contains("accuracy on 8 held-out test prompts"), "{text}");
        assert!(text.contains("5 prompts better, 0 worse"), "{text}");
        assert!(text.contains("exact McNemar test: p = 0.062 >= alpha = 0.05: not distinguishable from chance"), "{text}");
        assert!(text.contains("95% Newcombe paired"), "{text}");
        // no trained transfer evaluation: nothing to compare
        assert!(compare(&dir, "transfer", "base", "update-000006").is_empty());
        let _ = std::fs::remove_dir_all(&dir.root);
    }

    #[test]
    fn the_verdict_follows_the_exact_test() {
        // 4 better / 0 worse of 32: a percentile bootstrap called this a change in every seed
        let (a, b) = flips(32, 4, 0, 5);
        let c = compared(&a, &b);
        assert_eq!(c.p, 0.125);
        assert!(!c.significant());
        let text = c.lines().join("\n");
        assert!(text.contains("p = 0.125 >= alpha = 0.05: not distinguishable from chance at this sample size"), "{text}");
        let (lo, hi) = c.change.ci.unwrap();
        assert!(lo < 0.0 && hi > 0.125, "Newcombe's interval holds 0: {lo} {hi}");
        // 10 better / 0 worse of 32: p = 2^-9
        let (a, b) = flips(32, 10, 0, 5);
        let c = compared(&a, &b);
        assert!((c.p - 0.001953125).abs() < 1e-12 && c.significant(), "{}", c.p);
        let text = c.lines().join("\n");
        assert!(text.contains("exact McNemar test: p = 0.002 < alpha = 0.05: trained is higher than base"), "{text}");
        assert!(c.change.ci.unwrap().0 > 0.0);
        // and downwards
        let (a, b) = flips(32, 0, 10, 5);
        assert!(compared(&a, &b).lines().join("\n").contains("trained is lower than base"));
    }

    #[test]
    fn no_discordant_pairs_is_said_not_drawn_as_a_zero_width_interval() {
        let (a, b) = flips(8, 0, 0, 3);
        let c = compared(&a, &b);
        assert_eq!((c.change.value, c.change.ci, c.p), (0.0, None, 1.0));
        let text = c.lines().join("\n");
        assert!(text.contains("no discordant pairs") && !text.contains("[+0.000, +0.000]"), "{text}");
        // the sides still have their Wilson intervals
        assert!(c.a.ci.unwrap().1 > c.a.value);
    }

    #[test]
    fn continuous_scores_get_a_permutation_test_and_bca_intervals() {
        let a: Vec<f64> = (0..12).map(|i| 0.1 * (i % 4) as f64).collect();
        let b: Vec<f64> = a.iter().enumerate().map(|(i, x)| x + 0.05 + 0.01 * (i % 3) as f64).collect();
        let c = compared(&a, &b);
        assert!(!c.proportion && c.better == 12);
        // every difference positive, 12 pairs: exactly 2 of the 4096 sign flips are as extreme
        assert_eq!(c.p, 2.0 / 4096.0);
        assert!(c.lines().join("\n").contains("exact sign-flip permutation test: p = 4.88e-4 < alpha"), "{:?}", c.lines());
        assert_eq!(c.change.how, "95% paired BCa bootstrap over prompts");
        let (lo, hi) = c.change.ci.unwrap();
        assert!(lo > 0.0 && lo < c.change.value && c.change.value < hi);
        // an equal shift on every prompt: no interval, and the reason
        let shifted: Vec<f64> = a.iter().map(|x| x + 0.1).collect();
        assert_eq!(compared(&a, &shifted).change.ci, None);
    }

    #[test]
    fn pairing_is_by_question_and_refuses_different_prompts() {
        let (a, b) = (lines(&[1.0, 0.0, 1.0]), lines(&[0.0, 1.0, 1.0]));
        // B's lines in another order still pair by question
        let mut rev = b.clone();
        rev.reverse();
        assert_eq!(pair(&a, &rev).unwrap(), pair(&a, &b).unwrap());
        // a question B never saw: refused, with the counts
        let mut other = b.clone();
        other[1].question = "another".into();
        let e = pair(&a, &other).unwrap_err();
        assert!(e.to_string().contains("asked different questions (2 in common of 3 and 3)"), "{e}");
        // an unscored line is refused too
        let mut unscored = b.clone();
        unscored[0].score = None;
        assert!(pair(&a, &unscored).unwrap_err().to_string().contains("no headline score"));
    }

    #[test]
    fn seeds_combine_with_the_prompt_as_the_unit() {
        // 3 seeds, each 3 better / 0 worse of 16 on the same 3 prompts: 9 discordant
        // (prompt, seed) pairs, but 3 prompts: p = 0.25, not the 2^-8 of pooled pairs
        let (a, b) = flips(16, 3, 0, 4);
        let one = pair(&lines(&a), &lines(&b)).unwrap();
        let c = Comparison::new("test", "accuracy", ("ppo", "mpo"), &[one.clone(), one.clone(), one], 0).unwrap();
        assert_eq!((c.n, c.strata, c.better, c.worse), (16, 3, 9, 0));
        assert_eq!(c.p, 0.25);
        let text = c.lines().join("\n");
        assert!(text.contains("16 held-out test prompts, 3 seeds each"), "{text}");
        assert!(
            text.contains("exact sign-flip permutation test on per-prompt changes averaged over 3 seeds: p = 0.250 >= alpha"),
            "{text}"
        );
        assert!(text.contains("9 prompt-seed pairs better"), "{text}");
        // 10 prompts up in every seed: p = 2/2^10 over the 16 prompts
        let (a10, b10) = flips(16, 10, 0, 2);
        let ten = pair(&lines(&a10), &lines(&b10)).unwrap();
        let c = Comparison::new("test", "accuracy", ("ppo", "mpo"), &[ten.clone(), ten.clone(), ten], 0).unwrap();
        assert_eq!(c.p, 2.0 / 1024.0);
        assert!(c.lines().join("\n").contains("< alpha = 0.05: mpo is higher than ppo"), "{:?}", c.lines());
        // strata on different prompts are refused
        let other = pair(&lines(&a[..8]), &lines(&b[..8])).unwrap();
        let two = [pair(&lines(&a), &lines(&b)).unwrap(), other];
        assert!(Comparison::new("test", "accuracy", ("a", "b"), &two, 0).is_err());
    }

    fn info(judge: &str) -> InstrumentInfo {
        InstrumentInfo {
            judge: judge.into(),
            training_judge: false,
            rubric_sha256: "ab".repeat(32),
            prompt_sha256: "cd".repeat(32),
            items: vec!["Clarity (0-5)".into()],
            aggregate: "item_mean".into(),
            scored: 0,
            retries: 0,
            failures: BTreeMap::new(),
        }
    }

    /// The instrument's scores pair by prompt; a prompt its judge could not score on either
    /// side is left out of both and counted, and only evaluations of one instrument pair.
    #[test]
    fn instrument_scores_pair_by_prompt_and_only_under_one_instrument() {
        let with = |xs: &[Option<f64>]| {
            let mut l = lines(&vec![1.0; xs.len()]);
            for (l, x) in l.iter_mut().zip(xs) {
                l.instrument = *x;
            }
            l
        };
        let a = with(&[Some(0.2), Some(0.4), None, Some(0.5), Some(0.1), Some(0.3)]);
        let b = with(&[Some(0.6), Some(0.8), Some(0.9), None, Some(0.7), Some(0.9)]);
        let (p, left_out) = pair_on(&a, &b, Measure::Instrument).unwrap();
        assert_eq!(left_out, 2);
        assert_eq!(p.iter().map(|q| (q.1, q.2)).collect::<Vec<_>>(), vec![(0.2, 0.6), (0.4, 0.8), (0.1, 0.7), (0.3, 0.9)]);
        // the headline never leaves a prompt out
        assert_eq!(pair_on(&a, &b, Measure::Headline).unwrap().1, 0);

        let tmp = std::env::temp_dir().join(format!("mpo-instrument-{}", std::process::id()));
        let dir = RunDir { root: tmp.clone() };
        let summary = |label: &str, judge: &str| EvalSummary {
            run_id: "x".into(),
            weights: label.into(),
            split: "test".into(),
            samples: 6,
            metrics: BTreeMap::new(),
            headline: Some("accuracy".into()),
            note: None,
            instrument: Some(info(judge)),
        };
        dir.write_eval(&summary("base", "openai:Qwen/Qwen2.5-72B-Instruct"), &a).unwrap();
        dir.write_eval(&summary("update-000002", "openai:Qwen/Qwen2.5-72B-Instruct"), &b).unwrap();
        let cs = compare(&dir, "test", "base", "update-000002");
        assert_eq!(cs.iter().map(|c| c.metric.as_str()).collect::<Vec<_>>(), ["accuracy", INSTRUMENT_METRIC]);
        let c = &cs[1];
        assert_eq!((c.n, c.better, c.worse), (4, 4, 0));
        let note = c.note.as_deref().unwrap();
        assert!(note.contains("judge openai:Qwen/Qwen2.5-72B-Instruct") && note.contains("2 prompt(s) unscored"), "{note}");
        // another judge is another instrument: only the headline compares
        dir.write_eval(&summary("update-000004", "openai:gpt-4o"), &b).unwrap();
        let cs = compare(&dir, "test", "base", "update-000004");
        assert_eq!(cs.iter().map(|c| c.metric.as_str()).collect::<Vec<_>>(), ["accuracy"]);
        let _ = std::fs::remove_dir_all(tmp);
    }
}
