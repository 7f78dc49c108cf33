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
    /// What was expected, as the report and `known_failures` name it: in the numbers of the
    /// rubric the case file was written for, so the same expectation has the same name under
    /// every rubric it is checked against.
    pub what: String,
    /// The same expectation in the numbers of the rubric checked, when its range differs from
    /// the one the case file was written for (`None`: `what` says it).
    pub means: Option<String>,
    /// What was measured, when it did not hold.
    pub got: Option<String>,
    /// Why a failure is accepted: the reason given in the case file's `known_failures`, or
    /// that the committed snapshot records it.
    pub known: Option<String>,
    /// It failed because a case it reads has no score (the judge failed, or no recording):
    /// not measured, rather than measured wrong.
    pub unmeasured: bool,
}

impl Check {
    pub fn holds(&self) -> bool {
        self.got.is_none()
    }
    /// The key `known_failures` lists it under.
    pub fn key(&self) -> String {
        format!("{}: {}", self.case, self.what)
    }
    /// What was expected, in the numbers of the rubric checked.
    pub fn expected(&self) -> &str {
        self.means.as_deref().unwrap_or(&self.what)
    }
    /// `case: expected ..., got ...`.
    pub fn line(&self) -> String {
        match &self.got {
            Some(got) => format!("{}: expected {}, got {got}", self.case, self.expected()),
            None => format!("{}: {} holds", self.case, self.expected()),
        }
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

/// A judge that answers from `first` and asks `then` only what `first` has not recorded.
pub(crate) struct Fallback<'a> {
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

/// `meta.gate`: a merged rubric is scored on the cases (with the run's judge) beside the rubric
/// in force, and may become the next version unless it does worse on some case: an
/// expectation that holds under the rubric in force and fails under the merged one (and is not
/// listed in the case file's `known_failures`) keeps the current rubric.
///
/// Every expectation is read on scale-free terms (see [`Reading`]): the case file's numbers
/// were written for the run's initial rubric (v0), and are checked at the same shares of each
/// rubric's range, so a rubric that rescales or renames its items is compared on what it
/// ranks, not on its numbers.
pub struct Gate {
    file: CaseFile,
    /// Built once from rubric v0, as `mpo rubric test` builds them: every candidate is
    /// measured on the same cases.
    cases: Vec<Case>,
    scorer: Scorer,
    /// The rubric the case file's numbers are read against.
    v0: Rubric,
    /// Checks of the rubrics scored last (the one in force and the last candidate), by the
    /// sha256 of their markdown, when every case was scored: the rubric in force is scored once
    /// while it stays in force, and an accepted candidate is not scored again as the next
    /// step's rubric in force.
    scored: Vec<(String, Vec<Check>)>,
}

fn rubric_sha(r: &Rubric) -> String {
    crate::hash::sha256_hex(r.to_markdown().as_bytes())
}

impl Gate {
    /// `records`: the task's training records the probes are built from; `v0`: the run's
    /// initial rubric (the keyword-stuffing probe stuffs its words, and the case file's numbers
    /// are read against its ranges).
    pub fn new(file: CaseFile, records: &[serde_json::Value], task: &str, v0: &Rubric, scorer: Scorer) -> Self {
        let cases = cases::build(&file, task, records, v0);
        Gate { file, cases, scorer, v0: v0.clone(), scored: Vec::new() }
    }

    /// The expectations of `rubric`, scored with `judge` unless it was scored last time.
    fn checks(&mut self, judge: &mut dyn Judge, rubric: &Rubric, usage: &mut TokenUsage) -> Result<Vec<Check>, String> {
        // Another judge scores another way: the cache holds a judge's own scorings only.
        let key = format!("{}\n{}", judge.identity(), rubric_sha(rubric));
        if let Some((_, c)) = self.scored.iter().find(|(k, _)| *k == key) {
            return Ok(c.clone());
        }
        let s = self.scorer.score(judge, rubric, &self.cases)?;
        usage.add(&s.usage);
        let reading = Reading { written_for: &self.v0, items_required: false };
        let c = check_read(&self.file, &self.cases, &s.outcomes, rubric, reading);
        // A case the judge failed on may have met a passing fault (a timeout): asked again next
        // time (the judge cache answers what the judge did answer).
        if s.outcomes.iter().all(|o| o.failure.is_none()) {
            self.scored.push((key, c.clone()));
        }
        Ok(c)
    }

    /// `candidate` against `in_force` on the cases, and the judge's token usage (nothing is
    /// asked for a rubric scored by the previous call).
    pub fn verdict(
        &mut self,
        judge: &mut dyn Judge,
        in_force: &Rubric,
        candidate: &Rubric,
    ) -> Result<(crate::meta::GateVerdict, TokenUsage), String> {
        let mut usage = TokenUsage::default();
        let before = self.checks(judge, in_force, &mut usage)?;
        let now = self.checks(judge, candidate, &mut usage)?;
        // Keep only these two: the next step's rubric in force is one of them.
        let keep = [rubric_sha(in_force), rubric_sha(candidate)];
        self.scored.retain(|(k, _)| keep.iter().any(|s| k.ends_with(s.as_str())));
        let held: BTreeMap<String, &Check> = before.iter().map(|c| (c.key(), c)).collect();
        let mut v = crate::meta::GateVerdict { checked: now.len(), ..Default::default() };
        for c in &now {
            let was = held.get(&c.key());
            // A check either side could not measure cannot show the candidate does no worse:
            // it refuses (unless known to fail) rather than pass or blame as a regression.
            if c.unmeasured || (was.is_some_and(|b| b.unmeasured) && !c.holds()) {
                if c.known.is_none() {
                    v.unmeasured.push(c.line());
                }
                continue;
            }
            match (was.map(|b| b.holds()), c.holds()) {
                (Some(true), false) if c.known.is_none() => v.regressed.push(c.line()),
                (Some(false), false) => v.failing_both.push(c.line()),
                (Some(false), true) => v.fixed.push(c.line()),
                _ => {}
            }
        }
        // Expectations of items the candidate dropped no longer apply; said, not hidden.
        let kept: BTreeSet<String> = now.iter().map(Check::key).collect();
        v.dropped =
            before.iter().filter(|b| b.holds() && !kept.contains(&b.key())).map(|b| format!("{}: {}", b.case, b.expected())).collect();
        Ok((v, usage))
    }
}

pub(crate) fn fmt(x: f64) -> String {
    let s = format!("{x:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

/// How a case file's numbers are read against the rubric being checked.
///
/// A case file's raw numbers (`expect.total`, `expect.items`) are written for one rubric:
/// `written_for` (a spec's own rubric; in a run, its initial rubric v0). Under another rubric
/// they are read as shares of that rubric's ranges and checked at the same shares of the
/// rubric under test: a total as a share of the whole range (min..max summed over items), an
/// item as a share of its own min..max. Probes are a share of the range already, and `order`
/// pairs compare totals, which no rescaling changes. Under `written_for` itself every number
/// is read as written.
#[derive(Debug, Clone, Copy)]
pub struct Reading<'a> {
    /// The rubric the case file's numbers were written for.
    pub written_for: &'a Rubric,
    /// An item expectation on an item the rubric under test lacks fails (`mpo rubric test`:
    /// the spec's own rubric must have the items its case file names); when false it does not
    /// apply (a meta step may drop or rename items: expectations follow the items a rubric
    /// keeps, matched by normalised name).
    pub items_required: bool,
}

/// `v` at the same share of `to` as it is of `from` (as is when the ranges are the same).
fn rescale(v: f64, from: (f64, f64), to: (f64, f64)) -> f64 {
    if from == to || from.1 <= from.0 {
        return v;
    }
    to.0 + (v - from.0) / (from.1 - from.0) * (to.1 - to.0)
}

/// Every expectation of `cases` against `outcomes` under `rubric`, the case file's numbers
/// read as written (`rubric` is the one they were written for).
pub fn check(file: &CaseFile, cases: &[Case], outcomes: &[Outcome], rubric: &Rubric) -> Vec<Check> {
    check_read(file, cases, outcomes, rubric, Reading { written_for: rubric, items_required: true })
}

/// Every expectation of `cases` against `outcomes` under `rubric`, the case file's numbers
/// read as `reading` says.
pub fn check_read(file: &CaseFile, cases: &[Case], outcomes: &[Outcome], rubric: &Rubric, reading: Reading) -> Vec<Check> {
    let range = |r: &Rubric| (r.min_score() as f64, r.max_score() as f64);
    let (here, there) = (range(rubric), range(reading.written_for));
    let item = |r: &Rubric, name: &str| {
        let key = crate::rubric::normalize_name(name);
        r.items.iter().find(|i| crate::rubric::normalize_name(&i.name) == key).map(|i| (i.min as f64, i.max as f64))
    };
    let by_id: BTreeMap<&str, &Outcome> = outcomes.iter().map(|o| (o.id.as_str(), o)).collect();
    let unscored = |o: &Outcome| format!("no score ({})", o.failure.as_deref().unwrap_or("no answer"));
    let mut out = Vec::new();
    let mut push = |case: &str, what: String, means: Option<String>, got: Option<String>| {
        // `unscored` below is the only source of "no score (": a failure it wrote is unmeasured.
        let unmeasured = got.as_deref().is_some_and(|g| g.contains("no score ("));
        let mut c = Check { case: case.into(), what, means, got, known: None, unmeasured };
        c.known = file.known_failures.get(&c.key()).or_else(|| file.known_failures.get(case)).cloned();
        out.push(c);
    };
    let span = |(a, b): (f64, f64)| format!("{}..={}", fmt(a), fmt(b));
    for c in cases {
        let Some(o) = by_id.get(c.id.as_str()) else { continue };
        // `name in a..=b` as written, and what it means in `to` when that differs from `from`.
        let within = |name: &str, v: Option<f64>, [a, b]: [f64; 2], from: (f64, f64), to: (f64, f64)| {
            let what = format!("{name} in {}", span((a, b)));
            let (lo, hi) = (rescale(a, from, to), rescale(b, from, to));
            let means = (from != to)
                .then(|| format!("{name} in {} of {} (the case file's {} of {})", span((lo, hi)), span(to), span((a, b)), span(from)));
            let got = match v {
                None => Some(unscored(o)),
                Some(v) if v < lo - 1e-9 || v > hi + 1e-9 => Some(format!("{name} {}", fmt(v))),
                Some(_) => None,
            };
            (what, means, got)
        };
        if let Some(t) = c.expect.total {
            let (w, m, g) = within("total", o.total, t, there, here);
            push(&c.id, w, m, g);
        }
        for (name, r) in &c.expect.items {
            let label = format!("`{name}`");
            match (item(reading.written_for, name), item(rubric, name)) {
                (Some(from), Some(to)) => {
                    let key = crate::rubric::normalize_name(name);
                    let v = o.total.map(|_| o.items.iter().find(|(n, _)| crate::rubric::normalize_name(n) == key).map(|(_, s)| *s));
                    match v {
                        Some(None) => {
                            push(&c.id, format!("{label} in {}", span((r[0], r[1]))), None, Some(format!("no score for {label}")))
                        }
                        v => {
                            let (w, m, g) = within(&label, v.flatten(), *r, from, to);
                            push(&c.id, w, m, g);
                        }
                    }
                }
                (_, None) if reading.items_required => {
                    push(&c.id, format!("item {label}"), None, Some("the rubric in force has no such item".into()))
                }
                // An item the rubric under test (or the one the file was written for) does not
                // have: the expectation does not apply.
                _ => {}
            }
        }
        if let Some(share) = c.at_most {
            let bound = |(lo, hi): (f64, f64)| {
                format!("total <= {} (the bottom {:.0}% of {})", fmt(lo + share * (hi - lo)), share * 100.0, span((lo, hi)))
            };
            let limit = here.0 + share * (here.1 - here.0);
            let got = match o.total {
                None => Some(unscored(o)),
                Some(t) if t > limit + 1e-9 => Some(format!("total {}", fmt(t))),
                Some(_) => None,
            };
            push(&c.id, bound(there), (there != here).then(|| bound(here)), got);
        }
    }
    for [a, b] in &file.order {
        let (Some(x), Some(y)) = (by_id.get(a.as_str()), by_id.get(b.as_str())) else {
            // A case without an outcome (no recorded answer) is reported as such, not here.
            let exists = |id: &String| cases.iter().any(|c| &c.id == id);
            if !(exists(a) && exists(b)) {
                push(a, format!("above `{b}`"), None, Some("the case file's `order` names a case that does not exist".into()));
            }
            continue;
        };
        let got = match (x.total, y.total) {
            (Some(p), Some(q)) if p > q => None,
            (Some(p), Some(q)) => Some(format!("{} vs {}", fmt(p), fmt(q))),
            _ => Some(format!("{} vs {}", x.total.map_or_else(|| unscored(x), fmt), y.total.map_or_else(|| unscored(y), fmt))),
        };
        push(a, format!("above `{b}`"), None, got);
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
    /// A run directory's rubric family (`meta.partition_by`) to score.
    pub family: Option<String>,
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
    /// Another judge-cache folder read (never written) before the judge is asked: a run's own.
    pub also: Option<PathBuf>,
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
        let mut inner = crate::judge::factory::build::<B::InnerBackend>("reward", &spec.reward.judge, self.judge_model, &env)
            .map_err(|e| e.to_string())?;
        if let Some(also) = &self.also {
            let first = CachedJudge::replay_as(also, &inner.identity());
            inner = Box::new(Fallback { first, then: inner });
        }
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
            also: None,
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
        rubric_sha256: crate::hash::sha256_hex(rubric.to_markdown().as_bytes()),
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

    /// A gate on one good case (with an item expectation) and two probes, written for `v0`, and a
    /// judge that follows whatever rubric it is shown: full marks on every item for a right
    /// answer (or under a rubric that awards every answer), the bottom of every item otherwise.
    fn gate_and_judge() -> (Gate, Rubric, impl Judge) {
        use crate::judge::scripted::ScriptedJudge;
        use crate::spec::{AnswerMode, Extraction, FailureSpec, JudgeSpec};
        let spec = RewardSpec {
            judge: JudgeSpec::default(),
            rubric: "r.md".into(),
            prompt: "j.j2".into(),
            extraction: Extraction::default(),
            answer: AnswerMode::Free,
            aggregate: crate::spec::Aggregate::RangeShare,
            failure: FailureSpec::default(),
            verifiers: vec![],
            mix: MixSpec::Coin { verifier_prob: 1.0, chunk: 1 },
            cases: None,
        };
        let tf = |name: &str, text: &str| TemplateFile { path: name.into(), text: text.into(), sha256: String::new() };
        let judge_t = tf("judge", "Rubric:\n{{ rubric }}\nQ: {{ question }}\nA: {{ response }}");
        let scorer = Scorer::new(&spec, "math", &judge_t, tf("policy", "{{ problem }}"), 7).unwrap();
        let file = CaseFile::parse(
            "probes: {records: 1, kinds: [empty, one-line]}\ncases:\n  - {id: good, record: {problem: '2+2?', answer: '4'}, response: 'So \\boxed{4}.', expect: {total: [3, 5], items: {Work: [1, 1]}}}\n",
        )
        .unwrap();
        let v0 =
            Rubric::parse("## Correct (0-4)\n- Award 4 when the answer is right.\n\n## Work (0-1)\n- Award 1 when the steps are shown.\n")
                .unwrap();
        let gate = Gate::new(file, &[serde_json::json!({"problem": "3+4?", "answer": "7"})], "math", &v0, scorer);
        let judge = ScriptedJudge::new("test:follows-the-rubric", |q: &JudgeRequest, _| {
            let full = q.prompt.contains("every answer") || q.prompt.contains("\\boxed{4}");
            let rubric = q.prompt.split("\nQ: ").next().unwrap_or_default().trim_start_matches("Rubric:\n");
            let r = Rubric::parse(rubric).expect("the prompt shows the rubric");
            let lines: Vec<String> = r.items.iter().map(|i| format!("{}: {}", i.name, if full { i.max } else { i.min })).collect();
            Ok(JudgeResponse::answer(lines.join("\n")))
        });
        (gate, v0, judge)
    }

    /// `r` with every item's range (and its award lines' points) doubled.
    fn doubled(r: &Rubric) -> Rubric {
        let mut d = r.clone();
        for it in &mut d.items {
            (it.min, it.max) = (2 * it.min, 2 * it.max);
        }
        Rubric::parse(&d.to_markdown().replace("Award 4", "Award 8").replace("Award 1", "Award 2")).unwrap()
    }

    #[test]
    fn the_meta_gate_rejects_a_rubric_that_lets_a_probe_through() {
        let (mut gate, v0, mut judge) = gate_and_judge();
        let lenient = Rubric::parse("## Correct (0-4)\n- Award 4 to every answer.\n\n## Work (0-1)\n- Award 1 always.\n").unwrap();
        // Every case goes to the judge, even under a mix that gives every rollout to the verifier;
        // the rubric in force is scored once, not again as the candidate.
        let (v, usage) = gate.verdict(&mut judge, &v0, &v0).unwrap();
        assert_eq!((v.checked, v.regressed.len(), v.failing_both.len(), usage.calls), (4, 0, 0, 3), "{v:?}");
        assert!(v.apply(Ok(v0.clone())).is_ok());

        // The rubric in force is not asked about again while it stays in force.
        let (v, usage) = gate.verdict(&mut judge, &v0, &lenient).unwrap();
        assert_eq!(usage.calls, 3, "only the candidate is scored");
        assert_eq!(
            v.regressed,
            [
                "probe-empty-0: expected total <= 1.25 (the bottom 25% of 0..=5), got total 5",
                "probe-one-line-0: expected total <= 1.25 (the bottom 25% of 0..=5), got total 5"
            ]
        );
        let kept = v.apply(Ok(lenient.clone())).unwrap_err();
        assert!(
            kept.starts_with(
                "meta gate: 2 of 4 case expectation(s) hold under the rubric in force and fail under the merged rubric: probe-empty-0: "
            ),
            "{kept}"
        );

        // Doubled, the lenient rubric is refused all the same (the bottom quarter of 0..=10).
        let (v, _) = gate.verdict(&mut judge, &v0, &doubled(&lenient)).unwrap();
        assert_eq!(v.regressed[0], "probe-empty-0: expected total <= 2.5 (the bottom 25% of 0..=10), got total 10");
        assert!(v.apply(Ok(lenient.clone())).is_err());

        // Under a lenient rubric in force, the same probes fail under both: nothing regresses,
        // and going back to v0 fixes them.
        let (v, _) = gate.verdict(&mut judge, &lenient, &lenient).unwrap();
        assert!(v.regressed.is_empty() && v.failing_both.len() == 2, "{v:?}");
        let (v, _) = gate.verdict(&mut judge, &lenient, &v0).unwrap();
        assert!(v.regressed.is_empty() && v.fixed.len() == 2, "{v:?}");
    }

    #[test]
    fn a_rubric_with_every_range_doubled_passes_the_gate_whenever_the_original_does() {
        let (mut gate, v0, mut judge) = gate_and_judge();
        let lenient = Rubric::parse("## Correct (0-4)\n- Award 4 to every answer.\n\n## Work (0-1)\n- Award 1 always.\n").unwrap();
        for in_force in [v0.clone(), doubled(&v0), lenient.clone()] {
            for candidate in [v0.clone(), lenient.clone()] {
                let (plain, _) = gate.verdict(&mut judge, &in_force, &candidate).unwrap();
                let (twice, _) = gate.verdict(&mut judge, &in_force, &doubled(&candidate)).unwrap();
                assert_eq!(plain.regressed.is_empty(), twice.regressed.is_empty(), "{plain:?}\n{twice:?}");
                assert_eq!(plain.regressed.len(), twice.regressed.len());
            }
        }
        // The doubled v0 passes, where the absolute expectations of the case file fail it.
        let (v, _) = gate.verdict(&mut judge, &v0, &doubled(&v0)).unwrap();
        assert!(v.regressed.is_empty() && v.failing_both.is_empty(), "{v:?}");
        let scored = gate.scorer.score(&mut judge, &doubled(&v0), &gate.cases).unwrap();
        let absolute = check(&gate.file, &gate.cases, &scored.outcomes, &doubled(&v0));
        let failing: Vec<String> = absolute.iter().filter(|c| !c.holds()).map(Check::line).collect();
        assert_eq!(failing, ["good: expected total in 3..=5, got total 10", "good: expected `Work` in 1..=1, got `Work` 2"]);
        // Read against v0, the same outcomes hold, at the same shares of the doubled ranges.
        let scaled =
            check_read(&gate.file, &gate.cases, &scored.outcomes, &doubled(&v0), Reading { written_for: &v0, items_required: false });
        assert!(scaled.iter().all(Check::holds), "{scaled:?}");
        assert_eq!(scaled[0].expected(), "total in 6..=10 of 0..=10 (the case file's 3..=5 of 0..=5)");
        assert_eq!(scaled[0].key(), "good: total in 3..=5", "keys (and known_failures) keep the case file's numbers");
    }

    #[test]
    fn a_case_the_judge_could_not_score_refuses_rather_than_passes_or_blames() {
        let (mut gate, v0, _) = gate_and_judge();
        let candidate = doubled(&v0);
        // Scores v0 fully on every case; under the candidate it answers nothing usable.
        let mut flaky = crate::judge::scripted::ScriptedJudge::new("test:flaky", |q: &JudgeRequest, _| {
            if q.prompt.contains("(0-8)") {
                return Ok(JudgeResponse::answer("I would rather not say."));
            }
            Ok(JudgeResponse::answer("Correct: 4\nWork: 1"))
        });
        let (v, _) = gate.verdict(&mut flaky, &v0, &candidate).unwrap();
        assert!(v.regressed.is_empty() && !v.unmeasured.is_empty(), "{v:?}");
        let e = v.apply(Ok(candidate.clone())).unwrap_err();
        assert!(e.contains("could not be measured"), "{e}");
        // and an unmeasured rubric in force does not wave a failing candidate through as
        // `failing_both`
        let (v, _) = gate.verdict(&mut flaky, &candidate, &v0).unwrap();
        assert!(v.failing_both.is_empty(), "{v:?}");
    }

    #[test]
    fn item_expectations_follow_the_items_a_rubric_keeps() {
        let (mut gate, v0, mut judge) = gate_and_judge();
        // `Work` renamed: its expectation no longer applies, which is no regression.
        let renamed =
            Rubric::parse("## Correct (0-4)\n- Award 4 when the answer is right.\n\n## Steps shown (0-1)\n- Award 1 when shown.\n")
                .unwrap();
        let (v, _) = gate.verdict(&mut judge, &v0, &renamed).unwrap();
        assert!(v.regressed.is_empty(), "{v:?}");
        assert_eq!(v.checked, 3, "the item expectation is not checked under a rubric without the item");
        assert_eq!(v.dropped, vec!["good: `Work` in 1..=1".to_string()], "the dropped expectation is said");
        // Kept under another spelling (normalised names match) with a wider range, and scored
        // at its bottom: a regression, named on the item's own range.
        let stingy =
            Rubric::parse("## Correct (0-4)\n- Award 4 when the answer is right.\n\n## WORK (0-3)\n- Award 3 when the steps are shown.\n")
                .unwrap();
        // The same judge scores v0 as before (Work full on the good case) and gives WORK 0
        // under the stingy rubric: a regression of the candidate, not of the judge.
        let mut stingy_judge = crate::judge::scripted::ScriptedJudge::new("test:stingy", |q: &JudgeRequest, _| {
            let right = q.prompt.contains("\\boxed{4}");
            let stingy = q.prompt.contains("## WORK (0-3)");
            Ok(JudgeResponse::answer(match (right, stingy) {
                (true, true) => "Correct: 4\nWORK: 0",
                (true, false) => "Correct: 4\nWork: 1",
                (false, true) => "Correct: 0\nWORK: 0",
                (false, false) => "Correct: 0\nWork: 0",
            }))
        });
        let (v, _) = gate.verdict(&mut stingy_judge, &v0, &stingy).unwrap();
        assert!(v.failing_both.is_empty() && v.unmeasured.is_empty(), "v0 was rescored by this judge: {v:?}");
        assert!(
            v.regressed.contains(&"good: expected `Work` in 3..=3 of 0..=3 (the case file's 1..=1 of 0..=1), got `Work` 0".to_string()),
            "{v:?}"
        );
    }
}
