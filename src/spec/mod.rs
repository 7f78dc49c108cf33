//! The spec: loading a YAML experiment description into checked, resolved [`Spec`]s.
//!
//! The pipeline is `file -> Node tree (with positions) -> extends merged -> overrides applied
//! -> sweep expanded -> schema-checked -> typed Spec -> semantically validated + inputs read`.
//! Every stage collects diagnostics instead of stopping at the first, and nothing here writes
//! to the filesystem. After [`load`] returns, the spec layer is done with the disk.

pub mod check;
pub mod compose;
pub mod node;
pub mod sweep;
pub mod types;
pub mod validate;

use std::path::Path;
use std::sync::OnceLock;

pub use types::*;
pub use validate::{Inputs, memory_shapes};

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

/// One fully checked run: the typed spec (paths resolved), the tree it came from (for
/// provenance), its inputs, and the sweep cell it is (if any).
#[derive(Debug, Clone)]
pub struct Resolved {
    pub spec: Spec,
    pub tree: Node,
    pub inputs: Inputs,
    pub cell: Option<Cell>,
}

/// The outcome of loading a spec file: the runs (one per sweep cell) when everything checks,
/// and all diagnostics (warnings included) either way.
#[derive(Debug, Default)]
pub struct Loaded {
    pub sources: Sources,
    pub diags: Vec<Diagnostic>,
    pub runs: Vec<Resolved>,
    /// Whether the file has a `sweep:` section.
    pub is_sweep: bool,
}

impl Loaded {
    pub fn has_errors(&self) -> bool {
        self.diags.iter().any(Diagnostic::is_error)
    }

    pub fn render_diagnostics(&self) -> String {
        crate::diag::render_all(&self.diags, &self.sources)
    }
}

/// Load, compose, check and resolve the spec at `path` with command-line `overrides`
/// (`key.path=value`).
pub fn load(path: &Path, overrides: &[String]) -> Loaded {
    load_inner(path, None, overrides)
}

/// As [`load`], with the root spec's text given (it is still named and resolved as `path`).
pub fn load_str(path: &Path, text: &str, overrides: &[String]) -> Loaded {
    load_inner(path, Some(text), overrides)
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

fn load_inner(path: &Path, text: Option<&str>, overrides: &[String]) -> Loaded {
    let mut out = Loaded::default();
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
    let mut seen: Vec<Diagnostic> = Vec::new();
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
        let mut resolved = None;
        if diags.iter().all(|d| !d.is_error()) {
            match serde_json::from_value::<Spec>(t.to_json()) {
                Ok(mut spec) => {
                    if let Some(inputs) = validate::validate(&mut spec, &t, &mut out.sources, &mut diags) {
                        resolved = Some(Resolved { spec, tree: t, inputs, cell: cell.clone() });
                    }
                }
                Err(e) => diags.push(
                    Diagnostic::error(format!("the spec passed the schema but does not deserialize: {e}"))
                        .at(t.origin)
                        .help("this is a bug in mpo's schema; please report it with this spec"),
                ),
            }
        }
        for mut d in diags {
            if let Some(c) = &cell {
                d.help.push(format!("in sweep cell {} ({})", c.index, c.label));
            }
            // Many cells share a mistake of the base spec: report it once.
            let key = (d.message.clone(), d.span);
            if seen.iter().any(|s| (s.message.clone(), s.span) == key) {
                continue;
            }
            seen.push(d.clone());
            out.diags.push(d);
        }
        if let Some(r) = resolved {
            out.runs.push(r);
        }
    }
    if out.has_errors() {
        out.runs.clear();
    }
    out
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
pub fn explain(r: &Resolved, sources: &Sources) -> Vec<Provenance> {
    let mut out = Vec::new();
    let json = serde_json::to_value(&r.spec).unwrap_or_default();
    walk(&json, "", &mut |path, v| {
        let origin =
            r.tree.at_path(path).map(|n| n.origin).and_then(|o| o.span()).map(|s| sources.location(s)).unwrap_or_else(|| "default".into());
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
