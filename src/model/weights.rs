//! Model configs and weights from GGUF files and Hugging Face safetensors directories.
//!
//! Both sources answer in Hugging Face names and layout (`model.layers.0.self_attn.q_proj.weight`,
//! `[out, in]`), so the model code has one loading path. GGUF's llama tensors store Q and K
//! rows permuted for ggml's interleaved RoPE; we undo that here so one RoPE (HF's rotate-half)
//! serves every source.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use serde::{Deserialize, Serialize};

use super::gguf::{Gguf, GgufError};
use super::quant::{BlockKind, QuantMatrix};

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("cannot read `{path}`: {message}")]
    Io { path: String, message: String },
    #[error("`{path}`: {message}")]
    Format { path: String, message: String },
    #[error("no tensor `{0}` in the checkpoint")]
    Missing(String),
    #[error("unsupported architecture `{0}` (mpo runs the Llama family: llama, qwen2, mistral)")]
    Architecture(String),
    /// A weight file's context around an error of its own (a tensor, the GGUF metadata). Not
    /// a `source`: the message already holds it (an error chain would print it twice).
    #[error("`{path}`: {error}")]
    In { path: String, error: Box<WeightsError> },
    /// `config.json`'s `model_type` is not a Llama-family architecture.
    #[error("unsupported architecture `{0}` (llama, qwen2, mistral)")]
    HfArchitecture(String),
    #[error("config.json has no `{0}`")]
    NoKey(String),
    #[error("`num_attention_heads` is 0")]
    NoHeads,
    #[error("rope_scaling has no `{0}`")]
    RopeKey(String),
    #[error("rope_scaling without a type")]
    RopeUntyped,
    #[error("rope scaling `{0}` is not supported (linear, llama3)")]
    RopeType(String),
    /// A dimension of the shape is 0 (its name: "vocab size", "attention heads", ...).
    #[error("the model has 0 {0}")]
    Zero(&'static str),
    #[error("{heads} attention heads are not a multiple of {kv_heads} key/value heads: grouped-query attention needs whole groups")]
    Groups { heads: usize, kv_heads: usize },
    #[error("head dimension {0} is odd: rotary embeddings rotate pairs")]
    OddHeadDim(usize),
    #[error(
        "implausible shape (vocab {vocab}, hidden {hidden}, intermediate {intermediate}, {layers} layers, {heads} heads x {head_dim}): a corrupt header?"
    )]
    Implausible { vocab: usize, hidden: usize, intermediate: usize, layers: usize, heads: usize, head_dim: usize },
    #[error(
        "implausible context length {positions} (head dimension {head_dim}): the rotary tables would need {mb} MB; \
         mpo loads models of at most {max_context} positions and {max_rope} table entries. A corrupt header?",
        mb = (*positions as u128 * *head_dim as u128 * 8) >> 20,
        max_context = MAX_CONTEXT,
        max_rope = MAX_ROPE_ELEMENTS
    )]
    Context { positions: usize, head_dim: usize },
    /// Row data that is not the `rows x cols` matrix it is said to be.
    #[error("{len} values are not {rows} x {cols}")]
    Values { len: usize, rows: usize, cols: usize },
    /// Rows that cannot be split into `n_head` heads of row pairs (GGUF's Q/K permutation).
    #[error("{rows} rows cannot be {n_head} heads of pairs")]
    Heads { rows: usize, n_head: usize },
    #[error("dtype {0:?} is not supported (f32, f16, bf16)")]
    Dtype(safetensors::Dtype),
    #[error(transparent)]
    Quant(#[from] super::quant::QuantError),
}

impl WeightsError {
    /// This error, said of `path` (a tensor, a file).
    pub fn at(self, path: impl Into<String>) -> WeightsError {
        WeightsError::In { path: path.into(), error: Box::new(self) }
    }
}

/// RoPE frequency scaling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1's per-frequency scaling.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: f64 },
    /// Explicit per-frequency divisors (GGUF `rope_freqs.weight`).
    Factors { factors: Vec<f64> },
}

/// Above any released llama-architecture model (the longest declare ~1M positions).
pub const MAX_CONTEXT: usize = 1 << 22;
/// Entries of one RoPE table (context length x head dimension): 1 GiB of f32.
pub const MAX_ROPE_ELEMENTS: usize = 1 << 28;

/// The shape of a Llama-family transformer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections have biases (Qwen2).
    pub attention_bias: bool,
}

impl LlamaConfig {
    /// A tiny config of the same architecture for tests.
    pub fn tiny(vocab_size: usize) -> Self {
        LlamaConfig {
            vocab_size,
            hidden_size: 32,
            intermediate_size: 64,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 8,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: None,
            max_position_embeddings: 4096,
            tie_word_embeddings: true,
            attention_bias: false,
        }
    }

    pub fn num_params(&self) -> usize {
        let (d, f, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let layer = d * q + 2 * d * kv + q * d + 3 * d * f + 2 * d;
        v * d + self.num_layers * layer + d + if self.tie_word_embeddings { 0 } else { v * d }
    }

    /// A shape the model code can run; the error names the field at fault.
    pub fn validate(&self) -> Result<(), WeightsError> {
        for (name, v) in [
            ("vocab size", self.vocab_size),
            ("hidden size", self.hidden_size),
            ("intermediate size", self.intermediate_size),
            ("attention heads", self.num_heads),
            ("key/value heads", self.num_kv_heads),
            ("head dimension", self.head_dim),
            ("context length", self.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(WeightsError::Zero(name));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(WeightsError::Groups { heads: self.num_heads, kv_heads: self.num_kv_heads });
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(WeightsError::OddHeadDim(self.head_dim));
        }
        // Bounds far above any real model, so a corrupt header cannot ask for terabytes.
        let too_big = |x: usize, max: usize| x > max;
        if too_big(self.vocab_size, 1 << 22)
            || too_big(self.hidden_size, 1 << 16)
            || too_big(self.intermediate_size, 1 << 18)
            || too_big(self.num_layers, 1 << 10)
            || too_big(self.num_heads * self.head_dim, 1 << 17)
        {
            return Err(WeightsError::Implausible {
                vocab: self.vocab_size,
                hidden: self.hidden_size,
                intermediate: self.intermediate_size,
                layers: self.num_layers,
                heads: self.num_heads,
                head_dim: self.head_dim,
            });
        }
        // The RoPE tables hold context length x head dimension f32 values twice, built at load:
        // a corrupt context length must be refused here, not met as a failed allocation.
        if self.max_position_embeddings > MAX_CONTEXT || self.max_position_embeddings.saturating_mul(self.head_dim) > MAX_ROPE_ELEMENTS {
            return Err(WeightsError::Context { positions: self.max_position_embeddings, head_dim: self.head_dim });
        }
        Ok(())
    }

    /// From an HF `config.json`.
    pub fn from_hf(v: &serde_json::Value) -> Result<Self, WeightsError> {
        let arch = v.get("model_type").and_then(|x| x.as_str()).unwrap_or("llama");
        if !matches!(arch, "llama" | "qwen2" | "mistral") {
            return Err(WeightsError::HfArchitecture(arch.into()));
        }
        let u = |k: &str| v.get(k).and_then(|x| x.as_u64()).map(|x| x as usize).ok_or_else(|| WeightsError::NoKey(k.into()));
        let hidden = u("hidden_size")?;
        let heads = u("num_attention_heads")?;
        if heads == 0 {
            return Err(WeightsError::NoHeads);
        }
        let rope_scaling = match v.get("rope_scaling") {
            Some(s) if !s.is_null() => {
                let ty = s.get("rope_type").or_else(|| s.get("type")).and_then(|x| x.as_str()).unwrap_or("");
                let f = |k: &str| s.get(k).and_then(|x| x.as_f64()).ok_or_else(|| WeightsError::RopeKey(k.into()));
                Some(match ty {
                    "linear" => RopeScaling::Linear { factor: f("factor")? },
                    "llama3" => RopeScaling::Llama3 {
                        factor: f("factor")?,
                        low_freq_factor: f("low_freq_factor")?,
                        high_freq_factor: f("high_freq_factor")?,
                        original_max_position_embeddings: f("original_max_position_embeddings")?,
                    },
                    "default" | "" => return Err(WeightsError::RopeUntyped),
                    other => return Err(WeightsError::RopeType(other.into())),
                })
            }
            _ => None,
        };
        let c = LlamaConfig {
            vocab_size: u("vocab_size")?,
            hidden_size: hidden,
            intermediate_size: u("intermediate_size")?,
            num_layers: u("num_hidden_layers")?,
            num_heads: heads,
            num_kv_heads: u("num_key_value_heads").unwrap_or(heads),
            head_dim: u("head_dim").unwrap_or(hidden / heads),
            rms_norm_eps: v.get("rms_norm_eps").and_then(|x| x.as_f64()).unwrap_or(1e-6),
            rope_theta: v.get("rope_theta").and_then(|x| x.as_f64()).unwrap_or(10000.0),
            rope_scaling,
            max_position_embeddings: u("max_position_embeddings").unwrap_or(4096),
            tie_word_embeddings: v.get("tie_word_embeddings").and_then(|x| x.as_bool()).unwrap_or(false),
            attention_bias: arch == "qwen2" || v.get("attention_bias").and_then(|x| x.as_bool()).unwrap_or(false),
        };
        c.validate()?;
        Ok(c)
    }

    /// From GGUF metadata (`<arch>.*` keys) and the tensor index.
    pub fn from_gguf(g: &Gguf) -> Result<Self, WeightsError> {
        let arch = g.meta_str("general.architecture")?.to_string();
        if !matches!(arch.as_str(), "llama" | "qwen2") {
            return Err(WeightsError::Architecture(arch));
        }
        let k = |s: &str| format!("{arch}.{s}");
        let hidden = g.meta_u64(&k("embedding_length"))? as usize;
        let heads = g.meta_u64(&k("attention.head_count"))? as usize;
        let invalid = |message: String| WeightsError::Format { path: "GGUF metadata".into(), message };
        if heads == 0 {
            return Err(invalid(format!("`{arch}.attention.head_count` is 0")));
        }
        let vocab = g.meta_u64(&k("vocab_size")).map(|v| v as usize).or_else(|_| {
            g.meta("tokenizer.ggml.tokens").and_then(|t| t.as_array()).map(|a| a.len()).ok_or(GgufError::Metadata("vocab size".into()))
        })?;
        let mut rope_scaling = None;
        if g.tensors.contains_key("rope_freqs.weight") {
            let (f, _) = g.tensor_f32("rope_freqs.weight")?;
            rope_scaling = Some(RopeScaling::Factors { factors: f.into_iter().map(f64::from).collect() });
        } else if let Some(t) = g.meta(&k("rope.scaling.type")).and_then(|v| v.as_str()) {
            match t {
                "linear" => rope_scaling = Some(RopeScaling::Linear { factor: g.meta_f64(&k("rope.scaling.factor"))? }),
                "none" => {}
                other => {
                    return Err(WeightsError::Format { path: "gguf".into(), message: format!("rope scaling `{other}` is not supported") });
                }
            }
        }
        let c = LlamaConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: g.meta_u64(&k("feed_forward_length"))? as usize,
            num_layers: g.meta_u64(&k("block_count"))? as usize,
            num_heads: heads,
            num_kv_heads: g.meta_u64(&k("attention.head_count_kv")).map(|v| v as usize).unwrap_or(heads),
            head_dim: g
                .meta_u64(&k("attention.key_length"))
                .or_else(|_| g.meta_u64(&k("rope.dimension_count")))
                .map(|v| v as usize)
                .unwrap_or(hidden / heads),
            rms_norm_eps: g.meta_f64(&k("attention.layer_norm_rms_epsilon")).unwrap_or(1e-6),
            rope_theta: g.meta_f64(&k("rope.freq_base")).unwrap_or(10000.0),
            rope_scaling,
            max_position_embeddings: g.meta_u64(&k("context_length")).unwrap_or(4096) as usize,
            tie_word_embeddings: !g.tensors.contains_key("output.weight"),
            attention_bias: g.tensors.contains_key("blk.0.attn_q.bias"),
        };
        c.validate().map_err(|e| e.at("GGUF metadata"))?;
        Ok(c)
    }
}

/// A tensor on the host: row-major f32 data and its shape.
pub type HostTensor = (Vec<f32>, Vec<usize>);

/// Where weights come from, answering in HF names and layout.
pub trait WeightSource {
    /// The tensor and its shape (row-major, HF layout), or `None` when absent.
    fn get(&self, hf_name: &str) -> Result<Option<HostTensor>, WeightsError>;

    fn require(&self, hf_name: &str) -> Result<HostTensor, WeightsError> {
        self.get(hf_name)?.ok_or_else(|| WeightsError::Missing(hf_name.into()))
    }
}

/// Weights of a GGUF file.
pub struct GgufWeights<'a> {
    pub gguf: &'a Gguf,
    pub config: LlamaConfig,
    permuted_qk: bool,
}

impl<'a> GgufWeights<'a> {
    pub fn new(gguf: &'a Gguf, config: LlamaConfig) -> Self {
        let permuted_qk = gguf.meta_str("general.architecture").map(|a| a == "llama").unwrap_or(false);
        GgufWeights { gguf, config, permuted_qk }
    }

    pub fn gguf_name(hf: &str) -> Option<String> {
        if hf == "model.embed_tokens.weight" {
            return Some("token_embd.weight".into());
        }
        if hf == "model.norm.weight" {
            return Some("output_norm.weight".into());
        }
        if hf == "lm_head.weight" {
            return Some("output.weight".into());
        }
        let rest = hf.strip_prefix("model.layers.")?;
        let (n, tail) = rest.split_once('.')?;
        let mapped = match tail {
            "input_layernorm.weight" => "attn_norm.weight",
            "post_attention_layernorm.weight" => "ffn_norm.weight",
            "self_attn.q_proj.weight" => "attn_q.weight",
            "self_attn.k_proj.weight" => "attn_k.weight",
            "self_attn.v_proj.weight" => "attn_v.weight",
            "self_attn.o_proj.weight" => "attn_output.weight",
            "self_attn.q_proj.bias" => "attn_q.bias",
            "self_attn.k_proj.bias" => "attn_k.bias",
            "self_attn.v_proj.bias" => "attn_v.bias",
            "mlp.gate_proj.weight" => "ffn_gate.weight",
            "mlp.up_proj.weight" => "ffn_up.weight",
            "mlp.down_proj.weight" => "ffn_down.weight",
            _ => return None,
        };
        Some(format!("blk.{n}.{mapped}"))
    }
}

/// Undo llama.cpp's `permute(w, n_head)`: GGUF row `h*hd + 2j + t` is HF row `h*hd + t*hd/2 + j`.
pub fn unpermute_rows(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Result<Vec<f32>, WeightsError> {
    if w.len() != rows * cols {
        return Err(WeightsError::Values { len: w.len(), rows, cols });
    }
    let order = unpermute_order(rows, n_head)?;
    Ok(order.iter().flat_map(|&gg| &w[gg * cols..(gg + 1) * cols]).copied().collect())
}

/// For each HF row, the GGUF row it is stored as (see [`unpermute_rows`]).
pub fn unpermute_order(rows: usize, n_head: usize) -> Result<Vec<usize>, WeightsError> {
    if n_head == 0 || !rows.is_multiple_of(n_head) || !(rows / n_head).is_multiple_of(2) {
        return Err(WeightsError::Heads { rows, n_head });
    }
    let hd = rows / n_head;
    let half = hd / 2;
    Ok((0..rows)
        .map(|hf| {
            let (h, r) = (hf / hd, hf % hd);
            let (t, j) = (r / half, r % half);
            h * hd + 2 * j + t
        })
        .collect())
}

impl GgufWeights<'_> {
    /// The heads whose rows llama.cpp permuted in this tensor (q and k of a `llama` GGUF).
    fn permuted_heads(&self, hf_name: &str) -> Option<usize> {
        if !self.permuted_qk {
            return None;
        }
        match hf_name {
            n if n.ends_with("q_proj.weight") => Some(self.config.num_heads),
            n if n.ends_with("k_proj.weight") => Some(self.config.num_kv_heads),
            _ => None,
        }
    }

    /// Whether the file has this tensor.
    pub fn has(&self, hf_name: &str) -> bool {
        Self::gguf_name(hf_name).is_some_and(|n| self.gguf.tensors.contains_key(&n))
    }

    /// A 2-D weight as its stored blocks, rows in HF order, when its format is one
    /// [`QuantMatrix`] reads (`None` otherwise: the f32 copy serves every product).
    pub fn quant(&self, hf_name: &str) -> Result<Option<QuantMatrix>, WeightsError> {
        let Some(name) = Self::gguf_name(hf_name) else { return Ok(None) };
        if !self.gguf.tensors.contains_key(&name) {
            return Ok(None);
        }
        let (ty, raw, shape) = self.gguf.tensor_raw(&name)?;
        let Some(kind) = BlockKind::from_ggml(ty) else { return Ok(None) };
        let [n, k] = shape[..] else { return Ok(None) };
        if !k.is_multiple_of(32) {
            return Ok(None); // not rows of whole blocks: ggml would not write it; leave it to f32
        }
        let order = self.permuted_heads(hf_name).map(|h| unpermute_order(n, h)).transpose().map_err(|e| e.at(name.as_str()))?;
        QuantMatrix::from_gguf(kind, raw, n, k, order.as_deref()).map(Some).map_err(|e| WeightsError::from(e).at(name))
    }
}

impl WeightSource for GgufWeights<'_> {
    fn get(&self, hf_name: &str) -> Result<Option<HostTensor>, WeightsError> {
        let Some(name) = Self::gguf_name(hf_name) else { return Ok(None) };
        if !self.gguf.tensors.contains_key(&name) {
            return Ok(None);
        }
        let (w, shape) = self.gguf.tensor_f32(&name)?;
        if shape.len() == 2
            && let Some(h) = self.permuted_heads(hf_name)
        {
            let w = unpermute_rows(&w, shape[0], shape[1], h).map_err(|e| e.at(name.as_str()))?;
            return Ok(Some((w, shape)));
        }
        Ok(Some((w, shape)))
    }
}

/// Weights of a Hugging Face directory (`model.safetensors` or a sharded index).
pub struct SafetensorsWeights {
    files: Vec<(PathBuf, Vec<u8>)>,
    /// tensor name -> index into `files`
    index: BTreeMap<String, usize>,
}

impl SafetensorsWeights {
    pub fn open(dir: &Path) -> Result<Self, WeightsError> {
        let io = |p: &Path, e: std::io::Error| WeightsError::Io { path: p.display().to_string(), message: e.to_string() };
        let idx_path = dir.join("model.safetensors.index.json");
        let shard_names: Vec<String> = if idx_path.exists() {
            let t = std::fs::read_to_string(&idx_path).map_err(|e| io(&idx_path, e))?;
            let v: serde_json::Value = serde_json::from_str(&t)
                .map_err(|e| WeightsError::Format { path: idx_path.display().to_string(), message: e.to_string() })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| WeightsError::Format { path: idx_path.display().to_string(), message: "no weight_map".into() })?;
            let mut names: Vec<String> = map.values().filter_map(|s| s.as_str().map(str::to_string)).collect();
            names.sort();
            names.dedup();
            names
        } else {
            vec!["model.safetensors".into()]
        };
        let mut files = Vec::new();
        let mut index = BTreeMap::new();
        for (i, name) in shard_names.iter().enumerate() {
            let p = dir.join(name);
            let bytes = std::fs::read(&p).map_err(|e| io(&p, e))?;
            let st = safetensors::SafeTensors::deserialize(&bytes)
                .map_err(|e| WeightsError::Format { path: p.display().to_string(), message: e.to_string() })?;
            for n in st.names() {
                index.insert(n.to_string(), i);
            }
            files.push((p, bytes));
        }
        Ok(SafetensorsWeights { files, index })
    }
}

/// Convert safetensors bytes of `dtype` to f32.
pub fn to_f32(dtype: safetensors::Dtype, data: &[u8]) -> Result<Vec<f32>, WeightsError> {
    use safetensors::Dtype;
    Ok(match dtype {
        Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4"))).collect(),
        Dtype::F16 => data.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => data.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        other => return Err(WeightsError::Dtype(other)),
    })
}

impl WeightSource for SafetensorsWeights {
    fn get(&self, hf_name: &str) -> Result<Option<HostTensor>, WeightsError> {
        let Some(&i) = self.index.get(hf_name) else { return Ok(None) };
        let (p, bytes) = &self.files[i];
        let fmt = |m: String| WeightsError::Format { path: p.display().to_string(), message: m };
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| fmt(e.to_string()))?;
        let t = st.tensor(hf_name).map_err(|e| fmt(e.to_string()))?;
        let v = to_f32(t.dtype(), t.data()).map_err(|m| fmt(format!("{hf_name}: {m}")))?;
        Ok(Some((v, t.shape().to_vec())))
    }
}

/// Seeded random weights of a config's shapes: tiny models of the real architecture for tests
/// and benchmarks.
pub struct RandomWeights {
    pub config: LlamaConfig,
    pub seed: u64,
}

impl LlamaConfig {
    /// The shape of a Hugging Face tensor this config reads (`None`: a name it does not read).
    pub fn tensor_shape(&self, hf_name: &str) -> Option<Vec<usize>> {
        let (d, f, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let (q, kv) = (self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim);
        let layer = hf_name.strip_prefix("model.layers.").and_then(|r| r.split_once('.'));
        if let Some((i, _)) = layer
            && i.parse::<usize>().map_or(true, |i| i >= self.num_layers)
        {
            return None;
        }
        let tail = layer.map(|(_, t)| t).unwrap_or(hf_name);
        Some(match tail {
            "model.embed_tokens.weight" => vec![v, d],
            "lm_head.weight" => vec![v, d],
            "model.norm.weight" | "input_layernorm.weight" | "post_attention_layernorm.weight" => vec![d],
            "self_attn.q_proj.weight" => vec![q, d],
            "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => vec![kv, d],
            "self_attn.o_proj.weight" => vec![d, q],
            "self_attn.q_proj.bias" if self.attention_bias => vec![q],
            "self_attn.k_proj.bias" | "self_attn.v_proj.bias" if self.attention_bias => vec![kv],
            "mlp.gate_proj.weight" | "mlp.up_proj.weight" => vec![f, d],
            "mlp.down_proj.weight" => vec![d, f],
            _ => return None,
        })
    }

    /// Every tensor loading this config requires (a tied `lm_head` is the embedding).
    pub fn tensor_names(&self) -> Vec<String> {
        let mut names = vec!["model.embed_tokens.weight".to_string(), "model.norm.weight".to_string()];
        if !self.tie_word_embeddings {
            names.push("lm_head.weight".into());
        }
        for i in 0..self.num_layers {
            let mut per = vec![
                "input_layernorm.weight",
                "post_attention_layernorm.weight",
                "self_attn.q_proj.weight",
                "self_attn.k_proj.weight",
                "self_attn.v_proj.weight",
                "self_attn.o_proj.weight",
                "mlp.gate_proj.weight",
                "mlp.up_proj.weight",
                "mlp.down_proj.weight",
            ];
            if self.attention_bias {
                per.extend(["self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"]);
            }
            names.extend(per.iter().map(|t| format!("model.layers.{i}.{t}")));
        }
        names
    }
}

impl WeightSource for RandomWeights {
    fn get(&self, hf_name: &str) -> Result<Option<HostTensor>, WeightsError> {
        use rand::Rng;
        let c = &self.config;
        if hf_name == "lm_head.weight" && c.tie_word_embeddings {
            return Ok(None);
        }
        let Some(shape) = c.tensor_shape(hf_name) else { return Ok(None) };
        let tail = hf_name.strip_prefix("model.layers.").and_then(|r| r.split_once('.')).map(|(_, t)| t).unwrap_or(hf_name);
        let mut rng = crate::rng::stream(self.seed, hf_name);
        let n: usize = shape.iter().product();
        let data = if tail.ends_with("norm.weight") {
            (0..n).map(|_| 1.0 + rng.random_range(-0.1f32..0.1)).collect()
        } else {
            let scale = 1.0 / (*shape.last().unwrap_or(&1) as f32).sqrt();
            (0..n).map(|_| rng.random_range(-scale..scale)).collect()
        };
        Ok(Some((data, shape)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // HF rows 0..8 for 2 heads of dim 4, 1 column: permute as llama.cpp does, then undo.
        let n_head = 2;
        let hf: Vec<f32> = (0..8).map(|x| x as f32).collect();
        // llama.cpp: w.reshape(n_head, 2, hd/2).swapaxes(1, 2): gguf row h*4 + 2j + t = hf row h*4 + t*2 + j
        let mut gg = vec![0f32; 8];
        for h in 0..2 {
            for j in 0..2 {
                for t in 0..2 {
                    gg[h * 4 + 2 * j + t] = hf[h * 4 + t * 2 + j];
                }
            }
        }
        assert_eq!(gg, vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
        assert_eq!(unpermute_rows(&gg, 8, 1, n_head).unwrap(), hf);
    }

    #[test]
    fn hf_config_parses_qwen2_and_llama3_scaling() {
        let v = serde_json::json!({"model_type": "qwen2", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "rope_theta": 1e6, "tie_word_embeddings": true});
        let c = LlamaConfig::from_hf(&v).unwrap();
        assert!(c.attention_bias && c.tie_word_embeddings);
        assert_eq!((c.head_dim, c.num_kv_heads), (4, 1));
        let v = serde_json::json!({"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2, "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}});
        assert!(matches!(LlamaConfig::from_hf(&v).unwrap().rope_scaling, Some(RopeScaling::Llama3 { .. })));
        assert!(LlamaConfig::from_hf(&serde_json::json!({"model_type": "gpt_neox"})).is_err());
    }

    #[test]
    fn context_length_is_bounded_by_positions_and_by_the_rope_tables() {
        let ok = LlamaConfig { head_dim: 64, max_position_embeddings: MAX_ROPE_ELEMENTS / 64, ..LlamaConfig::tiny(10) };
        ok.validate().unwrap();
        let e = LlamaConfig { max_position_embeddings: MAX_ROPE_ELEMENTS / 64 + 1, ..ok.clone() }.validate().unwrap_err();
        assert!(e.to_string().contains("implausible context length 4194305 (head dimension 64)"), "{e}");
        let e = LlamaConfig { head_dim: 2, max_position_embeddings: MAX_CONTEXT + 1, ..ok.clone() }.validate().unwrap_err();
        assert!(e.to_string().contains("implausible context length"), "{e}");
        // the HF path validates the same way
        let v = serde_json::json!({"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 1u64 << 40});
        assert!(LlamaConfig::from_hf(&v).unwrap_err().to_string().contains("implausible context length"));
    }
}
