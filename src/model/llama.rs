//! The Llama-family transformer (SmolLM2, Llama 3, Qwen2/2.5) on burn, with LoRA adapters and
//! a value head.
//!
//! One file, names from the papers: `rms_norm`, `rope` (rotate-half, theta and scaling from the
//! config), grouped-query attention (`gqa`), SwiGLU MLP, tied or separate LM head, optional
//! q/k/v biases. Every projection is a [`LoraLinear`]: a frozen base weight plus an optional
//! low-rank adapter, switched off per call to get the reference policy from the same weights.

use std::sync::Arc;

use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::activation::silu;
use burn::tensor::{DType, FloatDType};
use rand::Rng;

use super::quant::QuantMatrix;
use super::weights::{LlamaConfig, RopeScaling, WeightSource, WeightsError};
use crate::spec::{LoraTarget, Precision};

/// LoRA settings for a model (the modules an adapter attaches to are the spec's own names).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub targets: Vec<LoraTarget>,
}

impl LoraConfig {
    /// The policy's adapters as a spec asks for them.
    pub fn from_spec(l: &crate::spec::LoraSpec) -> Self {
        LoraConfig { rank: l.rank, alpha: l.alpha, targets: l.targets.clone() }
    }
}

/// A low-rank update `scale * x A B` (A: [in, r], B: [r, out]; B starts at zero).
#[derive(Module, Debug)]
pub struct Lora<B: Backend> {
    pub a: Param<Tensor<B, 2>>,
    pub b: Param<Tensor<B, 2>>,
    #[module(skip)]
    pub scale: f64,
}

/// A linear map `x W + b` with a frozen base and an optional adapter.
#[derive(Module, Debug)]
pub struct LoraLinear<B: Backend> {
    /// `[in, out]`, frozen.
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    pub lora: Option<Lora<B>>,
    /// The same weight as the GGUF's blocks, attached on the CPU backend ([`Llama::attach_quant`]):
    /// products of a few rows that need no gradient (decode steps) read these instead.
    #[module(skip)]
    pub quant: Option<Arc<QuantMatrix>>,
}

/// Rows up to which a product without gradient reads the quantized blocks: a decode step's
/// rows (one per sequence). Above it gemm on the f32 copy is as fast (`mpo bench generate`).
pub const QUANT_MAX_ROWS: usize = 32;

impl<B: Backend> LoraLinear<B> {
    /// `x [..., in] -> [..., out]`. Leading dimensions are flattened so each product is one
    /// large matrix multiply (a batched product would re-read the weight once per row group).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>, adapter: bool) -> Tensor<B, D> {
        self.forward_with(x, adapter, false)
    }

    /// [`Self::forward`]; with `decode` (generation's passes, which carry a KV cache) a product
    /// of at most [`QUANT_MAX_ROWS`] rows reads the quantized blocks when they are attached.
    /// Training, reference and old-log-prob passes never set it, so they compute the same bits
    /// with and without gradient.
    pub fn forward_with<const D: usize>(&self, x: Tensor<B, D>, adapter: bool, decode: bool) -> Tensor<B, D> {
        let dims = x.dims();
        let d_in = dims[D - 1];
        let rows: usize = dims[..D - 1].iter().product();
        let x2: Tensor<B, 2> = x.reshape([rows, d_in]);
        let quant = if decode { self.quant_product(&x2, rows) } else { None };
        let mut y = quant.unwrap_or_else(|| product(x2.clone(), self.weight.val()));
        if let Some(b) = &self.bias {
            y = y + b.val().unsqueeze::<2>();
        }
        if adapter && let Some(l) = &self.lora {
            y = y + x2.matmul(l.a.val()).matmul(l.b.val()).mul_scalar(l.scale);
        }
        let mut out = dims;
        out[D - 1] = y.dims()[1];
        y.reshape(out)
    }

    /// `x W` from the quantized blocks, when they are attached, `x` is a few rows and nothing
    /// asks for its gradient (the frozen weight needs none either).
    fn quant_product(&self, x: &Tensor<B, 2>, rows: usize) -> Option<Tensor<B, 2>> {
        let q = self.quant.as_ref()?;
        if rows > QUANT_MAX_ROWS || x.is_require_grad() {
            return None;
        }
        let host = x.clone().into_data().into_vec::<f32>().ok()?;
        let y = q.matmul(&host, rows);
        Some(Tensor::from_data(TensorData::new(y, [rows, q.rows()]), &x.device()))
    }
}

/// `a b`, in bf16 when `b` is stored in bf16 (`runtime.precision: bf16`): `a` rounded to bf16,
/// the product accumulated in f32 by the backend's kernel and rounded to bf16, the result
/// carried on in f32. Products of an f32 `b` are plain f32 products.
fn product<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    if b.dtype() == DType::BF16 { a.cast(FloatDType::BF16).matmul(b).cast(FloatDType::F32) } else { a.matmul(b) }
}

/// `a b` for two activations (attention's products): in bf16 when `half`, as [`product`].
fn product_of<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>, half: bool) -> Tensor<B, D> {
    if half { a.cast(FloatDType::BF16).matmul(b.cast(FloatDType::BF16)).cast(FloatDType::F32) } else { a.matmul(b) }
}

/// RMSNorm: `x / sqrt(mean(x^2) + eps) * w`.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    #[module(skip)]
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let rms = x.clone().powi_scalar(2).mean_dim(2).add_scalar(self.eps).sqrt();
        x.div(rms).mul(self.weight.val().unsqueeze::<3>())
    }
}

#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub attn_norm: RmsNorm<B>,
    pub q: LoraLinear<B>,
    pub k: LoraLinear<B>,
    pub v: LoraLinear<B>,
    pub o: LoraLinear<B>,
    pub mlp_norm: RmsNorm<B>,
    pub gate: LoraLinear<B>,
    pub up: LoraLinear<B>,
    pub down: LoraLinear<B>,
}

/// A block's seven projections, in the one order every walk over them uses: mpo's site name (its
/// adapters' names, `layers.{i}.{site}`), the spec's LoRA target, the Hugging Face module path.
pub const PROJECTIONS: [(&str, LoraTarget, &str); 7] = [
    ("q", LoraTarget::Q, "self_attn.q_proj"),
    ("k", LoraTarget::K, "self_attn.k_proj"),
    ("v", LoraTarget::V, "self_attn.v_proj"),
    ("o", LoraTarget::O, "self_attn.o_proj"),
    ("gate", LoraTarget::Gate, "mlp.gate_proj"),
    ("up", LoraTarget::Up, "mlp.up_proj"),
    ("down", LoraTarget::Down, "mlp.down_proj"),
];

impl<B: Backend> Block<B> {
    /// The projections in [`PROJECTIONS`]' order.
    pub fn projections(&self) -> [&LoraLinear<B>; 7] {
        [&self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down]
    }

    pub fn projections_mut(&mut self) -> [&mut LoraLinear<B>; 7] {
        [&mut self.q, &mut self.k, &mut self.v, &mut self.o, &mut self.gate, &mut self.up, &mut self.down]
    }
}

/// The whole model: embedding, blocks, final norm, LM head, optional value head.
#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    /// `[vocab, hidden]`, frozen.
    pub embed: Param<Tensor<B, 2>>,
    pub blocks: Vec<Block<B>>,
    pub norm: RmsNorm<B>,
    /// `[hidden, vocab]`; the transposed embedding when tied.
    pub lm_head: LoraLinear<B>,
    /// `[hidden, 1]` scalar value per position (the critic), trained.
    pub value_head: Option<Param<Tensor<B, 2>>>,
    /// RoPE tables `[max_pos, head_dim]`.
    pub rope_cos: Tensor<B, 2>,
    pub rope_sin: Tensor<B, 2>,
    #[module(skip)]
    pub n_heads: usize,
    #[module(skip)]
    pub n_kv_heads: usize,
    #[module(skip)]
    pub head_dim: usize,
}

/// Per-layer cached keys and values `[B, n_kv, T, hd]` for incremental decoding.
pub struct KvCache<B: Backend> {
    pub layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
}

impl<B: Backend> KvCache<B> {
    pub fn new(n_layers: usize) -> Self {
        KvCache { layers: (0..n_layers).map(|_| None).collect() }
    }

    pub fn len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map(|(k, _)| k.dims()[2]).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Inverse frequencies of RoPE for `head_dim`, with the config's scaling applied.
pub fn rope_inv_freq(cfg: &LlamaConfig) -> Vec<f64> {
    let hd = cfg.head_dim;
    let mut inv: Vec<f64> = (0..hd / 2).map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / hd as f64)).collect();
    match &cfg.rope_scaling {
        None => {}
        Some(RopeScaling::Linear { factor }) => inv.iter_mut().for_each(|f| *f /= factor),
        Some(RopeScaling::Factors { factors }) => inv.iter_mut().zip(factors).for_each(|(f, s)| *f /= s),
        Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }) => {
            let low_wavelen = original_max_position_embeddings / low_freq_factor;
            let high_wavelen = original_max_position_embeddings / high_freq_factor;
            for f in inv.iter_mut() {
                let wavelen = 2.0 * std::f64::consts::PI / *f;
                if wavelen > low_wavelen {
                    *f /= factor;
                } else if wavelen >= high_wavelen {
                    let smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                    *f = (1.0 - smooth) * *f / factor + smooth * *f;
                }
            }
        }
    }
    inv
}

fn rope_tables<B: Backend>(cfg: &LlamaConfig, max_pos: usize, device: &B::Device) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let inv = rope_inv_freq(cfg);
    let hd = cfg.head_dim;
    let mut cos = Vec::with_capacity(max_pos * hd);
    let mut sin = Vec::with_capacity(max_pos * hd);
    for p in 0..max_pos {
        // HF layout: the frequency table repeated twice ([f0..f_{d/2}, f0..f_{d/2}]).
        for i in 0..hd {
            let a = p as f64 * inv[i % (hd / 2)];
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    (Tensor::from_data(TensorData::new(cos, [max_pos, hd]), device), Tensor::from_data(TensorData::new(sin, [max_pos, hd]), device))
}

/// `model.layers.3.self_attn.q_proj` -> `layers.3.q` (the adapter naming of adapter.rs).
fn adapter_name(hf: &str) -> String {
    fn short(t: &str) -> &str {
        PROJECTIONS.iter().find(|(_, _, path)| *path == t).map_or(t, |(site, _, _)| site)
    }
    match hf.strip_prefix("model.layers.").and_then(|r| r.split_once('.')) {
        Some((i, t)) => format!("layers.{i}.{}", short(t)),
        None => hf.to_string(),
    }
}

/// `[r, c]` row-major -> `[c, r]` row-major.
fn transpose_host(w: &[f32], r: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = w[i * c + j];
        }
    }
    out
}

fn frozen2<B: Backend>(v: Vec<f32>, shape: [usize; 2], device: &B::Device) -> Param<Tensor<B, 2>> {
    Param::from_tensor(Tensor::from_data(TensorData::new(v, shape), device)).set_require_grad(false)
}

fn frozen1<B: Backend>(v: Vec<f32>, device: &B::Device) -> Param<Tensor<B, 1>> {
    let n = v.len();
    Param::from_tensor(Tensor::from_data(TensorData::new(v, [n]), device)).set_require_grad(false)
}

/// The id of a trained parameter, derived from its name: optimizer state saved by one process
/// must find its parameters in the next (burn's default ids are random per process).
pub fn param_id(name: &str) -> burn::module::ParamId {
    burn::module::ParamId::from(crate::rng::sub_seed(0, &format!("param/{name}")))
}

/// A trained parameter with a stable id (`Param::initialized` alone would not track gradients).
pub fn trained<B: Backend, const D: usize>(name: &str, t: Tensor<B, D>) -> Param<Tensor<B, D>> {
    Param::initialized(param_id(name), t.require_grad())
}

/// A fresh adapter for an `[in, out]` map: A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's Kaiming
/// uniform bound), B = 0, so a new adapter leaves the model unchanged. `name` fixes the
/// parameters' ids.
fn new_lora<B: Backend>(d_in: usize, d_out: usize, cfg: &LoraConfig, rng: &mut impl Rng, device: &B::Device, name: &str) -> Lora<B> {
    let bound = 1.0 / (d_in as f32).sqrt();
    let a: Vec<f32> = (0..d_in * cfg.rank).map(|_| rng.random_range(-bound..bound)).collect();
    Lora {
        a: trained(&format!("{name}.lora_a"), Tensor::from_data(TensorData::new(a, [d_in, cfg.rank]), device)),
        b: trained(&format!("{name}.lora_b"), Tensor::zeros([cfg.rank, d_out], device)),
        scale: cfg.alpha / cfg.rank as f64,
    }
}

impl<B: Backend> Llama<B> {
    /// Load from `src` (HF names and layout). `lora` adds fresh adapters; `seed` draws them.
    pub fn load(
        cfg: &LlamaConfig,
        src: &dyn WeightSource,
        lora: Option<&LoraConfig>,
        max_pos: usize,
        seed: u64,
        device: &B::Device,
    ) -> Result<Self, WeightsError> {
        let d = cfg.hidden_size;
        let check = |name: &str, shape: &[usize], want: &[usize]| -> Result<(), WeightsError> {
            if shape != want {
                return Err(WeightsError::Format { path: name.into(), message: format!("shape {shape:?}, expected {want:?}") });
            }
            Ok(())
        };
        let mut rng = crate::rng::stream(seed, "model/lora-init");
        let linear = |name: &str,
                      d_in: usize,
                      d_out: usize,
                      bias: bool,
                      target: LoraTarget,
                      rng: &mut rand_chacha::ChaCha8Rng|
         -> Result<LoraLinear<B>, WeightsError> {
            let (w, shape) = src.require(&format!("{name}.weight"))?;
            check(name, &shape, &[d_out, d_in])?;
            let bias = if bias {
                let (b, shape) = src.require(&format!("{name}.bias"))?;
                check(&format!("{name}.bias"), &shape, &[d_out])?;
                Some(frozen1(b, device))
            } else {
                None
            };
            let lora = lora
                .filter(|l| l.targets.contains(&target))
                .map(|l| new_lora(d_in, d_out, l, rng, device, &format!("policy/{}", adapter_name(name))));
            Ok(LoraLinear { weight: frozen2(transpose_host(&w, d_out, d_in), [d_in, d_out], device), bias, lora, quant: None })
        };
        let norm = |name: &str| -> Result<RmsNorm<B>, WeightsError> {
            let (w, shape) = src.require(name)?;
            check(name, &shape, &[d])?;
            Ok(RmsNorm { weight: frozen1(w, device), eps: cfg.rms_norm_eps })
        };
        let (q_out, kv_out, f) = (cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size);
        let mut blocks = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            blocks.push(Block {
                attn_norm: norm(&format!("{p}.input_layernorm.weight"))?,
                q: linear(&format!("{p}.self_attn.q_proj"), d, q_out, cfg.attention_bias, LoraTarget::Q, &mut rng)?,
                k: linear(&format!("{p}.self_attn.k_proj"), d, kv_out, cfg.attention_bias, LoraTarget::K, &mut rng)?,
                v: linear(&format!("{p}.self_attn.v_proj"), d, kv_out, cfg.attention_bias, LoraTarget::V, &mut rng)?,
                o: linear(&format!("{p}.self_attn.o_proj"), q_out, d, false, LoraTarget::O, &mut rng)?,
                mlp_norm: norm(&format!("{p}.post_attention_layernorm.weight"))?,
                gate: linear(&format!("{p}.mlp.gate_proj"), d, f, false, LoraTarget::Gate, &mut rng)?,
                up: linear(&format!("{p}.mlp.up_proj"), d, f, false, LoraTarget::Up, &mut rng)?,
                down: linear(&format!("{p}.mlp.down_proj"), f, d, false, LoraTarget::Down, &mut rng)?,
            });
        }
        let (emb, shape) = src.require("model.embed_tokens.weight")?;
        check("model.embed_tokens.weight", &shape, &[cfg.vocab_size, d])?;
        let head_w = match (cfg.tie_word_embeddings, src.get("lm_head.weight")?) {
            (false, Some((w, shape))) => {
                check("lm_head.weight", &shape, &[cfg.vocab_size, d])?;
                transpose_host(&w, cfg.vocab_size, d)
            }
            _ => transpose_host(&emb, cfg.vocab_size, d),
        };
        let head_lora = lora
            .filter(|l| l.targets.contains(&LoraTarget::LmHead))
            .map(|l| new_lora(d, cfg.vocab_size, l, &mut rng, device, "policy/lm_head"));
        let (rope_cos, rope_sin) = rope_tables::<B>(cfg, max_pos, device);
        Ok(Llama {
            embed: frozen2(emb, [cfg.vocab_size, d], device),
            blocks,
            norm: norm("model.norm.weight")?,
            lm_head: LoraLinear { weight: frozen2(head_w, [d, cfg.vocab_size], device), bias: None, lora: head_lora, quant: None },
            value_head: None,
            rope_cos,
            rope_sin,
            n_heads: cfg.num_heads,
            n_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
        })
    }

    /// Attach the GGUF's blocks to every projection stored in a format [`QuantMatrix`] reads
    /// (decode steps on the CPU then read a fifth of the bytes); others keep the f32 path.
    /// Returns how many were attached.
    pub fn attach_quant(&mut self, cfg: &LlamaConfig, src: &super::weights::GgufWeights<'_>) -> Result<usize, WeightsError> {
        let mut attached = 0;
        let mut attach = |l: &mut LoraLinear<B>, hf: &str| -> Result<(), WeightsError> {
            let [d_in, d_out] = l.weight.val().dims();
            l.quant = src.quant(hf)?.filter(|q| q.rows() == d_out && q.cols() == d_in).map(Arc::new);
            attached += l.quant.is_some() as usize;
            Ok(())
        };
        for (i, b) in self.blocks.iter_mut().enumerate() {
            for (l, (_, _, path)) in b.projections_mut().into_iter().zip(PROJECTIONS) {
                attach(l, &format!("model.layers.{i}.{path}.weight"))?;
            }
        }
        // The head `load` built: the embedding when tied or when the file has no head.
        let own_head = !cfg.tie_word_embeddings && src.has("lm_head.weight");
        let head = if own_head { "lm_head.weight" } else { "model.embed_tokens.weight" };
        attach(&mut self.lm_head, head)?;
        Ok(attached)
    }

    /// How many projections read quantized blocks in decode steps.
    pub fn quant_attached(&self) -> usize {
        self.linears().filter(|l| l.quant.is_some()).count()
    }

    /// The same model with every product on the f32 weights (`runtime.quantized_decode: false`,
    /// and the baseline of `mpo bench generate`).
    pub fn without_quant(&self) -> Self {
        let mut m = self.clone();
        for b in &mut m.blocks {
            for l in b.projections_mut() {
                l.quant = None;
            }
        }
        m.lm_head.quant = None;
        m
    }

    /// The same model with its frozen base in `precision` (`runtime.precision`). bf16 stores
    /// every projection's weight, the embedding and the LM head in bf16 (their products then
    /// run in bf16, [`product`], as do attention's); biases, norms, RoPE tables, adapters and
    /// the value head stay f32: they are small, and the adapters and value head are what the
    /// optimizer updates (an f32 master copy is the usual mixed-precision recipe).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        let dtype = match precision {
            Precision::F32 => FloatDType::F32,
            Precision::Bf16 => FloatDType::BF16,
        };
        let cast = |p: Param<Tensor<B, 2>>| p.map(|t| t.cast(dtype));
        for b in &mut self.blocks {
            for l in b.projections_mut() {
                l.weight = cast(l.weight.clone());
            }
        }
        self.lm_head.weight = cast(self.lm_head.weight.clone());
        self.embed = cast(self.embed.clone());
        self
    }

    /// Whether the frozen base is stored (and multiplied) in bf16.
    pub fn is_bf16(&self) -> bool {
        self.embed.val().dtype() == DType::BF16
    }

    fn linears(&self) -> impl Iterator<Item = &LoraLinear<B>> {
        self.blocks.iter().flat_map(|b| b.projections()).chain([&self.lm_head])
    }

    /// Add a value head `[hidden, 1]` ~ N(0, 0.02) (trained; the critic's output).
    pub fn with_value_head(mut self, seed: u64, device: &B::Device) -> Self {
        let d = self.embed.val().dims()[1];
        let mut rng = crate::rng::stream(seed, "model/value-head-init");
        let w: Vec<f32> = (0..d).map(|_| normal(&mut rng) * 0.02).collect();
        self.value_head = Some(trained("value_head", Tensor::from_data(TensorData::new(w, [d, 1]), device)));
        self
    }

    /// Whether every adapter's `B` is exactly zero (a fresh adapter): its update `scale * x A B`
    /// is then exact zeros, and the model with the adapter on computes the reference's numbers.
    pub fn adapter_is_zero(&self) -> bool {
        self.linears().filter_map(|l| l.lora.as_ref()).all(|l| {
            let b = l.b.val().into_data();
            b.as_slice::<f32>().map(|v| v.iter().all(|&x| x == 0.0)).unwrap_or(false)
        })
    }

    /// The same frozen base (shared, not copied) with fresh adapters of `cfg` whose
    /// parameter ids live under `namespace`, and no value head: a separate critic starts here.
    pub fn with_fresh_adapters(&self, cfg: &LoraConfig, namespace: &str, seed: u64) -> Self {
        let device = self.embed.val().device();
        let mut rng = crate::rng::stream(seed, &format!("model/lora-init/{namespace}"));
        let mut m = self.clone();
        let fresh = |l: &mut LoraLinear<B>, name: &str, target: LoraTarget, rng: &mut rand_chacha::ChaCha8Rng| {
            let [d_in, d_out] = l.weight.val().dims();
            l.lora = cfg.targets.contains(&target).then(|| new_lora(d_in, d_out, cfg, rng, &device, &format!("{namespace}/{name}")));
        };
        for (i, b) in m.blocks.iter_mut().enumerate() {
            for (l, (site, target, _)) in b.projections_mut().into_iter().zip(PROJECTIONS) {
                fresh(l, &format!("layers.{i}.{site}"), target, &mut rng);
            }
        }
        fresh(&mut m.lm_head, "lm_head", LoraTarget::LmHead, &mut rng);
        m.value_head = None;
        m
    }

    pub fn num_layers(&self) -> usize {
        self.blocks.len()
    }

    pub fn max_positions(&self) -> usize {
        self.rope_cos.dims()[0]
    }

    /// Hidden states after the final norm, `[B, T, hidden]`.
    ///
    /// `positions` `[B, T]` are RoPE positions; `mask` `[B, 1, T, T_past + T]` is additive (0 or
    /// a large negative number); with a `cache`, keys and values of earlier calls are reused
    /// and this call's are appended.
    pub fn forward(
        &self,
        tokens: Tensor<B, 2, Int>,
        positions: Tensor<B, 2, Int>,
        mask: Tensor<B, 4>,
        mut cache: Option<&mut KvCache<B>>,
        adapter: bool,
    ) -> Tensor<B, 3> {
        let [b, t] = tokens.dims();
        let d = self.embed.val().dims()[1];
        let rows = self.embed.val().select(0, tokens.reshape([b * t]));
        let rows = if rows.dtype() == DType::BF16 { rows.cast(FloatDType::F32) } else { rows };
        let mut x = rows.reshape([b, t, d]);
        let pos = positions.reshape([b * t]);
        let hd = self.head_dim;
        let rope = Rope::new(
            self.rope_cos.clone().select(0, pos.clone()).reshape([b, t, 1, hd]),
            self.rope_sin.clone().select(0, pos).reshape([b, t, 1, hd]),
            self.n_heads,
            self.n_kv_heads,
        );
        // The mask in the scores' own shape `[B, kv, rep*T, T_all]`, built once for all layers:
        // adding a broadcast operand costs the CPU backend a strided walk per element.
        let rep = self.n_heads / self.n_kv_heads;
        let mask = if rep > 1 { mask.repeat_dim(2, rep) } else { mask }.repeat_dim(1, self.n_kv_heads);
        for (i, blk) in self.blocks.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = self.block(blk, x, &rope, &mask, layer_cache, adapter);
        }
        self.norm.forward(x)
    }

    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        blk: &Block<B>,
        x: Tensor<B, 3>,
        rope: &Rope<B>,
        mask: &Tensor<B, 4>,
        cache: Option<&mut Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
        adapter: bool,
    ) -> Tensor<B, 3> {
        let [b, t, _] = x.dims();
        let (h, kvh, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        // Generation's passes carry a cache; only they may read the quantized blocks.
        let decode = cache.is_some();
        let xn = blk.attn_norm.forward(x.clone());
        // RoPE in the projections' own `[B, T, heads, hd]` layout (contiguous), then heads first.
        let q = rope.apply(blk.q.forward_with(xn.clone(), adapter, decode).reshape([b, t, h, hd]), &rope.q).swap_dims(1, 2);
        let mut k = rope.apply(blk.k.forward_with(xn.clone(), adapter, decode).reshape([b, t, kvh, hd]), &rope.k).swap_dims(1, 2);
        let mut v = blk.v.forward_with(xn, adapter, decode).reshape([b, t, kvh, hd]).swap_dims(1, 2);
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.take() {
                k = Tensor::cat(vec![pk, k], 2);
                v = Tensor::cat(vec![pv, v], 2);
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let attn = gqa_in(q, k, v, mask, kvh, self.is_bf16()).swap_dims(1, 2).reshape([b, t, h * hd]);
        let x = x + blk.o.forward_with(attn, adapter, decode);
        let xn = blk.mlp_norm.forward(x.clone());
        let mlp = silu(blk.gate.forward_with(xn.clone(), adapter, decode)) * blk.up.forward_with(xn, adapter, decode);
        x + blk.down.forward_with(mlp, adapter, decode)
    }

    /// Logits `[B, T, vocab]` of hidden states.
    pub fn logits(&self, hidden: Tensor<B, 3>, adapter: bool) -> Tensor<B, 3> {
        self.lm_head.forward(hidden, adapter)
    }

    /// [`Self::logits`] for generation: a few rows may read the quantized blocks
    /// ([`LoraLinear::forward_with`]).
    pub fn decode_logits(&self, hidden: Tensor<B, 3>, adapter: bool) -> Tensor<B, 3> {
        self.lm_head.forward_with(hidden, adapter, true)
    }

    /// Values `[B, T]` of hidden states (requires a value head).
    pub fn values(&self, hidden: Tensor<B, 3>) -> Option<Tensor<B, 2>> {
        let w = self.value_head.as_ref()?.val();
        let [b, t, d] = hidden.dims();
        Some(hidden.reshape([b * t, d]).matmul(w).reshape([b, t]))
    }
}

fn normal(rng: &mut impl Rng) -> f32 {
    let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// Rotary embedding tables of one forward pass, HF's rotate-half form: `x cos + rotate_half(x) sin`.
/// The tables are repeated to the query and key shapes `[B, T, heads, hd]` once per pass, for
/// all layers: multiplying by a broadcast operand costs the CPU backend a strided walk.
struct Rope<B: Backend> {
    /// (cos, sin) for the query heads and for the key heads.
    q: (Tensor<B, 4>, Tensor<B, 4>),
    k: (Tensor<B, 4>, Tensor<B, 4>),
    rotate_half: Tensor<B, 2>,
}

impl<B: Backend> Rope<B> {
    /// `cos`, `sin`: `[B, T, 1, hd]`.
    fn new(cos: Tensor<B, 4>, sin: Tensor<B, 4>, n_heads: usize, n_kv: usize) -> Self {
        let hd = cos.dims()[3];
        let rotate_half = rotate_half_matrix(hd, &cos.device());
        Rope {
            q: (cos.clone().repeat_dim(2, n_heads), sin.clone().repeat_dim(2, n_heads)),
            k: (cos.repeat_dim(2, n_kv), sin.repeat_dim(2, n_kv)),
            rotate_half,
        }
    }

    /// `x` `[B, T, heads, hd]` with `table` of the same shape.
    fn apply(&self, x: Tensor<B, 4>, table: &(Tensor<B, 4>, Tensor<B, 4>)) -> Tensor<B, 4> {
        let [b, t, h, hd] = x.dims();
        let rotated = x.clone().reshape([b * t * h, hd]).matmul(self.rotate_half.clone()).reshape([b, t, h, hd]);
        x * table.0.clone() + rotated * table.1.clone()
    }
}

/// `rotate_half` as a matrix `R` with `x R = [-x2, x1]` for `x = [x1, x2]`. One nonzero (+-1) per
/// column, so the product is exact; it replaces two slices and a concatenation, which the CPU
/// backend copies element by element through strided views (10% of a training step's time).
fn rotate_half_matrix<B: Backend>(hd: usize, device: &B::Device) -> Tensor<B, 2> {
    let half = hd / 2;
    let mut r = vec![0f32; hd * hd];
    for j in 0..half {
        r[(j + half) * hd + j] = -1.0;
        r[j * hd + j + half] = 1.0;
    }
    Tensor::from_data(TensorData::new(r, [hd, hd]), device)
}

/// Grouped-query attention without materialising repeated keys: the query heads sharing a
/// key/value head are stacked along the time axis (`[B, kv, rep*T, hd]`). `mask` is additive,
/// `[B, kv, rep*T, T_all]` (or broadcastable to it).
pub fn gqa<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, mask: &Tensor<B, 4>, n_kv: usize) -> Tensor<B, 4> {
    gqa_in(q, k, v, mask, n_kv, false)
}

/// [`gqa`] with its two products in bf16 when `half` (the scores, mask and softmax stay f32).
fn gqa_in<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, mask: &Tensor<B, 4>, n_kv: usize, half: bool) -> Tensor<B, 4> {
    let [b, h, t, hd] = q.dims();
    let rep = h / n_kv;
    let q = q.reshape([b, n_kv, rep * t, hd]);
    let scores = product_of(q, k.swap_dims(2, 3), half).mul_scalar(1.0 / (hd as f64).sqrt());
    let att = softmax_exact(scores + mask.clone(), 3);
    product_of(att, v, half).reshape([b, h, t, hd])
}

/// Softmax from primitive operations (max, subtract, exp, sum, divide), as burn's autodiff
/// backend computes it: the CPU backend's fused softmax sums in another order, so a no-grad pass
/// would differ from the training pass in the last bit, and the PPO ratio of an unchanged policy
/// would not be exactly 1.
fn softmax_exact<B: Backend, const D: usize>(x: Tensor<B, D>, dim: usize) -> Tensor<B, D> {
    let max = x.clone().detach().max_dim(dim);
    let e = (x - max).exp();
    let sum = e.clone().sum_dim(dim);
    e / sum
}

#[cfg(all(test, feature = "cpu"))]
pub(crate) mod tests {
    use super::*;
    use crate::model::batch::{causal_mask, int_tensor, left_pad, mask_tensor, to_host};
    use crate::model::weights::RandomWeights;

    pub type TB = burn::backend::Flex;

    pub fn tiny(lora: Option<&LoraConfig>) -> Llama<TB> {
        let cfg = LlamaConfig::tiny(300);
        Llama::load(&cfg, &RandomWeights { config: cfg.clone(), seed: 7 }, lora, 128, 1, &Default::default()).unwrap()
    }

    pub fn full_logits(m: &Llama<TB>, rows: &[Vec<u32>], adapter: bool) -> Vec<f32> {
        let dev = Default::default();
        let l = left_pad(rows, 0);
        let h = m.forward(
            int_tensor(l.tokens, [l.b, l.t], &dev),
            int_tensor(l.positions, [l.b, l.t], &dev),
            mask_tensor(causal_mask(&l.pads, 0, l.t), l.b, l.t, l.t, &dev),
            None,
            adapter,
        );
        to_host(m.logits(h, adapter)).unwrap()
    }

    pub fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol * (1.0 + y.abs()))
    }

    #[test]
    fn left_padding_does_not_change_a_row() {
        let m = tiny(None);
        let a = vec![5u32, 9, 12];
        let alone = full_logits(&m, std::slice::from_ref(&a), false);
        let batched = full_logits(&m, &[vec![1, 2, 3, 4, 5, 6], a.clone()], false);
        let vocab = 300;
        // row 1 is padded by 3: its positions 3..6 are the unpadded row's 0..3
        assert!(close(&batched[(6 + 3) * vocab..12 * vocab], &alone, 1e-4));
    }

    #[test]
    fn lora_with_zero_b_equals_the_base_and_changes_it_otherwise() {
        let cfg = LoraConfig { rank: 4, alpha: 8.0, targets: vec![LoraTarget::Q, LoraTarget::V, LoraTarget::Down, LoraTarget::LmHead] };
        let mut m = tiny(Some(&cfg));
        let rows = vec![vec![5u32, 9, 12, 40]];
        let on = full_logits(&m, &rows, true);
        let off = full_logits(&m, &rows, false);
        assert!(close(&on, &off, 1e-6));
        let dev = Default::default();
        let l = m.blocks[0].q.lora.as_mut().unwrap();
        l.b = Param::from_tensor(Tensor::<TB, 2>::ones(l.b.val().dims(), &dev).mul_scalar(0.05));
        let on = full_logits(&m, &rows, true);
        assert!(!close(&on, &off, 1e-4));
        // the base is untouched: adapter off still gives the old logits
        assert!(close(&full_logits(&m, &rows, false), &off, 1e-6));
    }

    #[test]
    fn a_bf16_base_holds_its_matrices_in_bf16_and_tracks_the_f32_logits() {
        let cfg = LoraConfig { rank: 4, alpha: 8.0, targets: LoraTarget::ALL.to_vec() };
        let m = tiny(Some(&cfg));
        let half = m.clone().with_precision(Precision::Bf16);
        assert!(half.is_bf16() && !m.is_bf16());
        assert_eq!(half.blocks[0].down.weight.val().dtype(), DType::BF16);
        assert_eq!(half.lm_head.weight.val().dtype(), DType::BF16);
        // what the optimizer updates, and the small vectors, stay f32
        let l = half.blocks[0].q.lora.as_ref().unwrap();
        assert_eq!((l.a.val().dtype(), l.b.val().dtype()), (DType::F32, DType::F32));
        assert_eq!(half.norm.weight.val().dtype(), DType::F32);
        let rows = vec![vec![5u32, 9, 12, 40, 7, 3], vec![1, 2, 3]];
        let (f, h) = (full_logits(&m, &rows, true), full_logits(&half, &rows, true));
        assert!(h.iter().all(|x| x.is_finite()));
        assert_ne!(f, h, "no product ran in bf16");
        // the logits of a 2-layer random model are O(1); bf16's products round at 2^-9
        let worst = f.iter().zip(&h).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let scale = f.iter().map(|a| a.abs()).fold(0f32, f32::max);
        assert!(worst <= 0.02 * scale, "bf16 logits off by {worst} at scale {scale}");
        // f32 leaves an f32 model as it was
        assert_eq!(full_logits(&m.clone().with_precision(Precision::F32), &rows, true), f);
    }

    #[test]
    fn rope_by_rotation_matrix_equals_rotate_half_exactly() {
        let dev = Default::default();
        let (b, t, h, hd) = (2, 5, 3, 8);
        let x: Tensor<TB, 4> = Tensor::random([b, t, h, hd], burn::tensor::Distribution::Normal(0.0, 1.0), &dev);
        let cos: Tensor<TB, 4> = Tensor::random([b, t, 1, hd], burn::tensor::Distribution::Normal(0.0, 1.0), &dev);
        let sin: Tensor<TB, 4> = Tensor::random([b, t, 1, hd], burn::tensor::Distribution::Normal(0.0, 1.0), &dev);
        let rope = Rope::new(cos.clone(), sin.clone(), h, 1);
        let got = rope.apply(x.clone(), &rope.q);
        // HF's rotate_half: [-x2, x1]
        let x1 = x.clone().slice([0..b, 0..t, 0..h, 0..hd / 2]);
        let x2 = x.clone().slice([0..b, 0..t, 0..h, hd / 2..hd]);
        let want = x * cos + Tensor::cat(vec![x2.neg(), x1], 3) * sin;
        assert_eq!(to_host(got).unwrap(), to_host(want).unwrap());
    }

    /// The vendored burn-flex copies a permuted tensor whose last axis is contiguous run by run
    /// (attention's `swap_dims` + `reshape`): the same elements as the index arithmetic says.
    #[test]
    fn cpu_backend_permuted_copies_match_the_host() {
        let dev = Default::default();
        for dims in [[2usize, 3, 4, 8], [1, 5, 2, 16], [3, 1, 7, 9]] {
            let n: usize = dims.iter().product();
            let v: Vec<f32> = (0..n).map(|i| i as f32).collect();
            let t = Tensor::<TB, 4>::from_data(TensorData::new(v.clone(), dims), &dev);
            let [a, b, c, d] = dims;
            // [a, b, c, d] -> [a, c, b, d]
            let got: Vec<f32> = t.clone().swap_dims(1, 2).reshape([a * c * b * d]).into_data().into_vec().unwrap();
            let mut want = Vec::with_capacity(n);
            for i in 0..a {
                for k in 0..c {
                    for j in 0..b {
                        want.extend_from_slice(&v[((i * b + j) * c + k) * d..][..d]);
                    }
                }
            }
            assert_eq!(got, want, "{dims:?}");
            // a narrowed view (offset start, strided rows) through the same path
            let got: Vec<f32> =
                t.slice([0..a, 0..b, 1..c, 0..d]).swap_dims(1, 2).reshape([a * (c - 1) * b * d]).into_data().into_vec().unwrap();
            let mut want = Vec::with_capacity(a * (c - 1) * b * d);
            for i in 0..a {
                for k in 1..c {
                    for j in 0..b {
                        want.extend_from_slice(&v[((i * b + j) * c + k) * d..][..d]);
                    }
                }
            }
            assert_eq!(got, want, "{dims:?} sliced");
        }
    }

    /// The vendored burn-flex splits element-wise ops across threads above 32 Ki elements: every
    /// path (in place, on an operand kept elsewhere, per-row broadcast, scalar) gives the bits
    /// the host computes element by element, on a size that is not a multiple of the chunk.
    #[test]
    fn cpu_backend_parallel_element_wise_ops_match_the_host() {
        let dev = Default::default();
        let (rows, cols) = (97usize, 1531usize);
        let n = rows * cols;
        let a: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1009) as f32 * 0.013 - 6.5).collect();
        let b: Vec<f32> = (0..n).map(|i| ((i * 104_729) % 997) as f32 * 0.007 + 0.1).collect();
        let r: Vec<f32> = (0..rows).map(|i| 0.5 + i as f32 * 0.01).collect();
        let ta = Tensor::<TB, 2>::from_data(TensorData::new(a.clone(), [rows, cols]), &dev);
        let tb = Tensor::<TB, 2>::from_data(TensorData::new(b.clone(), [rows, cols]), &dev);
        let tr = Tensor::<TB, 2>::from_data(TensorData::new(r.clone(), [rows, 1]), &dev);
        let host = |f: &dyn Fn(usize) -> f32| (0..n).map(f).collect::<Vec<f32>>();
        // A lhs nothing else holds is written in place; `kept` (as autodiff keeps one) is not.
        let fresh = || Tensor::<TB, 2>::from_data(TensorData::new(a.clone(), [rows, cols]), &dev);
        assert_eq!(to_host(fresh() * tb.clone()).unwrap(), host(&|i| a[i] * b[i]));
        assert_eq!(to_host(fresh().mul_scalar(0.37)).unwrap(), host(&|i| a[i] * 0.37));
        let kept = ta.clone();
        assert_eq!(to_host(kept.clone() * tb.clone()).unwrap(), host(&|i| a[i] * b[i]));
        assert_eq!(to_host(kept.clone() - tb.clone()).unwrap(), host(&|i| a[i] - b[i]));
        assert_eq!(to_host(kept.clone() / tr.clone()).unwrap(), host(&|i| a[i] / r[i / cols]));
        assert_eq!(to_host(kept.clone().mul_scalar(0.37)).unwrap(), host(&|i| a[i] * 0.37));
        assert_eq!(to_host(kept.clone().add_scalar(1.25)).unwrap(), host(&|i| a[i] + 1.25));
        assert_eq!(to_host(ta).unwrap(), a, "the kept operand is unchanged");
    }

    /// The CPU backend's exp, sigmoid and softmax (mpo's vendored burn-flex) against f64.
    #[test]
    fn cpu_backend_exp_sigmoid_softmax_match_f64() {
        let dev = Default::default();
        let xs: Vec<f32> = (0..200_000).map(|i| -88.0 + 176.0 * i as f32 / 200_000.0).chain([0.0, -0.0, 1e-30, -1e-30]).collect();
        let n = xs.len();
        let t: Tensor<TB, 1> = Tensor::from_data(TensorData::new(xs.clone(), [n]), &dev);
        let exp = to_host(t.clone().exp()).unwrap();
        let sig = to_host(burn::tensor::activation::sigmoid(t)).unwrap();
        for (i, &x) in xs.iter().enumerate() {
            let e = (x as f64).exp();
            if e > f32::MIN_POSITIVE as f64 && e < f32::MAX as f64 {
                assert!(((exp[i] as f64 - e) / e).abs() < 3e-7, "exp({x}) = {} vs {e}", exp[i]);
            }
            let s = 1.0 / (1.0 + (-x as f64).exp());
            assert!((sig[i] as f64 - s).abs() <= 3e-7 * s.max(1e-30) + 1e-38, "sigmoid({x}) = {} vs {s}", sig[i]);
        }
        let edge: Tensor<TB, 1> =
            Tensor::from_data(TensorData::new(vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 100.0, -100.0], [5]), &dev);
        let e = to_host(edge.exp()).unwrap();
        assert!(e[0].is_nan());
        assert_eq!(&e[1..], &[f32::INFINITY, 0.0, f32::INFINITY, 0.0]);
        let row: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32 * 0.3 - 15.0).collect();
        let sm = to_host(burn::tensor::activation::softmax(Tensor::<TB, 2>::from_data(TensorData::new(row.clone(), [1, 1000]), &dev), 1))
            .unwrap();
        let max = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let z: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
        for (p, &x) in sm.iter().zip(&row) {
            let want = (x as f64 - max).exp() / z;
            // f32 row sums of 1000 terms round at ~1e-6 relative: the bound is on the sum, not the exp.
            assert!((*p as f64 - want).abs() <= 1e-5 * want + 1e-12, "{p} vs {want}");
        }
    }

    #[test]
    fn rope_llama3_scaling_keeps_high_frequencies() {
        let mut cfg = LlamaConfig::tiny(10);
        cfg.head_dim = 64;
        cfg.rope_theta = 500000.0;
        let base = rope_inv_freq(&cfg);
        cfg.rope_scaling = Some(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        });
        let scaled = rope_inv_freq(&cfg);
        assert_eq!(scaled[0], base[0]);
        assert!((scaled[31] - base[31] / 8.0).abs() < 1e-15);
    }
}

#[cfg(all(test, feature = "cpu"))]
mod hf_dir_tests {
    use super::tests::{TB, tiny};
    use crate::model::weights::{LlamaConfig, RandomWeights, WeightSource};

    /// Write the tiny random model as an HF directory (config.json, sharded safetensors in
    /// bf16 and f32, tokenizer files) and load it back through the HF path.
    #[test]
    fn hf_directory_loads_like_the_source_weights() {
        let cfg = LlamaConfig::tiny(300);
        let src = RandomWeights { config: cfg.clone(), seed: 7 };
        let dir = std::env::temp_dir().join(format!("mpo-hf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let names = cfg.tensor_names();
        // shard 1 in f32, shard 2 in bf16 (norm weights are exactly representable: compare loosely)
        let mut weight_map = serde_json::Map::new();
        for (shard, chunk) in names.chunks(names.len() / 2 + 1).enumerate() {
            let file = format!("model-0000{}-of-00002.safetensors", shard + 1);
            let tensors: Vec<(String, Vec<usize>, Vec<u8>, safetensors::Dtype)> = chunk
                .iter()
                .map(|n| {
                    let (v, s) = src.require(n).unwrap();
                    let (bytes, dt) = if shard == 0 {
                        (v.iter().flat_map(|x| x.to_le_bytes()).collect(), safetensors::Dtype::F32)
                    } else {
                        (v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect(), safetensors::Dtype::BF16)
                    };
                    weight_map.insert(n.clone(), file.clone().into());
                    (n.clone(), s, bytes, dt)
                })
                .collect();
            let views: Vec<(String, safetensors::tensor::TensorView<'_>)> =
                tensors.iter().map(|(n, s, b, dt)| (n.clone(), safetensors::tensor::TensorView::new(*dt, s.clone(), b).unwrap())).collect();
            std::fs::write(dir.join(&file), safetensors::serialize(views, None).unwrap()).unwrap();
        }
        std::fs::write(dir.join("model.safetensors.index.json"), serde_json::json!({"weight_map": weight_map}).to_string()).unwrap();
        std::fs::write(
            dir.join("config.json"),
            serde_json::json!({"model_type": "llama", "vocab_size": 300, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 512,
                "tie_word_embeddings": true})
            .to_string(),
        )
        .unwrap();
        let tok = crate::model::tokenizer::tests::tiny_tok();
        tok.inner.save(dir.join("tokenizer.json"), false).unwrap();
        std::fs::write(
            dir.join("tokenizer_config.json"),
            serde_json::json!({"eos_token": "<|im_end|>", "bos_token": "<|im_start|>", "chat_template": tok.chat_template}).to_string(),
        )
        .unwrap();

        let mref = crate::model::registry::ModelRef::HfDir { path: dir.clone(), sha256: String::new() };
        let loaded = crate::model::load::<TB>(&mref, None, 1, &Default::default(), &mut |_| {}).unwrap();
        assert_eq!(loaded.config, LlamaConfig { max_position_embeddings: 512, ..cfg });
        assert_eq!(loaded.tok.eos, 2);
        assert_eq!(loaded.tok.encode("hello").unwrap(), tok.encode("hello").unwrap());
        let reference = tiny(None);
        let rows = vec![vec![5u32, 9, 12, 40]];
        let dev = Default::default();
        let l = crate::model::batch::left_pad(&rows, 0);
        let run = |m: &super::Llama<TB>| {
            let h = m.forward(
                crate::model::batch::int_tensor(l.tokens.clone(), [1, 4], &dev),
                crate::model::batch::int_tensor(l.positions.clone(), [1, 4], &dev),
                crate::model::batch::mask_tensor(crate::model::batch::causal_mask(&l.pads, 0, 4), 1, 4, 4, &dev),
                None,
                false,
            );
            crate::model::batch::to_host(m.logits(h, false)).unwrap()
        };
        let (a, b) = (run(&loaded.model), run(&reference));
        // bf16 storage of half the weights: agreement to about 1e-2 relative
        let max = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(max < 5e-2, "max |diff| {max}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
