//! A typed spec resolved against the world it names: the data files read and hashed, every
//! template rendered against a real record, the initial rubric parsed, the models identified
//! and their context and memory checked, the case file parsed (`validate.rs`). Output: one
//! [`Resolved`] per run (sweep cell), from which `plan::compile` makes a plan.
//!
//! This is the room above `spec/` that may read the tokenizer, the data and the case file, so
//! `spec/` imports none of the rooms it describes. Like `spec/`, it writes nothing; the one
//! write during loading is the digest cache of model files (`model/folder.rs`).

mod sample;
mod validate;

use std::path::Path;

use crate::diag::{Diagnostic, Sources};
use crate::spec::node::Node;
use crate::spec::sweep::Cell;
use crate::spec::{Spec, Typed};
pub use sample::{SAMPLE_RUBRIC, sample_context};
pub use validate::{Inputs, memory_shapes};

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
    resolve(crate::spec::parse(path, None, overrides))
}

/// As [`load`], with the root spec's text given (it is still named and resolved as `path`).
pub fn load_str(path: &Path, text: &str, overrides: &[String]) -> Loaded {
    resolve(crate::spec::parse(path, Some(text), overrides))
}

/// Validate every typed cell of `parsed` against its inputs; a mistake many cells share is
/// reported once. No run is returned while any error stands.
fn resolve(parsed: crate::spec::Parsed) -> Loaded {
    let mut out = Loaded { sources: parsed.sources, diags: parsed.diags, runs: Vec::new(), is_sweep: parsed.is_sweep };
    let mut seen: Vec<Diagnostic> = Vec::new();
    for Typed { spec, tree, cell, mut diags } in parsed.cells {
        let mut resolved = None;
        if let Some(mut spec) = spec
            && let Some(inputs) = validate::validate(&mut spec, &tree, &mut out.sources, &mut diags)
        {
            resolved = Some(Resolved { spec, tree, inputs, cell: cell.clone() });
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
