//! `mpo export --format gguf-lora`: a llama.cpp LoRA adapter (`llama-server --lora FILE` on the
//! base GGUF), laid out as llama.cpp's `convert_lora_to_gguf.py` writes one: `general.type:
//! adapter`, `adapter.type: lora`, `adapter.lora.alpha`, and per adapted weight
//! `<gguf name>.lora_a` (ggml dims `[in, r]`) and `.lora_b` (`[r, out]`), F32. llama.cpp
//! stores a llama GGUF's q and k rows permuted for its RoPE, so `lora_b`'s rows of q and k are
//! permuted the same way (`lora_a` acts on the input and is not).

use std::collections::BTreeMap;
use std::path::Path;

use super::merged::hf_weight;
use super::{ByName, ExportError, input, io, transpose};
use crate::model::gguf::{Gguf, MetaValue};
use crate::model::registry::ModelRef;
use crate::model::weights::{GgufWeights, LlamaConfig, unpermute_order};
use crate::spec::LoraSpec;

/// Write `adapter.gguf` for `adapter` on the GGUF `base` into `dir`; returns its tensor count.
pub fn write(dir: &Path, base: &ModelRef, adapter: &ByName, lora: &LoraSpec) -> Result<usize, ExportError> {
    let Some(path) = super::base_gguf(base)? else {
        return Err(input(format!(
            "`gguf-lora` adapts a GGUF base, and the run's policy is {}: export `peft` or `merged` (llama.cpp's convert_lora_to_gguf.py turns a PEFT adapter into a GGUF one)",
            match base {
                ModelRef::HfDir { path, .. } => format!("the Hugging Face folder {}", path.display()),
                _ => "a random-weight test model".to_string(),
            }
        )));
    };
    let bad = |e: String| input(format!("the base model {}: {e}", path.display()));
    let g = Gguf::open(&path).map_err(|e| bad(e.to_string()))?;
    let config = LlamaConfig::from_gguf(&g).map_err(|e| bad(e.to_string()))?;
    let arch = g.meta_str("general.architecture").unwrap_or("llama").to_string();
    let permuted = arch == "llama";
    let mut tensors = Vec::new();
    for (k, (sa, a)) in adapter {
        let Some(site) = k.strip_suffix(".lora_a") else { continue };
        let (sb, b) =
            adapter.get(&format!("{site}.lora_b")).ok_or_else(|| input(format!("the checkpoint has `{k}` but no `{site}.lora_b`")))?;
        let hf = hf_weight(site).ok_or_else(|| input(format!("the checkpoint's `{k}` names no weight mpo knows")))?;
        let name = GgufWeights::gguf_name(&hf).ok_or_else(|| input(format!("`{hf}` has no GGUF name")))?;
        if !g.tensors.contains_key(&name) {
            return Err(input(if hf == "lm_head.weight" {
                "the base GGUF ties its output layer to the embedding, and llama.cpp adapts no tied output layer: export `peft` or `merged` for an adapter on `lm_head`".to_string()
            } else {
                format!("the base GGUF has no `{name}`: it is not the run's model")
            }));
        }
        let (d_in, r, d_out) = (sa[0], sa[1], sb[1]);
        let mut bt = transpose(b, r, d_out); // [out, r]
        let heads = match &hf {
            n if permuted && n.ends_with("q_proj.weight") => Some(config.num_heads),
            n if permuted && n.ends_with("k_proj.weight") => Some(config.num_kv_heads),
            _ => None,
        };
        if let Some(h) = heads {
            let order = unpermute_order(d_out, h).map_err(|e| input(format!("`{hf}`: {e}")))?;
            let mut p = vec![0.0; bt.len()];
            for (hf_row, &gguf_row) in order.iter().enumerate() {
                p[gguf_row * r..(gguf_row + 1) * r].copy_from_slice(&bt[hf_row * r..(hf_row + 1) * r]);
            }
            bt = p;
        }
        tensors.push((format!("{name}.lora_a"), vec![d_in as u64, r as u64], transpose(a, d_in, r)));
        tensors.push((format!("{name}.lora_b"), vec![r as u64, d_out as u64], bt));
    }
    let meta = BTreeMap::from([
        ("general.architecture".to_string(), MetaValue::Str(arch)),
        ("general.type".to_string(), MetaValue::Str("adapter".into())),
        ("adapter.type".to_string(), MetaValue::Str("lora".into())),
        ("adapter.lora.alpha".to_string(), MetaValue::F64(lora.alpha)),
    ]);
    std::fs::write(dir.join("adapter.gguf"), crate::model::gguf::encode_f32(&meta, &tensors)).map_err(io("writing adapter.gguf"))?;
    Ok(tensors.len())
}
