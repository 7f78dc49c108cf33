//! `mpo report results/NAME`: aggregate the runs of a sweep (or any runs under one directory)
//! by sweep factor into `report.md`, `report.csv`, and SVG plots of the training reward and the
//! verifier mean against update, with markers where the rubric changed. Runs are read through
//! the results API (`results/`), rows as typed [`MetricsRow`]s.
//!
//! Runs group by their cell's factors other than `runtime.seed`; each group shows
//! mean +- std over its seeds (population std; a single seed shows +- 0).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::plan::Plan;
use crate::results::metrics::mean_std;
use crate::results::{Manifest, MetricsRow, RunDir, Status};

/// One run directory, read.
#[derive(Debug, Clone)]
pub struct RunData {
    pub dir: PathBuf,
    pub plan: Plan,
    pub manifest: Option<Manifest>,
    pub rows: Vec<MetricsRow>,
}

/// A number read from a metrics row.
type Field = fn(&MetricsRow) -> Option<f64>;

impl RunData {
    /// The group key: the cell's factors without the seed (`(base)` for a plain run).
    pub fn group(&self) -> String {
        self.plan.arm()
    }

    fn series(&self, field: Field) -> Vec<(f64, f64)> {
        self.rows.iter().filter_map(|r| Some((r.update as f64, field(r)?))).collect()
    }

    /// Updates after which the rubric version changed.
    pub fn rubric_changes(&self) -> Vec<f64> {
        let mut last = 0;
        let mut out = Vec::new();
        for r in &self.rows {
            if r.rubric_after() != last {
                out.push(r.update as f64);
                last = r.rubric_after();
            }
        }
        out
    }

    fn last(&self, field: Field) -> Option<f64> {
        self.rows.last().and_then(field)
    }

    fn judge_failures(&self) -> f64 {
        self.rows.iter().map(MetricsRow::judge_failure_total).sum::<u64>() as f64
    }

    /// The metrics of the run's last evaluation.
    fn last_eval(&self) -> BTreeMap<String, f64> {
        self.rows.iter().rev().find_map(|r| r.eval.clone().filter(|m| !m.is_empty())).unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{0}: no runs here (a run directory holds plan.json and metrics.jsonl); point at results/NAME")]
    NoRuns(String),
    #[error(transparent)]
    Results(#[from] crate::results::ResultsError),
    #[error("{path}: {message}")]
    Read { path: String, message: String },
    #[error("writing {path}: {message}")]
    Write { path: String, message: String },
    /// An `elo.json` that does not parse as this mpo's tournament file.
    #[error(transparent)]
    EloJson(serde_json::Error),
    #[error("written by an older mpo (one presentation order, sequential Elo only)")]
    OlderElo,
}

/// Read every run directory directly under `root`.
pub fn collect(root: &Path) -> Result<Vec<RunData>, ReportError> {
    let rd = std::fs::read_dir(root).map_err(|e| ReportError::Read { path: root.display().to_string(), message: e.to_string() })?;
    let mut dirs: Vec<PathBuf> = rd.flatten().map(|e| e.path()).filter(|p| p.join("plan.json").is_file()).collect();
    dirs.sort();
    let mut runs = Vec::new();
    for d in dirs {
        let run = RunDir::open(&d)?;
        let rows = run.metrics()?;
        if rows.is_empty() {
            continue;
        }
        runs.push(RunData { plan: run.plan()?, manifest: run.manifest(), rows, dir: d });
    }
    if runs.is_empty() {
        return Err(ReportError::NoRuns(root.display().to_string()));
    }
    Ok(runs)
}

/// Columns that count things: shown as the count when every seed agrees, else its range, so
/// `6` never reads `6.000 ± 0.000`.
const COUNTS: [&str; 3] = ["updates", "judge failures", "rubric versions"];

/// A column's cell: mean ± std over a group's seeds, or a count.
fn pm(column: &str, xs: &[f64]) -> String {
    if COUNTS.contains(&column) && !xs.is_empty() {
        let (lo, hi) = (xs.iter().cloned().fold(f64::INFINITY, f64::min), xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max));
        return if lo == hi { format!("{lo}") } else { format!("{lo}–{hi}") };
    }
    mean_std(xs).map(|(m, s)| format!("{m:.3} ± {s:.3}")).unwrap_or_else(|| "-".into())
}

/// One row of the report table.
#[derive(Debug, Clone)]
pub struct GroupRow {
    pub group: String,
    pub runs: usize,
    pub finished: usize,
    pub columns: Vec<(String, Vec<f64>)>,
}

/// Runs by group, groups in order of their first cell.
fn groups(runs: &[RunData]) -> Vec<(String, Vec<&RunData>)> {
    let mut sorted: Vec<&RunData> = runs.iter().collect();
    sorted.sort_by_key(|r| r.plan.cell.as_ref().map(|c| c.index).unwrap_or(0));
    let mut out: Vec<(String, Vec<&RunData>)> = Vec::new();
    for r in sorted {
        let g = r.group();
        match out.iter_mut().find(|(k, _)| *k == g) {
            Some((_, v)) => v.push(r),
            None => out.push((g, vec![r])),
        }
    }
    out
}

const VERIFIER: &str = "verifier mean";
const TRAINING_REWARD: &str = "training reward (own rubric)";

/// How each column is computed, printed under the table.
const COLUMN_NOTES: &str = "How each number is computed:\n\n\
- **verifier mean**: mean programmatic verifier score (0..1) of the last update's training \
rollouts (the same instrument for every run; with a binary verifier, the share answered right).\n\
- **eval ...**: task metrics of the latest evaluation on held-out test prompts (chosen by \
`eval.seed`, the same prompts for every run; `eval transfer/...` on the transfer split). The base \
policy's, measured on the same prompts before training, is in each run's `eval/base.json`.\n\
- **training reward (own rubric)**: mean reward of the last update, scored under that run's \
current rubric. Runs whose rubrics differ were graded by different instruments: do not compare \
this column across groups.\n\
- **kl**: mean summed per-token KL to the reference policy; **judge failures**: over the whole \
run; **rubric versions**: the last rubric version.\n\n";

/// Aggregate runs by group.
pub fn aggregate(runs: &[RunData]) -> Vec<GroupRow> {
    let eval_keys: Vec<String> = {
        let mut k: Vec<String> = runs.iter().flat_map(|r| r.last_eval().into_keys()).collect();
        k.sort();
        k.dedup();
        k
    };
    groups(runs)
        .into_iter()
        .map(|(g, rs)| {
            let col = |f: &dyn Fn(&RunData) -> Option<f64>| rs.iter().filter_map(|r| f(r)).collect::<Vec<f64>>();
            // Fixed instruments first (the verifier, held-out eval): they compare across groups.
            // The training reward is scored under each run's own, changing rubric.
            let mut columns = vec![
                ("updates".to_string(), col(&|r| r.last(|m| Some(m.update as f64)))),
                (VERIFIER.to_string(), col(&|r| r.last(|m| m.verifier_mean))),
            ];
            for k in &eval_keys {
                columns.push((format!("eval {k}"), col(&|r| r.last_eval().get(k).copied())));
            }
            columns.extend([
                (TRAINING_REWARD.to_string(), col(&|r| r.last(|m| m.reward.mean))),
                ("kl".to_string(), col(&|r| r.last(|m| m.kl))),
                ("judge failures".to_string(), col(&|r| Some(r.judge_failures()))),
                ("rubric versions".to_string(), col(&|r| r.last(|m| Some(m.rubric_after() as f64)))),
            ]);
            let finished = rs.iter().filter(|r| r.manifest.as_ref().is_some_and(|m| m.status == Status::Finished)).count();
            GroupRow { group: g, runs: rs.len(), finished, columns }
        })
        .collect()
}

/// The markdown table.
pub fn markdown(name: &str, rows: &[GroupRow], runs: &[RunData]) -> String {
    let mut s = format!("# Report: {name}\n\n");
    s.push_str(&format!(
        "{} runs in {} groups; each cell is mean ± std over the group's seeds (final update).\n\n",
        runs.len(),
        rows.len()
    ));
    if let Some(r) = rows.first() {
        s.push_str("| factor | runs (finished) |");
        for (c, _) in &r.columns {
            s.push_str(&format!(" {c} |"));
        }
        s.push_str("\n|---|---|");
        s.push_str(&"---|".repeat(r.columns.len()));
        s.push('\n');
    }
    for r in rows {
        s.push_str(&format!("| {} | {} ({}) |", r.group, r.runs, r.finished));
        for (c, xs) in &r.columns {
            s.push_str(&format!(" {} |", pm(c, xs)));
        }
        s.push('\n');
    }
    s.push('\n');
    s.push_str(COLUMN_NOTES);
    s.push_str("![verifier mean](verifier.svg)\n\n![training reward](reward.svg)\n\n");
    s.push_str("Markers show the updates after which the meta-reward step switched to a new rubric.\n\n## Runs\n\n");
    s.push_str("| run id | factors | status | updates | rubric changes at |\n|---|---|---|---|---|\n");
    for r in runs {
        let label = r.plan.cell.as_ref().map(|c| c.label.clone()).unwrap_or_default();
        let status = r.manifest.as_ref().map(|m| format!("{:?}", m.status).to_lowercase()).unwrap_or_else(|| "-".into());
        let changes: Vec<String> = r.rubric_changes().iter().map(|u| format!("{u}")).collect();
        s.push_str(&format!(
            "| {} | {label} | {status} | {} | {} |\n",
            r.plan.run_id,
            r.rows.len(),
            if changes.is_empty() { "-".into() } else { changes.join(", ") }
        ));
    }
    s
}

/// Links to the runs' case x version tables (`mpo rubric test RUN_DIR`), where written.
fn rubric_test_links(runs: &[RunData], out: &Path) -> String {
    let tables: Vec<(&RunData, PathBuf)> =
        runs.iter().map(|r| (r, crate::rubric_test::versions::folder(&r.dir).join("table.md"))).filter(|(_, p)| p.is_file()).collect();
    let mut s = String::from("\n## Rubric tests across versions\n\n");
    if tables.is_empty() {
        s.push_str("No run has a case x version table yet: `mpo rubric test RUN_DIR` scores the rubric test cases under every rubric version of a run.\n");
    }
    for (r, p) in tables {
        let link = p.strip_prefix(out).map(Path::to_path_buf).unwrap_or_else(|_| std::path::absolute(&p).unwrap_or(p.clone()));
        s.push_str(&format!("- {}: [case x version table]({})\n", r.plan.run_id, link.display()));
    }
    s
}

/// The newest pairwise tournament under `root` (`mpo eval --elo` writes `root/elo/elo.json`;
/// one written with `--out root/OTHER` is found too) as a markdown section; a note when none.
pub fn elo_section(root: &Path) -> String {
    use crate::eval::elo::{EloFile, FORMAT, markdown};
    let mut s = String::from("\n## Pairwise tournament\n\n");
    let mut found: Vec<(String, PathBuf, Result<EloFile, ReportError>)> = Vec::new();
    let dirs = std::fs::read_dir(root).map(|rd| rd.flatten().map(|e| e.path()).collect::<Vec<_>>()).unwrap_or_default();
    for d in dirs.into_iter().filter(|d| d.is_dir() && !d.join("plan.json").exists()) {
        let p = d.join("elo.json");
        let Ok(text) = std::fs::read_to_string(&p) else { continue };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let rel = p.strip_prefix(root).unwrap_or(&p).to_path_buf();
        let parsed = match v.get("format").and_then(serde_json::Value::as_u64) {
            Some(f) if f == FORMAT as u64 => serde_json::from_value::<EloFile>(v).map_err(ReportError::EloJson),
            _ => Err(ReportError::OlderElo),
        };
        let created = parsed.as_ref().map(|f| f.created.clone()).unwrap_or_default();
        found.push((created, rel, parsed));
    }
    // newest first (RFC 3339 UTC sorts as text); unreadable files last
    found.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    match found.first() {
        None => s.push_str(
            "No tournament yet: `mpo eval --elo results/NAME/* --judge JUDGE.yaml` rates the runs' newest evaluations \
             with a pairwise judge (the seeds of an arm pooled into one player).\n",
        ),
        Some((created, rel, Ok(f))) => {
            s.push_str(&format!("`{}`, written {created} ({} players):\n\n", rel.display(), f.summary.players.len()));
            s.push_str(&markdown(f));
        }
        Some((_, rel, Err(e))) => s.push_str(&format!("`{}` cannot be shown: {e}; run `mpo eval --elo` again.\n", rel.display())),
    }
    for (created, rel, _) in found.iter().skip(1) {
        let when = if created.is_empty() { String::new() } else { format!(" (written {created})") };
        s.push_str(&format!("- older: `{}`{when}\n", rel.display()));
    }
    s
}

/// The arm the others are compared with: `--baseline` when given (an arm's factors as the
/// table prints them), else the one fixed-rubric arm (`meta.every: never`) when there is exactly
/// one, else the first.
fn baseline_arm<'a>(arms: &'a [(String, Vec<&RunData>)], named: Option<&str>) -> Result<&'a (String, Vec<&'a RunData>), ReportError> {
    if let Some(n) = named {
        return arms.iter().find(|(g, _)| g == n).ok_or_else(|| {
            let have: Vec<&str> = arms.iter().map(|(g, _)| g.as_str()).collect();
            ReportError::Read { path: "--baseline".into(), message: format!("no arm `{n}`; the arms are: {}", have.join("; ")) }
        });
    }
    let fixed: Vec<&(String, Vec<&RunData>)> =
        arms.iter().filter(|(_, rs)| rs.iter().all(|r| r.plan.spec.meta.every == crate::spec::Every::Never)).collect();
    Ok(if fixed.len() == 1 { fixed[0] } else { &arms[0] })
}

/// Every arm against the baseline arm on the held-out prompts, with the paired test
/// (`mpo eval compare`'s engine: seeds paired seed with seed). Arms whose runs have no evaluation,
/// or whose evaluations cannot pair, say why.
pub fn arm_section(runs: &[RunData], baseline: Option<&str>) -> Result<String, ReportError> {
    let arms = groups(runs);
    let mut s = String::from("\n## Arms against the baseline\n\n");
    if arms.len() < 2 {
        s.push_str("One arm only: nothing to compare.\n");
        return Ok(s);
    }
    let (base_name, base_runs) = baseline_arm(&arms, baseline)?;
    s.push_str(&format!(
        "Baseline: `{base_name}` ({}). Each arm's newest evaluation against the baseline's on the same held-out prompts \
         (paired by question; seeds paired seed with seed, each prompt one unit of the test); `mpo eval compare` prints the same.\n",
        if baseline.is_some() { "named with --baseline" } else { "the fixed-rubric arm, else the first" }
    ));
    let measured = |rs: &[&RunData]| rs.iter().map(|r| crate::eval::compare::measured(&r.dir).ok()).collect::<Option<Vec<_>>>();
    let Some(mb) = measured(base_runs) else {
        s.push_str("\nThe baseline's runs have no evaluation yet (`mpo eval RUN`, or `eval.every` in the spec).\n");
        return Ok(s);
    };
    for (name, rs) in arms.iter().filter(|(g, _)| g != base_name) {
        s.push_str(&format!("\n### `{name}` against `{base_name}`\n\n"));
        let Some(ma) = measured(rs) else {
            s.push_str("No evaluation in every run of this arm yet.\n");
            continue;
        };
        let mut any = false;
        for split in crate::results::evals::SPLITS {
            let (Some(b), Some(a)) = (
                mb.iter().map(|m| m.get(split).cloned()).collect::<Option<Vec<_>>>(),
                ma.iter().map(|m| m.get(split).cloned()).collect::<Option<Vec<_>>>(),
            ) else {
                continue;
            };
            any = true;
            match crate::eval::compare::compare_split(split, &b, &a, ("baseline", "arm")) {
                Ok(cs) => s.push_str(&format!("```\n{}```\n", crate::eval::compare::render(&cs))),
                Err(e) => s.push_str(&format!("{split}: cannot pair: {e}\n")),
            }
        }
        if !any {
            s.push_str("The arm and the baseline share no evaluated split.\n");
        }
    }
    Ok(s)
}

/// The CSV table: one row per group, mean and std columns per metric.
pub fn csv(rows: &[GroupRow]) -> String {
    let q = |s: &str| if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() };
    let mut s = String::from("factor,runs,finished");
    if let Some(r) = rows.first() {
        for (c, _) in &r.columns {
            // `training reward (own rubric)` -> `training_reward_own_rubric`
            let c = c.split(|ch: char| !ch.is_alphanumeric()).filter(|w| !w.is_empty()).collect::<Vec<_>>().join("_");
            s.push_str(&format!(",{c}_mean,{c}_std"));
        }
    }
    s.push('\n');
    for r in rows {
        s.push_str(&format!("{},{},{}", q(&r.group), r.runs, r.finished));
        for (_, xs) in &r.columns {
            match mean_std(xs) {
                Some((m, sd)) => s.push_str(&format!(",{m},{sd}")),
                None => s.push_str(",,"),
            }
        }
        s.push('\n');
    }
    s
}

type Points = Vec<(f64, f64)>;

/// Mean over seeds of a per-update series, per group, with the rubric-change markers.
fn group_series(runs: &[RunData], field: Field) -> Vec<(String, Points, Points)> {
    groups(runs)
        .into_iter()
        .map(|(g, rs)| {
            let mut pts: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
            let mut changes = Vec::new();
            for r in rs {
                for (u, y) in r.series(field) {
                    pts.entry(u as u64).or_default().push(y);
                }
                changes.extend(r.rubric_changes());
            }
            let line: Vec<(f64, f64)> = pts.iter().map(|(u, ys)| (*u as f64, ys.iter().sum::<f64>() / ys.len() as f64)).collect();
            let mut marks: Vec<(f64, f64)> = changes.iter().filter_map(|u| line.iter().find(|(x, _)| x == u).copied()).collect();
            marks.sort_by(|a, b| a.0.total_cmp(&b.0));
            marks.dedup();
            (g, line, marks)
        })
        .collect()
}

/// Draw one metric against update as an SVG.
pub fn plot(path: &Path, title: &str, y_label: &str, runs: &[RunData], field: Field) -> Result<(), ReportError> {
    let err = |e: String| ReportError::Write { path: path.display().to_string(), message: e };
    let series = group_series(runs, field);
    let xs = series.iter().flat_map(|s| s.1.iter().map(|p| p.0));
    let x_max = xs.fold(1.0f64, f64::max);
    let ys: Vec<f64> = series.iter().flat_map(|s| s.1.iter().map(|p| p.1)).collect();
    let (mut y0, mut y1) = (ys.iter().cloned().fold(f64::INFINITY, f64::min), ys.iter().cloned().fold(f64::NEG_INFINITY, f64::max));
    if !y0.is_finite() {
        (y0, y1) = (0.0, 1.0);
    }
    let pad = ((y1 - y0) * 0.1).max(0.05);
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..x_max, (y0 - pad)..(y1 + pad))
        .map_err(|e| err(e.to_string()))?;
    chart.configure_mesh().x_desc("update").y_desc(y_label).draw().map_err(|e| err(e.to_string()))?;
    for (i, (g, line, marks)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(line.iter().copied(), color.stroke_width(2)))
            .map_err(|e| err(e.to_string()))?
            .label(g.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        chart.draw_series(marks.iter().map(|&(x, y)| TriangleMarker::new((x, y), 7, color.filled()))).map_err(|e| err(e.to_string()))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// What `report` wrote.
#[derive(Debug, Clone)]
pub struct Written {
    pub markdown: PathBuf,
    pub csv: PathBuf,
    pub plots: Vec<PathBuf>,
    pub table: String,
}

/// Build the whole report for `root` into `out` (default: `root`).
pub fn report(root: &Path, out: Option<&Path>, baseline: Option<&str>) -> Result<Written, ReportError> {
    let runs = collect(root)?;
    let out = out.unwrap_or(root);
    std::fs::create_dir_all(out).map_err(|e| ReportError::Write { path: out.display().to_string(), message: e.to_string() })?;
    let name = runs[0].plan.name.clone();
    let rows = aggregate(&runs);
    let mut md = markdown(&name, &rows, &runs);
    md.push_str(&rubric_test_links(&runs, out));
    md.push_str(&arm_section(&runs, baseline)?);
    md.push_str(&elo_section(root));
    let write = |p: &Path, text: &str| {
        crate::fsx::write_atomic(p, text.as_bytes())
            .map_err(|e| ReportError::Write { path: p.display().to_string(), message: e.to_string() })
    };
    let (mdp, csvp) = (out.join("report.md"), out.join("report.csv"));
    write(&mdp, &md)?;
    write(&csvp, &csv(&rows))?;
    let (rp, vp) = (out.join("reward.svg"), out.join("verifier.svg"));
    plot(&rp, &format!("{name}: training reward (each run's own rubric)"), "reward", &runs, |m| m.reward.mean)?;
    plot(&vp, &format!("{name}: verifier mean (training rollouts)"), "verifier", &runs, |m| m.verifier_mean)?;
    let mut table =
        vec![vec!["factor".to_string(), "runs".into(), VERIFIER.into(), TRAINING_REWARD.into(), "kl".into(), "rubric versions".into()]];
    for r in &rows {
        let get = |n: &str| r.columns.iter().find(|(c, _)| c == n).map(|(c, xs)| pm(c, xs)).unwrap_or_default();
        table.push(vec![
            r.group.clone(),
            format!("{} ({} finished)", r.runs, r.finished),
            get(VERIFIER),
            get(TRAINING_REWARD),
            get("kl"),
            get("rubric versions"),
        ]);
    }
    Ok(Written { markdown: mdp, csv: csvp, plots: vec![rp, vp], table: crate::sweep::table(&table) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_population_std() {
        assert_eq!(mean_std(&[1.0, 3.0]), Some((2.0, 1.0)));
        assert_eq!(mean_std(&[]), None);
        assert_eq!(pm("kl", &[0.5]), "0.500 ± 0.000");
        // counts: the value, or the range, never 6.000 ± 0.000
        assert_eq!(pm("updates", &[6.0, 6.0, 6.0]), "6");
        assert_eq!(pm("rubric versions", &[0.0, 2.0]), "0–2");
        // a proportion whose seeds happen to be whole stays a mean ± std
        assert_eq!(pm("eval accuracy", &[0.0, 1.0]), "0.500 ± 0.500");
    }
}
