//! Results: the directory of one run and its files, the public API that everything
//! downstream of a run reads (`eval/`, `report/`, `sweep/`). `run/` writes them.
//!
//! ```text
//! results/<name>/<run-id>/
//!   spec.yaml  resolved.yaml  plan.json  manifest.json  metrics.jsonl  events.out.tfevents.mpo
//!   samples/update-000001.jsonl   eval/update-000010.jsonl   rubrics/   judge-cache/
//!   checkpoints/update-000002/ ... LATEST
//!   inputs/   copies of the templates, case file and data the plan names (`inputs.rs`)
//! ```
//!
//! Every write is atomic (temp file + rename), jsonl files included (rewritten whole), so a
//! crash at any moment leaves every file either old or new.

pub mod checkpoint_files;
pub mod evals;
pub mod inputs;
pub mod metrics;
pub mod throughput;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value as J;

use crate::fsx::write_atomic;
use crate::meta::history::History;
use crate::model::generate::{Finish, Generated};
use crate::plan::Plan;
use crate::reward::score::{ItemScores, ScoreFailure};
use crate::reward::verify::Verdict;
use crate::reward::{Rollout, Scored};
pub use metrics::MetricsRow;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Running,
    Finished,
    Interrupted,
    Failed,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub mpo_version: String,
    pub plan_format: u32,
    pub run_id: String,
    pub name: String,
    pub spec_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
    pub backend: String,
    pub device: String,
    /// The GPU adapter the backend picked, as its driver names it (wgpu; absent on cpu).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<crate::model::Adapter>,
    /// The machine's CPU and the threads mpo computed on: what a wall-time estimate made from
    /// this run's throughput (`mpo plan`) says it was measured on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Host>,
    pub seed: u64,
    pub started: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub updates_done: u32,
    pub updates_planned: u32,
    /// Seconds to load models and run the first forward pass (GPU: kernel compilation).
    #[serde(default)]
    pub warmup_s: f64,
    /// Judge identities by role (never URLs or keys).
    #[serde(default)]
    pub judges: std::collections::BTreeMap<String, String>,
    /// Updates this run was resumed from, one entry per resume.
    #[serde(default)]
    pub resumed_from: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    /// The CPU's model name (`/proc/cpuinfo`), `unknown` where the system does not say.
    pub cpu: String,
    /// Threads in mpo's compute pool.
    pub threads: usize,
}

impl Host {
    pub fn this() -> Host {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| t.lines().find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, v)| v.trim().to_string())))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".into());
        Host { cpu, threads: rayon::current_num_threads() }
    }
}

/// Current UTC time as RFC 3339.
pub fn now() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // civil from days (Howard Hinnant)
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The git commit of the working directory, when it is a git checkout.
pub fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git").args(["rev-parse", "HEAD"]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string()).filter(|s| !s.is_empty())
}

/// A plan an older mpo wrote, in today's words, where the meaning carried over unchanged: runs
/// stay readable (`mpo report`, `mpo eval`, wall-time estimates) after a field is renamed.
/// Only reading: the run's file is not rewritten, and its run id is the one it was made under.
fn upgrade_plan(v: &mut J) {
    // 2026-12-05: `reward.normalize: true` was the summed points as a share of the rubric's
    // range (`aggregate: range_share`), `false` the summed points (`sum`)
    if let Some(r) = v.pointer_mut("/spec/reward").and_then(J::as_object_mut)
        && let Some(n) = r.remove("normalize")
    {
        let aggregate = if n.as_bool() == Some(true) { "range_share" } else { "sum" };
        r.entry("aggregate").or_insert_with(|| J::from(aggregate));
    }
}

/// A run's directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn for_plan(plan: &Plan) -> RunDir {
        RunDir { root: plan.spec.output.root.join(&plan.name).join(&plan.run_id) }
    }

    /// An existing run directory (one holding `plan.json`).
    pub fn open(root: &Path) -> Result<RunDir, ResultsError> {
        let dir = RunDir { root: root.to_path_buf() };
        if !dir.path("plan.json").is_file() {
            return Err(ResultsError::NotARun(root.display().to_string()));
        }
        Ok(dir)
    }

    /// The plan the run executes.
    pub fn plan(&self) -> Result<Plan, ResultsError> {
        let p = self.path("plan.json");
        let text = std::fs::read_to_string(&p).map_err(|e| ResultsError::read(&p, e))?;
        let mut v: J =
            serde_json::from_str(&text).map_err(|e| ResultsError::Read { path: p.display().to_string(), message: e.to_string() })?;
        upgrade_plan(&mut v);
        serde_json::from_value(v).map_err(|e| ResultsError::Read {
            path: p.display().to_string(),
            message: format!("not a plan of this mpo version ({e}); re-plan the spec"),
        })
    }

    /// The plan with its paths pointing at the run's copies of its inputs where they are
    /// intact (`inputs::localize`): what reading a run's inputs from anywhere starts from.
    pub fn local_plan(&self) -> Result<inputs::Local, ResultsError> {
        Ok(inputs::localize(self, self.plan()?))
    }

    /// The rows of `metrics.jsonl` (none when the run has not finished an update).
    pub fn metrics(&self) -> Result<Vec<MetricsRow>, ResultsError> {
        let p = self.path("metrics.jsonl");
        match std::fs::read_to_string(&p) {
            Ok(text) => metrics::parse(&text).map_err(|source| ResultsError::Metrics { path: p.display().to_string(), source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(ResultsError::read(&p, e)),
        }
    }

    /// Append one row to `metrics.jsonl` (atomically: the file is rewritten).
    pub fn append_metrics(&self, row: &MetricsRow) -> std::io::Result<()> {
        let p = self.path("metrics.jsonl");
        let mut text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        text.push_str(&serde_json::to_string(row).map_err(std::io::Error::other)?);
        text.push('\n');
        write_atomic(&p, text.as_bytes())
    }

    /// The saved checkpoint directories, by update.
    pub fn checkpoints(&self) -> BTreeMap<u32, PathBuf> {
        std::fs::read_dir(self.path("checkpoints"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let n = e.file_name().to_string_lossy().to_string();
                        n.strip_prefix("update-").and_then(|u| u.parse().ok()).map(|u| (u, e.path()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The rubric versions and meta steps.
    pub fn history(&self) -> History {
        History::new(&self.root)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn manifest(&self) -> Option<Manifest> {
        serde_json::from_str(&std::fs::read_to_string(self.path("manifest.json")).ok()?).ok()
    }

    pub fn write_manifest(&self, m: &Manifest) -> std::io::Result<()> {
        write_atomic(&self.path("manifest.json"), serde_json::to_string_pretty(m).map_err(std::io::Error::other)?.as_bytes())
    }

    pub fn write_json<T: Serialize>(&self, rel: &str, v: &T) -> std::io::Result<()> {
        write_atomic(&self.path(rel), serde_json::to_string_pretty(v).map_err(std::io::Error::other)?.as_bytes())
    }

    pub fn write_text(&self, rel: &str, text: &str) -> std::io::Result<()> {
        write_atomic(&self.path(rel), text.as_bytes())
    }

    /// Rows of a jsonl file (missing file: none).
    pub fn read_jsonl(&self, rel: &str) -> std::io::Result<Vec<J>> {
        let text = match std::fs::read_to_string(self.path(rel)) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).map_err(std::io::Error::other)).collect()
    }

    pub fn write_jsonl<T: Serialize>(&self, rel: &str, rows: &[T]) -> std::io::Result<()> {
        let mut text = String::new();
        for r in rows {
            text.push_str(&serde_json::to_string(r).map_err(std::io::Error::other)?);
            text.push('\n');
        }
        write_atomic(&self.path(rel), text.as_bytes())
    }

    /// Nothing here is ever deleted: what a run supersedes (rows and files after the checkpoint
    /// it resumes from, an earlier attempt it restarts over) moves into
    /// `superseded/<UTC time>-<reason>/`, keeping its path relative to the run directory.
    pub fn aside(&self, reason: &str) -> Aside {
        let stamp = now().replace(['-', ':'], "");
        let mut folder = self.path(&format!("superseded/{stamp}-{reason}"));
        let mut n = 1;
        while folder.exists() {
            n += 1;
            folder = self.path(&format!("superseded/{stamp}-{reason}-{n}"));
        }
        Aside { run: self.root.clone(), folder, moved: Vec::new() }
    }
}

/// A folder under `superseded/` receiving what a run set aside (created on first use).
#[derive(Debug)]
pub struct Aside {
    run: PathBuf,
    pub folder: PathBuf,
    /// Paths moved, relative to the run directory.
    pub moved: Vec<String>,
}

impl Aside {
    /// Move `rel` (a file or folder of the run) here, if it exists.
    pub fn take(&mut self, rel: &str) -> std::io::Result<()> {
        let from = self.run.join(rel);
        if std::fs::symlink_metadata(&from).is_err() {
            return Ok(());
        }
        let to = self.folder.join(rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::rename(&from, &to)?;
        self.moved.push(rel.to_string());
        Ok(())
    }

    /// Keep the lines of jsonl file `rel` that `keep` accepts; move the others here. Lines are
    /// moved as they were written, byte for byte.
    pub fn split_jsonl(&mut self, rel: &str, keep: impl Fn(&J) -> bool) -> std::io::Result<()> {
        let text = match std::fs::read_to_string(self.run.join(rel)) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let (mut kept, mut gone) = (String::new(), String::new());
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let row: J = serde_json::from_str(line).map_err(std::io::Error::other)?;
            let to = if keep(&row) { &mut kept } else { &mut gone };
            to.push_str(line);
            to.push('\n');
        }
        if gone.is_empty() {
            return Ok(());
        }
        write_atomic(&self.folder.join(rel), gone.as_bytes())?;
        write_atomic(&self.run.join(rel), kept.as_bytes())?;
        self.moved.push(format!("{rel} ({} lines)", gone.lines().count()));
        Ok(())
    }
}

/// One line of `samples/update-NNNNNN.jsonl`: a rollout with everything that went into its
/// reward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRow {
    pub id: String,
    /// Index of its record in the training data, and the record's own `id` field if it has one.
    pub record_index: usize,
    pub record_id: Option<J>,
    /// The policy prompt as rendered (before the chat template).
    pub question: String,
    pub response: String,
    pub tokens: usize,
    pub finish: Finish,
    /// The training reward (`None`: skipped) and where it came from.
    pub reward: Option<f64>,
    pub source: crate::reward::Source,
    pub judge_reward: Option<f64>,
    pub verifier: Option<f64>,
    pub verdicts: Vec<Verdict>,
    pub item_scores: Option<ItemScores>,
    pub failure: Option<ScoreFailure>,
    pub judge_prompt: Option<String>,
    /// Every raw judge answer, one per attempt.
    pub judge_answers: Vec<String>,
}

impl SampleRow {
    pub fn new(r: &Rollout, record_index: usize, g: &Generated, s: &Scored) -> Self {
        SampleRow {
            id: r.id.clone(),
            record_index,
            record_id: r.record.get("id").cloned(),
            question: r.question.clone(),
            response: g.text.clone(),
            tokens: g.tokens.len(),
            finish: g.finish,
            reward: s.reward,
            source: s.source,
            judge_reward: s.judge_reward,
            verifier: s.verifier_score,
            verdicts: s.verdicts.clone(),
            item_scores: s.item_scores.clone(),
            failure: s.failure.clone(),
            judge_prompt: s.judge_prompt.clone(),
            judge_answers: s.judge_answers.clone(),
        }
    }
}

/// A results directory that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error("{0} is not a run directory (no plan.json); a run directory is results/NAME/RUN_ID/")]
    NotARun(String),
    #[error("{path}: {message}")]
    Read { path: String, message: String },
    #[error("{path}: {source}")]
    Metrics { path: String, source: metrics::LineError },
}

impl ResultsError {
    fn read(p: &Path, e: std::io::Error) -> Self {
        ResultsError::Read { path: p.display().to_string(), message: e.to_string() }
    }
}

/// Redact credentials from URL-like strings anywhere in a JSON value (`scheme://user:pass@` ->
/// `scheme://***@`). Specs hold only environment variable names, but a user may paste a URL.
pub fn redact(v: &mut J) {
    match v {
        J::String(s) => {
            if let Some(i) = s.find("://")
                && let Some(at) = s[i + 3..].find('@')
                && !s[i + 3..i + 3 + at].contains('/')
            {
                *s = format!("{}***@{}", &s[..i + 3], &s[i + 3 + at + 1..]);
            }
        }
        J::Array(a) => a.iter_mut().for_each(redact),
        J::Object(o) => o.values_mut().for_each(redact),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed worked ablation (`results/math-meta-every-cpu`) was planned with
    /// `reward.normalize`; `mpo report` must still read it.
    #[test]
    fn a_plan_written_before_reward_aggregate_reads_with_its_meaning() {
        let plan = crate::plan::test_plan(&[]);
        let tmp = std::env::temp_dir().join(format!("mpo-upgrade-{}", std::process::id()));
        for (old, want) in [(true, crate::spec::Aggregate::RangeShare), (false, crate::spec::Aggregate::Sum)] {
            let mut v = serde_json::to_value(&plan).unwrap();
            let r = v.pointer_mut("/spec/reward").and_then(J::as_object_mut).unwrap();
            r.remove("aggregate");
            r.insert("normalize".into(), J::from(old));
            let dir = RunDir { root: tmp.clone() };
            std::fs::create_dir_all(&tmp).unwrap();
            dir.write_json("plan.json", &v).unwrap();
            let read = RunDir::open(&tmp).unwrap().plan().unwrap();
            assert_eq!(read.spec.reward.aggregate, want);
            assert_eq!(read.run_id, plan.run_id);
        }
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[test]
    fn redaction_and_time() {
        let mut v = serde_json::json!({"a": "http://user:secret@host:8000/v1", "b": ["https://host/v1"], "c": "plain@text"});
        redact(&mut v);
        assert_eq!(v["a"], "http://***@host:8000/v1");
        assert_eq!(v["b"][0], "https://host/v1");
        assert_eq!(v["c"], "plain@text");
        let t = now();
        assert_eq!(t.len(), 20);
        assert!(t.starts_with("20"));
    }

    #[test]
    fn what_is_set_aside_moves_whole_and_nothing_is_lost() {
        let dir = RunDir { root: std::env::temp_dir().join(format!("mpo-rd-{}", std::process::id())) };
        dir.write_text("metrics.jsonl", "{\"update\":1}\n{\"update\":2}\n{\"update\":3.1000000000000001}\n{\"update\":4}\n").unwrap();
        dir.write_text("samples/update-000004.jsonl", "x\n").unwrap();
        let mut aside = dir.aside("resume");
        aside.split_jsonl("metrics.jsonl", |r| r["update"].as_f64() <= Some(2.0)).unwrap();
        aside.take("samples/update-000004.jsonl").unwrap();
        aside.take("samples/update-000009.jsonl").unwrap(); // absent: nothing to do
        assert_eq!(dir.read_jsonl("metrics.jsonl").unwrap().len(), 2);
        let moved = RunDir { root: aside.folder.clone() };
        // moved byte for byte, not re-serialized
        assert_eq!(std::fs::read_to_string(moved.path("metrics.jsonl")).unwrap(), "{\"update\":3.1000000000000001}\n{\"update\":4}\n");
        assert_eq!(std::fs::read_to_string(moved.path("samples/update-000004.jsonl")).unwrap(), "x\n");
        assert!(!dir.path("samples/update-000004.jsonl").exists());
        assert_eq!(aside.moved, vec!["metrics.jsonl (2 lines)", "samples/update-000004.jsonl"]);
        // a second set-aside of the same second gets its own folder
        assert_ne!(dir.aside("resume").folder, aside.folder);
        let _ = std::fs::remove_dir_all(&dir.root);
    }
}
