//! `mpo rubric test SPEC`: what a rubric *does*. Every case of the spec's case file
//! (`reward.cases`) and every hack probe built from its training records is scored with the
//! spec's judge and rubric, exactly as a run scores a rollout (`reward::score_batch`); the
//! outcome (per-item scores, total, failure) is compared with a committed snapshot, and the
//! case expectations are checked.
//!
//! Layout, shared with `mpo snapshot`: `<dir>/<spec name>/` holds the rendered prompts,
//! `<dir>/<spec name>/rubric/scores.json` the accepted outcomes and `.../rubric/recordings/`
//! the judge's answers (the content-addressed judge cache format). Without `--record` the
//! answers are replayed from the recordings: no model, server or network; a prompt with no
//! recorded answer (a changed rubric or template) is named, with the fix (`--record`).

pub mod cases;
pub mod versions;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::judge::cache::{self, CachedJudge};
use crate::judge::{Judge, JudgeError, JudgeRequest, JudgeResponse, TokenUsage};
use crate::reward::{self, RewardConfig, Rollout};
use crate::rubric::Rubric;
use crate::spec::validate::TemplateFile;
use crate::spec::{FailurePolicy, MixSpec, Resolved, RewardSpec};
use crate::template::TemplateKind;
pub use cases::{Case, CaseFile};

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

/// `scores.json`: the accepted outcomes of one spec's cases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub judge: String,
    /// sha256 of the rubric markdown the cases were scored under.
    pub rubric_sha256: String,
    pub range: (i64, i64),
    pub cases: Vec<Outcome>,
    /// Expectations that did not hold when the snapshot was accepted (key -> what was
    /// measured): a reviewed, committed statement of what this judge and rubric get wrong.
    #[serde(default)]
    pub failing: BTreeMap<String, String>,
}

/// An expectation and whether it held.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub case: String,
    /// What was expected, as the report and `known_failures` name it.
    pub what: String,
    /// What was measured, when it did not hold.
    pub got: Option<String>,
    /// Why a failure is accepted: the reason given in the case file's `known_failures`, or
    /// that the committed snapshot records it.
    pub known: Option<String>,
}

impl Check {
    pub fn holds(&self) -> bool {
        self.got.is_none()
    }
    /// The key `known_failures` lists it under.
    pub fn key(&self) -> String {
        format!("{}: {}", self.case, self.what)
    }
}

/// The folders of one spec's rubric tests under `dir`.
pub fn folder(dir: &Path, spec_name: &str) -> PathBuf {
    dir.join(spec_name).join("rubric")
}

/// The spec's cases: its case file, then probes from its first training records.
pub fn load_cases(r: &Resolved) -> Result<(PathBuf, CaseFile, Vec<Case>), String> {
    let path = r.spec.reward.cases.clone().ok_or_else(|| {
        format!(
            "spec `{}` names no case file: add `reward.cases: <file>` (the shipped ones are prompt_templates/<task>/cases.yaml)",
            r.spec.name
        )
    })?;
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read the case file `{}`: {e}", path.display()))?;
    let file = CaseFile::parse(&text).map_err(|e| format!("case file `{}`: {e}", path.display()))?;
    let data = r.spec.train_data().map_err(|e| e.to_string())?;
    let built = cases::build(&file, r.spec.task.kind.as_str(), &data.records, &r.inputs.rubric);
    Ok((path, file, built))
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
    pub fn new(reward: &RewardSpec, task: &str, judge_t: &TemplateFile, policy_t: TemplateFile, seed: u64) -> Result<Self, String> {
        let mut spec = reward.clone();
        // A judge failure is an outcome here, whatever the run's policy; and every case goes to
        // the judge, whatever share of a run's rollouts the verifier scores.
        if spec.failure.policy == FailurePolicy::Fail {
            spec.failure.policy = FailurePolicy::Skip;
        }
        spec.mix = MixSpec::Weighted { judge_weight: 1.0, verifier_weight: 1.0 };
        let cfg = RewardConfig::new(spec, task, judge_t.text.clone(), judge_t.path.display().to_string()).map_err(|e| e.to_string())?;
        Ok(Scorer { cfg, policy: policy_t, seed })
    }

    /// The scorer of a checked spec.
    pub fn of(r: &Resolved) -> Result<Self, String> {
        let tpl = |k: TemplateKind| r.inputs.templates.get(&k).ok_or_else(|| format!("the spec has no {} template", k.as_str()));
        Self::new(
            &r.spec.reward,
            r.spec.task.kind.as_str(),
            tpl(TemplateKind::Judge)?,
            tpl(TemplateKind::Policy)?.clone(),
            r.spec.runtime.seed,
        )
    }

    /// Score `cases` under `rubric` with `judge` (replaying, recording or live), exactly as a
    /// run scores its rollouts (`reward::score_batch`).
    pub fn score(&self, judge: &mut dyn Judge, rubric: &Rubric, cases: &[Case]) -> Result<Scored, String> {
        let name = self.policy.path.display().to_string();
        let mut questions = Vec::new();
        for c in cases {
            let q = crate::template::render(&name, &self.policy.text, &c.record)
                .map_err(|e| format!("case `{}`: the policy template cannot render its record: {e}", c.id))?;
            questions.push(q);
        }
        let rollouts: Vec<Rollout> = cases
            .iter()
            .zip(&questions)
            .map(|(c, q)| Rollout { id: c.id.clone(), question: q.clone(), response: c.response.clone(), record: &c.record })
            .collect();
        let mut watched = Watched { inner: judge, asked: BTreeSet::new(), missing: BTreeSet::new() };
        let mut usage = TokenUsage::default();
        let scored =
            reward::score_batch(&mut watched, &self.cfg, rubric, &rollouts, self.seed, 0, &mut usage).map_err(|e| e.to_string())?;
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

/// `meta.gate`: a merged rubric is scored on the cases (with the run's judge) before it may
/// become the next version; an expectation that fails, and is not listed in the case file's
/// `known_failures`, keeps the current rubric.
pub struct Gate {
    file: CaseFile,
    /// Built once from rubric v0, as `mpo rubric test` builds them: every candidate is
    /// measured on the same cases.
    cases: Vec<Case>,
    scorer: Scorer,
}

impl Gate {
    /// `records`: the task's training records the probes are built from; `v0`: the run's
    /// initial rubric (the keyword-stuffing probe stuffs its words).
    pub fn new(file: CaseFile, records: &[serde_json::Value], task: &str, v0: &Rubric, scorer: Scorer) -> Self {
        let cases = cases::build(&file, task, records, v0);
        Gate { file, cases, scorer }
    }

    /// The expectations `candidate` fails with `judge`, and the judge's token usage.
    pub fn verdict(&self, judge: &mut dyn Judge, candidate: &Rubric) -> Result<(crate::meta::GateVerdict, TokenUsage), String> {
        let scored = self.scorer.score(judge, candidate, &self.cases)?;
        let checks = check(&self.file, &self.cases, &scored.outcomes, candidate);
        let failing = checks
            .iter()
            .filter(|c| !c.holds() && c.known.is_none())
            .map(|c| format!("{}: expected {}, got {}", c.case, c.what, c.got.as_deref().unwrap_or("")))
            .collect();
        Ok((crate::meta::GateVerdict { checked: checks.len(), failing }, scored.usage))
    }
}

pub(crate) fn fmt(x: f64) -> String {
    let s = format!("{x:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

/// Every expectation of `cases` against `outcomes` under `rubric`.
pub fn check(file: &CaseFile, cases: &[Case], outcomes: &[Outcome], rubric: &Rubric) -> Vec<Check> {
    let (lo, hi) = (rubric.min_score() as f64, rubric.max_score() as f64);
    let by_id: BTreeMap<&str, &Outcome> = outcomes.iter().map(|o| (o.id.as_str(), o)).collect();
    let unscored = |o: &Outcome| format!("no score ({})", o.failure.as_deref().unwrap_or("no answer"));
    let mut out = Vec::new();
    let mut push = |case: &str, what: String, got: Option<String>| {
        let mut c = Check { case: case.into(), what, got, known: None };
        c.known = file.known_failures.get(&c.key()).or_else(|| file.known_failures.get(case)).cloned();
        out.push(c);
    };
    for c in cases {
        let Some(o) = by_id.get(c.id.as_str()) else { continue };
        let range = |what: &str, v: Option<f64>, [a, b]: [f64; 2]| {
            let want = format!("{what} in {}..={}", fmt(a), fmt(b));
            let got = match v {
                None => Some(unscored(o)),
                Some(v) if v < a - 1e-9 || v > b + 1e-9 => Some(format!("{what} {}", fmt(v))),
                Some(_) => None,
            };
            (want, got)
        };
        if let Some(t) = c.expect.total {
            let (w, g) = range("total", o.total, t);
            push(&c.id, w, g);
        }
        for (name, r) in &c.expect.items {
            let v = if o.total.is_some() { Some(o.items.iter().find(|(n, _)| n == name).map(|(_, s)| *s)) } else { None };
            match v {
                Some(None) => push(&c.id, format!("item `{name}`"), Some("the rubric in force has no such item".into())),
                v => {
                    let (w, g) = range(&format!("`{name}`"), v.flatten(), *r);
                    push(&c.id, w, g);
                }
            }
        }
        if let Some(share) = c.at_most {
            let limit = lo + share * (hi - lo);
            let want = format!("total <= {} (the bottom {:.0}% of {}..={})", fmt(limit), share * 100.0, fmt(lo), fmt(hi));
            let got = match o.total {
                None => Some(unscored(o)),
                Some(t) if t > limit + 1e-9 => Some(format!("total {}", fmt(t))),
                Some(_) => None,
            };
            push(&c.id, want, got);
        }
    }
    for [a, b] in &file.order {
        let (Some(x), Some(y)) = (by_id.get(a.as_str()), by_id.get(b.as_str())) else {
            // A case without an outcome (no recorded answer) is reported as such, not here.
            let exists = |id: &String| cases.iter().any(|c| &c.id == id);
            if !(exists(a) && exists(b)) {
                push(a, format!("above `{b}`"), Some("the case file's `order` names a case that does not exist".into()));
            }
            continue;
        };
        let got = match (x.total, y.total) {
            (Some(p), Some(q)) if p > q => None,
            (Some(p), Some(q)) => Some(format!("{} vs {}", fmt(p), fmt(q))),
            _ => Some(format!("{} vs {}", x.total.map_or_else(|| unscored(x), fmt), y.total.map_or_else(|| unscored(y), fmt))),
        };
        push(a, format!("above `{b}`"), got);
    }
    out
}

/// What changed from `old` to `new`, one line per case (items named), rationales ignored.
pub fn diff(old: &Snapshot, new: &Snapshot) -> Vec<String> {
    let mut lines = Vec::new();
    if old.judge != new.judge {
        lines.push(format!("judge: {} -> {}", old.judge, new.judge));
    }
    if old.rubric_sha256 != new.rubric_sha256 {
        lines.push(format!("rubric: sha256 {}.. -> {}..", &old.rubric_sha256[..12.min(old.rubric_sha256.len())], &new.rubric_sha256[..12]));
    }
    let show = |o: &Outcome| match o.total {
        Some(t) => fmt(t),
        None => format!("failed ({})", o.failure.as_deref().unwrap_or("no answer")),
    };
    let olds: BTreeMap<&str, &Outcome> = old.cases.iter().map(|o| (o.id.as_str(), o)).collect();
    for n in &new.cases {
        let Some(o) = olds.get(n.id.as_str()) else {
            lines.push(format!("{}: new case, total {}", n.id, show(n)));
            continue;
        };
        if o.items == n.items && o.total == n.total && o.failure == n.failure {
            continue;
        }
        let mut parts = vec![format!("total {} -> {}", show(o), show(n))];
        let names: Vec<&String> = {
            let mut v: Vec<&String> = o.items.iter().map(|(k, _)| k).collect();
            v.extend(n.items.iter().map(|(k, _)| k).filter(|k| !o.items.iter().any(|(j, _)| j == *k)));
            v
        };
        for name in names {
            let get = |x: &Outcome| x.items.iter().find(|(k, _)| k == name).map(|(_, s)| fmt(*s)).unwrap_or_else(|| "-".into());
            let (a, b) = (get(o), get(n));
            if a != b {
                parts.push(format!("{name} {a} -> {b}"));
            }
        }
        lines.push(format!("{}: {}", n.id, parts.join("; ")));
    }
    for k in new.failing.keys().filter(|k| !old.failing.contains_key(*k)) {
        lines.push(format!("{k}: no longer holds ({})", new.failing[k]));
    }
    for k in old.failing.keys().filter(|k| !new.failing.contains_key(*k)) {
        lines.push(format!("{k}: holds now"));
    }
    for o in &old.cases {
        if !new.cases.iter().any(|n| n.id == o.id) {
            lines.push(format!("{}: case removed (was {})", o.id, show(o)));
        }
    }
    lines
}

/// One line per case: total and items.
pub fn table(s: &Snapshot) -> Vec<String> {
    s.cases
        .iter()
        .map(|o| {
            let items: Vec<String> = o.items.iter().map(|(n, v)| format!("{n} {}", fmt(*v))).collect();
            match o.total {
                Some(t) => format!("{:<28} {:>6}  {}", o.id, fmt(t), items.join(", ")),
                None => format!("{:<28} {:>6}  {}", o.id, "-", o.failure.as_deref().unwrap_or("no answer")),
            }
        })
        .collect()
}

/// A JUnit test suite: one test case per rubric case; a failure per expectation that does not hold
/// (and is not a known failure), per changed outcome and per missing recording.
pub fn junit(suite: &str, outcomes: &[Outcome], checks: &[Check], changed: &[String], unrecorded: &[String]) -> String {
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
    let mut body = String::new();
    let mut failures = 0;
    for o in outcomes {
        let mut why: Vec<String> = checks
            .iter()
            .filter(|c| c.case == o.id && !c.holds() && c.known.is_none())
            .map(|c| format!("expected {}, got {}", c.what, c.got.as_deref().unwrap_or("")))
            .collect();
        why.extend(changed.iter().filter(|l| l.starts_with(&format!("{}:", o.id))).map(|l| format!("changed: {l}")));
        if unrecorded.contains(&o.id) {
            why.push("no recorded judge answer for this prompt: run `mpo rubric test --record`".into());
        }
        body.push_str(&format!("    <testcase classname=\"{}\" name=\"{}\"", esc(suite), esc(&o.id)));
        if why.is_empty() {
            body.push_str("/>\n");
        } else {
            failures += 1;
            body.push_str(&format!(">\n      <failure message=\"{}\"/>\n    </testcase>\n", esc(&why.join("; "))));
        }
    }
    format!("  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\">\n{body}  </testsuite>\n", esc(suite), outcomes.len())
}

/// A JUnit document of `suites` (from [`junit`]).
pub fn junit_document(suites: &[String]) -> String {
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n{}</testsuites>\n", suites.concat())
}

/// Remove recordings this test no longer uses (after `--record --update`); returns how many.
pub fn prune(recordings: &Path, used: &BTreeSet<String>) -> std::io::Result<usize> {
    let mut n = 0;
    let Ok(rd) = std::fs::read_dir(recordings) else { return Ok(0) };
    for sub in rd.flatten() {
        let Ok(files) = std::fs::read_dir(sub.path()) else { continue };
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().to_string();
            if let Some(key) = name.strip_suffix(".json")
                && !used.contains(key)
            {
                std::fs::remove_file(f.path())?;
                n += 1;
            }
        }
    }
    Ok(n)
}

/// How `mpo rubric test` runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The snapshot folder (`mpo snapshot`'s): `<dir>/<spec name>/rubric/`.
    pub dir: PathBuf,
    /// Accept the outcomes as the new snapshot.
    pub update: bool,
    /// Ask the spec's real judge for answers that are not recorded (local model or server).
    pub record: bool,
}

/// Everything one spec's rubric test found.
pub struct Report {
    pub spec_name: String,
    pub case_file: PathBuf,
    pub folder: PathBuf,
    pub judge: String,
    pub record: bool,
    pub snapshot: Snapshot,
    /// `None`: no snapshot was committed yet.
    pub changed: Option<Vec<String>>,
    pub unrecorded: Vec<String>,
    pub checks: Vec<Check>,
    pub updated: bool,
    pub pruned: usize,
}

impl Report {
    /// Nothing changed (or the change was accepted), every answer was recorded, and every
    /// expectation holds or is a listed known failure.
    pub fn passed(&self) -> bool {
        let unchanged = self.updated || self.changed.as_ref().is_some_and(Vec::is_empty);
        unchanged && self.unrecorded.is_empty() && self.checks.iter().all(|c| c.holds() || c.known.is_some())
    }

    /// The report; `spec` is the path the user gave (the commands it suggests use it).
    pub fn render(&self, spec: &Path) -> String {
        let mut o = String::new();
        let how = if self.record { "asked and recorded" } else { "replayed from recordings" };
        o.push_str(&format!(
            "{}: {} cases scored by {} ({how}), rubric sha256 {}..\n",
            self.spec_name,
            self.snapshot.cases.len(),
            self.judge,
            &self.snapshot.rubric_sha256[..12]
        ));
        for l in table(&self.snapshot) {
            o.push_str(&format!("  {l}\n"));
        }
        if !self.unrecorded.is_empty() {
            o.push_str(&format!(
                "no recorded judge answer for {} case(s) (the rubric, a template, the judge or a case changed): {}\n  = help: record them with the real judge: `mpo rubric test {} --record`, review, then `--update`\n",
                self.unrecorded.len(),
                self.unrecorded.join(", "),
                spec.display()
            ));
        }
        match &self.changed {
            None if self.updated => o.push_str("new snapshot\n"),
            None => o.push_str(&format!("no snapshot in {} yet (review the outcomes, then --update)\n", self.folder.display())),
            Some(c) if c.is_empty() => o.push_str("outcomes unchanged from the snapshot\n"),
            Some(c) => {
                let verb = if self.updated { "accepted" } else { "changed (review, then --update to accept)" };
                o.push_str(&format!("{} outcome(s) {verb}:\n", c.len()));
                for l in c {
                    o.push_str(&format!("  {l}\n"));
                }
            }
        }
        let held = self.checks.iter().filter(|c| c.holds()).count();
        o.push_str(&format!("expectations: {held} of {} hold\n", self.checks.len()));
        for c in self.checks.iter().filter(|c| !c.holds()) {
            let got = c.got.as_deref().unwrap_or("");
            match &c.known {
                Some(why) => o.push_str(&format!("  known  {}: expected {}, got {got} ({why})\n", c.case, c.what)),
                None => o.push_str(&format!("  FAIL   {}: expected {}, got {got}\n", c.case, c.what)),
            }
        }
        for c in self.checks.iter().filter(|c| c.holds() && c.known.is_some()) {
            o.push_str(&format!(
                "  note   {}: `{}` is listed in known_failures but now holds; remove it from the case file\n",
                c.case,
                c.key()
            ));
        }
        if self.updated {
            o.push_str(&format!("snapshot written to {}", self.folder.join("scores.json").display()));
            if self.pruned > 0 {
                o.push_str(&format!(" ({} unused recording(s) removed)", self.pruned));
            }
            o.push('\n');
        }
        o
    }
}

/// The judge's answers for some (rubric, cases) pairs: recorded ones replayed, missing ones
/// asked of the real judge (a backend job: a local judge loads its model) and recorded.
pub(crate) struct RecordJob<'a> {
    pub spec: &'a crate::spec::Spec,
    pub judge_model: Option<&'a crate::model::registry::ModelRef>,
    pub policy_model: &'a crate::model::registry::ModelRef,
    pub recordings: PathBuf,
    pub scorer: &'a Scorer,
    pub work: Vec<(Rubric, Vec<Case>)>,
}

impl RecordJob<'_> {
    pub fn dispatch(self) -> Result<Vec<Scored>, String> {
        crate::model::dispatch(self.spec.runtime.backend, self.spec.runtime.device, self)?
    }
}

impl crate::model::BackendJob for RecordJob<'_> {
    type Output = Result<Vec<Scored>, String>;
    fn run<B: burn::tensor::backend::AutodiffBackend>(self, device: B::Device, _: &'static str) -> Result<Vec<Scored>, String> {
        let spec = self.spec;
        let env = crate::judge::factory::JudgeEnv::<B::InnerBackend> {
            policy_ref: self.policy_model,
            shared: None,
            batch: spec.runtime.rollout_batch,
            seed: spec.runtime.seed,
            device: &device,
            cache: &self.recordings,
            quantized_decode: spec.runtime.quantized_decode,
        };
        let inner = crate::judge::factory::build::<B::InnerBackend>("reward", &spec.reward.judge, self.judge_model, &env)
            .map_err(|e| e.to_string())?;
        let mut judge = CachedJudge::new(inner, &self.recordings);
        self.work.iter().map(|(rubric, cases)| self.scorer.score(&mut judge, rubric, cases)).collect()
    }
}

/// Run one spec's rubric test.
pub fn run(r: &Resolved, opts: &Options) -> Result<Report, String> {
    let (case_file, file, cases) = load_cases(r)?;
    let judge = crate::judge::factory::identity(&r.spec.reward.judge, r.inputs.judge_model.as_ref(), &r.inputs.policy_model).ok_or(
        "the spec's judge is a replay judge; rubric tests replay their own recordings: give the spec the judge that should answer",
    )?;
    let folder = folder(&opts.dir, &r.spec.name);
    let recordings = folder.join("recordings");
    let rubric = r.inputs.rubric.clone();
    let scorer = Scorer::of(r)?;
    let scored = if opts.record {
        let job = RecordJob {
            spec: &r.spec,
            judge_model: r.inputs.judge_model.as_ref(),
            policy_model: &r.inputs.policy_model,
            recordings: recordings.clone(),
            scorer: &scorer,
            work: vec![(rubric.clone(), cases.clone())],
        };
        job.dispatch()?.pop().ok_or("no outcome")?
    } else {
        scorer.score(&mut CachedJudge::replay_as(&recordings, &judge), &rubric, &cases)?
    };
    let snapshot = Snapshot {
        failing: BTreeMap::new(),
        judge: judge.clone(),
        rubric_sha256: crate::task::hex(&<sha2::Sha256 as sha2::Digest>::digest(rubric.to_markdown().as_bytes())),
        range: (rubric.min_score(), rubric.max_score()),
        cases: scored.outcomes,
    };
    let path = folder.join("scores.json");
    let old: Option<Snapshot> = match std::fs::read_to_string(&path) {
        Ok(t) => Some(
            serde_json::from_str(&t)
                .map_err(|e| format!("{}: not a rubric-test snapshot ({e}); delete it and run with --update", path.display()))?,
        ),
        Err(_) => None,
    };
    let recorded: Vec<Outcome> = snapshot.cases.iter().filter(|o| !scored.unrecorded.contains(&o.id)).cloned().collect();
    let mut checks = check(&file, &cases, &recorded, &rubric);
    let mut snapshot = snapshot;
    snapshot.failing = checks.iter().filter(|c| !c.holds()).map(|c| (c.key(), c.got.clone().unwrap_or_default())).collect();
    // Cases without a recorded answer were not checked: their accepted failures stand.
    if let Some(o) = &old {
        for (k, v) in &o.failing {
            if scored.unrecorded.iter().any(|id| k.starts_with(&format!("{id}: "))) {
                snapshot.failing.insert(k.clone(), v.clone());
            }
        }
    }
    let changed = old.as_ref().map(|o| diff(o, &snapshot));
    if !opts.update
        && let Some(o) = &old
    {
        for c in checks.iter_mut().filter(|c| !c.holds() && c.known.is_none()) {
            if o.failing.contains_key(&c.key()) {
                c.known = Some("accepted in the snapshot".into());
            }
        }
    }
    if opts.update && scored.unrecorded.is_empty() {
        for c in checks.iter_mut().filter(|c| !c.holds() && c.known.is_none()) {
            c.known = Some("accepted now (--update)".into());
        }
    }
    // Accepting outcomes that have no recorded answer would snapshot failures of the replay,
    // not of the judge.
    let updated = opts.update && scored.unrecorded.is_empty();
    let mut pruned = 0;
    if updated {
        let text = serde_json::to_string_pretty(&snapshot).map_err(|e| e.to_string())?;
        crate::fsx::write_atomic(&path, format!("{text}\n").as_bytes()).map_err(|e| format!("writing {}: {e}", path.display()))?;
        pruned = prune(&recordings, &scored.used).map_err(|e| format!("pruning {}: {e}", recordings.display()))?;
    }
    Ok(Report {
        spec_name: r.spec.name.clone(),
        case_file,
        folder,
        judge,
        record: opts.record,
        snapshot,
        changed,
        unrecorded: scored.unrecorded,
        checks,
        updated,
        pruned,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(id: &str, items: &[(&str, f64)], failure: Option<&str>) -> Outcome {
        let items: Vec<(String, f64)> = items.iter().map(|(n, s)| (n.to_string(), *s)).collect();
        let total = failure.is_none().then(|| items.iter().map(|(_, s)| s).sum());
        Outcome { id: id.into(), kind: "case".into(), items, total, failure: failure.map(str::to_string), answers: vec![] }
    }

    #[test]
    fn expectations_probes_order_and_known_failures() {
        let rubric = Rubric::parse("## Correct (0-4)\n- Award 4 when right.\n\n## Boxed (0-1)\n- Award 1 when boxed.\n").unwrap();
        let file = CaseFile::parse(
            "cases:\n  - {id: good, record: {problem: p}, response: r, expect: {total: [4, 5], items: {Boxed: [1, 1]}}}\n  - {id: bad, record: {problem: p}, response: r}\n\
             order: [[good, bad]]\nknown_failures: {'bad: above `good`': 'never', probe: 'the 135M judge gives it 3'}\n",
        )
        .unwrap();
        let mut cases = cases::build(&file, "math", &[], &rubric);
        cases.push(Case {
            id: "probe".into(),
            kind: "empty".into(),
            record: serde_json::json!({}),
            response: String::new(),
            expect: cases::Expect::default(),
            at_most: Some(0.25),
        });
        let outs = vec![
            outcome("good", &[("Correct", 4.0), ("Boxed", 0.0)], None),
            outcome("bad", &[("Correct", 0.0), ("Boxed", 0.0)], None),
            outcome("probe", &[("Correct", 3.0), ("Boxed", 0.0)], None),
        ];
        let checks = check(&file, &cases, &outs, &rubric);
        let show: Vec<String> = checks.iter().map(|c| format!("{} | {} | {:?} | {:?}", c.case, c.what, c.got, c.known)).collect();
        assert_eq!(
            show,
            [
                "good | total in 4..=5 | None | None",
                "good | `Boxed` in 1..=1 | Some(\"`Boxed` 0\") | None",
                "probe | total <= 1.25 (the bottom 25% of 0..=5) | Some(\"total 3\") | Some(\"the 135M judge gives it 3\")",
                "good | above `bad` | None | None",
            ]
        );
        // An unscored case fails its expectations with the reason.
        let outs =
            vec![outcome("good", &[], Some("the answer cannot be parsed: x")), outcome("bad", &[("Correct", 1.0), ("Boxed", 0.0)], None)];
        let checks = check(&file, &cases[..2], &outs, &rubric);
        assert_eq!(checks[0].got.as_deref(), Some("no score (the answer cannot be parsed: x)"));
        assert_eq!(checks.last().unwrap().got.as_deref(), Some("no score (the answer cannot be parsed: x) vs 1"));
    }

    #[test]
    fn the_diff_names_cases_and_items() {
        let snap =
            |cases| Snapshot { judge: "local:m".into(), rubric_sha256: "a".repeat(64), range: (0, 5), cases, failing: BTreeMap::new() };
        let old = snap(vec![outcome("good", &[("Correct", 4.0), ("Boxed", 1.0)], None), outcome("gone", &[("Correct", 1.0)], None)]);
        let new =
            snap(vec![outcome("good", &[("Correct", 2.5), ("Boxed", 1.0)], None), outcome("fresh", &[], Some("the judge failed: x"))]);
        assert_eq!(
            diff(&old, &new),
            ["good: total 5 -> 3.5; Correct 4 -> 2.5", "fresh: new case, total failed (the judge failed: x)", "gone: case removed (was 1)"]
        );
        assert!(diff(&old, &old).is_empty());
        let x = junit("math", &new.cases, &[], &diff(&old, &new), &["fresh".into()]);
        assert!(
            x.contains("<testsuite name=\"math\" tests=\"2\" failures=\"2\">") && x.contains("changed: good: total 5 -&gt; 3.5"),
            "{x}"
        );
    }

    #[test]
    fn the_meta_gate_rejects_a_rubric_that_lets_a_probe_through() {
        use crate::judge::scripted::ScriptedJudge;
        use crate::spec::{AnswerMode, Extraction, FailureSpec, JudgeSpec};
        let spec = RewardSpec {
            judge: JudgeSpec::default(),
            rubric: "r.md".into(),
            prompt: "j.j2".into(),
            extraction: Extraction::default(),
            answer: AnswerMode::Free,
            normalize: true,
            failure: FailureSpec::default(),
            verifiers: vec![],
            mix: MixSpec::Coin { verifier_prob: 1.0, chunk: 1 },
            cases: None,
        };
        let tf = |name: &str, text: &str| TemplateFile { path: name.into(), text: text.into(), sha256: String::new() };
        let judge_t = tf("judge", "Rubric:\n{{ rubric }}\nQ: {{ question }}\nA: {{ response }}");
        let scorer = Scorer::new(&spec, "math", &judge_t, tf("policy", "{{ problem }}"), 7).unwrap();
        let file = CaseFile::parse(
            "probes: {records: 1, kinds: [empty, one-line]}\ncases:\n  - {id: good, record: {problem: '2+2?', answer: '4'}, response: 'So \\boxed{4}.', expect: {total: [3, 5]}}\n",
        )
        .unwrap();
        let v0 =
            Rubric::parse("## Correct (0-4)\n- Award 4 when the answer is right.\n\n## Work (0-1)\n- Award 1 when the steps are shown.\n")
                .unwrap();
        let lenient = Rubric::parse("## Correct (0-4)\n- Award 4 to every answer.\n\n## Work (0-1)\n- Award 1 always.\n").unwrap();
        let gate = Gate::new(file, &[serde_json::json!({"problem": "3+4?", "answer": "7"})], "math", &v0, scorer);
        // A judge that follows its rubric: a lenient one lets every answer through.
        let mut judge = ScriptedJudge::new("test:follows-the-rubric", |q: &JudgeRequest, _| {
            let full = q.prompt.contains("every answer") || q.prompt.contains("\\boxed{4}");
            Ok(JudgeResponse::answer(if full { "Correct: 4\nWork: 1" } else { "Correct: 0\nWork: 0" }))
        });
        // Every case goes to the judge, even under a mix that gives every rollout to the verifier.
        let (v, usage) = gate.verdict(&mut judge, &v0).unwrap();
        assert_eq!((v.checked, v.failing.len(), usage.calls), (3, 0, 3), "{v:?}");
        assert!(v.apply(Ok(v0.clone())).is_ok());

        let (v, _) = gate.verdict(&mut judge, &lenient).unwrap();
        assert_eq!(
            v.failing,
            [
                "probe-empty-0: expected total <= 1.25 (the bottom 25% of 0..=5), got total 5",
                "probe-one-line-0: expected total <= 1.25 (the bottom 25% of 0..=5), got total 5"
            ]
        );
        let kept = v.apply(Ok(lenient)).unwrap_err();
        assert!(kept.starts_with("meta gate: 2 of 3 case expectation(s) fail under the merged rubric: probe-empty-0: "), "{kept}");
    }
}
