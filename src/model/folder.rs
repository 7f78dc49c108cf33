//! What `mpo check` proves about a model on disk before a job is queued, without loading it:
//! a Hugging Face folder's config parses into a supported architecture, every tensor that
//! config needs is in a safetensors header with its shape and a dtype mpo reads, each file is
//! as long as its header says, and the tokenizer loads and fits the embedding. And what the
//! model *is*: a content digest (of every file mpo reads), so a run id follows the weights,
//! not the folder they sit in.
//!
//! Digests of large files are cached under `~/.cache/mpo/digests`, keyed by the file's path,
//! length, modification time and inode: a second `mpo check` of a 15 GB folder reads nothing,
//! and a replaced file (new mtime or inode) is hashed again.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use sha2::{Digest, Sha256};

use super::registry::ModelRef;
use super::tokenizer::Tok;
use super::weights::LlamaConfig;
use crate::hash::hex;

/// The most header bytes a safetensors file may claim (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100 << 20;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FolderError {
    #[error("`{path}` does not exist")]
    Missing { path: PathBuf },
    #[error("`{path}`: {message}")]
    Config { path: PathBuf, message: String },
    #[error("`{dir}` holds no weights (no model.safetensors and no model.safetensors.index.json)")]
    NoWeights { dir: PathBuf },
    #[error("`{path}`: {message}")]
    Weights { path: PathBuf, message: String },
    #[error("`{dir}`: no tensor `{name}`, which the config's architecture needs")]
    MissingTensor { dir: PathBuf, name: String },
    #[error("`{path}`: tensor `{name}` has shape {found:?}, the config says {expected:?}")]
    Shape { path: PathBuf, name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("`{dir}` has no tokenizer.json")]
    NoTokenizer { dir: PathBuf },
    #[error("`{path}`: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("cannot read `{path}`: {message}")]
    Io { path: PathBuf, message: String },
}

impl FolderError {
    /// What to do about it.
    pub fn help(&self) -> String {
        match self {
            FolderError::Missing { .. } => "check the path (relative paths resolve against the spec file's directory)".into(),
            FolderError::Config { .. } => "the folder's config.json must be a complete Hugging Face config of a llama, qwen2 or mistral model; download the folder again if it was cut off".into(),
            FolderError::NoWeights { .. } | FolderError::MissingTensor { .. } | FolderError::Weights { .. } | FolderError::Shape { .. } => {
                "the weights are incomplete or belong to another model: download the folder again (`huggingface-cli download ORG/NAME --local-dir DIR`)".into()
            }
            FolderError::NoTokenizer { .. } | FolderError::Tokenizer { .. } => {
                "mpo reads the tokenizer from the model folder: copy tokenizer.json and tokenizer_config.json from the model's repository".into()
            }
            FolderError::Io { .. } => "check the file's permissions".into(),
        }
    }
}

/// A Hugging Face folder that passed every check.
#[derive(Debug, Clone)]
pub struct Inspected {
    pub config: LlamaConfig,
    /// Bytes of weights, as stored.
    pub weight_bytes: u64,
    /// The content digest: see [`hf_dir_digest`].
    pub sha256: String,
}

/// Check a Hugging Face folder as loading it would, reading headers only.
pub fn inspect(dir: &Path) -> Result<Inspected, FolderError> {
    if !dir.is_dir() {
        return Err(FolderError::Missing { path: dir.to_path_buf() });
    }
    let config = config_of_dir(dir)?;
    let mut found: BTreeMap<String, (PathBuf, Vec<usize>)> = BTreeMap::new();
    let mut weight_bytes = 0;
    for file in weight_files(dir)? {
        let (header, len) = safetensors_header(&file)?;
        weight_bytes += len;
        for (name, (dtype, shape)) in header {
            if !matches!(dtype.as_str(), "F32" | "F16" | "BF16") && config.tensor_shape(&name).is_some() {
                return Err(FolderError::Weights {
                    path: file.clone(),
                    message: format!("tensor `{name}` is {dtype}; mpo reads F32, F16 and BF16 weights"),
                });
            }
            found.insert(name, (file.clone(), shape));
        }
    }
    for name in config.tensor_names() {
        let Some((path, shape)) = found.get(&name) else {
            return Err(FolderError::MissingTensor { dir: dir.to_path_buf(), name });
        };
        let expected = config.tensor_shape(&name).unwrap_or_default();
        if *shape != expected {
            return Err(FolderError::Shape { path: path.clone(), name, expected, found: shape.clone() });
        }
    }
    let tok_path = dir.join("tokenizer.json");
    if !tok_path.is_file() {
        return Err(FolderError::NoTokenizer { dir: dir.to_path_buf() });
    }
    let tok = Tok::from_hf_dir(dir).map_err(|e| FolderError::Tokenizer { path: tok_path.clone(), message: e.to_string() })?;
    if tok.vocab_size() > config.vocab_size {
        return Err(FolderError::Tokenizer {
            path: tok_path,
            message: format!("the tokenizer has {} tokens but the model only {} embeddings", tok.vocab_size(), config.vocab_size),
        });
    }
    Ok(Inspected { config, weight_bytes, sha256: hf_dir_digest(dir)? })
}

/// A folder's `config.json`, parsed and checked.
pub fn config_of_dir(dir: &Path) -> Result<LlamaConfig, FolderError> {
    let p = dir.join("config.json");
    let text = std::fs::read_to_string(&p).map_err(|e| FolderError::Io { path: p.clone(), message: e.to_string() })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| FolderError::Config { path: p.clone(), message: format!("not valid JSON: {e}") })?;
    LlamaConfig::from_hf(&v).map_err(|e| FolderError::Config { path: p, message: e.to_string() })
}

/// The safetensors files of a folder: the shards its index names, else `model.safetensors`.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, FolderError> {
    let idx = dir.join("model.safetensors.index.json");
    if idx.is_file() {
        let text = std::fs::read_to_string(&idx).map_err(|e| FolderError::Io { path: idx.clone(), message: e.to_string() })?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| FolderError::Weights { path: idx.clone(), message: format!("not valid JSON: {e}") })?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| FolderError::Weights { path: idx.clone(), message: "no `weight_map`".into() })?;
        let mut names: Vec<&str> = map.values().filter_map(|s| s.as_str()).collect();
        names.sort();
        names.dedup();
        let files: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
        if let Some(missing) = files.iter().find(|f| !f.is_file()) {
            return Err(FolderError::Weights {
                path: idx,
                message: format!("names the shard `{}`, which is not in the folder", missing.display()),
            });
        }
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.is_file() { Ok(vec![single]) } else { Err(FolderError::NoWeights { dir: dir.to_path_buf() }) }
}

type Header = BTreeMap<String, (String, Vec<usize>)>;

/// A safetensors file's tensors (dtype, shape) from its header, and its length, after checking
/// that the file holds every byte the header names.
pub fn safetensors_header(path: &Path) -> Result<(Header, u64), FolderError> {
    let bad = |message: String| FolderError::Weights { path: path.to_path_buf(), message };
    let io = |e: std::io::Error| FolderError::Io { path: path.to_path_buf(), message: e.to_string() };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(|_| bad("shorter than a safetensors header".into()))?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER || 8 + n > len {
        return Err(bad(format!("the header claims {n} bytes in a file of {len}: cut off or not safetensors")));
    }
    let mut text = vec![0u8; n as usize];
    f.read_exact(&mut text).map_err(io)?;
    let v: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&text).map_err(|e| bad(format!("the header is not a JSON object: {e}")))?;
    let mut out = Header::new();
    let mut end = 0u64;
    for (name, t) in v {
        if name == "__metadata__" {
            continue;
        }
        let dtype = t.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| bad(format!("tensor `{name}` has no dtype")))?;
        let shape: Option<Vec<usize>> =
            t.get("shape").and_then(|s| s.as_array()).map(|a| a.iter().filter_map(|x| x.as_u64().map(|x| x as usize)).collect());
        let offsets: Option<Vec<u64>> =
            t.get("data_offsets").and_then(|s| s.as_array()).map(|a| a.iter().filter_map(|x| x.as_u64()).collect());
        let (Some(shape), Some([a, b])) = (shape, offsets.as_deref()) else {
            return Err(bad(format!("tensor `{name}` has no shape or data offsets")));
        };
        let width = match dtype {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            _ => 1,
        };
        let elements = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
        if a > b || elements.and_then(|e| e.checked_mul(width)) != Some(b - a) {
            return Err(bad(format!("tensor `{name}`: its offsets {a}..{b} do not hold a {dtype} tensor of shape {shape:?}")));
        }
        end = end.max(*b);
        out.insert(name, (dtype.to_string(), shape));
    }
    if end.checked_add(8 + n) != Some(len) {
        return Err(bad(format!("the header describes {} bytes, the file has {len}: cut off or damaged", end.saturating_add(8 + n))));
    }
    Ok((out, len))
}

/// The content digest of a Hugging Face folder: sha256 over `name sha256` lines of every file
/// mpo reads from it (config, tokenizer files, weights and their index), sorted by name. Where
/// the folder lives, and files mpo never reads (README, .git), do not enter it.
pub fn hf_dir_digest(dir: &Path) -> Result<String, FolderError> {
    const READ: [&str; 6] = [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "generation_config.json",
        "model.safetensors.index.json",
    ];
    let mut files: Vec<PathBuf> = READ.iter().map(|n| dir.join(n)).filter(|p| p.is_file()).collect();
    match weight_files(dir) {
        Ok(w) => files.extend(w),
        Err(FolderError::NoWeights { .. }) => {}
        Err(e) => return Err(e),
    }
    files.sort();
    files.dedup();
    let mut h = Sha256::new();
    for f in &files {
        let name = f.strip_prefix(dir).unwrap_or(f).display().to_string();
        h.update(format!("{name} {}\n", file_sha256(f)?).as_bytes());
    }
    Ok(hex(&h.finalize()))
}

/// Fill in the content digest of a model named by path (a known model carries its own; a
/// random one is its name). Hugging Face folders are checked in full on the way.
pub fn identify(m: ModelRef) -> Result<(ModelRef, Option<Inspected>), FolderError> {
    Ok(match m {
        ModelRef::HfDir { path, .. } => {
            let i = inspect(&path)?;
            (ModelRef::HfDir { path, sha256: i.sha256.clone() }, Some(i))
        }
        ModelRef::Gguf { path, .. } => {
            let sha256 = file_sha256(&path)?;
            (ModelRef::Gguf { path, sha256 }, None)
        }
        other => (other, None),
    })
}

/// For a model identified by content: `(path, planned, now)` when its files no longer have
/// the digest the plan recorded.
pub fn changed(m: &ModelRef) -> Result<Option<(PathBuf, String, String)>, FolderError> {
    let (path, planned, now) = match m {
        ModelRef::HfDir { path, sha256 } if !sha256.is_empty() => (path, sha256, hf_dir_digest(path)?),
        ModelRef::Gguf { path, sha256 } if !sha256.is_empty() => (path, sha256, file_sha256(path)?),
        _ => return Ok(None),
    };
    Ok((now != *planned).then(|| (path.clone(), planned.clone(), now)))
}

/// The sha256 of a file, from the digest cache when the file is unchanged since it was hashed.
pub fn file_sha256(path: &Path) -> Result<String, FolderError> {
    static MEMO: OnceLock<Mutex<BTreeMap<String, String>>> = OnceLock::new();
    let io = |e: std::io::Error| FolderError::Io { path: path.to_path_buf(), message: e.to_string() };
    let meta = std::fs::metadata(path).map_err(io)?;
    let abs = std::fs::canonicalize(path).map_err(io)?;
    let key = cache_key(&abs, &meta);
    let memo = MEMO.get_or_init(Default::default);
    if let Some(d) = memo.lock().expect("digest memo").get(&key) {
        return Ok(d.clone());
    }
    let cached = super::fetch::cache_dir().join("digests").join(&key);
    let digest = match std::fs::read_to_string(&cached) {
        Ok(d) if d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()) => d,
        _ => {
            let mut f = std::fs::File::open(path).map_err(io)?;
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf).map_err(io)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            let d = hex(&h.finalize());
            // A file that changed while it was hashed is not cached under its old key.
            let unchanged = std::fs::metadata(path).is_ok_and(|m| cache_key(&abs, &m) == key);
            // A cache: a failure to write it costs the next check a re-read, nothing else.
            if unchanged && std::fs::create_dir_all(cached.parent().expect("has a parent")).is_ok() {
                let _ = crate::fsx::write_atomic(&cached, d.as_bytes());
            }
            d
        }
    };
    memo.lock().expect("digest memo").insert(key, digest.clone());
    Ok(digest)
}

/// What makes a cached digest valid: the file's path, length, modification time, inode and
/// change time (a rewrite that keeps the mtime, `cp -p` or `rsync -t`, still moves the ctime).
fn cache_key(abs: &Path, meta: &std::fs::Metadata) -> String {
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
    #[cfg(unix)]
    let (inode, ctime) = {
        use std::os::unix::fs::MetadataExt;
        (meta.ino(), (meta.ctime(), meta.ctime_nsec()))
    };
    #[cfg(not(unix))]
    let (inode, ctime) = (0u64, (0i64, 0i64));
    let key = format!("{}\n{}\n{mtime}\n{inode}\n{ctime:?}", abs.display(), meta.len());
    crate::hash::sha256_hex(key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_that_claims_more_than_the_file_holds_is_an_error() {
        let dir = std::env::temp_dir().join(format!("mpo-folder-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("model.safetensors");
        let header = br#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[0u8; 16]);
        std::fs::write(&p, &bytes).unwrap();
        let (h, len) = safetensors_header(&p).unwrap();
        assert_eq!((h["w"].1.clone(), len), (vec![2, 2], bytes.len() as u64));
        std::fs::write(&p, &bytes[..bytes.len() - 4]).unwrap();
        let e = safetensors_header(&p).unwrap_err().to_string();
        assert!(e.contains("cut off or damaged"), "{e}");
        std::fs::write(&p, &bytes[..4]).unwrap();
        assert!(safetensors_header(&p).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
