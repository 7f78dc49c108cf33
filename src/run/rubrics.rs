//! The rubrics in force: the run's one rubric, or one per rubric family (`meta.partition_by`),
//! each with its history. The version each is at lives in the checkpointed [`State`]: for one
//! rubric `rubric_version`; with families each family's in `State::families`, and
//! `rubric_version` their sum (the rewrites in force), so a metrics row still says when the
//! rewards' scale may have moved.

use std::collections::BTreeMap;

use serde_json::Value as J;

use super::RunError;
use super::checkpoint::{FamilyState, State};
use crate::meta::family::Partition;
use crate::meta::history::History;
use crate::rubric::Rubric;

/// One rubric and its history. `key` is empty for a run's one rubric.
pub struct Family {
    pub key: String,
    pub rubric: Rubric,
    pub history: History,
}

pub struct Rubrics {
    pub partition: Partition,
    /// Sorted by key; one with the empty key when the partition is whole.
    pub families: Vec<Family>,
}

impl Rubrics {
    /// Every family of `keys` at `v0`, or the run's one rubric when the partition is whole.
    pub fn start(run_dir: &std::path::Path, partition: Partition, keys: &[String], v0: &Rubric) -> Rubrics {
        let families = if partition.is_whole() {
            vec![Family { key: String::new(), rubric: v0.clone(), history: History::new(run_dir) }]
        } else {
            keys.iter().map(|k| Family { key: k.clone(), rubric: v0.clone(), history: History::family(run_dir, k) }).collect()
        };
        Rubrics { partition, families }
    }

    /// Write every family's v000 (idempotent).
    pub fn init(&self) -> std::io::Result<()> {
        self.families.iter().try_for_each(|f| f.history.init(&f.rubric))
    }

    /// Load the version `state` has for every family (a resumed run).
    pub fn resume(&mut self, state: &State) -> Result<(), RunError> {
        for f in &mut self.families {
            let v = state.version_of(&f.key);
            let text = f.history.show(v)?;
            f.rubric = Rubric::parse(&text).map_err(|e| RunError::Rubric { what: label(&f.key, v), message: e.to_string() })?;
        }
        Ok(())
    }

    pub fn is_whole(&self) -> bool {
        self.partition.is_whole()
    }

    /// The family `record` belongs to.
    pub fn index_of(&self, record: &J) -> Result<usize, RunError> {
        let key = self.partition.key(record).map_err(|e| RunError::Rubric { what: "meta.partition_by".into(), message: e.to_string() })?;
        self.families.binary_search_by(|f| f.key.as_str().cmp(&key)).map_err(|_| RunError::Rubric {
            what: "meta.partition_by".into(),
            message: format!("a record of family `{key}`, which the training data planned with has no rubric for"),
        })
    }

    /// Each family's version when there are families (for a metrics row).
    pub fn versions(&self, state: &State) -> Option<BTreeMap<String, u32>> {
        (!self.is_whole()).then(|| self.families.iter().map(|f| (f.key.clone(), state.version_of(&f.key))).collect())
    }
}

/// How a family's version is named in messages: `rubric v003`, `rubric Algebra / 1 v003`.
pub fn label(key: &str, v: u32) -> String {
    if key.is_empty() { format!("rubric v{v:03}") } else { format!("rubric {key} v{v:03}") }
}

impl State {
    /// The version family `key` is at (`""`: the run's one rubric).
    pub fn version_of(&self, key: &str) -> u32 {
        if key.is_empty() { self.rubric_version } else { self.families.get(key).map_or(0, |f| f.version) }
    }

    /// Family `key` moved to version `v` at `update`'s meta step.
    pub fn switch(&mut self, key: &str, v: u32, update: u32) {
        if key.is_empty() {
            self.rubric_version = v;
        } else {
            self.families.insert(key.to_string(), FamilyState { version: v, since: update });
            self.rubric_version = self.families.values().map(|f| f.version).sum();
        }
        self.rubric_since = update;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_family_switch_moves_its_version_and_the_sum() {
        let mut st = State::default();
        st.switch("A", 1, 2);
        st.switch("B", 1, 2);
        st.switch("A", 2, 4);
        assert_eq!((st.version_of("A"), st.version_of("B"), st.version_of("C")), (2, 1, 0));
        assert_eq!((st.rubric_version, st.rubric_since), (3, 4));
        let mut one = State::default();
        one.switch("", 1, 2);
        assert_eq!((one.version_of(""), one.rubric_since), (1, 2));
        assert!(one.families.is_empty());
    }
}
