//! Checkpoints: `checkpoints/update-NNNNNN/` with the trained adapters, the optimizer states
//! and the run state (update, rubric version, pending meta samples), plus `checkpoints/LATEST`.
//! A checkpoint directory is written under a temporary name and renamed into place, then
//! LATEST is switched, so a crash never leaves LATEST pointing at a partial checkpoint.

use std::collections::HashMap;
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

/// What a resumed run needs besides the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The last completed update.
    pub update: u32,
    pub rubric_version: u32,
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
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{context}: {message}")]
    Io { context: String, message: String },
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

/// Save `tr` and `state` as the checkpoint of `state.update`; keep the newest `keep`.
pub fn save<B: AutodiffBackend>(run: &RunDir, tr: &Trainer<B>, state: &State, keep: usize) -> Result<PathBuf, CheckpointError> {
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
    let _ = std::fs::remove_dir_all(&final_dir);
    std::fs::rename(&tmp, &final_dir).map_err(io("moving the checkpoint into place"))?;
    crate::fsx::write_atomic(&root.join("LATEST"), name(state.update).as_bytes()).map_err(io("writing LATEST"))?;
    prune(&root, keep.max(1));
    Ok(final_dir)
}

fn prune(root: &Path, keep: usize) {
    let mut all: Vec<String> = std::fs::read_dir(root)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().to_string()).filter(|n| n.starts_with("update-")).collect())
        .unwrap_or_default();
    all.sort();
    while all.len() > keep {
        let _ = std::fs::remove_dir_all(root.join(all.remove(0)));
    }
}

/// The latest checkpoint's directory and state, if any.
pub fn latest(run: &RunDir) -> Option<(PathBuf, State)> {
    let root = dir(run);
    let n = std::fs::read_to_string(root.join("LATEST")).ok()?;
    let d = root.join(n.trim());
    let state: State = serde_json::from_str(&std::fs::read_to_string(d.join("state.json")).ok()?).ok()?;
    Some((d, state))
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
