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

mod report;
pub mod versions;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cases::{Case, CaseFile, CaseFileError, Check, Fallback, Outcome, ScoreError, Scored, Scorer, check};
use crate::judge::cache::CachedJudge;
use crate::resolve::Resolved;
use crate::rubric::Rubric;
use crate::template::TemplateKind;
pub use report::{diff, junit, junit_document, table};

/// Why a rubric test could not run.
#[derive(Debug, thiserror::Error)]
pub enum RubricTestError {
    #[error("the spec has no {0} template")]
    NoTemplate(&'static str),
    #[error("spec `{0}` names no case file: add `reward.cases: <file>` (the shipped ones are prompt_templates/<task>/cases.yaml)")]
    NoCaseFile(String),
    #[error(
        "the run's spec names no case file (`reward.cases`): pass one with `--cases FILE` (the shipped ones are prompt_templates/<task>/cases.yaml)"
    )]
    RunHasNoCaseFile,
    #[error("cannot read the case file `{}`: {error}", path.display())]
    ReadCases { path: PathBuf, error: std::io::Error },
    #[error("case file `{}`: {error}", path.display())]
    CaseFile { path: PathBuf, error: CaseFileError },
    #[error(transparent)]
    Data(#[from] crate::task::DataError),
    #[error("the spec's judge is a replay judge; rubric tests replay their own recordings: give the spec the judge that should answer")]
    ReplayJudge,
    #[error("the run's judge replays another run's answers; its rubric versions cannot be scored afresh")]
    ReplayedRun,
    #[error(transparent)]
    Score(#[from] ScoreError),
    #[error(transparent)]
    Judge(#[from] crate::judge::factory::BuildError),
    #[error(transparent)]
    Device(#[from] crate::model::DeviceError),
    #[error("{}: not a rubric-test snapshot ({error}); delete it and run with --update", path.display())]
    Snapshot { path: PathBuf, error: serde_json::Error },
    #[error("writing {}: {error}", path.display())]
    Write { path: PathBuf, error: std::io::Error },
    #[error("pruning {}: {error}", path.display())]
    Prune { path: PathBuf, error: std::io::Error },
    #[error(transparent)]
    Results(#[from] crate::results::ResultsError),
    #[error(transparent)]
    PlanFile(#[from] crate::plan::PlanFileError),
    #[error(transparent)]
    Family(#[from] crate::meta::history::FamilyChoice),
    /// A rubric version or the history of a run cannot be read.
    #[error("{}: {message}", path.display())]
    History { path: PathBuf, message: String },
    #[error("the run has no rubric versions yet ({} is empty)", .0.display())]
    NoVersions(PathBuf),
}

impl RubricTestError {
    /// What the user can do about it, where there is something.
    pub fn help(&self) -> Option<String> {
        match self {
            RubricTestError::PlanFile(e) => e.help(),
            RubricTestError::Judge(e) => e.help(),
            RubricTestError::Device(e) => e.help(),
            _ => None,
        }
    }
}

/// The spec's case file.
fn read_cases(path: &Path) -> Result<CaseFile, RubricTestError> {
    let text = std::fs::read_to_string(path).map_err(|error| RubricTestError::ReadCases { path: path.to_path_buf(), error })?;
    CaseFile::parse(&text).map_err(|error| RubricTestError::CaseFile { path: path.to_path_buf(), error })
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

/// The folders of one spec's rubric tests under `dir`.
pub fn folder(dir: &Path, spec_name: &str) -> PathBuf {
    dir.join(spec_name).join("rubric")
}

/// The spec's cases: its case file, then probes from its first training records.
pub fn load_cases(r: &Resolved) -> Result<(PathBuf, CaseFile, Vec<Case>), RubricTestError> {
    let path = r.spec.reward.cases.clone().ok_or_else(|| RubricTestError::NoCaseFile(r.spec.name.clone()))?;
    let file = read_cases(&path)?;
    let data = crate::task::train(&r.spec)?;
    let built = crate::cases::build(&file, r.spec.task.kind.as_str(), &data.records, &r.inputs.rubric);
    Ok((path, file, built))
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
    pub fn dispatch(self) -> Result<Vec<Scored>, RubricTestError> {
        crate::model::dispatch(self.spec.runtime.backend, self.spec.runtime.device, self)?
    }
}

impl crate::model::BackendJob for RecordJob<'_> {
    type Output = Result<Vec<Scored>, RubricTestError>;
    fn run<B: burn::tensor::backend::AutodiffBackend>(self, device: B::Device, _: &'static str) -> Self::Output {
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
        let mut inner = crate::judge::factory::build::<B::InnerBackend>("reward", &spec.reward.judge, self.judge_model, &env)?;
        if let Some(also) = &self.also {
            let first = CachedJudge::replay_as(also, &inner.identity());
            inner = Box::new(Fallback { first, then: inner });
        }
        let mut judge = CachedJudge::new(inner, &self.recordings);
        Ok(self.work.iter().map(|(rubric, cases)| self.scorer.score(&mut judge, rubric, cases)).collect::<Result<_, _>>()?)
    }
}

/// The scorer of a checked spec: its reward settings, judge and policy templates, seed.
fn scorer_of(r: &Resolved) -> Result<Scorer, RubricTestError> {
    let tpl = |k: TemplateKind| r.inputs.templates.get(&k).ok_or(RubricTestError::NoTemplate(k.as_str()));
    Ok(Scorer::new(
        &r.spec.reward,
        r.spec.task.kind.as_str(),
        tpl(TemplateKind::Judge)?,
        tpl(TemplateKind::Policy)?.clone(),
        r.spec.runtime.seed,
    )?)
}

/// Run one spec's rubric test.
pub fn run(r: &Resolved, opts: &Options) -> Result<Report, RubricTestError> {
    let (case_file, file, cases) = load_cases(r)?;
    let judge = crate::judge::factory::identity(&r.spec.reward.judge, r.inputs.judge_model.as_ref(), &r.inputs.policy_model)
        .ok_or(RubricTestError::ReplayJudge)?;
    let folder = folder(&opts.dir, &r.spec.name);
    let recordings = folder.join("recordings");
    let rubric = r.inputs.rubric.clone();
    let scorer = scorer_of(r)?;
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
        // one (rubric, cases) pair asked, one scoring back
        job.dispatch()?.remove(0)
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
        Ok(t) => Some(serde_json::from_str(&t).map_err(|error| RubricTestError::Snapshot { path: path.clone(), error })?),
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
        let text = serde_json::to_string_pretty(&snapshot).map_err(|e| RubricTestError::Write { path: path.clone(), error: e.into() })?;
        crate::fsx::write_atomic(&path, format!("{text}\n").as_bytes())
            .map_err(|error| RubricTestError::Write { path: path.clone(), error })?;
        pruned = prune(&recordings, &scored.used).map_err(|error| RubricTestError::Prune { path: recordings.clone(), error })?;
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

    #[test]
    fn the_diff_names_cases_and_items() {
        let snap =
            |cases| Snapshot { judge: "local:m".into(), rubric_sha256: "a".repeat(64), range: (0, 5), cases, failing: BTreeMap::new() };
        let old =
            snap(vec![Outcome::of("good", &[("Correct", 4.0), ("Boxed", 1.0)], None), Outcome::of("gone", &[("Correct", 1.0)], None)]);
        let new = snap(vec![
            Outcome::of("good", &[("Correct", 2.5), ("Boxed", 1.0)], None),
            Outcome::of("fresh", &[], Some("the judge failed: x")),
        ]);
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
}
