//! `mpo export`: a run's trained policy in the formats the field loads.
//!
//! `peft`: `adapter_config.json` + `adapter_model.safetensors` with PEFT's key names, loadable by
//! `peft.PeftModel.from_pretrained` on the base model and by vLLM as a LoRA module. mpo keeps a
//! LoRA pair as `A [in, r]`, `B [r, out]` with the update `alpha / r * x A B`; PEFT keeps
//! `lora_A.weight [r, in]`, `lora_B.weight [out, r]` with the same scaling, so the export is the
//! transposes under PEFT's names, no arithmetic. The value head (and a separate critic) is
//! not part of the policy: it stays in the checkpoint, where `mpo run` resumes from it.
//!
//! With `--logprobs N` the export also carries `mpo_logprobs.jsonl`: mpo's own per-token
//! log-probs of N of the run's rollouts under the exported weights, as token ids, so any loader
//! can prove it reproduces the policy (`scripts/peft_parity.py`).
//!
//! `merged` (`merged.rs`): a Hugging Face folder with the update added into the base weights.
//! `gguf-lora` (`gguf_lora.rs`): llama.cpp's LoRA adapter GGUF for the base GGUF.
//!
//! An export is written into a temporary folder beside its destination and renamed into place
//! when complete; an existing destination is never replaced.

mod gguf_lora;
mod merged;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::AutodiffBackend;
use serde_json::{Value as J, json};

use crate::model::registry::ModelRef;
use crate::model::{self, BackendJob, LoraConfig};
use crate::plan::Plan;
use crate::results::RunDir;
use crate::spec::LoraTarget;

/// The formats `mpo export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A PEFT LoRA adapter (PeftModel.from_pretrained, vLLM `--lora-modules`).
    Peft,
    /// A Hugging Face model folder with the adapter merged into the base weights (f32).
    Merged,
    /// A llama.cpp LoRA adapter for the base GGUF (`llama-server --lora adapter.gguf`).
    GgufLora,
}

impl Format {
    fn as_str(self) -> &'static str {
        match self {
            Format::Peft => "peft",
            Format::Merged => "merged",
            Format::GgufLora => "gguf-lora",
        }
    }
}

/// Why an export could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0}")]
    Input(String),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error(transparent)]
    Results(#[from] crate::results::ResultsError),
    /// A tensor file that cannot be read ([`read_tensors`]).
    #[error(transparent)]
    Read(std::io::Error),
    #[error(transparent)]
    Safetensors(#[from] safetensors::SafeTensorError),
    #[error(transparent)]
    Weights(#[from] crate::model::weights::WeightsError),
}

impl ExportError {
    pub fn help(&self) -> Option<String> {
        match self {
            ExportError::Input(m) if m.contains("no checkpoint") => {
                Some("checkpoints are written at `runtime.checkpoint_every` and when a run stops; train first".into())
            }
            ExportError::Input(m) if m.contains("already exists") => {
                Some("choose another `--out`, or move the earlier export away (an export is never replaced)".into())
            }
            _ => None,
        }
    }
}

fn input(m: impl Into<String>) -> ExportError {
    ExportError::Input(m.into())
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ExportError {
    let context = context.into();
    move |source| ExportError::Io { context, source }
}

/// A named row-major tensor: `(name, shape, data)`.
pub type Named = (String, Vec<usize>, Vec<f32>);
/// Tensors by name: `shape, data`.
pub type ByName = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// What `mpo export` wrote.
#[derive(Debug)]
pub struct Exported {
    pub dir: PathBuf,
    pub update: u32,
    pub tensors: usize,
    pub fixture_rows: usize,
}

/// PEFT's module name of an mpo LoRA target, and where it sits in a decoder layer.
fn peft_module(t: LoraTarget) -> (&'static str, &'static str) {
    match t {
        LoraTarget::Q => ("self_attn", "q_proj"),
        LoraTarget::K => ("self_attn", "k_proj"),
        LoraTarget::V => ("self_attn", "v_proj"),
        LoraTarget::O => ("self_attn", "o_proj"),
        LoraTarget::Gate => ("mlp", "gate_proj"),
        LoraTarget::Up => ("mlp", "up_proj"),
        LoraTarget::Down => ("mlp", "down_proj"),
        LoraTarget::LmHead => ("", "lm_head"),
    }
}

/// PEFT's module name of an mpo LoRA target (`q_proj`, ..., `lm_head`): what servers list as
/// LoRA target modules.
pub fn peft_module_name(t: LoraTarget) -> &'static str {
    peft_module(t).1
}

fn mpo_name(t: LoraTarget) -> &'static str {
    match t {
        LoraTarget::Q => "q",
        LoraTarget::K => "k",
        LoraTarget::V => "v",
        LoraTarget::O => "o",
        LoraTarget::Gate => "gate",
        LoraTarget::Up => "up",
        LoraTarget::Down => "down",
        LoraTarget::LmHead => "lm_head",
    }
}

/// The name PEFT loads for the base model: a known model's Hugging Face id, else its path.
fn base_name(m: &ModelRef) -> String {
    match m {
        ModelRef::Known { name, .. } => crate::model::registry::known(name).map_or(name.clone(), |k| k.hf_id.to_string()),
        ModelRef::Random { name } => name.clone(),
        ModelRef::Gguf { path, .. } | ModelRef::HfDir { path, .. } => path.display().to_string(),
    }
}

/// The base GGUF of a model reference (a known model is fetched), `None` for other kinds.
pub fn base_gguf(base: &ModelRef) -> Result<Option<PathBuf>, ExportError> {
    Ok(match base {
        ModelRef::Known { name, .. } => {
            Some(crate::model::fetch::fetch(name, &mut |m| eprintln!("{m}")).map_err(|e| input(format!("the base model: {e}")))?)
        }
        ModelRef::Gguf { path, .. } => Some(path.clone()),
        _ => None,
    })
}

/// A row-major `[rows, cols]` matrix transposed.
fn transpose(d: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; d.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = d[r * cols + c];
        }
    }
    t
}

/// The PEFT tensors of an mpo adapter (`source` names it in errors): `(name, shape, data)` per
/// LoRA matrix, checked against the plan's rank and targets.
pub fn peft_tensors(adapter: &ByName, source: &str, lora: &crate::spec::LoraSpec, layers: usize) -> Result<Vec<Named>, ExportError> {
    let mut out = Vec::new();
    let get = |name: &str| -> Result<&(Vec<usize>, Vec<f32>), ExportError> {
        let t = adapter.get(name).ok_or_else(|| {
            input(format!("{source}: no tensor `{name}`, which the run's plan (LoRA targets {:?}) says it has", lora.targets))
        })?;
        if t.0.len() != 2 || t.0.iter().product::<usize>() != t.1.len() {
            return Err(input(format!("{source}: `{name}` has shape {:?}, not a matrix", t.0)));
        }
        Ok(t)
    };
    let mut targets = lora.targets.clone();
    targets.sort();
    targets.dedup();
    for t in targets {
        let (block, module) = peft_module(t);
        let sites: Vec<(String, String)> = if t == LoraTarget::LmHead {
            vec![("lm_head".into(), "base_model.model.lm_head".into())]
        } else {
            (0..layers)
                .map(|i| (format!("layers.{i}.{}", mpo_name(t)), format!("base_model.model.model.layers.{i}.{block}.{module}")))
                .collect()
        };
        for (mpo, peft) in sites {
            let (sa, a) = get(&format!("{mpo}.lora_a"))?;
            let (sb, b) = get(&format!("{mpo}.lora_b"))?;
            if sa[1] != lora.rank || sb[0] != lora.rank {
                return Err(input(format!(
                    "{source}: `{mpo}` has rank {} / {}, but the run's plan says {}: the checkpoint is not this run's",
                    sa[1], sb[0], lora.rank
                )));
            }
            out.push((format!("{peft}.lora_A.weight"), vec![sa[1], sa[0]], transpose(a, sa[0], sa[1])));
            out.push((format!("{peft}.lora_B.weight"), vec![sb[1], sb[0]], transpose(b, sb[0], sb[1])));
        }
    }
    Ok(out)
}

/// Write `adapter` (an mpo adapter's tensors by name, as a checkpoint or
/// `model::adapter::trained_tensors` holds them) as `format`'s files into the existing folder
/// `dir`; returns the number of tensors written. `mpo export` writes a checkpoint's with it, a
/// rollout engine the policy's of each update.
pub fn write_adapter(dir: &Path, format: Format, plan: &Plan, adapter: &ByName, source: &str, layers: usize) -> Result<usize, ExportError> {
    let (base, lora) = (&plan.inputs.models.policy, &plan.spec.policy.lora);
    // PEFT's tensors also check the adapter against the plan (rank, every target present)
    let tensors = peft_tensors(adapter, source, lora, layers)?;
    Ok(match format {
        Format::Peft => {
            let w = |name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes).map_err(io(format!("writing {name}")));
            w("adapter_model.safetensors", &safetensors_bytes(&tensors)?)?;
            w("adapter_config.json", serde_json::to_string_pretty(&peft_config(plan)).expect("json").as_bytes())?;
            tensors.len()
        }
        Format::Merged | Format::GgufLora => {
            let mut adapter = adapter.clone();
            adapter.remove("value_head");
            if format == Format::Merged { merged::write(dir, base, &adapter, lora)? } else { gguf_lora::write(dir, base, &adapter, lora)? }
        }
    })
}

/// PEFT's `adapter_config.json` for the plan's LoRA.
pub fn peft_config(plan: &Plan) -> J {
    let lora = &plan.spec.policy.lora;
    let mut modules: Vec<&str> = lora.targets.iter().map(|t| peft_module(*t).1).collect();
    modules.sort();
    modules.dedup();
    json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_name(&plan.inputs.models.policy),
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": 0.0,
        "target_modules": modules,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "use_rslora": false,
        "use_dora": false,
        "modules_to_save": null,
        "init_lora_weights": true,
    })
}

fn safetensors_bytes(tensors: &[Named]) -> Result<Vec<u8>, ExportError> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> =
        tensors.iter().map(|(n, s, d)| (n.clone(), s.clone(), d.iter().flat_map(|x| x.to_le_bytes()).collect())).collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(n, s, b)| safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<Result<_, _>>()
        .map_err(|e| input(e.to_string()))?;
    // transformers reads `format: pt` to know the tensors are PyTorch's
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(meta)).map_err(|e| input(e.to_string()))
}

/// Export `run`'s checkpoint (`None`: the newest) as `format` into `out` (default
/// `RUN/export/<format>-update-N/`), with `logprobs` rollouts' log-probs beside it.
pub fn export(run: &Path, update: Option<u32>, format: Format, out: Option<&Path>, logprobs: usize) -> Result<Exported, ExportError> {
    let dir = RunDir::open(run)?;
    let plan = dir.plan()?;
    let cks = dir.checkpoints();
    let (update, ck) = match update {
        None => cks
            .iter()
            .next_back()
            .map(|(u, d)| (*u, d.clone()))
            .ok_or_else(|| input(format!("{} has no checkpoint to export", run.display())))?,
        Some(u) => cks.get(&u).map(|d| (u, d.clone())).ok_or_else(|| {
            let have: Vec<String> = cks.keys().map(u32::to_string).collect();
            input(format!(
                "{} has no checkpoint of update {u}; saved: {}",
                run.display(),
                if have.is_empty() { "none".into() } else { have.join(", ") }
            ))
        })?,
    };
    crate::results::checkpoint_files::verify(&ck)
        .map_err(|d| input(format!("the checkpoint of update {update} is damaged: {d}; nothing was exported")))?;
    let dest = out.map(Path::to_path_buf).unwrap_or_else(|| dir.path(&format!("export/{}-update-{update:06}", format.as_str())));
    if dest.exists() {
        return Err(input(format!("{} already exists", dest.display())));
    }
    let config = model::config(&plan.inputs.models.policy)
        .map_err(|e| input(format!("the run's policy model: {e}")))?
        .ok_or_else(|| input("the run's policy model has no readable configuration (is it fetched? `mpo fetch`)"))?;
    let policy = ck.join("policy.safetensors");
    let source = policy.display().to_string();
    let adapter = read_tensors(&policy).map_err(|e| input(format!("{source}: not a readable adapter file ({e})")))?;
    // checked against the plan before anything is written
    peft_tensors(&adapter, &source, &plan.spec.policy.lora, config.num_layers)?;
    if format != Format::Peft
        && let Some((path, planned, now)) = crate::model::folder::changed(&plan.inputs.models.policy).map_err(|e| input(e.to_string()))?
    {
        return Err(input(format!(
            "the base model {} is not the run's: its content changed since the run was planned (sha256 {} then, {} now)",
            path.display(),
            &planned[..12.min(planned.len())],
            &now[..12.min(now.len())]
        )));
    }
    let fixture = if logprobs > 0 { Some(fixture(&dir, &plan, &ck, update, logprobs)?) } else { None };

    let parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
    let tmp = parent.join(format!(
        ".{}.tmp-{}",
        dest.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
    let write = || -> Result<usize, ExportError> {
        let w = |name: &str, bytes: &[u8]| std::fs::write(tmp.join(name), bytes).map_err(io(format!("writing {name}")));
        let written = write_adapter(&tmp, format, &plan, &adapter, &source, config.num_layers)?;
        let prov = json!({
            "run_id": plan.run_id,
            "update": update,
            "checkpoint": ck.display().to_string(),
            "policy": plan.inputs.models.policy,
            "format": format.as_str(),
            "mpo": env!("CARGO_PKG_VERSION"),
            "value_head": "not exported: it is the critic's, not the policy's (it stays in the checkpoint)",
        });
        w("mpo_export.json", serde_json::to_string_pretty(&prov).expect("json").as_bytes())?;
        if let Some(rows) = &fixture {
            let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
            w("mpo_logprobs.jsonl", text.as_bytes())?;
        }
        Ok(written)
    };
    let written = match write() {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, &dest).map_err(io(format!("moving the export into {}", dest.display())))?;
    Ok(Exported { dir: dest, update, tensors: written, fixture_rows: fixture.map_or(0, |f| f.len()) })
}

/// mpo's log-probs of `n` of the run's rollouts (the first rows of the newest samples file)
/// under the checkpoint's policy: `{id, prompt_ids, response_ids, logprobs}` per row.
fn fixture(dir: &RunDir, plan: &Plan, ck: &Path, update: u32, n: usize) -> Result<Vec<J>, ExportError> {
    let samples = (1..=update)
        .rev()
        .map(|u| dir.path(&format!("samples/update-{u:06}.jsonl")))
        .find(|p| p.is_file())
        .ok_or_else(|| input(format!("{} has no samples/ to take rollouts from (`output.samples: false`)", dir.root.display())))?;
    let text = std::fs::read_to_string(&samples).map_err(io(format!("reading {}", samples.display())))?;
    let rows: Vec<(String, String, String)> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<J>(l).ok())
        .filter_map(|r| Some((r["id"].as_str()?.to_string(), r["question"].as_str()?.to_string(), r["response"].as_str()?.to_string())))
        .take(n)
        .collect();
    let local = dir.local_plan()?;
    let chat = match &local.plan.spec.policy.chat_template {
        Some(p) => Some(std::fs::read_to_string(p).map_err(io(format!("reading {}", p.display())))?),
        None => None,
    };
    let job = Fixture { plan: plan.clone(), policy: ck.join("policy.safetensors"), rows, chat };
    model::dispatch(plan.spec.runtime.backend, plan.spec.runtime.device, job).map_err(|e| input(e.to_string()))?
}

struct Fixture {
    plan: Plan,
    policy: PathBuf,
    rows: Vec<(String, String, String)>,
    chat: Option<String>,
}

impl BackendJob for Fixture {
    type Output = Result<Vec<J>, ExportError>;
    fn run<B: AutodiffBackend>(self, device: B::Device, _backend: &'static str) -> Self::Output {
        let spec = &self.plan.spec;
        let lora = LoraConfig::from_spec(&spec.policy.lora);
        let seed = crate::rng::sub_seed(spec.runtime.seed, "model/init");
        let fail = |e: String| input(format!("computing the log-probs: {e}"));
        let loaded = model::load::<B::InnerBackend>(&self.plan.inputs.models.policy, Some(&lora), seed, &device, &mut |_| {})
            .map_err(|e| fail(e.to_string()))?;
        let m = crate::model::adapter::load(loaded.model, &self.policy).map_err(|e| fail(e.to_string()))?;
        let tok = loaded.tok;
        let mut out = Vec::new();
        for (id, question, response) in self.rows {
            let p = crate::policy::chat_ids(spec, &tok, self.chat.as_deref(), &question).map_err(|e| fail(e.to_string()))?;
            let r = tok.encode(&response).map_err(|e| fail(e.to_string()))?;
            if r.is_empty() {
                continue;
            }
            let lp = crate::model::generate::response_logprobs(&m, &p, &r, true, 1.0).map_err(|e| fail(e.to_string()))?;
            out.push(json!({"id": id, "prompt_ids": p, "response_ids": r, "logprobs": lp}));
        }
        Ok(out)
    }
}

/// The export's tensors by name, for tests and the CLI's summary.
pub fn read_tensors(path: &Path) -> Result<ByName, ExportError> {
    let bytes = std::fs::read(path).map_err(ExportError::Read)?;
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    st.tensors().into_iter().map(|(n, t)| Ok((n, (t.shape().to_vec(), crate::model::weights::to_f32(t.dtype(), t.data())?)))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_is_row_major() {
        // [[1, 2, 3], [4, 5, 6]] -> [[1, 4], [2, 5], [3, 6]]
        assert_eq!(transpose(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3), [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }

    #[test]
    fn peft_names_every_target() {
        let names: Vec<&str> = LoraTarget::ALL.iter().map(|t| peft_module(*t).1).collect();
        assert_eq!(names, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]);
    }
}
