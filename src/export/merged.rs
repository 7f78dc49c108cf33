//! `mpo export --format merged`: a Hugging Face model folder (config, tokenizer, safetensors)
//! with the adapter merged into the base weights, `W + alpha / r * (A B)^T` in f32 (the base as
//! mpo computes with it: a GGUF's blocks dequantized, q/k rows in Hugging Face order).
//!
//! A LoRA on a tied LM head unties it: the merged `lm_head.weight` is the embedding plus the
//! update, and the config says `tie_word_embeddings: false`.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value as J, json};

use super::{ByName, ExportError, Named, input, io};
use crate::model::registry::ModelRef;
use crate::model::tokenizer::Tok;
use crate::model::weights::{GgufWeights, LlamaConfig, RandomWeights, SafetensorsWeights, WeightSource};
use crate::spec::{LoraSpec, LoraTarget};

/// Largest shard of `model*.safetensors` (transformers' own default is 5 GB).
const SHARD_BYTES: usize = 2 << 30;

/// The Hugging Face weight an mpo LoRA site updates.
pub(super) fn hf_weight(site: &str) -> Option<String> {
    if site == "lm_head" {
        return Some("lm_head.weight".into());
    }
    let rest = site.strip_prefix("layers.")?;
    let (i, proj) = rest.split_once('.')?;
    let (_, _, path) = crate::model::llama::PROJECTIONS.iter().find(|(s, _, _)| *s == proj)?;
    Some(format!("model.layers.{i}.{path}.weight"))
}

/// `w [out, in] += scale * (a [in, r] b [r, out])^T`.
fn add_update(w: &mut [f32], a: &[f32], b: &[f32], d_in: usize, r: usize, d_out: usize, scale: f32) {
    let mut row = vec![0.0f32; d_out];
    for i in 0..d_in {
        row.iter_mut().for_each(|x| *x = 0.0);
        for k in 0..r {
            let s = a[i * r + k] * scale;
            if s != 0.0 {
                for (x, bv) in row.iter_mut().zip(&b[k * d_out..(k + 1) * d_out]) {
                    *x += s * bv;
                }
            }
        }
        for (o, x) in row.iter().enumerate() {
            w[o * d_in + i] += x;
        }
    }
}

/// The base's weights with the checkpoint's adapter merged, in the config's tensor order.
fn merge(src: &dyn WeightSource, config: &LlamaConfig, adapter: &ByName, lora: &LoraSpec) -> Result<(Vec<Named>, bool), ExportError> {
    let untie = config.tie_word_embeddings && lora.targets.contains(&LoraTarget::LmHead);
    let mut names = config.tensor_names();
    if untie {
        names.insert(1, "lm_head.weight".into());
    }
    let scale = (lora.alpha / lora.rank as f64) as f32;
    let mut sites: BTreeMap<String, String> = BTreeMap::new();
    for k in adapter.keys() {
        if let Some(site) = k.strip_suffix(".lora_a") {
            let w = hf_weight(site).ok_or_else(|| input(format!("the checkpoint's `{k}` names no weight mpo knows")))?;
            sites.insert(w, site.to_string());
        }
    }
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let from = if untie && name == "lm_head.weight" { "model.embed_tokens.weight" } else { name.as_str() };
        let (mut data, shape) = src.require(from).map_err(|e| input(format!("the base model: {e}")))?;
        if let Some(site) = sites.remove(&name) {
            let (sa, a) = &adapter[&format!("{site}.lora_a")];
            let (sb, b) = adapter
                .get(&format!("{site}.lora_b"))
                .ok_or_else(|| input(format!("the checkpoint has `{site}.lora_a` but no `{site}.lora_b`")))?;
            let (d_in, r, d_out) = (sa[0], sa[1], sb[1]);
            if shape != [d_out, d_in] || sb[0] != r {
                return Err(input(format!(
                    "`{site}`'s adapter ({d_in}x{r}, {}x{d_out}) does not fit the base's `{name}` {shape:?}: the base model is not the run's",
                    sb[0]
                )));
            }
            add_update(&mut data, a, b, d_in, r, d_out, scale);
        }
        out.push((name, shape, data));
    }
    if let Some((w, site)) = sites.into_iter().next() {
        return Err(input(format!("the checkpoint's `{site}` updates `{w}`, which the base model does not have")));
    }
    Ok((out, untie))
}

/// A config.json for a model read from a GGUF (or built at random).
fn hf_config(c: &LlamaConfig, tok: &Tok) -> Result<J, ExportError> {
    let qwen = c.attention_bias;
    let mut v = json!({
        "architectures": [if qwen { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }],
        "model_type": if qwen { "qwen2" } else { "llama" },
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": c.tie_word_embeddings,
        "bos_token_id": tok.bos,
        "eos_token_id": tok.eos,
        "torch_dtype": "float32",
    });
    if !qwen {
        v["attention_bias"] = json!(false);
        v["mlp_bias"] = json!(false);
    }
    match &c.rope_scaling {
        None => {}
        Some(crate::model::weights::RopeScaling::Linear { factor }) => v["rope_scaling"] = json!({"rope_type": "linear", "factor": factor}),
        Some(crate::model::weights::RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => {
            v["rope_scaling"] = json!({"rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor, "original_max_position_embeddings": original_max_position_embeddings});
        }
        Some(crate::model::weights::RopeScaling::Factors { .. }) => {
            return Err(input("the base GGUF scales RoPE by explicit per-frequency factors, which a config.json cannot state"));
        }
    }
    Ok(v)
}

/// Write the merged model of `adapter` on `base` into `dir`; returns the number of tensors.
pub fn write(dir: &Path, base: &ModelRef, adapter: &ByName, lora: &LoraSpec) -> Result<usize, ExportError> {
    let w = |name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes).map_err(io(format!("writing {name}")));
    let gguf = super::base_gguf(base)?;
    let (tensors, untie, mut config) = match base {
        ModelRef::Known { .. } | ModelRef::Gguf { .. } => from_gguf(gguf.as_deref().expect("a GGUF base"), adapter, lora, dir)?,
        ModelRef::Random { .. } => {
            let tok = Tok::tiny();
            let c = LlamaConfig::tiny(tok.vocab_size());
            let (t, untie) = merge(&RandomWeights { config: c.clone(), seed: 7 }, &c, adapter, lora)?;
            write_tokenizer(dir, &tok, c.max_position_embeddings)?;
            (t, untie, hf_config(&c, &tok)?)
        }
        ModelRef::HfDir { path, .. } => {
            let text = std::fs::read_to_string(path.join("config.json")).map_err(io(format!("reading {}", path.display())))?;
            let v: J = serde_json::from_str(&text).map_err(|e| input(format!("{}/config.json: {e}", path.display())))?;
            let c = LlamaConfig::from_hf(&v).map_err(|e| input(format!("{}/config.json: {e}", path.display())))?;
            let src = SafetensorsWeights::open(path).map_err(|e| input(format!("the base model: {e}")))?;
            let (t, untie) = merge(&src, &c, adapter, lora)?;
            for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "generation_config.json"]
            {
                if path.join(f).is_file() {
                    std::fs::copy(path.join(f), dir.join(f)).map_err(io(format!("copying {f}")))?;
                }
            }
            let mut v = v;
            v["torch_dtype"] = json!("float32");
            v.as_object_mut().map(|o| o.remove("dtype"));
            (t, untie, v)
        }
    };
    if untie {
        config["tie_word_embeddings"] = json!(false);
    }
    w("config.json", serde_json::to_string_pretty(&config).expect("json").as_bytes())?;
    // shards of at most SHARD_BYTES, with transformers' index when there are several
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut size = 0;
    for (i, t) in tensors.iter().enumerate() {
        let b = t.2.len() * 4;
        if size + b > SHARD_BYTES && !shards.last().expect("one").is_empty() {
            shards.push(Vec::new());
            size = 0;
        }
        shards.last_mut().expect("one").push(i);
        size += b;
    }
    let n = shards.len();
    let mut index = serde_json::Map::new();
    for (k, shard) in shards.iter().enumerate() {
        let file = if n == 1 { "model.safetensors".to_string() } else { format!("model-{:05}-of-{n:05}.safetensors", k + 1) };
        let part: Vec<Named> = shard.iter().map(|&i| tensors[i].clone()).collect();
        for (name, ..) in &part {
            index.insert(name.clone(), json!(file));
        }
        w(&file, &super::safetensors_bytes(&part)?)?;
    }
    if n > 1 {
        let total: usize = tensors.iter().map(|t| t.2.len() * 4).sum();
        let idx = json!({"metadata": {"total_size": total}, "weight_map": index});
        w("model.safetensors.index.json", serde_json::to_string_pretty(&idx).expect("json").as_bytes())?;
    }
    Ok(tensors.len())
}

type Merged = (Vec<Named>, bool, J);

fn from_gguf(path: &Path, adapter: &ByName, lora: &LoraSpec, dir: &Path) -> Result<Merged, ExportError> {
    let bad = |e: String| input(format!("the base model {}: {e}", path.display()));
    let g = crate::model::gguf::Gguf::open(path).map_err(|e| bad(e.to_string()))?;
    let c = LlamaConfig::from_gguf(&g).map_err(|e| bad(e.to_string()))?;
    let tok = Tok::from_gguf(&g).map_err(|e| bad(e.to_string()))?;
    let (t, untie) = merge(&GgufWeights::new(&g, c.clone()), &c, adapter, lora)?;
    write_tokenizer(dir, &tok, c.max_position_embeddings)?;
    let config = hf_config(&c, &tok)?;
    Ok((t, untie, config))
}

/// `tokenizer.json` and a `tokenizer_config.json` naming the special tokens and the chat template.
fn write_tokenizer(dir: &Path, tok: &Tok, max_len: usize) -> Result<(), ExportError> {
    tok.inner.save(dir.join("tokenizer.json"), false).map_err(|e| input(format!("writing tokenizer.json: {e}")))?;
    let mut tc = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": tok.eos_text,
        "model_max_length": max_len,
        "clean_up_tokenization_spaces": false,
    });
    if tok.bos.is_some() {
        tc["bos_token"] = json!(tok.bos_text);
    }
    if let Some(ct) = &tok.chat_template {
        tc["chat_template"] = json!(ct);
    }
    std::fs::write(dir.join("tokenizer_config.json"), serde_json::to_string_pretty(&tc).expect("json"))
        .map_err(io("writing tokenizer_config.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_update_is_the_transposed_low_rank_product() {
        // a [in=2, r=1], b [r=1, out=3]: A B = [[1, 2, 3], [2, 4, 6]]; w [out=3, in=2] gets its transpose
        let mut w = vec![0.0; 6];
        add_update(&mut w, &[1.0, 2.0], &[1.0, 2.0, 3.0], 2, 1, 3, 0.5);
        assert_eq!(w, [0.5, 1.0, 1.0, 2.0, 1.5, 3.0]);
        assert_eq!(hf_weight("layers.3.gate").as_deref(), Some("model.layers.3.mlp.gate_proj.weight"));
        assert_eq!(hf_weight("layers.0.o").as_deref(), Some("model.layers.0.self_attn.o_proj.weight"));
        assert_eq!(hf_weight("lm_head").as_deref(), Some("lm_head.weight"));
    }
}
