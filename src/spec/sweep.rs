//! Sweep expansion: a `sweep:` section becomes a list of cells, each a set of assignments on
//! top of the base spec. Cells = ablate variants x zip rows x grid product, in the order the
//! keys were written (first key varies slowest), so cell indices are stable for job arrays.

use super::compose::Assignment;
use super::node::{Node, Value};
use crate::diag::Diagnostic;

/// Refuse sweeps larger than this: almost certainly a mistake, and each cell is validated.
pub const MAX_CELLS: usize = 100_000;

/// One cell of a sweep.
#[derive(Debug, Clone)]
pub struct Cell {
    pub index: usize,
    /// `meta.every=5 runtime.seed=1` (or `base` for the unmodified spec in an ablation).
    pub label: String,
    /// Factor name -> value, in assignment order (for reports).
    pub factors: Vec<(String, serde_json::Value)>,
    pub assignments: Vec<Assignment>,
}

/// Expand the `sweep` node. Errors (mismatched zip lengths, non-list values, too many cells)
/// are reported; an empty or absent sweep yields no cells.
pub fn expand(sweep: &Node, diags: &mut Vec<Diagnostic>) -> Vec<Cell> {
    let mut ablate: Vec<Vec<Assignment>> = vec![Vec::new()];
    let mut zip_rows: Vec<Vec<Assignment>> = vec![Vec::new()];
    let mut grid: Vec<Vec<Assignment>> = vec![Vec::new()];
    let mut ok = true;
    let factor_lists = |section: &str, diags: &mut Vec<Diagnostic>| -> Option<Vec<(String, Vec<Assignment>)>> {
        let node = sweep.get(section)?;
        let Value::Map(entries) = &node.value else { return None };
        let mut out = Vec::new();
        for (k, v) in entries {
            let Value::Seq(items) = &v.value else {
                diags.push(
                    Diagnostic::error(format!("`sweep.{section}.{}` must be a list of values, found {}", k.name, v.describe()))
                        .at(v.origin)
                        .label("expected a list")
                        .help(format!("e.g. `{}: [1, 2, 3]`", k.name)),
                );
                continue;
            };
            if items.is_empty() {
                diags.push(
                    Diagnostic::error(format!("`sweep.{section}.{}` is an empty list: the sweep would have no cells", k.name))
                        .at(v.origin)
                        .label("empty"),
                );
                continue;
            }
            let path: Vec<String> = k.name.split('.').map(str::to_string).collect();
            let assigns = items.iter().map(|it| Assignment { path: path.clone(), key_origin: k.origin, value: it.clone() }).collect();
            out.push((k.name.clone(), assigns));
        }
        Some(out)
    };
    let errors_before = diags.len();
    if let Some(factors) = factor_lists("ablate", diags) {
        for (_, values) in factors {
            for a in values {
                ablate.push(vec![a]);
            }
        }
    }
    if let Some(factors) = factor_lists("zip", diags) {
        let lens: Vec<usize> = factors.iter().map(|(_, v)| v.len()).collect();
        if let Some(&n) = lens.first() {
            if lens.iter().any(|&l| l != n) {
                let desc: Vec<String> = factors.iter().map(|(k, v)| format!("`{k}` has {}", v.len())).collect();
                diags.push(
                    Diagnostic::error(format!("`sweep.zip` lists must have the same length: {}", desc.join(", ")))
                        .at(sweep.get_key("zip").map(|z| z.origin).unwrap_or_default())
                        .label("lists of different lengths")
                        .help("zip pairs the i-th values of every list; use `grid` for all combinations"),
                );
                ok = false;
            } else {
                zip_rows = (0..n).map(|i| factors.iter().map(|(_, v)| v[i].clone()).collect()).collect();
            }
        }
    }
    if let Some(factors) = factor_lists("grid", diags) {
        for (_, values) in factors {
            let mut next = Vec::with_capacity(grid.len() * values.len());
            for g in &grid {
                for a in &values {
                    let mut row = g.clone();
                    row.push(a.clone());
                    next.push(row);
                }
                if next.len() > MAX_CELLS {
                    break;
                }
            }
            grid = next;
        }
    }
    if diags.len() > errors_before || !ok {
        return Vec::new();
    }
    let total = ablate.len() * zip_rows.len() * grid.len();
    if total > MAX_CELLS {
        diags.push(
            Diagnostic::error(format!("the sweep has {total} cells, more than the {MAX_CELLS} allowed"))
                .at(sweep.origin)
                .label("too many cells"),
        );
        return Vec::new();
    }
    let mut cells = Vec::with_capacity(total);
    for a in &ablate {
        for z in &zip_rows {
            for g in &grid {
                let assignments: Vec<Assignment> = a.iter().chain(z).chain(g).cloned().collect();
                let factors: Vec<(String, serde_json::Value)> = assignments.iter().map(|x| (x.path.join("."), x.value.to_json())).collect();
                let label = if factors.is_empty() {
                    "base".to_string()
                } else {
                    factors.iter().map(|(k, v)| format!("{k}={}", short(v))).collect::<Vec<_>>().join(" ")
                };
                cells.push(Cell { index: cells.len(), label, factors, assignments });
            }
        }
    }
    cells
}

/// Help for a list written where one value goes (`runtime.seed: [0, 1, 2]`): the sweep factor
/// that runs one cell per value. `path` is dotted, as a sweep key is.
pub fn list_as_factor_help(path: &str, list: &Node) -> String {
    format!("to run one cell per value, write it under `sweep.grid` as `{path}: {}`", flow(list))
}

/// Help for a factor written as nested sections (`grid: {meta: {every: [...]}}`), which the
/// schema reports only as "a mapping where a list goes": the dotted keys it meant. `path` is the
/// checker's (`sweep.grid.meta`); anything outside a sweep section gets none.
pub fn nested_factor_help(path: &str, node: &Node) -> Option<String> {
    let (section, key) = path.strip_prefix("sweep.")?.split_once('.')?;
    if !matches!(node.value, Value::Map(_)) {
        return None;
    }
    let mut leaves = Vec::new();
    dotted_leaves(key, node, &mut leaves);
    let entries: Vec<String> = leaves.iter().map(|(k, v)| format!("{k}: {}", flow(v))).collect();
    Some(format!("sweep keys are dotted paths: write `{section}: {{{}}}`", entries.join(", ")))
}

fn dotted_leaves<'n>(prefix: &str, node: &'n Node, out: &mut Vec<(String, &'n Node)>) {
    match &node.value {
        Value::Map(entries) if !entries.is_empty() => {
            for (k, v) in entries {
                dotted_leaves(&format!("{prefix}.{}", k.name), v, out);
            }
        }
        _ => out.push((prefix.to_string(), node)),
    }
}

/// A list of scalars in YAML flow style (`[never, 5]`) for a help line; anything longer or
/// deeper is `[...]`, which the user has in front of them anyway.
fn flow(list: &Node) -> String {
    let Value::Seq(items) = &list.value else { return "[...]".into() };
    let scalar = |n: &Node| match &n.value {
        Value::Null => Some("null".to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Int(i) => Some(i.to_string()),
        Value::Float(f) => Some(format!("{f:?}")),
        // Plain only where YAML reads it back as the same string.
        Value::Str(s)
            if s.chars().next().is_some_and(char::is_alphabetic)
                && s.chars().all(|c| c.is_alphanumeric() || "_-./".contains(c))
                && !["true", "false", "null"].contains(&s.as_str()) =>
        {
            Some(s.clone())
        }
        Value::Str(s) => serde_json::to_string(s).ok(),
        Value::Seq(_) | Value::Map(_) => None,
    };
    match items.iter().map(scalar).collect::<Option<Vec<String>>>() {
        Some(v) if v.iter().map(String::len).sum::<usize>() <= 60 => format!("[{}]", v.join(", ")),
        _ => "[...]".into(),
    }
}

fn short(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::node::parse_yaml;

    fn cells(yaml: &str) -> (Vec<String>, Vec<Diagnostic>) {
        let n = parse_yaml(yaml, 0).unwrap();
        let mut d = Vec::new();
        let c = expand(&n, &mut d);
        (c.into_iter().map(|c| c.label).collect(), d)
    }

    #[test]
    fn grid_is_cartesian_first_key_slowest() {
        let (c, _) = cells("grid: {meta.every: [never, 5], runtime.seed: [0, 1]}\n");
        assert_eq!(
            c,
            [
                "meta.every=never runtime.seed=0",
                "meta.every=never runtime.seed=1",
                "meta.every=5 runtime.seed=0",
                "meta.every=5 runtime.seed=1"
            ]
        );
    }

    #[test]
    fn zip_pairs_and_checks_lengths() {
        let (c, _) = cells("zip: {a: [1, 2], b: [x, y]}\n");
        assert_eq!(c, ["a=1 b=x", "a=2 b=y"]);
        let (c, d) = cells("zip: {a: [1, 2], b: [x]}\n");
        assert!(c.is_empty());
        assert!(d[0].message.contains("same length"));
    }

    #[test]
    fn ablate_is_base_plus_one_factor_at_a_time_times_grid() {
        let (c, _) = cells("ablate: {ppo.kl_coef: [0.0, 0.1], meta.every: [never]}\ngrid: {runtime.seed: [0, 1]}\n");
        assert_eq!(c.len(), 4 * 2);
        assert_eq!(c[0], "runtime.seed=0");
        assert_eq!(c[2], "ppo.kl_coef=0.0 runtime.seed=0");
        assert_eq!(c[7], "meta.every=never runtime.seed=1");
    }
}
