//! `mpo eval compare A B`: two policies measured on the same held-out prompts — the newest
//! evaluation of two runs, or two evaluation files. Several runs per side (seeds of one arm,
//! `mpo eval compare A1 A2 --vs B1 B2`) are paired seed with seed, and each prompt's change is
//! averaged over the seeds before the test: the prompt is the unit, never a (prompt, seed) pair. `mpo report` draws the same comparison for every sweep arm
//! against its baseline arm.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{EvalError, input};
use crate::plan::Plan;
use crate::results::RunDir;
use crate::results::evals::{self, Comparison, EvalLine, EvalSummary, Measure};

/// One evaluation of one side: where it came from, its summary and lines.
#[derive(Debug, Clone)]
pub struct Measured {
    pub source: PathBuf,
    /// The run's seed (`runtime.seed`), which pairs seeds across sides.
    pub seed: Option<u64>,
    pub summary: EvalSummary,
    pub lines: Vec<EvalLine>,
}

/// The label of a run's newest evaluation of `split`: the highest update among `update-N` and
/// `checkpoint-N` (an `update-N` first when both exist: the run wrote it); `base` only when
/// there is nothing else.
pub fn newest_label(dir: &RunDir, split: &str) -> Option<String> {
    let folder = dir.path(&evals::folder(split));
    let mut best: Option<((u32, u8), String)> = None;
    for e in std::fs::read_dir(folder).ok()?.flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let stem = p.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        let rank = match stem.split_once('-') {
            Some(("update", n)) => n.parse().ok().map(|u| (u, 2)),
            Some(("checkpoint", n)) => n.parse().ok().map(|u| (u, 1)),
            _ if stem == "base" => Some((0, 0)),
            _ => None,
        };
        if let Some(r) = rank
            && best.as_ref().is_none_or(|(b, _)| r > *b)
        {
            best = Some((r, stem));
        }
    }
    best.map(|(_, s)| s)
}

/// The evaluations one argument stands for, by split: a run directory's newest evaluation of
/// each split, or one evaluation file (`RUN/eval/LABEL.jsonl`, `RUN/eval/transfer/LABEL.jsonl`).
pub fn measured(arg: &Path) -> Result<BTreeMap<String, Measured>, EvalError> {
    let seed_of = |run: &Path| RunDir::open(run).and_then(|d| d.plan()).ok().map(|p: Plan| p.spec.runtime.seed);
    if arg.is_file() {
        let base = arg.with_extension("");
        let summary: EvalSummary =
            std::fs::read_to_string(base.with_extension("json")).ok().and_then(|t| serde_json::from_str(&t).ok()).ok_or_else(|| {
                input(format!("{}: no readable evaluation summary beside it ({})", arg.display(), base.with_extension("json").display()))
            })?;
        let lines = evals::read_lines(&base.with_extension("jsonl"))?;
        // RUN/eval/LABEL.jsonl or RUN/eval/transfer/LABEL.jsonl
        let run = arg.ancestors().find(|a| a.join("plan.json").is_file());
        let m = Measured { source: arg.to_path_buf(), seed: run.and_then(seed_of), summary: summary.clone(), lines };
        return Ok(BTreeMap::from([(summary.split, m)]));
    }
    let dir = RunDir::open(arg)?;
    let seed = seed_of(arg);
    let mut out = BTreeMap::new();
    for split in evals::SPLITS {
        let Some(label) = newest_label(&dir, split) else { continue };
        let Some((summary, lines)) = dir.read_eval(split, &label) else {
            return Err(input(format!("{}: the evaluation `{label}` of the {split} split cannot be read", arg.display())));
        };
        out.insert(
            split.to_string(),
            Measured { source: dir.path(&format!("{}/{label}.jsonl", evals::folder(split))), seed, summary, lines },
        );
    }
    if out.is_empty() {
        return Err(input(format!(
            "{} has no evaluation: run `mpo eval {}` first (or set `eval.every` in the spec)",
            arg.display(),
            arg.display()
        )));
    }
    Ok(out)
}

/// Pair the two sides' evaluations stratum by stratum: by seed when both sides' runs have the
/// same set of distinct seeds, else in the order given (and say so).
type Strata<'a> = (Vec<(&'a Measured, &'a Measured)>, Option<String>);

fn strata<'a>(a: &'a [Measured], b: &'a [Measured]) -> Result<Strata<'a>, EvalError> {
    if a.len() != b.len() {
        return Err(input(format!(
            "A has {} evaluations and B {}: give each side one run per seed (the same seeds), so they pair as strata",
            a.len(),
            b.len()
        )));
    }
    let seeds = |s: &[Measured]| s.iter().map(|m| m.seed).collect::<Option<Vec<u64>>>();
    if let (Some(sa), Some(sb)) = (seeds(a), seeds(b)) {
        let (mut x, mut y) = (sa.clone(), sb.clone());
        x.sort();
        y.sort();
        x.dedup();
        y.dedup();
        if x == y && x.len() == sa.len() {
            let pairs = a.iter().map(|m| (m, b.iter().find(|n| n.seed == m.seed).expect("same seed sets"))).collect();
            return Ok((pairs, None));
        }
    }
    let note = (a.len() > 1).then(|| "the runs were paired in the order given (their seeds do not match one to one)".to_string());
    Ok((a.iter().zip(b).collect(), note))
}

/// Compare side A with side B on every split both measured; the text `mpo eval compare` prints.
pub fn compare(a: &[PathBuf], b: &[PathBuf]) -> Result<String, EvalError> {
    if a.is_empty() || b.is_empty() {
        return Err(EvalError::Usage("compare needs a run or evaluation file on each side: `mpo eval compare A B`".into()));
    }
    let read = |side: &[PathBuf]| side.iter().map(|p| measured(p)).collect::<Result<Vec<_>, _>>();
    let (ma, mb) = (read(a)?, read(b)?);
    let mut out = String::new();
    let names = |side: &[PathBuf]| side.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
    out.push_str(&format!("A: {}\nB: {}\n", names(a), names(b)));
    let mut compared = 0;
    for split in evals::SPLITS {
        let (Some(sa), Some(sb)) = (
            ma.iter().map(|m| m.get(split).cloned()).collect::<Option<Vec<Measured>>>(),
            mb.iter().map(|m| m.get(split).cloned()).collect::<Option<Vec<Measured>>>(),
        ) else {
            continue;
        };
        let cs = compare_split(split, &sa, &sb, ("A", "B"))?;
        out.push('\n');
        // A directory stands for its newest evaluation of each split: name the files used.
        for m in sa.iter().chain(&sb).filter(|_| a.iter().chain(b).any(|p| p.is_dir())) {
            out.push_str(&format!("  {} {}\n", if sa.iter().any(|x| x.source == m.source) { "A" } else { "B" }, m.source.display()));
        }
        out.push_str(&render(&cs));
        out.push_str(&other_metrics(&sa, &sb));
        compared += 1;
    }
    if compared == 0 {
        return Err(input("the two sides share no evaluated split (test or transfer): evaluate both on the same split first"));
    }
    Ok(out)
}

/// [`compare_split`]'s comparisons as text, each followed by its note.
pub fn render(cs: &[(Comparison, Option<String>)]) -> String {
    let mut out = String::new();
    for (c, note) in cs {
        for l in c.lines() {
            out.push_str(&l);
            out.push('\n');
        }
        if let Some(n) = note {
            out.push_str(&format!("  note: {n}\n"));
        }
    }
    out
}

/// One split's comparisons, with a note on how the strata were paired: the headline metric,
/// and the fixed instrument's score where every evaluation has one from the same instrument.
pub fn compare_split(
    split: &str,
    a: &[Measured],
    b: &[Measured],
    labels: (&str, &str),
) -> Result<Vec<(Comparison, Option<String>)>, EvalError> {
    let headline = a[0].summary.headline.clone();
    if let Some(m) = a.iter().chain(b).find(|m| m.summary.headline != headline) {
        return Err(input(format!(
            "{} measures `{}`, {} `{}`: compare evaluations of one metric",
            m.source.display(),
            m.summary.headline.as_deref().unwrap_or("nothing"),
            a[0].source.display(),
            headline.as_deref().unwrap_or("nothing")
        )));
    }
    // The instrument's scores pair only where every evaluation has them from one instrument;
    // otherwise the headline is compared alone, and the output says why.
    let all: Vec<&Measured> = a.iter().chain(b).collect();
    let instrument = a.iter().chain(b).find_map(|m| m.summary.instrument.clone());
    let mut skipped = None;
    let mut measures = Measure::of(&a[0].summary);
    measures.retain(|m| *m == Measure::Headline);
    if let Some(first) = &instrument {
        match all.iter().find(|m| !m.summary.instrument.as_ref().is_some_and(|i| i.same_as(first))) {
            None => measures.push(Measure::Instrument),
            Some(m) => {
                let with = all.iter().find(|m| m.summary.instrument.is_some()).expect("one has it");
                skipped = Some(format!(
                    "instrument_score not compared: {} was {}, {} scored with {}; an instrument's scores compare only with the same judge, rubric, template and aggregation",
                    m.source.display(),
                    m.summary
                        .instrument
                        .as_ref()
                        .map_or("not scored by an instrument".to_string(), |i| format!("scored with {}", i.describe())),
                    with.source.display(),
                    first.describe()
                ));
            }
        }
    }
    if measures.is_empty() {
        return Err(input(match skipped {
            Some(why) => why,
            None => format!(
                "{}: the evaluation has no headline metric and no instrument score to pair (essays need `eval.instrument`)",
                a[0].source.display()
            ),
        }));
    }
    let (pairs, note) = strata(a, b)?;
    let mut out = Vec::new();
    for m in measures {
        let mut paired = Vec::new();
        let mut left_out = 0;
        for (x, y) in &pairs {
            let (p, l) = evals::pair_on(&x.lines, &y.lines, m)
                .map_err(|e| input(format!("{} vs {}: {e}", x.source.display(), y.source.display())))?;
            paired.push(p);
            left_out += l;
        }
        if m == Measure::Instrument {
            // a prompt one stratum could not score leaves every stratum: strata hold the same prompts
            let keep: std::collections::BTreeSet<String> = paired
                .iter()
                .map(|p| p.iter().map(|q| q.0.clone()).collect::<std::collections::BTreeSet<_>>())
                .reduce(|x, y| x.intersection(&y).cloned().collect())
                .unwrap_or_default();
            for p in &mut paired {
                p.retain(|q| keep.contains(&q.0));
            }
        }
        let metric = m.name(&a[0].summary).unwrap_or_default();
        let mut c = Comparison::new(split, &metric, labels, &paired, 0)?;
        c.note = match m {
            Measure::Headline => a[0].summary.note.clone(),
            Measure::Instrument => Some(evals::instrument_note(instrument.as_ref(), left_out)),
        };
        let note = match (&note, &skipped) {
            (Some(n), Some(w)) if m == Measure::Headline => Some(format!("{n}; {w}")),
            (None, Some(w)) if m == Measure::Headline => Some(w.clone()),
            _ => note.clone(),
        };
        out.push((c, note));
    }
    Ok(out)
}

/// The summary metrics besides the headline: means per side (no per-prompt values, so no test).
fn other_metrics(a: &[Measured], b: &[Measured]) -> String {
    let mean = |side: &[Measured], k: &str| {
        let xs: Vec<f64> = side.iter().filter_map(|m| m.summary.metrics.get(k).copied()).collect();
        (xs.len() == side.len()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
    };
    let headline = a[0].summary.headline.clone().unwrap_or_default();
    let keys: Vec<&String> = a[0]
        .summary
        .metrics
        .keys()
        .filter(|k| **k != headline && (a[0].summary.instrument.is_none() || *k != evals::INSTRUMENT_METRIC))
        .collect();
    let rows: Vec<String> =
        keys.into_iter().filter_map(|k| Some(format!("    {k:<24} A {:.4}  B {:.4}\n", mean(a, k)?, mean(b, k)?))).collect();
    if rows.is_empty() {
        return String::new();
    }
    format!("  other metrics (means; stored per evaluation, not per prompt, so not tested):\n{}", rows.concat())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::evals::EvalLine;

    fn write_run(root: &Path, seed: u64, label: &str, scores: &[f64]) -> PathBuf {
        let dir = RunDir { root: root.to_path_buf() };
        let lines: Vec<EvalLine> = scores
            .iter()
            .enumerate()
            .map(|(i, s)| EvalLine {
                record_index: i,
                record_id: None,
                question: format!("question {i}"),
                response: "r".into(),
                score: Some(*s),
                instrument: None,
            })
            .collect();
        let summary = EvalSummary {
            run_id: format!("run{seed}"),
            weights: label.into(),
            split: "test".into(),
            samples: scores.len(),
            metrics: BTreeMap::from([("accuracy".into(), scores.iter().sum::<f64>() / scores.len() as f64), ("answered".into(), 1.0)]),
            headline: Some("accuracy".into()),
            note: None,
            instrument: None,
        };
        dir.write_eval(&summary, &lines).unwrap();
        dir.path(&format!("eval/{label}.jsonl"))
    }

    #[test]
    fn two_evaluation_files_compare_by_question() {
        let tmp = std::env::temp_dir().join(format!("mpo-compare-{}", std::process::id()));
        let mut a = vec![0.0; 32];
        let mut b = vec![0.0; 32];
        b[..10].fill(1.0);
        a[31] = 1.0;
        b[31] = 1.0;
        let fa = write_run(&tmp.join("a"), 0, "update-000006", &a);
        let fb = write_run(&tmp.join("b"), 0, "update-000006", &b);
        let text = compare(std::slice::from_ref(&fa), std::slice::from_ref(&fb)).unwrap();
        assert!(text.contains("accuracy on 32 held-out test prompts:"), "{text}");
        assert!(text.contains("10 prompts better, 0 worse"), "{text}");
        assert!(text.contains("exact McNemar test: p = 0.002 < alpha = 0.05: B is higher than A"), "{text}");
        assert!(text.contains("answered") && text.contains("not tested"), "{text}");
        // the newest evaluation of a directory is found (update-N over base)
        let dir = RunDir { root: tmp.join("a") };
        write_run(&tmp.join("a"), 0, "base", &[0.0; 32]);
        assert_eq!(newest_label(&dir, "test").as_deref(), Some("update-000006"));
        // different questions are refused
        let fc = write_run(&tmp.join("c"), 0, "update-000006", &a[..16]);
        let e = compare(&[fa], &[fc]).unwrap_err().to_string();
        assert!(e.contains("asked different questions"), "{e}");
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
