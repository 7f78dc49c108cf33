//! Rubric history of a run: `rubrics/vNNN.md` (canonical markdown) and
//! `rubrics/history.jsonl` (one line per meta step: trigger update, evidence, every stage's
//! raw output, the outcome and the diff against the previous version). A run with rubric
//! families (`meta.partition_by`) keeps one such history per family instead, in
//! `rubrics/families/<slug>/`, each line naming its family. Read by `mpo rubric log | show |
//! diff`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::MetaOutcome;
use crate::rubric::Rubric;

/// One line of `history.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The rubric family (`meta.partition_by`) this history belongs to; absent for a run's one
    /// rubric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// The version this step produced (None: the rubric was kept).
    pub version: Option<u32>,
    /// The version in force before the step.
    pub previous: u32,
    /// 0 for the initial rubric.
    pub trigger_update: u32,
    pub evidence: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prescreen: Option<String>,
    pub analyses: Vec<String>,
    pub refined: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_raw: Option<String>,
    /// Items the merge wrote again, dropped before the rubric was read (the first kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repeats_dropped: Vec<String>,
    /// Why the rubric was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_because: Option<String>,
    /// Unified diff against the previous version.
    pub diff: String,
    /// The new version's changes item by item (`Rubric::changes_from`): dropped, added and
    /// re-ranged items, the heaviest one marked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
    pub items: Vec<String>,
    /// `meta.gate`'s verdict on the merged rubric against the rubric in force: the checks that
    /// regressed (any keeps the rubric), those failing under both, those it fixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<super::gate::GateVerdict>,
}

pub struct History {
    dir: PathBuf,
    family: Option<String>,
}

/// A unified diff of two rubric texts.
pub fn diff(a: &str, b: &str, a_name: &str, b_name: &str) -> String {
    similar::TextDiff::from_lines(a, b).unified_diff().context_radius(2).header(a_name, b_name).to_string()
}

fn families_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("rubrics").join("families")
}

fn names(families: &[History]) -> String {
    families.iter().filter_map(|h| h.family.as_deref()).map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
}

fn item_names(r: &Rubric) -> Vec<String> {
    r.items.iter().map(|i| format!("{} ({}-{})", i.name, i.min, i.max)).collect()
}

/// `--family` does not fit the run's rubrics.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FamilyChoice {
    #[error("{} keeps one rubric per family (meta.partition_by): name one with --family ({families})", run.display())]
    Needed { run: PathBuf, families: String },
    #[error("{} has no rubric families (it keeps one rubric): drop --family", run.display())]
    NoFamilies { run: PathBuf },
    #[error("{} has no rubric family `{family}`; it has {families}", run.display())]
    Unknown { run: PathBuf, family: String, families: String },
}

impl History {
    /// The history of a run's one rubric.
    pub fn new(run_dir: &Path) -> Self {
        History { dir: run_dir.join("rubrics"), family: None }
    }

    /// The history of the rubric family `key`.
    pub fn family(run_dir: &Path, key: &str) -> Self {
        History { dir: families_dir(run_dir).join(super::family::slug(key)), family: Some(key.to_string()) }
    }

    /// Where its versions and `history.jsonl` are.
    pub fn folder(&self) -> &Path {
        &self.dir
    }

    /// The family this history belongs to (`None`: the run's one rubric).
    pub fn family_key(&self) -> Option<&str> {
        self.family.as_deref()
    }

    /// Every family history a run has written, by key.
    pub fn families(run_dir: &Path) -> Vec<History> {
        let mut out: Vec<History> = std::fs::read_dir(families_dir(run_dir))
            .map(|rd| rd.flatten().filter(|e| e.path().is_dir()).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .map(|e| {
                // A family is named by its history's lines; one whose history cannot be read is
                // listed under its folder name (reading it then says what is wrong).
                let h = History { dir: e.path(), family: None };
                let key = h.entries().ok().and_then(|es| es.into_iter().find_map(|e| e.family));
                let key = key.unwrap_or_else(|| e.file_name().to_string_lossy().to_string());
                History { family: Some(key), ..h }
            })
            .collect();
        out.sort_by(|a, b| a.family.cmp(&b.family));
        out
    }

    /// The history `mpo rubric` reads: the run's one rubric, or with families the one `family`
    /// names (its key or folder name); an error says which families there are.
    pub fn open(run_dir: &Path, family: Option<&str>) -> Result<History, FamilyChoice> {
        let run = run_dir.to_path_buf();
        let families = History::families(run_dir);
        match family {
            None if families.is_empty() => Ok(History::new(run_dir)),
            None => Err(FamilyChoice::Needed { run, families: names(&families) }),
            Some(f) => {
                let found = families
                    .into_iter()
                    .partition::<Vec<_>, _>(|h| h.family.as_deref() == Some(f) || h.dir.file_name().is_some_and(|n| n == f));
                match found {
                    (mut hit, _) if !hit.is_empty() => Ok(hit.remove(0)),
                    (_, all) if all.is_empty() => Err(FamilyChoice::NoFamilies { run }),
                    (_, all) => Err(FamilyChoice::Unknown { run, family: f.to_string(), families: names(&all) }),
                }
            }
        }
    }

    pub fn version_path(&self, v: u32) -> PathBuf {
        self.dir.join(format!("v{v:03}.md"))
    }

    fn append(&self, e: &Entry) -> std::io::Result<()> {
        let p = self.dir.join("history.jsonl");
        let mut text = std::fs::read_to_string(&p).unwrap_or_default();
        text.push_str(&serde_json::to_string(e).map_err(std::io::Error::other)?);
        text.push('\n');
        crate::fsx::write_atomic(&p, text.as_bytes())
    }

    /// Write version 0 (idempotent: a resumed run finds it already there).
    pub fn init(&self, v0: &Rubric) -> std::io::Result<()> {
        if self.version_path(0).exists() {
            return Ok(());
        }
        crate::fsx::write_atomic(&self.version_path(0), v0.to_markdown().as_bytes())?;
        self.append(&Entry {
            family: self.family.clone(),
            version: Some(0),
            previous: 0,
            trigger_update: 0,
            evidence: vec![],
            prescreen: None,
            analyses: vec![],
            refined: vec![],
            merged_raw: None,
            repeats_dropped: vec![],
            kept_because: None,
            diff: String::new(),
            changes: vec![],
            items: item_names(v0),
            gate: None,
        })
    }

    /// Record a meta step; returns the new version number when the rubric changed.
    pub fn record(&self, outcome: &MetaOutcome, current: &Rubric, current_version: u32) -> std::io::Result<Option<u32>> {
        let (version, kept_because, diff_text, changes, items) = match &outcome.result {
            Ok(new) => {
                let v = current_version + 1;
                crate::fsx::write_atomic(&self.version_path(v), new.to_markdown().as_bytes())?;
                let d = diff(&current.to_markdown(), &new.to_markdown(), &format!("v{current_version:03}.md"), &format!("v{v:03}.md"));
                (Some(v), None, d, new.changes_from(current), item_names(new))
            }
            Err(why) => (None, Some(why.to_string()), String::new(), vec![], item_names(current)),
        };
        self.append(&Entry {
            family: self.family.clone(),
            version,
            previous: current_version,
            trigger_update: outcome.trigger_update,
            evidence: outcome.evidence.clone(),
            prescreen: outcome.prescreen_raw.clone(),
            analyses: outcome.analyses.clone(),
            refined: outcome.refined.clone(),
            merged_raw: outcome.merged_raw.clone(),
            repeats_dropped: outcome.repeats_dropped.clone(),
            kept_because,
            diff: diff_text,
            changes,
            items,
            gate: outcome.gate.clone(),
        })?;
        Ok(version)
    }

    pub fn entries(&self) -> std::io::Result<Vec<Entry>> {
        let text = std::fs::read_to_string(self.dir.join("history.jsonl"))?;
        text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).map_err(std::io::Error::other)).collect()
    }

    /// The latest version number and rubric (the state a resumed run continues from).
    pub fn latest(&self) -> std::io::Result<(u32, Rubric)> {
        let v = self.entries()?.iter().filter_map(|e| e.version).max().unwrap_or(0);
        let text = std::fs::read_to_string(self.version_path(v))?;
        let r = Rubric::parse(&text).map_err(std::io::Error::other)?;
        Ok((v, r))
    }

    pub fn show(&self, v: u32) -> std::io::Result<String> {
        std::fs::read_to_string(self.version_path(v))
    }
}

/// The end of a run's summary: the rubric versions its meta steps wrote, and where to read them.
pub fn summary_line(entries: &[Entry], run: &Path) -> String {
    let steps = entries.iter().filter(|e| e.trigger_update > 0).count();
    let versions: Vec<u32> = entries.iter().filter_map(|e| e.version).collect();
    let last = versions.last().copied().unwrap_or(0);
    let log = format!("mpo rubric log {}", run.display());
    match (steps, last) {
        (0, _) => format!("rubric v000 (no meta step; {log})"),
        (_, 0) => format!("rubric v000 kept through {steps} meta step{} ({log} says why)", if steps == 1 { "" } else { "s" }),
        _ => format!(
            "rubric {} ({} of {steps} meta steps accepted; {log}; mpo rubric diff {} v000 v{last:03})",
            versions.iter().map(|v| format!("v{v:03}")).collect::<Vec<_>>().join(" -> "),
            versions.len() - 1,
            run.display()
        ),
    }
}

/// The end of a run's summary when it keeps rubric families: how many families its meta steps
/// rewrote, and how to read one.
pub fn families_summary_line(families: &[History], run: &Path) -> Option<String> {
    let first = families.first()?;
    let (mut steps, mut accepted, mut rewritten) = (0, 0, Vec::new());
    for h in families {
        let es = h.entries().unwrap_or_default();
        let s = es.iter().filter(|e| e.trigger_update > 0).count();
        let a = es.iter().filter(|e| e.trigger_update > 0 && e.version.is_some()).count();
        steps += s;
        accepted += a;
        if a > 0 {
            rewritten.push(format!("{} to v{a:03}", h.family.as_deref().unwrap_or("")));
        }
    }
    Some(format!(
        "{} rubric families, {} rewritten ({accepted} of {steps} family meta steps accepted{}); mpo rubric log {} --family '{}'",
        families.len(),
        rewritten.len(),
        if rewritten.is_empty() { String::new() } else { format!(": {}", rewritten.join(", ")) },
        run.display(),
        first.family.as_deref().unwrap_or("")
    ))
}

/// `mpo rubric log`: one block per meta step.
pub fn render_log(entries: &[Entry]) -> String {
    let mut o = String::new();
    for e in entries {
        match (e.version, &e.kept_because) {
            (Some(0), _) if e.trigger_update == 0 => o += &format!("v000  initial rubric: {}\n", e.items.join("; ")),
            (Some(v), _) => {
                let (plus, minus) = e.diff.lines().fold((0, 0), |(p, m), l| {
                    if l.starts_with('+') && !l.starts_with("+++") {
                        (p + 1, m)
                    } else if l.starts_with('-') && !l.starts_with("---") {
                        (p, m + 1)
                    } else {
                        (p, m)
                    }
                });
                o += &format!(
                    "v{v:03}  after update {}: {} samples -> {} (+{plus} -{minus} lines)\n",
                    e.trigger_update,
                    e.evidence.len(),
                    e.items.join("; ")
                );
                if !e.changes.is_empty() {
                    o += &format!("      changes: {}\n", e.changes.join("; "));
                }
            }
            (None, why) => {
                o += &format!("      after update {}: kept v{:03} ({})\n", e.trigger_update, e.previous, why.clone().unwrap_or_default())
            }
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::TokenUsage;

    fn outcome(result: Result<Rubric, crate::meta::Kept>, update: u32) -> MetaOutcome {
        MetaOutcome {
            trigger_update: update,
            evidence: vec!["a".into()],
            prescreen_raw: None,
            analyses: vec!["x".into()],
            refined: vec![],
            merged_raw: None,
            repeats_dropped: vec![],
            result,
            usage: TokenUsage::default(),
            gate: None,
        }
    }

    #[test]
    fn versions_history_and_diffs() {
        let dir = std::env::temp_dir().join(format!("mpo-hist-{}", std::process::id()));
        let h = History::new(&dir);
        let v0 = Rubric::parse("## Correct (0-4)\n- Award 4.\n").unwrap();
        h.init(&v0).unwrap();
        h.init(&v0).unwrap();
        let v1 = Rubric::parse("## Correct (0-4)\n- Award 4.\n## Units (0-1)\n").unwrap();
        assert_eq!(h.record(&outcome(Ok(v1.clone()), 2), &v0, 0).unwrap(), Some(1));
        assert_eq!(h.record(&outcome(Err(crate::meta::Kept::EveryAnalysisFailed), 4), &v1, 1).unwrap(), None);
        let es = h.entries().unwrap();
        assert_eq!(es.len(), 3);
        assert!(es[1].diff.contains("+## Units (0-1)"));
        assert_eq!(h.latest().unwrap(), (1, v1));
        let log = render_log(&es);
        assert!(log.contains("v001  after update 2") && log.contains("kept v001 (every analysis failed)"), "{log}");
        assert!(log.contains("changes: added `Units (0-1)`"), "{log}");
        assert_eq!(
            summary_line(&es, Path::new("r")),
            "rubric v000 -> v001 (1 of 2 meta steps accepted; mpo rubric log r; mpo rubric diff r v000 v001)"
        );
        assert_eq!(summary_line(&es[..1], Path::new("r")), "rubric v000 (no meta step; mpo rubric log r)");
        let _ = std::fs::remove_dir_all(dir);
    }
}
