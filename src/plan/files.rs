//! The files a plan names, read back as they were when it was made: a plan records each
//! template's (and the case file's) path and content hash; a run, an evaluation or a rubric
//! test reads the file again and refuses it when the hash moved. The one place past
//! `resolve::load` that reads a planned input; `compile` itself stays pure.

use std::path::{Path, PathBuf};

use super::{FileInfo, Plan};
use crate::template::{TemplateFile, TemplateKind};

/// Why a planned file could not be read as planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanFileError {
    #[error("the plan has no {0} template")]
    Missing(&'static str),
    #[error("reading {path}: {message}")]
    Read { path: String, message: String },
    #[error("template {path} changed since the plan was made (sha256 {now}, the plan's {planned})")]
    Changed { path: String, now: String, planned: String },
}

impl PlanFileError {
    /// What the user can do about it, where there is something.
    pub fn help(&self) -> Option<String> {
        match self {
            PlanFileError::Changed { .. } => Some("re-plan from the spec: `mpo run SPEC` (or `mpo plan SPEC --json` again)".into()),
            PlanFileError::Read { path, .. } => relative_path_help(path),
            PlanFileError::Missing(_) => None,
        }
    }
}

/// The fix for a planned file that cannot be read at a relative path: a plan's paths resolve
/// against the directory it was made in (`None` for an absolute path).
pub fn relative_path_help(path: &str) -> Option<String> {
    Path::new(path).is_relative().then(|| "a plan's relative paths resolve against the directory it was made in: run from there".into())
}

impl Plan {
    /// The plan's template of `kind`, as it was when the plan was made.
    pub fn template(&self, kind: TemplateKind) -> Result<TemplateFile, PlanFileError> {
        self.inputs.templates.get(kind.as_str()).ok_or(PlanFileError::Missing(kind.as_str()))?.read()
    }
}

impl FileInfo {
    /// The file, as it was when the plan was made.
    pub fn read(&self) -> Result<TemplateFile, PlanFileError> {
        let text =
            std::fs::read_to_string(&self.path).map_err(|e| PlanFileError::Read { path: self.path.clone(), message: e.to_string() })?;
        let sha = crate::hash::sha256_hex(text.as_bytes());
        if sha != self.sha256 {
            return Err(PlanFileError::Changed { path: self.path.clone(), now: sha, planned: self.sha256.clone() });
        }
        Ok(TemplateFile { path: PathBuf::from(&self.path), text, sha256: sha })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planned_file_is_refused_once_its_content_moved() {
        let dir = std::env::temp_dir().join(format!("mpo-plan-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("judge.j2");
        std::fs::write(&p, "Rate {{ response }}").unwrap();
        let info = FileInfo { path: p.display().to_string(), sha256: crate::hash::sha256_hex(b"Rate {{ response }}") };
        assert_eq!(info.read().unwrap().text, "Rate {{ response }}");
        std::fs::write(&p, "Rate it").unwrap();
        let e = info.read().unwrap_err();
        assert!(matches!(e, PlanFileError::Changed { .. }), "{e}");
        assert!(e.help().unwrap().contains("re-plan"));
        assert!(relative_path_help("templates/judge.j2").unwrap().contains("run from there"));
        assert_eq!(relative_path_help("/abs/judge.j2"), None);
        std::fs::remove_file(&p).unwrap();
        assert!(matches!(info.read().unwrap_err(), PlanFileError::Read { .. }));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
