//! The spec: a YAML experiment description read into typed [`Spec`]s.
//!
//! The pipeline is `file -> Node tree (with positions) -> extends merged -> overrides applied
//! -> sweep expanded -> schema-checked -> typed Spec`. Every stage collects diagnostics instead
//! of stopping at the first; the only files read are the spec and its `extends` chain.
//! What needs the world the spec names (data, templates, models, case files) is `resolve/`,
//! which calls [`parse`] and checks each cell's semantics.

pub mod check;
pub mod compose;
pub mod node;
pub mod sweep;
pub mod types;

use std::path::Path;
use std::sync::OnceLock;

pub use types::*;

use crate::diag::{Diagnostic, Origin, Sources};
use node::{Node, Value};
use sweep::Cell;

/// The JSON Schema of the spec (what `mpo schema` prints and `mpo check` enforces).
pub fn json_schema() -> serde_json::Value {
    static S: OnceLock<serde_json::Value> = OnceLock::new();
    S.get_or_init(|| {
        let mut v = serde_json::to_value(schemars::schema_for!(Spec)).expect("schema serializes");
        if let Some(o) = v.as_object_mut() {
            o.insert("$id".into(), "https://mpo.dev/schema/spec.json".into());
            o.insert("title".into(), "mpo experiment spec".into());
        }
        v
    })
    .clone()
}

/// One run as the spec describes it (a sweep cell, or the whole spec): the typed spec when the
/// tree passed the schema, the tree it came from (for provenance) and this cell's diagnostics.
#[derive(Debug, Clone)]
pub struct Typed {
    pub spec: Option<Spec>,
    pub tree: Node,
    pub cell: Option<Cell>,
    pub diags: Vec<Diagnostic>,
}

/// A spec file read, composed and expanded: its cells (none when the file itself or the
/// sweep section did not check), and the diagnostics that belong to no single cell.
#[derive(Debug, Default)]
pub struct Parsed {
    pub sources: Sources,
    pub diags: Vec<Diagnostic>,
    pub cells: Vec<Typed>,
    /// Whether the file has a `sweep:` section.
    pub is_sweep: bool,
}

impl Parsed {
    fn has_errors(&self) -> bool {
        self.diags.iter().any(Diagnostic::is_error)
    }
}

/// Read, compose, expand and type the spec at `path` (its text given, or read from disk) with
/// command-line `overrides` (`key.path=value`).
pub fn parse(path: &Path, text: Option<&str>, overrides: &[String]) -> Parsed {
    let mut out = Parsed::default();
    let Some(mut tree) = compose::load_tree(path, text, &mut out.sources, &mut out.diags) else {
        return out;
    };
    let assignments = compose::parse_overrides(overrides, &mut out.sources, &mut out.diags);
    // Overrides of the sweep itself apply before expansion; the rest after each cell's own
    // assignments, so a value pinned on the command line wins over the sweep.
    let (sweep_over, spec_over): (Vec<_>, Vec<_>) = assignments.into_iter().partition(|a| a.path[0] == "sweep");
    for a in &sweep_over {
        if let Err(d) = compose::apply(&mut tree, a) {
            out.diags.push(d);
        }
    }
    let sweep_node = tree.take("sweep").map(|(_, n)| n);
    let schema = json_schema();
    if let Some(s) = &sweep_node {
        let mut only = Node::map(Vec::new(), Origin::Default);
        if let Value::Map(e) = &mut only.value {
            e.push((node::Key { name: "sweep".into(), origin: s.origin }, s.clone()));
        }
        check_sweep_structure(&only, &schema, &mut out.diags);
    }
    if out.has_errors() {
        return out;
    }
    out.is_sweep = sweep_node.is_some();
    let cells: Vec<Option<Cell>> = match &sweep_node {
        Some(s) => {
            let c = sweep::expand(s, &mut out.diags);
            if c.is_empty() {
                if !out.has_errors() {
                    out.diags.push(
                        Diagnostic::error("the sweep has no factors: add `grid`, `zip` or `ablate`").at(s.origin).label("empty sweep"),
                    );
                }
                return out;
            }
            c.into_iter().map(Some).collect()
        }
        None => vec![None],
    };
    for cell in cells {
        let mut t = tree.clone();
        let mut diags = Vec::new();
        for a in cell.iter().flat_map(|c| c.assignments.iter()).chain(spec_over.iter()) {
            if let Err(d) = compose::apply(&mut t, a) {
                diags.push(d);
            }
        }
        if diags.is_empty() {
            retired_keys(&mut t, &mut diags);
            inherit_meta_judge(&mut t);
            check::check(&t, &schema, &mut diags);
        }
        let mut spec = None;
        if diags.iter().all(|d| !d.is_error()) {
            match serde_json::from_value::<Spec>(t.to_json()) {
                Ok(s) => spec = Some(s),
                Err(e) => diags.push(
                    Diagnostic::error(format!("the spec passed the schema but does not deserialize: {e}"))
                        .at(t.origin)
                        .help("this is a bug in mpo's schema; please report it with this spec"),
                ),
            }
        }
        out.cells.push(Typed { spec, tree: t, cell, diags });
    }
    out
}

/// Keys an earlier mpo read, reported with what replaced them (an unknown-key error would not
/// say) and taken out of the tree so that only this error is shown.
fn retired_keys(t: &mut Node, diags: &mut Vec<Diagnostic>) {
    if let Value::Map(top) = &mut t.value
        && let Some((_, reward)) = top.iter_mut().find(|(k, _)| k.name == "reward")
        && let Some((key, was)) = reward.take("normalize")
    {
        let old = if matches!(was.value, Value::Bool(true)) { "true" } else { "false" };
        let new = if old == "true" { "range_share" } else { "sum" };
        diags.push(
            Diagnostic::error("`reward.normalize` was replaced by `reward.aggregate`, which names how item scores become the reward")
                .at(key.origin)
                .label("no longer read")
                .help(format!(
                    "write `aggregate: {new}` for what `normalize: {old}` did, or `aggregate: item_mean` (the default: each item a share of its range, equal weights, as the later reference)"
                )),
        );
    }
}

/// A `meta.judge` that names no backend, or the reward judge's, takes every field it leaves
/// unset from `reward.judge` (the values keep their origin, so `mpo check --explain` points at
/// the reward judge), except `max_tokens`: the meta budget is `meta.max_tokens`. One that names
/// another backend inherits nothing: the reward judge's fields belong to its own backend.
fn inherit_meta_judge(t: &mut Node) {
    let (Some(reward), Some(meta)) = (t.at_path("reward.judge"), t.at_path("meta.judge")) else { return };
    if !matches!(meta.value, Value::Map(_)) || !matches!(reward.value, Value::Map(_)) {
        return;
    }
    let backend = |n: &Node| match n.get("backend").map(|b| &b.value) {
        Some(Value::Str(s)) => s.clone(),
        _ => "local".into(),
    };
    if meta.get("backend").is_some() && backend(meta) != backend(reward) {
        return;
    }
    let mut base = reward.clone();
    base.take("max_tokens");
    let merged = compose::merge(base, meta.clone());
    if let Value::Map(top) = &mut t.value
        && let Some((_, m)) = top.iter_mut().find(|(k, _)| k.name == "meta")
        && let Value::Map(entries) = &mut m.value
        && let Some((_, j)) = entries.iter_mut().find(|(k, _)| k.name == "judge")
    {
        *j = merged;
    }
}

/// The sweep section's own shape (keys are paths, values lists) against the schema.
fn check_sweep_structure(only_sweep: &Node, schema: &serde_json::Value, diags: &mut Vec<Diagnostic>) {
    let mut sub = schema.clone();
    if let Some(o) = sub.as_object_mut() {
        o.remove("required");
    }
    check::check(only_sweep, &sub, diags);
}

/// One line of `mpo check --explain`: a resolved value and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Provenance {
    pub path: String,
    pub value: serde_json::Value,
    /// `file:line:col`, or `default`.
    pub origin: String,
}

/// Every leaf of the resolved spec with its origin. Lists are leaves.
pub fn explain(spec: &Spec, tree: &Node, sources: &Sources) -> Vec<Provenance> {
    let mut out = Vec::new();
    let json = serde_json::to_value(spec).unwrap_or_default();
    walk(&json, "", &mut |path, v| {
        let origin =
            tree.at_path(path).map(|n| n.origin).and_then(|o| o.span()).map(|s| sources.location(s)).unwrap_or_else(|| "default".into());
        out.push(Provenance { path: path.to_string(), value: v.clone(), origin });
    });
    out
}

fn walk(v: &serde_json::Value, path: &str, f: &mut dyn FnMut(&str, &serde_json::Value)) {
    match v {
        serde_json::Value::Object(o) if !o.is_empty() => {
            for (k, c) in o {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                walk(c, &p, f);
            }
        }
        _ => f(path, v),
    }
}
