//! `mpo rubric test RUN_DIR`: the run's rubric test cases scored under every rubric version it
//! wrote, as a case x version table (markdown and an SVG heat map in `<run>/rubric_tests/`):
//! which version first let a probe through, which one closed it.
//!
//! Every version is measured with the same instrument: the run's judge, its judge and policy
//! templates as planned, and the same cases (probes built from rubric v000), each version's
//! expectations read on the scale-free terms of `meta.gate` (the case file's numbers were
//! written for v000: shares of each version's ranges). Everything is read from the run folder
//! (its `inputs/` copies; `results::inputs`), so a folder copied elsewhere replays too.
//!
//! Answers are replayed from `<run>/rubric_tests/recordings/` (the judge-cache format) and,
//! read-only, from the run's own `judge-cache/` (where `meta.gate` left the answers for every
//! rubric it scored): no model, server or network. An answer found in neither is reported as
//! unrecorded, with the fix; only `--record` asks the run's judge for them (and records them).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::{RecordJob, RubricTestError, read_cases};
use crate::cases::{Case, Check, Fallback, NO_RECORDING, Outcome, Reading, Scored, Scorer, check_read, fmt};
use crate::judge::cache::CachedJudge;
use crate::meta::history::History;
use crate::results::RunDir;
use crate::rubric::Rubric;
use crate::template::TemplateKind;

/// One rubric version's outcomes.
pub struct Column {
    pub version: u32,
    pub range: (i64, i64),
    pub outcomes: Vec<Outcome>,
    pub checks: Vec<Check>,
}

impl Column {
    /// The expectations of `case` that do not hold under this version.
    pub fn failing(&self, case: &str) -> Vec<&Check> {
        self.checks.iter().filter(|c| c.case == case && !c.holds()).collect()
    }

    fn unrecorded(&self, case: &str) -> bool {
        self.outcomes.iter().any(|o| o.id == case && o.failure.as_deref() == Some(NO_RECORDING))
    }
}

/// The case x version table of one run.
pub struct Table {
    pub run_id: String,
    pub case_file: PathBuf,
    pub judge: String,
    /// (id, kind) in case-file order, probes last.
    pub cases: Vec<(String, String)>,
    pub columns: Vec<Column>,
    /// How many answers were asked of the judge (`--record`; the rest were replayed).
    pub asked: usize,
    /// `vNNN case` for every (version, case) whose judge answer is not recorded (without
    /// `--record`): its cell is empty and its expectations unchecked.
    pub unrecorded: Vec<String>,
}

/// Where `mpo rubric test RUN_DIR` writes.
pub fn folder(run: &Path) -> PathBuf {
    run.join("rubric_tests")
}

/// Score the cases under every version of the run in `run` (`cases`: a case file instead of the
/// one the run's spec names). `record`: ask the run's judge for the answers that are not
/// recorded (else nothing is loaded or contacted, and they are reported in `unrecorded`).
/// With rubric families (`meta.partition_by`), `family` names the one whose versions are scored
/// (its key or folder name).
pub fn run(run: &Path, cases: Option<&Path>, record: bool, family: Option<&str>) -> Result<Table, RubricTestError> {
    let dir = RunDir::open(run)?;
    let planned = dir.plan()?;
    // The table names the case file as the plan does, wherever it was read from.
    let shown = cases.map(Path::to_path_buf).or_else(|| planned.spec.reward.cases.clone());
    let local = crate::results::inputs::localize(&dir, planned);
    let mut needed = vec!["templates/judge", "templates/policy", "data/train"];
    if cases.is_none() {
        needed.push("cases");
    }
    local.require(&needed)?;
    let plan = local.plan;
    let spec = &plan.spec;
    let case_file = cases.map(Path::to_path_buf).or_else(|| spec.reward.cases.clone()).ok_or(RubricTestError::RunHasNoCaseFile)?;
    let file = read_cases(&case_file)?;

    let history = History::open(run, family)?;
    let log = history.folder().join("history.jsonl");
    let mut versions: Vec<u32> = history
        .entries()
        .map_err(|e| RubricTestError::History { path: log.clone(), message: e.to_string() })?
        .iter()
        .filter_map(|e| e.version)
        .collect();
    versions.sort_unstable();
    versions.dedup();
    let rubrics: Vec<Rubric> = versions
        .iter()
        .map(|&v| {
            let p = history.version_path(v);
            let bad = |message: String| RubricTestError::History { path: p.clone(), message };
            let t = std::fs::read_to_string(&p).map_err(|e| bad(e.to_string()))?;
            Rubric::parse(&t).map_err(|e| bad(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let v0 = rubrics.first().ok_or(RubricTestError::NoVersions(log))?;

    let seed = spec.runtime.seed;
    let train = crate::task::train(spec)?;
    let built: Vec<Case> = crate::cases::build(&file, spec.task.kind.as_str(), &train.records, v0);
    let scorer = Scorer::new(
        &spec.reward,
        spec.task.kind.as_str(),
        &plan.template(TemplateKind::Judge)?,
        plan.template(TemplateKind::Policy)?,
        seed,
    )?;
    let judge = crate::judge::factory::identity(&spec.reward.judge, plan.inputs.models.judge.as_ref(), &plan.inputs.models.policy)
        .ok_or(RubricTestError::ReplayedRun)?;

    let recordings = folder(run).join("recordings");
    let judge_cache = dir.path("judge-cache");
    let mut replayed = Vec::new();
    for r in &rubrics {
        let mut replay =
            Fallback { first: CachedJudge::replay_as(&recordings, &judge), then: Box::new(CachedJudge::replay_as(&judge_cache, &judge)) };
        replayed.push(scorer.score(&mut replay, r, &built)?);
    }
    let missing: usize = replayed.iter().map(|s| s.unrecorded.len()).sum();
    let (scored, asked): (Vec<Scored>, usize) = if missing == 0 || !record {
        (replayed, 0)
    } else {
        let job = RecordJob {
            spec,
            judge_model: plan.inputs.models.judge.as_ref(),
            policy_model: &plan.inputs.models.policy,
            recordings,
            also: Some(judge_cache),
            scorer: &scorer,
            work: rubrics.iter().map(|r| (r.clone(), built.clone())).collect(),
        };
        (job.dispatch()?, missing)
    };
    let reading = Reading { written_for: v0, items_required: false };
    let mut unrecorded = Vec::new();
    let columns = versions
        .iter()
        .zip(&rubrics)
        .zip(scored)
        .map(|((&version, rubric), s)| {
            unrecorded.extend(s.unrecorded.iter().map(|id| format!("v{version:03} {id}")));
            // A case without a recorded answer is not checked (as `mpo rubric test SPEC`).
            let recorded: Vec<Outcome> = s.outcomes.iter().filter(|o| !s.unrecorded.contains(&o.id)).cloned().collect();
            Column {
                version,
                range: (rubric.min_score(), rubric.max_score()),
                checks: check_read(&file, &built, &recorded, rubric, reading),
                outcomes: s.outcomes,
            }
        })
        .collect();
    Ok(Table {
        run_id: plan.run_id.clone(),
        case_file: shown.unwrap_or(case_file),
        judge,
        cases: built.iter().map(|c| (c.id.clone(), c.kind.clone())).collect(),
        columns,
        asked,
        unrecorded,
    })
}

impl Table {
    fn total(&self, col: &Column, case: &str) -> Option<f64> {
        col.outcomes.iter().find(|o| o.id == case).and_then(|o| o.total)
    }

    /// Per case whose expectations change across versions: where they stopped holding and
    /// where they held again.
    pub fn transitions(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (id, _) in &self.cases {
            let mut events = Vec::new();
            let mut was_ok = true;
            for (k, col) in self.columns.iter().enumerate() {
                if col.unrecorded(id) {
                    continue;
                }
                let failing = col.failing(id);
                let ok = failing.is_empty();
                if ok != was_ok || (k == 0 && !ok) {
                    events.push(if ok {
                        format!("holds again from v{:03}", col.version)
                    } else {
                        let f = failing[0];
                        let first = if k == 0 {
                            "fails from the start (v000)".to_string()
                        } else {
                            format!("let through from v{:03}", col.version)
                        };
                        format!("{first}: expected {}, got {}", f.expected(), f.got.as_deref().unwrap_or(""))
                    });
                }
                was_ok = ok;
            }
            if !events.is_empty() {
                out.push(format!("{id}: {}", events.join("; ")));
            }
        }
        out
    }

    /// The markdown table and the transitions.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# Rubric tests across the versions of run {}\n\nCases from `{}` scored by `{}` under every rubric version the run wrote. \
             Each cell is the case's total under that version (its range in the header); `✗` marks a case with an expectation \
             that does not hold under that version (probes: a total above the bottom of the range; the case file's numbers, \
             written for v000, are read as the same shares of each version's ranges); `?` a case with no recorded answer.\n\n",
            self.run_id,
            self.case_file.display(),
            self.judge
        );
        s.push_str("| case | kind |");
        for c in &self.columns {
            let _ = write!(s, " v{:03} ({}-{}) |", c.version, c.range.0, c.range.1);
        }
        s.push_str("\n|---|---|");
        s.push_str(&"---|".repeat(self.columns.len()));
        s.push('\n');
        for (id, kind) in &self.cases {
            let _ = write!(s, "| {id} | {kind} |");
            for c in &self.columns {
                let cell = self.total(c, id).map(fmt).unwrap_or_else(|| if c.unrecorded(id) { "?" } else { "-" }.into());
                let mark = if c.failing(id).is_empty() { "" } else { " ✗" };
                let _ = write!(s, " {cell}{mark} |");
            }
            s.push('\n');
        }
        let t = self.transitions();
        s.push_str("\n## Where expectations changed\n\n");
        if t.is_empty() {
            s.push_str("Every case's expectations hold under every version.\n");
        }
        for l in t {
            let _ = writeln!(s, "- {l}");
        }
        s.push_str("\n![heat map](heatmap.svg)\n");
        s
    }

    /// The heat map: rows are cases, columns versions; the colour is the total's place in that
    /// version's range (white: bottom, dark blue: top); a red frame marks a failed expectation.
    pub fn svg(&self) -> String {
        let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
        let (label_w, cell_w, cell_h, top) = (220, 84, 24, 56);
        let w = label_w + cell_w * self.columns.len().max(1) + 16;
        let h = top + cell_h * self.cases.len() + 16;
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n\
             <text x=\"8\" y=\"20\" font-size=\"15\">{}: rubric test totals by version</text>\n",
            esc(&self.run_id)
        );
        for (k, c) in self.columns.iter().enumerate() {
            let x = label_w + k * cell_w + cell_w / 2;
            let _ = writeln!(
                s,
                "<text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">v{:03} ({}-{})</text>",
                top - 10,
                c.version,
                c.range.0,
                c.range.1
            );
        }
        for (i, (id, _)) in self.cases.iter().enumerate() {
            let y = top + i * cell_h;
            let _ = writeln!(s, "<text x=\"8\" y=\"{}\">{}</text>", y + 16, esc(id));
            for (k, c) in self.columns.iter().enumerate() {
                let x = label_w + k * cell_w;
                let (fill, text) = match self.total(c, id) {
                    Some(t) => {
                        let span = (c.range.1 - c.range.0).max(1) as f64;
                        let p = ((t - c.range.0 as f64) / span).clamp(0.0, 1.0);
                        let ch = |lo: f64, hi: f64| (lo + (hi - lo) * p).round() as u8;
                        (format!("rgb({},{},{})", ch(255.0, 8.0), ch(255.0, 48.0), ch(255.0, 107.0)), fmt(t))
                    }
                    None => ("rgb(220,220,220)".into(), "-".into()),
                };
                let ink = if fill.starts_with("rgb(2") { "black" } else { "white" };
                let frame = if c.failing(id).is_empty() { "stroke=\"#ccc\"" } else { "stroke=\"#d62728\" stroke-width=\"3\"" };
                let _ = writeln!(
                    s,
                    "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{fill}\" {frame}/><text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"{ink}\">{text}</text>",
                    x + 2,
                    y + 2,
                    cell_w - 4,
                    cell_h - 4,
                    x + cell_w / 2,
                    y + 16
                );
            }
        }
        s.push_str("</svg>\n");
        s
    }

    /// Write `table.md` and `heatmap.svg` under `<run>/rubric_tests/` (a family's under
    /// `<run>/rubric_tests/families/<slug>/`).
    pub fn write(&self, run: &Path, family: Option<&str>) -> Result<PathBuf, RubricTestError> {
        let d = match family {
            Some(f) => folder(run).join("families").join(crate::meta::family::slug(f)),
            None => folder(run),
        };
        let md = d.join("table.md");
        crate::fsx::write_atomic(&md, self.markdown().as_bytes()).map_err(|error| RubricTestError::Write { path: md.clone(), error })?;
        let svg = d.join("heatmap.svg");
        crate::fsx::write_atomic(&svg, self.svg().as_bytes()).map_err(|error| RubricTestError::Write { path: svg.clone(), error })?;
        Ok(md)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(id: &str, total: f64) -> Outcome {
        Outcome {
            id: id.into(),
            kind: "x".into(),
            items: vec![("Correct".into(), total)],
            total: Some(total),
            failure: None,
            answers: vec![],
        }
    }

    fn col(version: u32, totals: &[(&str, f64)], failing: &[&str]) -> Column {
        Column {
            version,
            range: (0, 5),
            outcomes: totals.iter().map(|(id, t)| outcome(id, *t)).collect(),
            checks: totals
                .iter()
                .map(|(id, t)| Check {
                    case: id.to_string(),
                    what: "total <= 1.25".into(),
                    means: None,
                    got: failing.contains(id).then(|| format!("total {t}")),
                    known: None,
                    unmeasured: false,
                })
                .collect(),
        }
    }

    #[test]
    fn the_table_says_which_version_let_a_probe_through_and_which_closed_it() {
        let t = Table {
            run_id: "abc".into(),
            case_file: "cases.yaml".into(),
            judge: "local:m".into(),
            cases: vec![("probe-empty-0".into(), "empty".into()), ("good".into(), "case".into())],
            columns: vec![
                col(0, &[("probe-empty-0", 0.5), ("good", 4.0)], &[]),
                col(1, &[("probe-empty-0", 4.5), ("good", 4.0)], &["probe-empty-0"]),
                col(2, &[("probe-empty-0", 1.0), ("good", 4.0)], &[]),
            ],
            asked: 0,
            unrecorded: vec![],
        };
        assert_eq!(t.transitions(), ["probe-empty-0: let through from v001: expected total <= 1.25, got total 4.5; holds again from v002"]);
        let md = t.markdown();
        assert!(md.contains("| case | kind | v000 (0-5) | v001 (0-5) | v002 (0-5) |"), "{md}");
        assert!(md.contains("| probe-empty-0 | empty | 0.5 | 4.5 ✗ | 1 |"), "{md}");
        let svg = t.svg();
        assert_eq!(svg.matches("<rect x=").count(), 6);
        assert_eq!(svg.matches("stroke=\"#d62728\"").count(), 1);
    }

    /// A run folder of a small math spec judged by a server (`openai`, at a URL variable no one
    /// sets), with its inputs (templates, training data, case file) copied in as `mpo run`
    /// copies them; the folder the run was launched from is then deleted: the run folder is
    /// all there is.
    fn run_folder(tag: &str) -> (PathBuf, RunDir, crate::plan::Plan) {
        let tmp = std::env::temp_dir().join(format!("mpo-versions-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let launch = tmp.join("launch");
        std::fs::create_dir_all(&launch).unwrap();
        for (from, to) in [
            ("prompt_templates/math/policy.j2", "policy.j2"),
            ("prompt_templates/math/judge.j2", "judge.j2"),
            ("prompt_templates/math/rubric_v0.md", "rubric.md"),
            ("prompt_templates/math/cases.yaml", "cases.yaml"),
        ] {
            std::fs::copy(from, launch.join(to)).unwrap();
        }
        let data: String =
            (1..=4).map(|k| format!("{{\"problem\": \"What is {k} + {k}?\", \"solution\": \"$\\\\boxed{{{}}}$\"}}\n", 2 * k)).collect();
        std::fs::write(launch.join("train.jsonl"), data).unwrap();
        let spec = format!(
            "name: replay\ntask: {{kind: math, train: {{path: train.jsonl}}, prompt: policy.j2}}\npolicy: {{model: tiny-random-llama}}\n\
             reward: {{judge: {{backend: openai, base_url_env: MPO_TEST_NEVER_SET_JUDGE_URL, max_tokens: 8}}, rubric: rubric.md, prompt: judge.j2, cases: cases.yaml}}\n\
             meta: {{every: never}}\nppo: {{batch_size: 4, num_mini_batches: 2, num_ppo_epochs: 1, total_episodes: 8, response_length: 6}}\n\
             runtime: {{rollout_batch: 4}}\noutput: {{root: {}}}\n",
            tmp.join("results").display()
        );
        std::fs::write(launch.join("spec.yaml"), spec).unwrap();
        let loaded = crate::resolve::load(&launch.join("spec.yaml"), &[]);
        assert!(!loaded.has_errors(), "{:?}", loaded.diags);
        let r = &loaded.runs[0];
        let plan = crate::plan::compile(r);
        let dir = RunDir::for_plan(&plan);
        dir.write_json("plan.json", &plan).unwrap();
        History::new(&dir.root).init(&r.inputs.rubric).unwrap();
        assert_eq!(crate::results::inputs::store(&dir, &plan).unwrap(), Vec::<String>::new());
        std::fs::remove_dir_all(&launch).unwrap();
        (tmp, dir, plan)
    }

    #[test]
    fn a_run_folder_replays_from_its_own_copies_and_contacts_no_judge() {
        let (tmp, dir, plan) = run_folder("replay");
        let plan_json = std::fs::read(dir.path("plan.json")).unwrap();
        // Nothing recorded: every case is reported, nothing is asked (the judge's URL variable
        // is not even set: asking would fail), the templates, data and case file are the copies.
        let t = run(&dir.root, None, false, None).unwrap();
        assert_eq!((t.asked, t.unrecorded.len(), t.cases.len()), (0, 13, 13));
        assert_eq!(t.unrecorded[0], "v000 good-sum");
        assert!(t.markdown().contains("| good-sum | case | ? |"), "{}", t.markdown());
        assert!(t.transitions().is_empty(), "unrecorded cases are not checked");
        assert_eq!(t.case_file, tmp.join("launch/cases.yaml"), "named as the plan names it");

        // Answers the run's judge gave (its judge cache, where `meta.gate` leaves them) replay.
        let local = dir.local_plan().unwrap();
        assert!(local.missing.is_empty(), "{:?}", local.missing);
        assert!(
            local.plan.spec.reward.prompt.starts_with(&dir.root)
                && local.plan.spec.task.train.path.as_ref().unwrap().starts_with(&dir.root)
        );
        assert_eq!(local.plan.run_id, plan.run_id);
        let spec = &local.plan.spec;
        let identity = crate::judge::factory::identity(&spec.reward.judge, None, &local.plan.inputs.models.policy).unwrap();
        let tpl = |k| local.plan.template(k).unwrap();
        let scorer = Scorer::new(&spec.reward, "math", &tpl(TemplateKind::Judge), tpl(TemplateKind::Policy), spec.runtime.seed).unwrap();
        let file = crate::cases::CaseFile::parse(&std::fs::read_to_string(spec.reward.cases.as_ref().unwrap()).unwrap()).unwrap();
        let v0 = Rubric::parse(&History::new(&dir.root).show(0).unwrap()).unwrap();
        let built = crate::cases::build(&file, "math", &crate::task::train(spec).unwrap().records, &v0);
        let answer = |_: &crate::judge::JudgeRequest, _| {
            Ok(crate::judge::JudgeResponse::answer("Correct final answer: 4\nAnswer in a box: 1\nSound reasoning: 2"))
        };
        let inner = Box::new(crate::judge::scripted::ScriptedJudge::new(&identity, answer));
        scorer.score(&mut CachedJudge::new(inner, &dir.path("judge-cache")), &v0, &built).unwrap();
        let t = run(&dir.root, None, false, None).unwrap();
        assert_eq!((t.asked, t.unrecorded.len()), (0, 0));
        assert!(t.columns[0].outcomes.iter().all(|o| o.total == Some(7.0)), "{:?}", t.columns[0].outcomes);

        // The run's files are as the run wrote them.
        assert_eq!(std::fs::read(dir.path("plan.json")).unwrap(), plan_json);
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[test]
    fn a_missing_or_edited_copy_is_named_with_what_to_do() {
        let (tmp, dir, _) = run_folder("missing");
        std::fs::remove_file(dir.path("inputs/cases/cases.yaml")).unwrap();
        let e = run(&dir.root, None, false, None).err().unwrap().to_string();
        assert!(e.contains(&format!("cases `{}`", tmp.join("launch/cases.yaml").display())), "{e}");
        assert!(e.contains(&dir.path("inputs/cases/cases.yaml").display().to_string()) && e.contains("put a copy"), "{e}");
        // A case file given on the command line needs no copy.
        std::fs::write(tmp.join("other.yaml"), "cases:\n  - {id: x, record: {problem: p, answer: '1'}, response: r}\n").unwrap();
        assert_eq!(run(&dir.root, Some(&tmp.join("other.yaml")), false, None).unwrap().cases.len(), 1);
        // A copy that no longer matches the plan's hash is not used.
        std::fs::write(dir.path("inputs/templates/judge/judge.j2"), "{{ rubric }} edited").unwrap();
        let e = run(&dir.root, Some(&tmp.join("other.yaml")), false, None).err().unwrap().to_string();
        assert!(e.contains("templates/judge") && e.contains("has changed since the run"), "{e}");
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
