//! A checkpoint folder's integrity: `checksums.json` lists the sha256 of every other file, so
//! a resume (`run/checkpoint.rs`) and an export (`export/`) refuse a folder whose files changed
//! after it was written. What the files mean (weights, optimizer, state) is `run/checkpoint.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// `checksums.json` of a checkpoint.
#[derive(Debug, Serialize, Deserialize)]
pub struct Checksums {
    pub update: u32,
    /// sha256 (hex) of every other file of the checkpoint, by name.
    pub sha256: BTreeMap<String, String>,
}

impl Checksums {
    /// The checksums of every file in `dir` (a checkpoint being written).
    pub fn of(update: u32, dir: &Path) -> std::io::Result<Checksums> {
        let mut sums = Checksums { update, sha256: BTreeMap::new() };
        for e in std::fs::read_dir(dir)?.flatten() {
            sums.sha256.insert(e.file_name().to_string_lossy().to_string(), sha256_file(&e.path())?);
        }
        Ok(sums)
    }
}

/// A checkpoint (or `LATEST`) that failed verification.
#[derive(Debug, Clone, PartialEq)]
pub struct Damaged {
    pub dir: PathBuf,
    /// The file at fault.
    pub file: String,
    pub why: String,
}

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.dir.join(&self.file).display(), self.why)
    }
}

fn sha256_file(p: &Path) -> std::io::Result<String> {
    Ok(crate::hash::sha256_hex(std::fs::read(p)?))
}

/// Whether every file of checkpoint `d` verifies against its `checksums.json`. Checkpoints
/// written before checksums existed verify by their files being there (their state is then
/// checked by parsing it).
pub fn verify(d: &Path) -> Result<(), Damaged> {
    let bad = |file: &str, why: String| Damaged { dir: d.to_path_buf(), file: file.into(), why };
    match std::fs::read_to_string(d.join("checksums.json")) {
        Ok(text) => {
            let sums: Checksums = serde_json::from_str(&text).map_err(|e| bad("checksums.json", format!("unreadable ({e})")))?;
            for required in ["state.json", "policy.safetensors", "optimizer.bin"] {
                if !sums.sha256.contains_key(required) {
                    return Err(bad("checksums.json", format!("lists no {required}")));
                }
            }
            for (file, want) in &sums.sha256 {
                match sha256_file(&d.join(file)) {
                    Ok(got) if &got == want => {}
                    Ok(_) => return Err(bad(file, "its contents changed after it was written (checksum mismatch)".into())),
                    Err(e) => return Err(bad(file, format!("cannot be read ({e})"))),
                }
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            for required in ["policy.safetensors", "optimizer.bin"] {
                if !d.join(required).is_file() {
                    return Err(bad(required, "is missing".into()));
                }
            }
            Ok(())
        }
        Err(e) => Err(bad("checksums.json", format!("cannot be read ({e})"))),
    }
}
