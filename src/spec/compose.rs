//! Composition: `extends` chains, deep merge, and `key.path=value` overrides.
//!
//! All of it works on [`Node`] trees, so every value keeps the place it was written: a value
//! from a base file points into the base file, an override points into the `<overrides>`
//! pseudo-file (one line per override), and `mpo check --explain` can say where each resolved
//! value came from.

use std::path::{Component, Path, PathBuf};

use super::node::{Key, Node, Value, parse_yaml};
use crate::diag::{Diagnostic, Origin, SourceId, Sources, Span};

/// Read `path` (or take its `text` when given) and everything it extends into one merged tree
/// (without `extends` keys).
pub fn load_tree(path: &Path, text: Option<&str>, sources: &mut Sources, diags: &mut Vec<Diagnostic>) -> Option<Node> {
    load_inner(path, text, None, sources, &mut Vec::new(), diags)
}

fn load_inner(
    path: &Path,
    given: Option<&str>,
    referenced_at: Option<Origin>,
    sources: &mut Sources,
    chain: &mut Vec<(PathBuf, Origin)>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Node> {
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if let Some(pos) = chain.iter().position(|(p, _)| *p == canonical) {
        let names: Vec<String> = chain[pos..].iter().map(|(p, _)| display(p)).chain([display(&canonical)]).collect();
        let mut d = Diagnostic::error(format!("circular `extends`: {}", names.join(" -> ")))
            .at(referenced_at.unwrap_or_default())
            .label("this closes the cycle")
            .help("remove one of the `extends` entries in the cycle");
        if let Some(s) = chain[pos].1.span() {
            d = d.note(s, "the cycle starts here");
        }
        diags.push(d);
        return None;
    }
    let text = match given.map(|t| Ok(t.to_string())).unwrap_or_else(|| std::fs::read_to_string(path)) {
        Ok(t) => t,
        Err(e) => {
            let what = if referenced_at.is_some() { "base spec" } else { "spec" };
            diags.push(
                Diagnostic::error(format!("cannot read {what} `{}`: {e}", path.display()))
                    .at(referenced_at.unwrap_or_default())
                    .label("not readable")
                    .help("check the path; `extends` paths are relative to the file that names them"),
            );
            return None;
        }
    };
    let id = match sources.find_path(path) {
        Some(id) => id,
        None => sources.add(path.display().to_string(), Some(path.to_path_buf()), text.clone()),
    };
    let mut tree = match parse_yaml(&text, id) {
        Ok(t) => t,
        Err(d) => {
            diags.push(d);
            return None;
        }
    };
    if !matches!(tree.value, Value::Map(_)) {
        diags.push(
            Diagnostic::error(format!("a spec must be a mapping of sections, found {}", tree.value.kind_name()))
                .at(tree.origin)
                .label("expected `name:`, `task:`, ... at the top level"),
        );
        return None;
    }
    let Some((_, ext)) = tree.take("extends") else {
        return Some(tree);
    };
    let bases: Vec<&Node> = match &ext.value {
        Value::Str(_) => vec![&ext],
        Value::Seq(items) => items.iter().collect(),
        _ => {
            diags.push(
                Diagnostic::error(format!("`extends` must be a path or a list of paths, found {}", ext.describe()))
                    .at(ext.origin)
                    .label("expected a path"),
            );
            return None;
        }
    };
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    chain.push((canonical, ext.origin));
    let mut merged: Option<Node> = None;
    let mut failed = false;
    for b in bases {
        let Value::Str(rel) = &b.value else {
            diags.push(
                Diagnostic::error(format!("`extends` entries must be paths, found {}", b.describe())).at(b.origin).label("expected a path"),
            );
            failed = true;
            continue;
        };
        match load_inner(&normalize(&dir.join(rel)), None, Some(b.origin), sources, chain, diags) {
            Some(base) => {
                merged = Some(match merged {
                    Some(m) => merge(m, base),
                    None => base,
                })
            }
            None => failed = true,
        }
    }
    chain.pop();
    if failed {
        return None;
    }
    Some(match merged {
        Some(base) => merge(base, tree),
        None => tree,
    })
}

fn display(p: &Path) -> String {
    let cwd = std::env::current_dir().unwrap_or_default();
    p.strip_prefix(&cwd).unwrap_or(p).display().to_string()
}

/// Deep merge: mappings merge key by key (entries of `over` win, base order kept, new keys
/// appended); anything else in `over` replaces `base`, lists included.
pub fn merge(base: Node, over: Node) -> Node {
    match (base.value, over.value) {
        (Value::Map(b), Value::Map(o)) if switches_variant(&b, &o) => Node::new(Value::Map(o), over.origin),
        (Value::Map(mut b), Value::Map(o)) => {
            for (k, v) in o {
                match b.iter().position(|(bk, _)| bk.name == k.name) {
                    Some(i) => {
                        let (_, old) = b.remove(i);
                        b.insert(i, (k, merge(old, v)));
                    }
                    None => b.push((k, v)),
                }
            }
            Node::new(Value::Map(b), over.origin)
        }
        (_, v) => Node::new(v, over.origin),
    }
}

/// Keys that name the variant of a tagged section (`extraction.method`, `verifiers[].kind`,
/// `mix.mode`). A child that picks another variant replaces the parent's map: the parent's
/// fields belong to the old variant and would be unknown keys in the new one.
const VARIANT_TAGS: [&str; 3] = ["method", "kind", "mode"];

fn switches_variant(base: &[(Key, Node)], over: &[(Key, Node)]) -> bool {
    let tag = |m: &[(Key, Node)], t: &str| m.iter().find(|(k, _)| k.name == t).map(|(_, v)| v.value.clone());
    VARIANT_TAGS.iter().any(|t| matches!((tag(base, t), tag(over, t)), (Some(a), Some(b)) if a != b))
}

/// One parsed `key.path=value` assignment.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub path: Vec<String>,
    /// Where the key was written (new keys created by the assignment point here).
    pub key_origin: Origin,
    pub value: Node,
}

/// Register the command-line overrides as the `<overrides>` pseudo-file (one per line) and
/// parse them. Values are YAML: `0.02` is a number, `never` a string, `[1, 2]` a list.
pub fn parse_overrides(overrides: &[String], sources: &mut Sources, diags: &mut Vec<Diagnostic>) -> Vec<Assignment> {
    if overrides.is_empty() {
        return Vec::new();
    }
    let id = sources.add("<overrides>", None, overrides.join("\n"));
    let mut out = Vec::new();
    let mut i = 0;
    while i < overrides.len() {
        let (text, line) = (&overrides[i], i as u32 + 1);
        i += 1;
        if let Some((fixed, took_next)) = undashed(text, overrides.get(i).map(String::as_str)) {
            let written = if took_next { format!("{text} {}", overrides[i]) } else { text.clone() };
            i += usize::from(took_next);
            diags.push(
                Diagnostic::error(format!("override `{written}` is written as a flag"))
                    .at_span(Span { source: id, line, col: 1, len: text.chars().count() as u32 })
                    .label("not a flag")
                    .help(undashed_help(&fixed)),
            );
            continue;
        }
        match parse_override(text, id, line) {
            Ok(a) => out.push(a),
            Err(d) => diags.push(d),
        }
    }
    out
}

/// The help for an override written as a flag (`--meta.every=5`, or `--ppo.kl_coef 0.1` with
/// `next` its value), for the command line parser, which meets it first.
pub fn dashed_override_help(arg: &str, next: Option<&str>) -> Option<String> {
    undashed(arg, next).map(|(fixed, _)| undashed_help(&fixed))
}

fn undashed_help(fixed: &str) -> String {
    format!("overrides are written without dashes: `{fixed}`")
}

/// `arg` as the override it was meant to be, and whether it took `next` as its value. Only a
/// key that starts with a spec section counts: a mistyped flag is left to be reported as one.
fn undashed(arg: &str, next: Option<&str>) -> Option<(String, bool)> {
    let bare = arg.strip_prefix("--")?;
    let (key, value) = bare.split_once('=').map_or((bare, None), |(k, v)| (k, Some(v)));
    let section = key.split('.').next().unwrap_or(key);
    super::json_schema().get("properties")?.get(section)?;
    let next = next.filter(|n| value.is_none() && !n.contains('=') && !n.starts_with("--"));
    Some((format!("{key}={}", value.or(next).unwrap_or("...")), next.is_some()))
}

fn parse_override(text: &str, source: SourceId, line: u32) -> Result<Assignment, Diagnostic> {
    let whole = Span { source, line, col: 1, len: text.chars().count() as u32 };
    let Some((key, value)) = text.split_once('=') else {
        return Err(Diagnostic::error(format!("override `{text}` has no `=`"))
            .at_span(whole)
            .label("expected `key.path=value`")
            .help("write overrides as `section.key=value`, e.g. `ppo.kl_coef=0.02`"));
    };
    let key_span = Span { source, line, col: 1, len: key.chars().count() as u32 };
    let path: Vec<String> = key.trim().split('.').map(|s| s.trim().to_string()).collect();
    if key.trim().is_empty() || path.iter().any(String::is_empty) {
        return Err(Diagnostic::error(format!("override `{text}` has an empty key segment"))
            .at_span(key_span)
            .label("expected `section.key`")
            .help("write overrides as `section.key=value`, e.g. `ppo.kl_coef=0.02`"));
    }
    let col0 = key.chars().count() as u32 + 1;
    let mut value = if value.trim().is_empty() {
        Node::new(Value::Null, Origin::At(Span { source, line, col: col0 + 1, len: 0 }))
    } else {
        let mut v = parse_yaml(value, source).map_err(|mut d| {
            shift(&mut d.span, line, col0);
            d.message = format!("override `{text}`: {}", d.message);
            d
        })?;
        shift_node(&mut v, line, col0);
        v
    };
    if value.origin == Origin::Default {
        value.origin = Origin::At(Span { source, line, col: col0 + 1, len: 0 });
    }
    Ok(Assignment { path, key_origin: Origin::At(key_span), value })
}

fn shift(span: &mut Option<Span>, line: u32, col0: u32) {
    if let Some(s) = span {
        if s.line == 1 {
            s.col += col0;
        }
        s.line = line + s.line - 1;
    }
}

fn shift_node(n: &mut Node, line: u32, col0: u32) {
    let mut sp = n.origin.span();
    shift(&mut sp, line, col0);
    if let Some(s) = sp {
        n.origin = Origin::At(s);
    }
    match &mut n.value {
        Value::Seq(items) => items.iter_mut().for_each(|i| shift_node(i, line, col0)),
        Value::Map(entries) => {
            for (k, v) in entries {
                let mut ks = k.origin.span();
                shift(&mut ks, line, col0);
                if let Some(s) = ks {
                    k.origin = Origin::At(s);
                }
                shift_node(v, line, col0);
            }
        }
        _ => {}
    }
}

/// Set `a.path` in `tree` to `a.value`, creating mappings on the way. A mapping value merges
/// into an existing mapping (like `extends`); anything else replaces.
pub fn apply(tree: &mut Node, a: &Assignment) -> Result<(), Diagnostic> {
    let mut cur = tree;
    let mut walked: Vec<&str> = Vec::new();
    for (i, seg) in a.path.iter().enumerate() {
        let last = i + 1 == a.path.len();
        let here = if walked.is_empty() { "the spec".to_string() } else { format!("`{}`", walked.join(".")) };
        match &mut cur.value {
            Value::Map(entries) => {
                let pos = match entries.iter().position(|(k, _)| &k.name == seg) {
                    Some(p) => p,
                    None => {
                        let fresh = if last { a.value.clone() } else { Node::map(Vec::new(), a.key_origin) };
                        entries.push((Key { name: seg.clone(), origin: a.key_origin }, fresh));
                        if last {
                            return Ok(());
                        }
                        entries.len() - 1
                    }
                };
                if last {
                    let old = std::mem::replace(&mut entries[pos].1, Node::new(Value::Null, Origin::Default));
                    entries[pos].1 = merge(old, a.value.clone());
                    return Ok(());
                }
                cur = &mut entries[pos].1;
            }
            Value::Seq(items) => {
                let n = items.len();
                let idx = seg.parse::<usize>().ok().filter(|&i| i < n).ok_or_else(|| {
                    // The user's own path with the last valid index: an example that exists.
                    let list = a.path[..i].join(".");
                    let help = if n == 0 {
                        format!("the list is empty: replace it whole, e.g. `{list}=[...]`")
                    } else {
                        let mut ex = a.path.clone();
                        ex[i] = (n - 1).to_string();
                        let range = if n == 1 { "its only index is 0".to_string() } else { format!("indexes run from 0 to {}", n - 1) };
                        format!("{range}, e.g. `{}=...`; or replace the whole list: `{list}=[...]`", ex.join("."))
                    };
                    Diagnostic::error(format!(
                        "cannot set `{}`: {here} is a list of {n} item{}",
                        a.path.join("."),
                        if n == 1 { "" } else { "s" }
                    ))
                    .at(a.key_origin)
                    .label(format!("`{seg}` is not an index below {n}"))
                    .help(help)
                })?;
                if last {
                    items[idx] = a.value.clone();
                    return Ok(());
                }
                cur = &mut items[idx];
            }
            other => {
                return Err(Diagnostic::error(format!(
                    "cannot set `{}`: {here} is {}, not a section",
                    a.path.join("."),
                    other.kind_name()
                ))
                .at(a.key_origin)
                .label(format!("`{seg}` cannot go inside {here}"))
                .help(format!("set {here} itself, e.g. `{}=<value>`", walked.join("."))));
            }
        }
        walked.push(seg);
    }
    Ok(())
}

/// Lexically normalise a path (`a/b/../c` -> `a/c`), keeping it relative when it was.
pub fn normalize(p: &Path) -> PathBuf {
    let mut out: Vec<Component> = Vec::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir) => {}
                _ => out.push(c),
            },
            other => out.push(other),
        }
    }
    if out.is_empty() { PathBuf::from(".") } else { out.iter().collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_is_lexical() {
        assert_eq!(normalize(Path::new("specs/../prompt_templates/./a.j2")), PathBuf::from("prompt_templates/a.j2"));
        assert_eq!(normalize(Path::new("../x")), PathBuf::from("../x"));
        assert_eq!(normalize(Path::new("./")), PathBuf::from("."));
    }

    fn tree(yaml: &str) -> Node {
        parse_yaml(yaml, 0).unwrap()
    }

    #[test]
    fn merge_is_deep_and_lists_replace() {
        let m = merge(tree("a: {x: 1, y: [1, 2]}\nb: 2\n"), tree("a: {y: [3]}\nc: 3\n"));
        assert_eq!(m.to_json(), serde_json::json!({"a": {"x": 1, "y": [3]}, "b": 2, "c": 3}));
    }

    #[test]
    fn a_child_that_switches_variant_replaces_the_section() {
        let base = "e: {method: logprobs, top_logprobs: 10}\nm: {mode: weighted, judge_weight: 1}\n";
        let m = merge(tree(base), tree("e: {method: regex, pattern: x}\nm: {judge_weight: 2}\n"));
        assert_eq!(
            m.to_json(),
            serde_json::json!({"e": {"method": "regex", "pattern": "x"}, "m": {"mode": "weighted", "judge_weight": 2}})
        );
    }

    #[test]
    fn overrides_parse_as_yaml_and_point_into_the_override_line() {
        let mut sources = Sources::default();
        let mut diags = Vec::new();
        let a = parse_overrides(&["ppo.kl_coef=0.5".into(), "meta.every=never".into(), "x.y=[1, 2]".into()], &mut sources, &mut diags);
        assert!(diags.is_empty());
        assert_eq!(a[0].value.value, Value::Float(0.5));
        assert_eq!(a[0].value.origin.span().map(|s| (s.line, s.col)), Some((1, 13)));
        assert_eq!(a[1].value.value, Value::Str("never".into()));
        assert_eq!(a[2].value.to_json(), serde_json::json!([1, 2]));
        let mut t = tree("ppo: {kl_coef: 0.1}\n");
        apply(&mut t, &a[0]).unwrap();
        apply(&mut t, &a[1]).unwrap();
        assert_eq!(t.to_json(), serde_json::json!({"ppo": {"kl_coef": 0.5}, "meta": {"every": "never"}}));
    }

    #[test]
    fn override_through_a_scalar_is_an_error() {
        let mut sources = Sources::default();
        let mut diags = Vec::new();
        let a = parse_overrides(&["ppo.kl_coef.x=1".into()], &mut sources, &mut diags);
        let mut t = tree("ppo: {kl_coef: 0.1}\n");
        let e = apply(&mut t, &a[0]).unwrap_err();
        assert!(e.message.contains("`ppo.kl_coef` is a number"), "{}", e.message);
    }

    #[test]
    fn overrides_written_as_flags_say_how_to_write_them() {
        let mut sources = Sources::default();
        let mut diags = Vec::new();
        let args = ["--meta.every=5", "--ppo.kl_coef", "0.1", "runtime.seed=1", "--runtime.seed"].map(String::from);
        let a = parse_overrides(&args, &mut sources, &mut diags);
        assert_eq!(a.len(), 1);
        let helps: Vec<&str> = diags.iter().map(|d| d.help[0].as_str()).collect();
        assert_eq!(
            helps,
            [
                "overrides are written without dashes: `meta.every=5`",
                "overrides are written without dashes: `ppo.kl_coef=0.1`",
                "overrides are written without dashes: `runtime.seed=...`"
            ]
        );
        assert_eq!(diags[1].message, "override `--ppo.kl_coef 0.1` is written as a flag");
        // a mistyped flag is not an override
        assert_eq!(dashed_override_help("--expalin", None), None);
    }

    #[test]
    fn override_without_equals() {
        let mut sources = Sources::default();
        let mut diags = Vec::new();
        parse_overrides(&["ppo.kl_coef".into()], &mut sources, &mut diags);
        assert!(diags[0].message.contains("has no `=`"));
    }
}
