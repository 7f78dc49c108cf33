//! The paper's four tasks: their record formats, data loading and (math) the generator.
//!
//! Records stay JSON objects with the dataset's own field names, so a policy template reads
//! `{{ problem }}` for MATH or `{{ title }}` for Scruples. Loading normalises only what every
//! consumer needs: math records get an `answer` (the solution's last `\boxed{}`), Scruples
//! records without an action are dropped as in the reference.

pub mod generate;
pub mod math;
pub mod rouge;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value as J;

use crate::spec::{DataFormat, DataSource, TaskKind};

/// Which split a data source feeds: a generated test split draws only held-out problems, a
/// generated training split never does (`generate.rs`). Files load as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// Records of one split plus a content hash that identifies them.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub records: Arc<Vec<J>>,
    /// sha256 of the file bytes, or of the generator's parameters and version.
    pub sha256: String,
    /// Records dropped on load (e.g. Scruples anecdotes without an action).
    pub dropped: usize,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DataError {
    #[error("cannot read `{path}`: {message}")]
    Io { path: PathBuf, message: String },
    #[error("`{path}` line {line}: not a JSON object: {message}")]
    Json { path: PathBuf, line: usize, message: String },
    #[error("`{path}` line {line}: record has no `{field}` field (format `{format}` needs {needs})")]
    MissingField { path: PathBuf, line: usize, field: String, format: String, needs: String },
    #[error("`{path}` has no usable records")]
    Empty { path: PathBuf },
    #[error("a data source needs exactly one of `path` and `generate`")]
    NoSource,
}

/// The format a task reads when the spec names none.
pub fn native_format(kind: TaskKind) -> DataFormat {
    match kind {
        TaskKind::Math => DataFormat::Math,
        TaskKind::EssayWriting => DataFormat::EssayPrompts,
        TaskKind::Summarization => DataFormat::Scitldr,
        TaskKind::EthicalReasoning => DataFormat::Scruples,
    }
}

/// Formats that make sense for a task.
pub fn formats_for(kind: TaskKind) -> &'static [DataFormat] {
    match kind {
        TaskKind::Math => &[DataFormat::Math],
        TaskKind::EssayWriting => &[DataFormat::EssayPrompts],
        TaskKind::Summarization => &[DataFormat::Scitldr, DataFormat::Billsum],
        TaskKind::EthicalReasoning => &[DataFormat::Scruples],
    }
}

pub fn format_name(f: DataFormat) -> &'static str {
    match f {
        DataFormat::Math => "math",
        DataFormat::EssayPrompts => "essay_prompts",
        DataFormat::Scitldr => "scitldr",
        DataFormat::Billsum => "billsum",
        DataFormat::Scruples => "scruples",
    }
}

/// Fields every record of a format must have.
pub fn required_fields(f: DataFormat) -> &'static [&'static str] {
    match f {
        DataFormat::Math => &["problem", "solution"],
        DataFormat::EssayPrompts => &["prompt"],
        DataFormat::Scitldr => &["text", "summary"],
        DataFormat::Billsum => &["text", "summary"],
        DataFormat::Scruples => &["title", "text", "binarized_label"],
    }
}

type CacheKey = (PathBuf, u64, Option<std::time::SystemTime>, DataFormat);

fn cache() -> &'static Mutex<HashMap<CacheKey, Dataset>> {
    static C: OnceLock<Mutex<HashMap<CacheKey, Dataset>>> = OnceLock::new();
    C.get_or_init(Default::default)
}

/// What validation and planning need to know about a split, without holding it: its size,
/// content hash and first record (templates are checked against it).
#[derive(Debug, Clone)]
pub struct DataSummary {
    pub len: usize,
    pub sha256: String,
    pub dropped: usize,
    pub first: J,
}

/// Summarize a split. Files are read (and cached); the generator makes only the first record
/// of a training split, since its hash is that of its parameters, and a whole test split (it
/// draws without replacement, so its length is known only once drawn).
pub fn summarize(kind: TaskKind, src: &DataSource, seed: u64, split: Split) -> Result<DataSummary, DataError> {
    if let (None, Some(g)) = (&src.path, &src.generate)
        && split == Split::Train
    {
        let first = generate::arithmetic(seed, 1, &g.levels, split).remove(0);
        return Ok(DataSummary {
            len: g.count,
            sha256: crate::hash::sha256_hex(generator_id(seed, g, split).as_bytes()),
            dropped: 0,
            first,
        });
    }
    let d = load(kind, src, seed, split)?;
    Ok(DataSummary { len: d.records.len(), sha256: d.sha256.clone(), dropped: d.dropped, first: d.records[0].clone() })
}

fn generator_id(seed: u64, g: &crate::spec::GeneratorSpec, split: Split) -> String {
    format!("arithmetic v{} {} seed={seed} count={} levels={:?}", generate::version(split), split.as_str(), g.count, g.levels)
}

/// Forget every file read so far (benchmarks measure cold loads with it).
pub fn clear_cache() {
    if let Ok(mut c) = cache().lock() {
        c.clear();
    }
}

/// The training split as a run loads it.
pub fn train(spec: &crate::spec::Spec) -> Result<Dataset, DataError> {
    load(spec.task.kind, &spec.task.train, spec.data_seed(), Split::Train)
}

/// Load a split. `path` must already be resolved; `seed` feeds the generator, `split` picks its
/// part of the problem space. Files are read once per process (a sweep of 64 cells reads its
/// data once).
pub fn load(kind: TaskKind, src: &DataSource, seed: u64, split: Split) -> Result<Dataset, DataError> {
    match (&src.path, &src.generate) {
        (Some(p), None) => load_file(p, src.format.unwrap_or(native_format(kind))),
        (None, Some(g)) => {
            let id = generator_id(seed, g, split);
            let key = (PathBuf::from(&id), 0, None, DataFormat::Math);
            if let Some(d) = cache().lock().ok().and_then(|c| c.get(&key).cloned()) {
                return Ok(d);
            }
            let records = generate::arithmetic(seed, g.count, &g.levels, split);
            let d = Dataset { records: Arc::new(records), sha256: crate::hash::sha256_hex(id.as_bytes()), dropped: 0 };
            if let Ok(mut c) = cache().lock() {
                c.insert(key, d.clone());
            }
            Ok(d)
        }
        _ => Err(DataError::NoSource),
    }
}

fn load_file(path: &Path, format: DataFormat) -> Result<Dataset, DataError> {
    let meta = std::fs::metadata(path).map_err(|e| DataError::Io { path: path.into(), message: e.to_string() })?;
    let key = (path.to_path_buf(), meta.len(), meta.modified().ok(), format);
    if let Some(d) = cache().lock().ok().and_then(|c| c.get(&key).cloned()) {
        return Ok(d);
    }
    let bytes = std::fs::read(path).map_err(|e| DataError::Io { path: path.into(), message: e.to_string() })?;
    let sha256 = crate::hash::sha256_hex(&bytes);
    let text = String::from_utf8(bytes).map_err(|e| DataError::Io { path: path.into(), message: format!("not UTF-8: {e}") })?;
    let needs = required_fields(format);
    let mut records = Vec::new();
    let mut dropped = 0;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut rec: J =
            serde_json::from_str(line).map_err(|e| DataError::Json { path: path.into(), line: i + 1, message: e.to_string() })?;
        let Some(obj) = rec.as_object_mut() else {
            return Err(DataError::Json { path: path.into(), line: i + 1, message: "expected an object".into() });
        };
        for f in needs {
            if obj.get(*f).is_none_or(J::is_null) {
                return Err(DataError::MissingField {
                    path: path.into(),
                    line: i + 1,
                    field: f.to_string(),
                    format: format_name(format).into(),
                    needs: needs.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", "),
                });
            }
        }
        match format {
            DataFormat::Math if !obj.contains_key("answer") => match obj.get("solution").and_then(J::as_str).and_then(math::last_boxed) {
                Some(a) => {
                    obj.insert("answer".into(), J::String(a));
                }
                None => {
                    dropped += 1;
                    continue;
                }
            },
            // The reference drops anecdotes whose action could not be extracted.
            DataFormat::Scruples if obj.get("action").and_then(|a| a.get("description")).is_none_or(J::is_null) => {
                dropped += 1;
                continue;
            }
            _ => {}
        }
        records.push(rec);
    }
    if records.is_empty() {
        return Err(DataError::Empty { path: path.into() });
    }
    let d = Dataset { records: Arc::new(records), sha256, dropped };
    if let Ok(mut c) = cache().lock() {
        c.insert(key, d.clone());
    }
    Ok(d)
}

/// Lower-case hex of bytes.
/// What makes two records the same prompt: the text the policy is asked about, whitespace
/// collapsed.
pub fn prompt_key(kind: TaskKind, rec: &J) -> String {
    let f = |k: &str| rec.get(k).and_then(J::as_str).unwrap_or("");
    let text = match kind {
        TaskKind::Math => f("problem").to_string(),
        TaskKind::EssayWriting => f("prompt").to_string(),
        TaskKind::Summarization => f("text").to_string(),
        TaskKind::EthicalReasoning => format!("{}\n{}", f("title"), f("text")),
    };
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Records of `test` whose prompt also appears in `train`.
pub fn shared_records(kind: TaskKind, train: &[J], test: &[J]) -> usize {
    let seen: std::collections::HashSet<String> = train.iter().map(|r| prompt_key(kind, r)).collect();
    test.iter().filter(|r| seen.contains(&prompt_key(kind, r))).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_math_and_adds_answers() {
        let dir = std::env::temp_dir().join(format!("mpo-task-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("m.jsonl");
        std::fs::write(&p, "{\"problem\":\"1+1\",\"solution\":\"$\\\\boxed{2}$\"}\n\n{\"problem\":\"x\",\"solution\":\"no box\"}\n")
            .unwrap();
        let d = load(TaskKind::Math, &DataSource { path: Some(p.clone()), ..Default::default() }, 0, Split::Train).unwrap();
        assert_eq!(d.records.len(), 1);
        assert_eq!(d.records[0]["answer"], "2");
        assert_eq!(d.dropped, 1);
        std::fs::write(&p, "{\"problem\":\"1+1\"}\n").unwrap();
        let e = load(TaskKind::Math, &DataSource { path: Some(p), ..Default::default() }, 0, Split::Train).unwrap_err();
        assert!(matches!(e, DataError::MissingField { line: 1, .. }), "{e}");
    }
}
