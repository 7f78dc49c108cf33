//! `inputs/`: copies of the files a run's plan names (its templates, the case file, the chat
//! template, data files), written into the run folder when the run starts. What a run's later
//! analysis reads (`mpo eval RUN`, `mpo rubric test RUN`, `mpo eval --elo`) then needs nothing
//! but the folder: copied off a cluster, read from another directory.
//!
//! ```text
//! inputs/index.json                  per file: name, the planned path, sha256, the copy
//! inputs/templates/judge/judge.j2    inputs/cases/cases.yaml    inputs/data/test/test.jsonl ...
//! ```
//!
//! Models are not copied (they are fetched by name, or are the user's own files). The plan is
//! not changed, so the run id is not either: a reader [`localize`]s the plan it read. A path
//! whose copy is intact (its sha256 is the plan's, or for a file the plan does not hash, the
//! index's) then points at the copy; a path without one keeps the planned path (relative to
//! the directory the run was launched from) when that file is there and unchanged; anything
//! else is missing, and [`Local::require`] names it and what to do.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ResultsError, RunDir};
use crate::plan::Plan;

/// The folder of the copies, in a run folder.
pub const FOLDER: &str = "inputs";

/// One copied file (a row of `inputs/index.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// What the run reads it as: `templates/<kind>`, `cases`, `chat_template`, `data/<split>`.
    pub name: String,
    /// The path the plan names.
    pub path: String,
    pub sha256: String,
    /// The copy, relative to the run folder.
    pub copy: String,
}

/// A file the plan names, and the content hash the plan holds for it.
struct Named {
    name: String,
    path: PathBuf,
    sha256: Option<String>,
}

impl Named {
    fn copy(&self) -> String {
        let file = self.path.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_else(|| "file".into());
        format!("{FOLDER}/{}/{file}", self.name)
    }
}

/// Every file `plan` names.
fn named(plan: &Plan) -> Vec<Named> {
    let s = &plan.spec;
    let mut v: Vec<Named> = plan
        .inputs
        .templates
        .iter()
        .map(|(kind, f)| Named { name: format!("templates/{kind}"), path: PathBuf::from(&f.path), sha256: Some(f.sha256.clone()) })
        .collect();
    match (&plan.inputs.cases, &s.reward.cases) {
        (Some(f), _) => v.push(Named { name: "cases".into(), path: PathBuf::from(&f.path), sha256: Some(f.sha256.clone()) }),
        (None, Some(p)) => v.push(Named { name: "cases".into(), path: p.clone(), sha256: None }),
        (None, None) => {}
    }
    if let Some(p) = &s.policy.chat_template {
        v.push(Named { name: "chat_template".into(), path: p.clone(), sha256: None });
    }
    let splits = [
        ("train", Some(&s.task.train), Some(&plan.inputs.train)),
        ("test", s.task.test.as_ref(), plan.inputs.test.as_ref()),
        ("transfer", s.task.transfer.as_ref(), plan.inputs.transfer.as_ref()),
    ];
    for (split, src, info) in splits {
        if let Some(p) = src.and_then(|d| d.path.as_ref()) {
            v.push(Named { name: format!("data/{split}"), path: p.clone(), sha256: info.map(|i| i.sha256.clone()) });
        }
    }
    v
}

fn sha256(bytes: &[u8]) -> String {
    crate::hash::sha256_hex(bytes)
}

/// Copy the files `plan` names into `dir/inputs/` (read from their planned paths), unless
/// `inputs/index.json` is there already: the copies are made once, and nothing there is ever
/// overwritten. Returns the files that could not be copied, with the reason (a file that no
/// longer matches the plan is not copied: the run stops on it anyway).
pub fn store(dir: &RunDir, plan: &Plan) -> std::io::Result<Vec<String>> {
    let index = dir.path(&format!("{FOLDER}/index.json"));
    if index.exists() {
        return Ok(Vec::new());
    }
    let (mut entries, mut skipped) = (Vec::new(), Vec::new());
    for n in named(plan) {
        let bytes = match std::fs::read(&n.path) {
            Ok(b) => b,
            Err(e) => {
                skipped.push(format!("{}: {e}", n.path.display()));
                continue;
            }
        };
        let sha = sha256(&bytes);
        if n.sha256.as_ref().is_some_and(|planned| *planned != sha) {
            skipped.push(format!("{}: changed since the plan was made", n.path.display()));
            continue;
        }
        let copy = n.copy();
        let target = dir.path(&copy);
        match std::fs::read(&target) {
            Ok(old) if old == bytes => {}
            Ok(_) => {
                skipped.push(format!("{}: another file is already at {}", n.path.display(), target.display()));
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => crate::fsx::write_atomic(&target, &bytes)?,
            // Something is there that cannot be read: never write over it.
            Err(e) => {
                skipped.push(format!("{}: {} cannot be read ({e}), so it is not replaced", n.path.display(), target.display()));
                continue;
            }
        }
        entries.push(Entry { name: n.name, path: n.path.display().to_string(), sha256: sha, copy });
    }
    let text = serde_json::to_string_pretty(&entries).map_err(std::io::Error::other)?;
    crate::fsx::write_atomic(&index, format!("{text}\n").as_bytes())?;
    Ok(skipped)
}

/// The copies a run folder holds (none when it was written before copies were made).
pub fn index(dir: &RunDir) -> Vec<Entry> {
    std::fs::read_to_string(dir.path(&format!("{FOLDER}/index.json"))).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default()
}

/// An input that is neither copied in the run folder nor at its planned path (as planned).
#[derive(Debug, Clone, PartialEq)]
pub struct Missing {
    pub name: String,
    /// The planned path.
    pub path: PathBuf,
    /// Where the copy belongs.
    pub copy: PathBuf,
    /// Why neither serves: the copy's fault, then the planned file's.
    pub why: [NotIntact; 2],
}

/// Why a file is not the one a run read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NotIntact {
    #[error("{}: {message}", path.display())]
    Unreadable { path: PathBuf, message: String },
    #[error("{} has changed since the run (sha256 {}.., the run's {}..)", path.display(), &now[..12.min(now.len())], &planned[..12.min(planned.len())])]
    Changed { path: PathBuf, now: String, planned: String },
}

/// A run's plan with its paths pointing at what this process can read.
#[derive(Debug, Clone)]
pub struct Local {
    pub plan: Plan,
    pub missing: Vec<Missing>,
    /// The run folder.
    pub root: PathBuf,
}

impl Local {
    /// An error naming every input among `names` that is missing, and what to do (names the
    /// plan does not have, such as the data of a generated split, are not needed).
    pub fn require(&self, names: &[&str]) -> Result<(), ResultsError> {
        let gone: Vec<&Missing> = self.missing.iter().filter(|m| names.contains(&m.name.as_str())).collect();
        if gone.is_empty() {
            return Ok(());
        }
        let cwd = std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_else(|_| "?".into());
        let mut message = format!(
            "{} file(s) the run read are neither copied in the run folder nor where its plan names them \
             (paths relative to the directory the run was launched from; this command runs in {cwd}):",
            gone.len()
        );
        for m in &gone {
            message.push_str(&format!("\n  - {} `{}`: {}; {}", m.name, m.path.display(), m.why[0], m.why[1]));
        }
        message.push_str(
            "\n  put a copy of each (the file the run read) at the first path named, or run this command from the directory the run was launched from",
        );
        Err(ResultsError::Read { path: self.root.display().to_string(), message })
    }
}

/// Point the paths of `plan` (the plan of the run in `dir`) at the run's copies where they are
/// intact, keep the planned path where the file there is as planned, and list the rest. The
/// output root becomes the folder holding the run folder's `<name>/<run id>/` (so caches such
/// as `.base-eval/` go beside the run, wherever it was copied to). The run id is kept.
pub fn localize(dir: &RunDir, plan: Plan) -> Local {
    let index = index(dir);
    let mut plan = plan;
    let mut missing = Vec::new();
    for n in named(&plan) {
        let entry = index.iter().find(|e| e.name == n.name);
        let want = n.sha256.clone().or_else(|| entry.map(|e| e.sha256.clone()));
        let copy = dir.path(&entry.map(|e| e.copy.clone()).unwrap_or_else(|| n.copy()));
        let intact = |p: &Path| -> Result<(), NotIntact> {
            let bytes = std::fs::read(p).map_err(|e| NotIntact::Unreadable { path: p.to_path_buf(), message: e.to_string() })?;
            match &want {
                Some(w) if sha256(&bytes) != *w => {
                    Err(NotIntact::Changed { path: p.to_path_buf(), now: sha256(&bytes), planned: w.clone() })
                }
                _ => Ok(()),
            }
        };
        match intact(&copy) {
            Ok(()) => set_path(&mut plan, &n.name, copy),
            Err(no_copy) => {
                if let Err(no_file) = intact(&n.path) {
                    missing.push(Missing { name: n.name, path: n.path, copy, why: [no_copy, no_file] });
                }
            }
        }
    }
    let root = std::fs::canonicalize(&dir.root).unwrap_or_else(|_| dir.root.clone());
    let parent = root.parent().map(Path::to_path_buf).unwrap_or_default();
    let named_after = parent.file_name().is_some_and(|f| f.to_string_lossy() == plan.name);
    plan.spec.output.root = if named_after { parent.parent().map(Path::to_path_buf).unwrap_or_default() } else { parent };
    Local { plan, missing, root: dir.root.clone() }
}

fn set_path(plan: &mut Plan, name: &str, p: PathBuf) {
    let s = &mut plan.spec;
    if let Some(kind) = name.strip_prefix("templates/") {
        if let Some(f) = plan.inputs.templates.get_mut(kind) {
            f.path = p.display().to_string();
        }
        match kind {
            "policy" => s.task.prompt = p,
            "rubric" => s.reward.rubric = p,
            "judge" => s.reward.prompt = p,
            "pairwise" => s.eval.elo.prompt = Some(p),
            "instrument_rubric" | "instrument_judge" => {
                if let Some(i) = s.eval.instrument.as_mut() {
                    if kind == "instrument_rubric" {
                        i.rubric = p;
                    } else {
                        i.prompt = p;
                    }
                }
            }
            stage => {
                if let Some(st) = s.meta.stages.as_mut() {
                    match stage {
                        "prescreen" => st.prescreen = Some(p),
                        "analyze" => st.analyze = p,
                        "refine" => st.refine = p,
                        "merge" => st.merge = Some(p),
                        _ => {}
                    }
                }
            }
        }
        return;
    }
    match name {
        "cases" => {
            if let Some(c) = plan.inputs.cases.as_mut() {
                c.path = p.display().to_string();
            }
            s.reward.cases = Some(p);
        }
        "chat_template" => s.policy.chat_template = Some(p),
        "data/train" => s.task.train.path = Some(p),
        "data/test" => {
            if let Some(d) = s.task.test.as_mut() {
                d.path = Some(p);
            }
        }
        "data/transfer" => {
            if let Some(d) = s.task.transfer.as_mut() {
                d.path = Some(p);
            }
        }
        _ => {}
    }
}
