//! Checkpoints: `checkpoints/update-NNNNNN/` with the trained adapters, the optimizer states
//! and the run state (update, rubric version, pending meta samples), plus `checkpoints/LATEST`.
//!
//! A checkpoint directory is written under a temporary name and renamed into place, then
//! LATEST is switched, so a crash never leaves a partial checkpoint under its final name. Its
//! `checksums.json` (sha256 of every file, written last) catches what renames cannot: a file
//! damaged afterwards (a full disk, a bad copy). A resumed run takes the newest checkpoint
//! that verifies and says which newer ones it skipped and why.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use super::train::Trainer;
use crate::judge::TokenUsage;
use crate::meta::MetaSample;
use crate::model::adapter;
use crate::results::RunDir;
use crate::results::checkpoint_files::{self, Checksums, Damaged};
use crate::spec::Keep;

/// What a resumed run needs besides the weights.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The last completed update.
    pub update: u32,
    pub rubric_version: u32,
    /// The update whose meta step wrote the rubric in force (0 for v000): the next update is
    /// the first scored under it (`ppo.recenter_critic`).
    #[serde(default)]
    pub rubric_since: u32,
    /// Rollouts since the last meta step (its evidence pool).
    pub meta_candidates: Vec<MetaSample>,
    /// Mean response tokens of the first update (length-collapse baseline).
    pub first_response_tokens: Option<f64>,
    pub usage: HashMap<String, TokenUsage>,
    /// Meta steps run and rubrics they produced (the acceptance rate: a meta judge whose every
    /// output is rejected turns MPO into fixed-rubric PPO).
    #[serde(default)]
    pub meta_steps: u32,
    #[serde(default)]
    pub meta_accepted: u32,
    /// Each rubric family's version (`meta.partition_by`), by key; empty for a run's one rubric.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub families: BTreeMap<String, FamilyState>,
}

/// Where one rubric family stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FamilyState {
    pub version: u32,
    /// The update whose meta step wrote it.
    pub since: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{context}: {message}")]
    Io { context: String, message: String },
    #[error("no checkpoint of this run is intact: {}", .0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("; "))]
    NoneIntact(Vec<Damaged>),
}

impl CheckpointError {
    pub fn help(&self) -> Option<String> {
        match self {
            CheckpointError::NoneIntact(_) => Some(
                "`mpo run SPEC --restart` starts the run over; this run's files are moved into its superseded/ folder, nothing is deleted"
                    .into(),
            ),
            CheckpointError::Io { .. } => None,
        }
    }
}

fn io<E: std::fmt::Display>(context: impl Into<String>) -> impl FnOnce(E) -> CheckpointError {
    let context = context.into();
    move |e| CheckpointError::Io { context, message: e.to_string() }
}

fn name(update: u32) -> String {
    format!("update-{update:06}")
}

pub fn dir(run: &RunDir) -> PathBuf {
    run.path("checkpoints")
}

/// Save `tr` and `state` as the checkpoint of `state.update`; then prune what `keep` does not
/// keep (never a checkpoint of an update in `evaluated`).
pub fn save<B: AutodiffBackend>(
    run: &RunDir,
    tr: &Trainer<B>,
    state: &State,
    keep: Keep,
    evaluated: &[u32],
) -> Result<PathBuf, CheckpointError> {
    let root = dir(run);
    let final_dir = root.join(name(state.update));
    let tmp = root.join(format!(".{}.tmp", name(state.update)));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io("creating the checkpoint"))?;
    adapter::save(&tr.policy.valid(), &tmp.join("policy.safetensors"), HashMap::new()).map_err(io("saving the policy adapter"))?;
    let rec = BinBytesRecorder::<FullPrecisionSettings>::default();
    let bytes = rec.record(tr.optim.to_record(), ()).map_err(io("serializing the optimizer"))?;
    crate::fsx::write_atomic(&tmp.join("optimizer.bin"), &bytes).map_err(io("writing the optimizer"))?;
    if let Some((c, o)) = &tr.critic {
        adapter::save(&c.valid(), &tmp.join("critic.safetensors"), HashMap::new()).map_err(io("saving the critic adapter"))?;
        let bytes = rec.record(o.to_record(), ()).map_err(io("serializing the critic optimizer"))?;
        crate::fsx::write_atomic(&tmp.join("critic_optimizer.bin"), &bytes).map_err(io("writing the critic optimizer"))?;
    }
    crate::fsx::write_atomic(&tmp.join("state.json"), serde_json::to_string_pretty(state).map_err(io("serializing the state"))?.as_bytes())
        .map_err(io("writing the state"))?;
    let sums = Checksums::of(state.update, &tmp).map_err(io("hashing the checkpoint"))?;
    crate::fsx::write_atomic(
        &tmp.join("checksums.json"),
        serde_json::to_string_pretty(&sums).map_err(io("serializing checksums"))?.as_bytes(),
    )
    .map_err(io("writing checksums"))?;
    let _ = std::fs::remove_dir_all(&final_dir);
    std::fs::rename(&tmp, &final_dir).map_err(io("moving the checkpoint into place"))?;
    crate::fsx::write_atomic(&root.join("LATEST"), name(state.update).as_bytes()).map_err(io("writing LATEST"))?;
    if let Keep::Newest(n) = keep {
        for old in prunable(&root, n.max(1), evaluated) {
            let _ = std::fs::remove_dir_all(root.join(old));
        }
    }
    Ok(final_dir)
}

/// The checkpoint folders beyond the newest `keep`, except those of `evaluated` updates.
fn prunable(root: &Path, keep: usize, evaluated: &[u32]) -> Vec<String> {
    let mut all: Vec<String> = std::fs::read_dir(root)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().to_string()).filter(|n| n.starts_with("update-")).collect())
        .unwrap_or_default();
    all.sort();
    let older = all.len().saturating_sub(keep);
    all.truncate(older);
    all.retain(|n| !n.strip_prefix("update-").and_then(|u| u.parse::<u32>().ok()).is_some_and(|u| evaluated.contains(&u)));
    all
}

/// The checkpoint a run resumes from.
#[derive(Debug)]
pub struct Found {
    pub dir: PathBuf,
    pub state: State,
    /// Newer checkpoints (or a `LATEST`) that failed verification and were passed over.
    pub skipped: Vec<Damaged>,
}

/// The state of checkpoint `d` if every file verifies against its `checksums.json`.
/// Checkpoints written before checksums existed verify by their state parsing and their files
/// being there.
pub fn verify(d: &Path) -> Result<State, Damaged> {
    let bad = |file: &str, why: String| Damaged { dir: d.to_path_buf(), file: file.into(), why };
    checkpoint_files::verify(d)?;
    let text = std::fs::read_to_string(d.join("state.json")).map_err(|e| bad("state.json", format!("cannot be read ({e})")))?;
    serde_json::from_str(&text).map_err(|e| bad("state.json", format!("is not a checkpoint state ({e})")))
}

/// The newest checkpoint that verifies. `None` when the run has no checkpoint at all; an error
/// when it has some and none verifies (resuming from nothing would silently start over).
pub fn latest(run: &RunDir) -> Result<Option<Found>, CheckpointError> {
    let mut all: Vec<(u32, PathBuf)> = run.checkpoints().into_iter().collect();
    all.sort_by_key(|c| std::cmp::Reverse(c.0));
    let root = dir(run);
    let latest_file = std::fs::read_to_string(root.join("LATEST")).ok();
    if all.is_empty() {
        return match latest_file {
            Some(n) => Err(CheckpointError::NoneIntact(vec![Damaged {
                dir: root,
                file: "LATEST".into(),
                why: format!("names `{}`, which does not exist", n.trim()),
            }])),
            None => Ok(None),
        };
    }
    let mut skipped = Vec::new();
    for (_, d) in all {
        match verify(&d) {
            Ok(state) => {
                let name = d.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                if latest_file.as_deref().map(str::trim) != Some(name.as_str()) {
                    let why = match &latest_file {
                        Some(n) => format!("names `{}`, not the newest intact checkpoint `{name}`", n.trim()),
                        None => "is missing".into(),
                    };
                    skipped.push(Damaged { dir: root.clone(), file: "LATEST".into(), why });
                }
                return Ok(Some(Found { dir: d, state, skipped }));
            }
            Err(damaged) => skipped.push(damaged),
        }
    }
    Err(CheckpointError::NoneIntact(skipped))
}

/// Load a checkpoint into freshly built models (same configuration, same parameter ids).
pub fn load<B: AutodiffBackend>(d: &Path, mut tr: Trainer<B>, device: &B::Device) -> Result<Trainer<B>, CheckpointError> {
    let rec = BinBytesRecorder::<FullPrecisionSettings>::default();
    tr.policy = adapter::load(tr.policy, &d.join("policy.safetensors")).map_err(io("loading the policy adapter"))?;
    let bytes = std::fs::read(d.join("optimizer.bin")).map_err(io("reading the optimizer"))?;
    tr.optim = tr.optim.load_record(rec.load(bytes, device).map_err(io("loading the optimizer"))?);
    if let Some((c, o)) = tr.critic.take() {
        let c = adapter::load(c, &d.join("critic.safetensors")).map_err(io("loading the critic adapter"))?;
        let bytes = std::fs::read(d.join("critic_optimizer.bin")).map_err(io("reading the critic optimizer"))?;
        let o = o.load_record(rec.load(bytes, device).map_err(io("loading the critic optimizer"))?);
        tr.critic = Some((c, o));
    }
    Ok(tr)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a number prunes; it keeps the newest N and every checkpoint of an evaluated update.
    #[test]
    fn pruning_keeps_the_newest_and_the_evaluated() {
        let root = std::env::temp_dir().join(format!("mpo-prune-{}", std::process::id()));
        for u in 1..=8 {
            std::fs::create_dir_all(root.join(name(u))).unwrap();
        }
        std::fs::create_dir_all(root.join(".update-000009.tmp")).unwrap();
        assert_eq!(prunable(&root, 2, &[3, 6]), ["update-000001", "update-000002", "update-000004", "update-000005"]);
        assert_eq!(prunable(&root, 8, &[]), Vec::<String>::new());
        assert_eq!(prunable(&root, 1, &[]).len(), 7);
        let _ = std::fs::remove_dir_all(root);
    }
}
