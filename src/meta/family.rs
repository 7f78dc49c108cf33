//! Rubric families (`meta.partition_by`): which family a training record belongs to. A family's
//! key is its record's values of the partition's fields, joined by ` / ` (`Algebra / 1`); its
//! folder name under `rubrics/families/` is the key made file-safe (`algebra-1`).

use std::collections::BTreeSet;

use serde_json::Value as J;

/// Between a key's field values.
const SEPARATOR: &str = " / ";

/// Why a record has no family, or two families would share a folder.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FamilyError {
    #[error("`{field}` is `{value}`, which holds `{SEPARATOR}`: the separator of a family's fields")]
    HoldsSeparator { field: String, value: String },
    #[error("`{0}` is empty")]
    Empty(String),
    #[error("`{field}` is {kind}, not a string, number or boolean")]
    NotScalar { field: String, kind: &'static str },
    #[error("no field `{0}`")]
    Missing(String),
    /// In the data file: its 1-based record number.
    #[error("record {record}: {error}")]
    Record { record: usize, error: Box<FamilyError> },
    #[error("families `{0}` and `{1}` would share the folder `{2}`")]
    SameFolder(String, String, String),
}

/// The fields that key rubric families; none: one rubric for every rollout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Partition {
    fields: Vec<String>,
}

impl Partition {
    pub fn new(fields: &[String]) -> Partition {
        Partition { fields: fields.to_vec() }
    }

    /// One rubric for every rollout.
    pub fn is_whole(&self) -> bool {
        self.fields.is_empty()
    }

    pub fn fields(&self) -> &[String] {
        &self.fields
    }

    /// The family of `record` (empty when the partition is whole), or which field it lacks.
    pub fn key(&self, record: &J) -> Result<String, FamilyError> {
        let mut parts = Vec::with_capacity(self.fields.len());
        for f in &self.fields {
            let part = match record.get(f) {
                Some(J::String(s)) if s.contains(SEPARATOR) => {
                    return Err(FamilyError::HoldsSeparator { field: f.clone(), value: s.clone() });
                }
                Some(J::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
                Some(J::Number(n)) => n.to_string(),
                Some(J::Bool(b)) => b.to_string(),
                Some(J::String(_)) => return Err(FamilyError::Empty(f.clone())),
                Some(other) => return Err(FamilyError::NotScalar { field: f.clone(), kind: kind(other) }),
                None => return Err(FamilyError::Missing(f.clone())),
            };
            parts.push(part);
        }
        Ok(parts.join(SEPARATOR))
    }

    /// Every family of `records`, sorted; the first record that has no key names the error
    /// (1-based, as the data file counts its records).
    pub fn keys(&self, records: &[J]) -> Result<Vec<String>, FamilyError> {
        let mut keys = BTreeSet::new();
        for (n, r) in records.iter().enumerate() {
            keys.insert(self.key(r).map_err(|e| FamilyError::Record { record: n + 1, error: Box::new(e) })?);
        }
        let keys: Vec<String> = keys.into_iter().collect();
        let mut slugs = std::collections::BTreeMap::new();
        for k in &keys {
            if let Some(other) = slugs.insert(slug(k), k) {
                return Err(FamilyError::SameFolder(other.clone(), k.clone(), slug(k)));
            }
        }
        Ok(keys)
    }
}

fn kind(v: &J) -> &'static str {
    match v {
        J::Null => "null",
        J::Array(_) => "a list",
        J::Object(_) => "an object",
        _ => "a value",
    }
}

/// A family's folder name: lower-case letters and digits, runs of anything else one `-`.
pub fn slug(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for c in key.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_matches('-').to_string();
    if out.is_empty() { "family".into() } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_family_is_its_records_values() {
        let p = Partition::new(&["type".into(), "cluster".into()]);
        assert_eq!(p.key(&json!({"type": "Counting & Probability", "cluster": 2})).unwrap(), "Counting & Probability / 2");
        assert_eq!(slug("Counting & Probability / 2"), "counting-probability-2");
        assert_eq!(p.key(&json!({"type": "Algebra"})).unwrap_err().to_string(), "no field `cluster`");
        assert_eq!(
            p.key(&json!({"type": "Algebra", "cluster": null})).unwrap_err().to_string(),
            "`cluster` is null, not a string, number or boolean"
        );
        assert_eq!(p.key(&json!({"type": " ", "cluster": 1})).unwrap_err().to_string(), "`type` is empty");
        // ("a / b", 1) and ("a", "b / 1") would be one family
        assert!(p.key(&json!({"type": "a / b", "cluster": 1})).unwrap_err().to_string().contains("the separator"));
        let whole = Partition::default();
        assert!(whole.is_whole());
        assert_eq!(whole.key(&json!({})).unwrap(), "");
    }

    #[test]
    fn keys_are_sorted_and_distinct_and_name_the_record_that_has_none() {
        let p = Partition::new(&["type".into()]);
        let recs = vec![json!({"type": "B"}), json!({"type": "A"}), json!({"type": "B"})];
        assert_eq!(p.keys(&recs).unwrap(), vec!["A", "B"]);
        let bad = vec![json!({"type": "A"}), json!({"level": 1})];
        assert_eq!(p.keys(&bad).unwrap_err().to_string(), "record 2: no field `type`");
        let clash = vec![json!({"type": "a b"}), json!({"type": "a-b"})];
        assert!(p.keys(&clash).unwrap_err().to_string().contains("share the folder `a-b`"));
    }
}
