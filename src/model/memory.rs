//! How much device memory a run needs, from the model's config and the spec's shapes, before
//! anything is loaded: for sizing a cluster job (`mpo plan`) and for `runtime.device_memory_gib`.
//!
//! An estimate, not a measurement. Counted in f32 (mpo computes in f32 by default):
//! - the frozen base weights, once (the reference pass and a `separate` critic share them);
//!   with `runtime.precision: bf16` its matrices in 2 bytes (norms and biases stay f32);
//! - LoRA adapters and value heads with their gradients and AdamW's two moments (16 bytes per
//!   trained parameter);
//! - training activations kept for the backward pass, per micro-batch row and layer:
//!   `10 d + 2 kv + 3 f` values per token (norms, projections, residuals, the MLP's three
//!   products) plus attention's scores and probabilities, `2 H S` per token (no fused
//!   attention kernel on burn 0.21); the policy's and a separate critic's graphs both;
//! - the logits of a micro-batch three times (logits, log-softmax, its gradient): at a 150k
//!   vocabulary this is the largest single term; in bf16 the head's bf16 output besides (the
//!   activations are not lowered: bf16 products keep their bf16 operands for the backward
//!   pass beside the f32 values the rest of the graph keeps);
//! - generation: the KV cache of a rollout batch and its last logits.
//!
//! The peak is the weights plus the larger of training and generation. Allocator slack and
//! fragmentation are not counted: `mpo bench train --batch 4 --seq 512` (SmolLM2-135M, CPU)
//! peaked at 8.2 GB resident against 6.7 GB estimated, so `mpo check` adds 25% before it
//! compares with `runtime.device_memory_gib`.

use super::weights::LlamaConfig;
use crate::spec::{Critic, LoraTarget, Precision};

/// The shapes that decide memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shapes {
    /// Rows per micro-batch (one backward pass).
    pub micro_rows: usize,
    /// Prompt plus response positions of the longest row.
    pub seq: usize,
    /// Rows generated (and scored without gradients) at once.
    pub rollout_rows: usize,
    /// How the frozen base is stored (`runtime.precision`).
    pub precision: Precision,
}

/// Bytes by what holds them.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Memory {
    pub base_weights: u64,
    /// Trained parameters with gradients and optimizer state.
    pub trained: u64,
    pub activations: u64,
    pub logits: u64,
    pub generation: u64,
}

impl Memory {
    pub fn peak(&self) -> u64 {
        self.base_weights.saturating_add(self.trained).saturating_add(self.activations.saturating_add(self.logits).max(self.generation))
    }
}

const F32: u64 = 4;

/// Parameters of the base model.
pub fn base_parameters(c: &LlamaConfig) -> u64 {
    c.tensor_names().iter().filter_map(|n| c.tensor_shape(n)).map(|s| s.iter().product::<usize>() as u64).sum()
}

/// Bytes of the base model's weights stored in `precision`: bf16 keeps the matrices in 2 bytes,
/// norms and biases (vectors) in f32.
pub fn base_bytes(c: &LlamaConfig, precision: Precision) -> u64 {
    c.tensor_names()
        .iter()
        .filter_map(|n| c.tensor_shape(n))
        .map(|s| {
            let n = s.iter().product::<usize>() as u64;
            if precision == Precision::Bf16 && s.len() == 2 { n * 2 } else { n * F32 }
        })
        .sum()
}

/// Trained parameters of one LoRA adapter set of rank `r` on `targets`.
pub fn lora_parameters(c: &LlamaConfig, r: usize, targets: &[LoraTarget]) -> u64 {
    let (d, f, v) = (c.hidden_size as u64, c.intermediate_size as u64, c.vocab_size as u64);
    let (q, kv) = ((c.num_heads * c.head_dim) as u64, (c.num_kv_heads * c.head_dim) as u64);
    let r = r as u64;
    let layers = c.num_layers as u64;
    targets
        .iter()
        .map(|t| match t {
            LoraTarget::Q => layers * r * (d + q),
            LoraTarget::K | LoraTarget::V => layers * r * (d + kv),
            LoraTarget::O => layers * r * (q + d),
            LoraTarget::Gate | LoraTarget::Up | LoraTarget::Down => layers * r * (d + f),
            LoraTarget::LmHead => r * (d + v),
        })
        .sum()
}

/// The memory a run of `c` needs at `shapes`.
pub fn estimate(c: &LlamaConfig, rank: usize, targets: &[LoraTarget], critic: Option<Critic>, shapes: Shapes) -> Memory {
    let (d, f, v) = (c.hidden_size as u64, c.intermediate_size as u64, c.vocab_size as u64);
    let kv = (c.num_kv_heads * c.head_dim) as u64;
    let (layers, heads) = (c.num_layers as u64, c.num_heads as u64);
    let (rows, seq, roll) = (shapes.micro_rows as u64, shapes.seq as u64, shapes.rollout_rows as u64);
    let lora = lora_parameters(c, rank, targets);
    // a separate critic: adapters of its own and a value head; shared: the value head only
    let (critic_params, graphs) = match critic {
        Some(Critic::Separate) => (lora + d + 1, 2),
        Some(Critic::Shared) => (d + 1, 1),
        None => (0, 1),
    };
    // in f64: sizes come from untrusted configs and data, and `as u64` saturates
    let [d, f, v, kv, layers, heads, rows, seq, roll, graphs] = [d, f, v, kv, layers, heads, rows, seq, roll, graphs].map(|x| x as f64);
    let tokens = rows * seq;
    let per_token_layer = 10.0 * d + 2.0 * kv + 3.0 * f + 2.0 * heads * seq;
    let bytes = |x: f64| (x * F32 as f64) as u64;
    Memory {
        base_weights: base_bytes(c, shapes.precision),
        trained: (lora + critic_params).saturating_mul(4 * F32),
        activations: bytes(graphs * tokens * layers * per_token_layer),
        logits: bytes(if shapes.precision == Precision::Bf16 { 3.5 } else { 3.0 } * tokens * v),
        generation: bytes(roll * seq * layers * 2.0 * kv + 2.0 * roll * v),
    }
}

/// `n` bytes in GiB, one decimal.
pub fn gib(n: u64) -> String {
    format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Qwen2.5-1.5B-Instruct's config.json.
    fn qwen_1_5b() -> LlamaConfig {
        LlamaConfig::from_hf(&serde_json::json!({
            "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960,
            "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
            "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": true
        }))
        .unwrap()
    }

    #[test]
    fn parameter_counts_match_the_published_models() {
        // Qwen2.5-1.5B: 1.54B parameters (1.31B without the embedding), as its model card says
        let p = base_parameters(&qwen_1_5b());
        assert!((1_540_000_000..1_550_000_000).contains(&p), "{p}");
        // the paper's adapters: r=64 on every projection and lm_head
        let all = LoraTarget::ALL;
        let l = lora_parameters(&qwen_1_5b(), 64, &all);
        // per layer: q 64*(1536+1536), k and v 64*(1536+256), o 64*3072, three MLP 64*(1536+8960)
        let per_layer = 64 * (3072 + 2 * 1792 + 3072 + 3 * 10496);
        assert_eq!(l, 28 * per_layer + 64 * (1536 + 151936));
    }

    #[test]
    fn memory_grows_with_the_micro_batch_and_accumulation_lowers_it() {
        let c = qwen_1_5b();
        let m = |rows| {
            estimate(
                &c,
                64,
                &[LoraTarget::Q, LoraTarget::V],
                Some(Critic::Separate),
                Shapes { micro_rows: rows, seq: 1024, rollout_rows: 16, precision: Precision::F32 },
            )
        };
        let (one, eight) = (m(1), m(8));
        assert_eq!(one.base_weights, eight.base_weights);
        assert_eq!(eight.logits, 8 * one.logits);
        // 8 rows of 1024 tokens over a 151,936-token vocabulary: 3 x 4.6 GiB of logits
        assert_eq!(gib(eight.logits), "13.9 GiB");
        assert!(eight.peak() > one.peak());
    }

    #[test]
    fn a_bf16_base_takes_half_the_bytes_of_its_matrices() {
        let c = qwen_1_5b();
        let (f32, bf16) = (base_bytes(&c, Precision::F32), base_bytes(&c, Precision::Bf16));
        assert_eq!(f32, 4 * base_parameters(&c));
        // the vectors (norms: 2 per layer + 1; q/k/v biases) stay in 4 bytes
        let vectors = 28 * (2 * 1536 + 1536 + 2 * 256) + 1536;
        assert_eq!(bf16, 2 * (base_parameters(&c) - vectors) + 4 * vectors);
        // 1.54B parameters: 5.8 GiB in f32, 2.9 GiB in bf16
        assert_eq!((gib(f32).as_str(), gib(bf16).as_str()), ("5.8 GiB", "2.9 GiB"));
    }
}
