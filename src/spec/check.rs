//! Structural checking of a node tree against the spec's JSON Schema.
//!
//! Written by hand because no crate does the three things we need together: report *every*
//! mismatch of a file in one pass, point each at the YAML position of the offending key or
//! value, and suggest the closest valid key or enum value. It understands the subset of JSON
//! Schema that schemars emits for our types (`$ref`, `type`, `enum`/`const`, `anyOf`/`oneOf`,
//! `properties`/`required`/`additionalProperties`, `items`, numeric and length bounds,
//! `pattern`). Because the schema is derived from the serde types, a tree that passes here
//! deserializes.

use serde_json::Value as J;

use super::node::{Node, Value};
use crate::diag::{Diagnostic, Origin, did_you_mean};

/// Check `node` against `root` (a schema with `$defs`), appending one diagnostic per problem.
pub fn check(node: &Node, root: &J, diags: &mut Vec<Diagnostic>) {
    Checker { root }.check(node, root, "", node.origin, diags);
}

struct Checker<'a> {
    root: &'a J,
}

impl<'a> Checker<'a> {
    fn resolve(&self, mut schema: &'a J) -> &'a J {
        // Chains of $ref are short; bound them anyway so a malformed schema cannot loop.
        for _ in 0..16 {
            match schema.get("$ref").and_then(J::as_str) {
                Some(r) => {
                    let name = r.trim_start_matches("#/$defs/");
                    match self.root.get("$defs").and_then(|d| d.get(name)) {
                        Some(s) => schema = s,
                        None => return schema,
                    }
                }
                None => return schema,
            }
        }
        schema
    }

    /// `at` is where the node is named (its key), used for "missing key" errors.
    fn check(&self, node: &Node, schema: &'a J, path: &str, at: Origin, diags: &mut Vec<Diagnostic>) {
        let def = schema.get("$ref").and_then(J::as_str).map(|r| r.trim_start_matches("#/$defs/"));
        let schema = self.resolve(schema);
        if schema == &J::Bool(true) || schema.as_object().is_some_and(|o| o.is_empty()) {
            return;
        }
        if alternatives(schema).is_some() {
            self.check_alternatives(node, schema, def, path, at, diags);
            return;
        }
        if !type_matches(node, schema) {
            diags.push(self.mismatch(node, schema, path, at));
            return;
        }
        if let Some(options) = enum_values(schema) {
            if !options.iter().any(|o| json_eq(node, o)) {
                diags.push(self.not_in_enum(node, &options, def, path));
            }
            return;
        }
        match &node.value {
            Value::Int(_) | Value::Float(_) => self.check_number(node, schema, path, diags),
            Value::Str(s) => self.check_string(node, s, schema, path, diags),
            Value::Seq(items) => {
                let min = schema.get("minItems").and_then(J::as_u64);
                if let Some(min) = min.filter(|&m| (items.len() as u64) < m) {
                    diags.push(
                        Diagnostic::error(format!("`{path}` needs at least {min} item{}", plural(min))).at(node.origin).label(format!(
                            "{} item{}",
                            items.len(),
                            plural(items.len() as u64)
                        )),
                    );
                }
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.check(item, item_schema, &format!("{path}[{i}]"), item.origin, diags);
                    }
                }
            }
            Value::Map(entries) => self.check_map(entries, schema, path, at, diags),
            Value::Null | Value::Bool(_) => {}
        }
    }

    fn check_map(&self, entries: &[(super::node::Key, Node)], schema: &'a J, path: &str, at: Origin, diags: &mut Vec<Diagnostic>) {
        let props = schema.get("properties").and_then(J::as_object);
        let additional = schema.get("additionalProperties");
        for (key, value) in entries {
            let child_path = join(path, &key.name);
            match props.and_then(|p| p.get(&key.name)) {
                Some(s) => self.check(value, s, &child_path, key.origin, diags),
                None => match additional {
                    Some(J::Bool(false)) => {
                        let names: Vec<&str> = props.map(|p| p.keys().map(String::as_str).collect()).unwrap_or_default();
                        let within = if path.is_empty() { "the spec".to_string() } else { format!("`{path}`") };
                        let mut d =
                            Diagnostic::error(format!("unknown key `{}` in {within}", key.name)).at(key.origin).label("unknown key");
                        d = match did_you_mean(&key.name, names.iter().copied()) {
                            Some(s) => d.help(format!("did you mean `{s}`?")),
                            None => d.help(format!("valid keys here: {}", names.join(", "))),
                        };
                        diags.push(d);
                    }
                    Some(s @ J::Object(_)) => self.check(value, s, &child_path, key.origin, diags),
                    _ => {}
                },
            }
        }
        if let Some(required) = schema.get("required").and_then(J::as_array) {
            for r in required.iter().filter_map(J::as_str) {
                if !entries.iter().any(|(k, _)| k.name == r) {
                    let within = if path.is_empty() { "the spec".to_string() } else { format!("`{path}`") };
                    let want = props.and_then(|p| p.get(r)).map(|s| self.describe(s)).unwrap_or_else(|| "a value".into());
                    diags.push(
                        Diagnostic::error(format!("missing key `{r}` in {within}"))
                            .at(at)
                            .label(format!("`{r}` is required here"))
                            .help(format!("add `{r}:` with {want}")),
                    );
                }
            }
        }
    }

    fn check_number(&self, node: &Node, schema: &J, path: &str, diags: &mut Vec<Diagnostic>) {
        let x = match node.value {
            Value::Int(i) => i as f64,
            Value::Float(f) => f,
            _ => return,
        };
        let bound = |k: &str| schema.get(k).and_then(J::as_f64);
        let mut problem = None;
        if !x.is_finite() {
            problem = Some("a finite number".to_string());
        } else if let Some(m) = bound("minimum").filter(|&m| x < m) {
            problem = Some(format!(">= {}", fmt_num(m)));
        } else if let Some(m) = bound("exclusiveMinimum").filter(|&m| x <= m) {
            problem = Some(format!("> {}", fmt_num(m)));
        } else if let Some(m) = bound("maximum").filter(|&m| x > m) {
            problem = Some(format!("<= {}", fmt_num(m)));
        } else if let Some(m) = bound("exclusiveMaximum").filter(|&m| x >= m) {
            problem = Some(format!("< {}", fmt_num(m)));
        }
        if let Some(p) = problem {
            diags.push(
                Diagnostic::error(format!("`{path}` is out of range: must be {}", range_text(schema).unwrap_or(p)))
                    .at(node.origin)
                    .label("out of range"),
            );
        }
    }

    fn check_string(&self, node: &Node, s: &str, schema: &J, path: &str, diags: &mut Vec<Diagnostic>) {
        let n = s.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(J::as_u64).filter(|&m| n < m) {
            diags.push(
                Diagnostic::error(format!("`{path}` must have at least {min} character{}", plural(min))).at(node.origin).label("too short"),
            );
        }
        if let Some(max) = schema.get("maxLength").and_then(J::as_u64).filter(|&m| n > m) {
            diags.push(Diagnostic::error(format!("`{path}` must have at most {max} characters")).at(node.origin).label("too long"));
        }
        if let Some(p) = schema.get("pattern").and_then(J::as_str)
            && let Ok(re) = schema_regex(p)
            && !re.is_match(s)
        {
            diags.push(
                Diagnostic::error(format!("`{path}` has characters that are not allowed")).at(node.origin).label(format!("must match {p}")),
            );
        }
    }

    /// anyOf / oneOf: accept if any branch fits; otherwise report against the branch the user
    /// evidently meant (same tag, same single key, same type), or list the alternatives.
    fn check_alternatives(&self, node: &Node, schema: &'a J, def: Option<&str>, path: &str, at: Origin, diags: &mut Vec<Diagnostic>) {
        let branches = alternatives(schema).unwrap_or_default();
        let mut per_branch = Vec::new();
        for b in branches {
            let mut d = Vec::new();
            self.check(node, b, path, at, &mut d);
            if d.is_empty() {
                return;
            }
            per_branch.push(d);
        }
        if let Some(i) = self.intended_branch(node, branches) {
            diags.append(&mut per_branch[i]);
            return;
        }
        // A string that almost names a unit variant / const: suggest it.
        let consts: Vec<String> =
            branches.iter().filter_map(|b| enum_values(self.resolve(b))).flatten().filter_map(|v| v.as_str().map(str::to_string)).collect();
        let what = self.describe(schema);
        let mut d =
            Diagnostic::error(format!("`{path}` must be {what}, found {}", found(node))).at(node.origin).label(format!("expected {what}"));
        if let Some(h) = self.wrong_type_help(node, schema, path) {
            d = d.help(h);
        } else if let Value::Str(s) = &node.value {
            if let Some(h) = def.and_then(|def| other_tools_name(def, s, &consts)) {
                d = d.help(h);
            } else if let Some(sug) = did_you_mean(s, consts.iter().map(String::as_str)) {
                d = d.help(format!("did you mean `{sug}`?"));
            }
        }
        diags.push(d);
    }

    fn intended_branch(&self, node: &Node, branches: &'a [J]) -> Option<usize> {
        let resolved: Vec<&J> = branches.iter().map(|b| self.resolve(b)).collect();
        if let Value::Map(entries) = &node.value {
            // Internally tagged: a property whose schema is a const equal to the node's value.
            for (i, b) in resolved.iter().enumerate() {
                if let Some(props) = b.get("properties").and_then(J::as_object) {
                    for (k, ps) in props {
                        if let Some(c) = enum_values(self.resolve(ps)).filter(|v| v.len() == 1)
                            && let Some((_, v)) = entries.iter().find(|(key, _)| &key.name == k)
                            && json_eq(v, &c[0])
                        {
                            return Some(i);
                        }
                    }
                }
            }
            // Externally tagged: a single required key the node has.
            if entries.len() == 1 {
                for (i, b) in resolved.iter().enumerate() {
                    if let Some(req) = b.get("required").and_then(J::as_array)
                        && req.len() == 1
                        && req[0].as_str() == Some(entries[0].0.name.as_str())
                    {
                        return Some(i);
                    }
                }
            }
        }
        // Only one branch of the node's type.
        let same_type: Vec<usize> = resolved
            .iter()
            .enumerate()
            .filter(|(_, b)| b.get("type").is_some() && type_matches(node, b) && enum_values(b).is_none())
            .map(|(i, _)| i)
            .collect();
        if same_type.len() == 1 { Some(same_type[0]) } else { None }
    }

    fn mismatch(&self, node: &Node, schema: &'a J, path: &str, at: Origin) -> Diagnostic {
        let what = self.describe(schema);
        // A block mapping starts at its first key, which is not the mistake: the key naming it is.
        let place = if matches!(node.value, Value::Map(_)) && at.span().is_some() { at } else { node.origin };
        let mut d =
            Diagnostic::error(format!("`{path}` must be {what}, found {}", found(node))).at(place).label(format!("expected {what}"));
        if let Some(h) = self.wrong_type_help(node, schema, path) {
            d = d.help(h);
        } else if node.value == Value::Null {
            d = d.help("write a value, or delete the key to use the default");
        } else if let Value::Str(s) = &node.value
            && types(schema).iter().any(|t| t == "number" || t == "integer")
        {
            // Only a quoted number is fixed by dropping the quotes; "eight" needs digits.
            d = d.help(if s.trim().parse::<f64>().is_ok() {
                "write the number without quotes"
            } else {
                "write a number in digits, without quotes"
            });
        }
        d
    }

    fn not_in_enum(&self, node: &Node, options: &[J], def: Option<&str>, path: &str) -> Diagnostic {
        let names: Vec<String> = options.iter().map(|o| o.as_str().map(str::to_string).unwrap_or_else(|| o.to_string())).collect();
        let list = names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
        let mut d =
            Diagnostic::error(format!("`{path}` must be one of {list}, found {}", found(node))).at(node.origin).label("not a valid choice");
        if let Value::Str(s) = &node.value {
            if let Some(h) = def.and_then(|def| other_tools_name(def, s, &names)) {
                d = d.help(h);
            } else if let Some(sug) = did_you_mean(s, names.iter().map(String::as_str)) {
                d = d.help(format!("did you mean `{sug}`?"));
            }
        }
        d
    }

    /// Whether `node` passes `schema` as it stands.
    fn fits(&self, node: &Node, schema: &'a J, path: &str) -> bool {
        let mut d = Vec::new();
        self.check(node, schema, path, node.origin, &mut d);
        d.is_empty()
    }

    /// What to write instead of a value of the wrong type, where the value says what was meant:
    /// `64.0` for an integer, a list of values for one value, a sweep factor nested as sections.
    fn wrong_type_help(&self, node: &Node, schema: &'a J, path: &str) -> Option<String> {
        match &node.value {
            Value::Float(f) => {
                let whole = Node::new(Value::Int(*f as i64), node.origin);
                // Only a suggestion that passes: `0.0` for a count >= 1 needs another number.
                if f.fract() == 0.0 && f.abs() < 1e15 && self.fits(&whole, schema, path) {
                    Some(format!("write `{}`", *f as i64))
                } else if types(schema).iter().any(|t| t == "integer") {
                    Some("write a whole number, without a decimal point".into())
                } else {
                    None
                }
            }
            // The list a sweep varies, written in place of one value; a list with an item that
            // would not do there is some other mistake. Lists of lists are never sweeps, and
            // checking their items against the same schema again would be exponential in depth.
            Value::Seq(items)
                if !path.starts_with("sweep")
                    && !items.is_empty()
                    && items.iter().all(|it| !matches!(it.value, Value::Seq(_)))
                    && items.iter().enumerate().all(|(i, it)| self.fits(it, schema, &format!("{path}[{i}]"))) =>
            {
                Some(super::sweep::list_as_factor_help(&path.replace('[', ".").replace(']', ""), node))
            }
            Value::Map(_) => super::sweep::nested_factor_help(path, node),
            _ => None,
        }
    }

    /// A phrase for what a schema accepts: "an integer >= 1", "one of `a`, `b`", "a mapping".
    fn describe(&self, schema: &J) -> String {
        let schema = self.resolve(schema);
        if let Some(branches) = alternatives(schema) {
            let consts: Vec<Option<Vec<J>>> = branches.iter().map(|b| enum_values(self.resolve(b))).collect();
            if consts.len() > 1 && consts.iter().all(Option::is_some) {
                let names: Vec<String> = consts
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|v| format!("`{}`", v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
                    .collect();
                return format!("one of {}", names.join(", "));
            }
            let mut parts: Vec<String> = branches.iter().map(|b| self.describe(b)).collect();
            parts.dedup();
            return parts.join(" or ");
        }
        if let Some(vals) = enum_values(schema) {
            let names: Vec<String> =
                vals.iter().map(|v| format!("`{}`", v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))).collect();
            return if names.len() == 1 { names[0].clone() } else { format!("one of {}", names.join(", ")) };
        }
        let ts = types(schema);
        let mut parts: Vec<String> = ts
            .iter()
            .filter(|t| *t != "null" || ts.len() == 1)
            .map(|t| match t.as_str() {
                "integer" => match range_text(schema) {
                    Some(r) => format!("an integer {r}"),
                    None => "an integer".to_string(),
                },
                "number" => match range_text(schema) {
                    Some(r) => format!("a number {r}"),
                    None => "a number".to_string(),
                },
                "string" => "a string".to_string(),
                "boolean" => "`true` or `false`".to_string(),
                "array" => "a list".to_string(),
                "object" => "a mapping".to_string(),
                "null" => "null".to_string(),
                other => other.to_string(),
            })
            .collect();
        if ts.len() > 1 && ts.iter().any(|t| t == "null") {
            parts.push("null".into());
        }
        if parts.is_empty() { "a value".into() } else { parts.join(" or ") }
    }
}

/// A value as the user wrote it, for messages: `64.0` stays a float (`Node::describe` shows `64`).
fn found(node: &Node) -> String {
    match node.value {
        Value::Float(f) => format!("the float `{f:?}`"),
        _ => node.describe(),
    }
}

/// The names other tools give to what mpo spells differently, and what to write instead: a
/// serving engine is an `openai` judge with that engine's dialect, a PEFT module name is an mpo
/// target without `_proj`. `def` is the schema definition being checked, `options` its values.
fn other_tools_name(def: &str, value: &str, options: &[String]) -> Option<String> {
    use super::types::{Dialect, JudgeBackend, LoraTarget};
    use schemars::JsonSchema;
    let norm = value.to_lowercase().replace(['-', '.'], "_");
    if def == JudgeBackend::schema_name() {
        let dialect = match norm.as_str() {
            "vllm" => Some(Dialect::Vllm),
            "sglang" => Some(Dialect::Sglang),
            "llama_server" | "llama_cpp" | "llamacpp" => Some(Dialect::LlamaCpp),
            "tgi" | "ollama" => None,
            _ => return None,
        };
        return Some(match dialect {
            Some(d) => {
                let name = super::name_of(&d);
                format!(
                    "`{value}` is a server mpo reaches through its OpenAI-compatible API: write `backend: openai` with `dialect: {name}`"
                )
            }
            None => format!("`{value}` is a server mpo reaches through its OpenAI-compatible API: write `backend: openai`"),
        });
    }
    if def == LoraTarget::schema_name() {
        let short = norm.strip_suffix("_proj")?;
        return options.iter().any(|o| o == short).then(|| format!("mpo names modules without the `_proj` suffix: write `{short}`"));
    }
    None
}

fn alternatives(schema: &J) -> Option<&[J]> {
    schema.get("anyOf").or_else(|| schema.get("oneOf")).and_then(J::as_array).map(Vec::as_slice)
}

fn schema_regex(p: &str) -> Result<regex::Regex, regex::Error> {
    static CACHE: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, Result<regex::Regex, regex::Error>>>> =
        std::sync::OnceLock::new();
    let mut c = CACHE.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    c.entry(p.to_string()).or_insert_with(|| regex::Regex::new(p)).clone()
}

fn types(schema: &J) -> Vec<String> {
    match schema.get("type") {
        Some(J::String(s)) => vec![s.clone()],
        Some(J::Array(a)) => a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    }
}

fn type_matches(node: &Node, schema: &J) -> bool {
    let ts = types(schema);
    if ts.is_empty() {
        return true;
    }
    ts.iter().any(|t| {
        matches!(
            (t.as_str(), &node.value),
            ("null", Value::Null)
                | ("boolean", Value::Bool(_))
                | ("integer", Value::Int(_))
                | ("number", Value::Int(_) | Value::Float(_))
                | ("string", Value::Str(_))
                | ("array", Value::Seq(_))
                | ("object", Value::Map(_))
        )
    })
}

fn enum_values(schema: &J) -> Option<Vec<J>> {
    if let Some(c) = schema.get("const") {
        return Some(vec![c.clone()]);
    }
    schema.get("enum").and_then(J::as_array).cloned()
}

fn json_eq(node: &Node, v: &J) -> bool {
    match (&node.value, v) {
        (Value::Str(a), J::String(b)) => a == b,
        (Value::Int(a), J::Number(b)) => b.as_i64() == Some(*a),
        (Value::Bool(a), J::Bool(b)) => a == b,
        (Value::Null, J::Null) => true,
        _ => false,
    }
}

fn range_text(schema: &J) -> Option<String> {
    let g = |k: &str| schema.get(k).and_then(J::as_f64);
    let lo = g("minimum").map(|m| (">=", m)).or_else(|| g("exclusiveMinimum").map(|m| (">", m)));
    let hi = g("maximum").map(|m| ("<=", m)).or_else(|| g("exclusiveMaximum").map(|m| ("<", m)));
    // Type-derived bounds (u32's 4294967295) are noise in messages.
    let hi = hi.filter(|(_, m)| *m < 4.0e9);
    match (lo, hi) {
        (Some((">=", a)), Some(("<=", b))) => Some(format!("between {} and {}", fmt_num(a), fmt_num(b))),
        (Some((o1, a)), Some((o2, b))) => Some(format!("{o1} {} and {o2} {}", fmt_num(a), fmt_num(b))),
        (Some((o, a)), None) => Some(format!("{o} {}", fmt_num(a))),
        (None, Some((o, b))) => Some(format!("{o} {}", fmt_num(b))),
        (None, None) => None,
    }
}

fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 { format!("{}", x as i64) } else { format!("{x}") }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::node::parse_yaml;

    fn errors(yaml: &str) -> Vec<String> {
        let schema = crate::spec::json_schema();
        let node = parse_yaml(yaml, 0).unwrap();
        let mut d = Vec::new();
        check(&node, &schema, &mut d);
        d.into_iter().map(|d| d.message + &d.help.join(";")).collect()
    }

    const BASE: &str = "name: t\ntask: {kind: math, train: {path: x.jsonl}, prompt: p.j2}\nreward: {rubric: r.md, prompt: j.j2}\n";

    #[test]
    fn valid_minimal_spec_passes() {
        assert!(errors(BASE).is_empty(), "{:?}", errors(BASE));
    }

    #[test]
    fn reports_all_problems_at_once() {
        let e = errors(&format!("{BASE}ppo: {{kl_coeff: 0.1, cliprange: -1, batch_size: \"8\"}}\nruntime: {{backend: cdua}}\n"));
        assert_eq!(e.len(), 4, "{e:#?}");
        assert!(e[0].contains("unknown key `kl_coeff` in `ppo`") && e[0].contains("kl_coef"));
        assert!(e[1].contains("out of range"));
        assert!(e[2].contains("must be an integer"));
        assert!(e[3].contains("cuda"));
    }

    #[test]
    fn tagged_enums_pick_the_intended_branch() {
        let spec = "name: t\ntask: {kind: math, train: {path: x.jsonl}, prompt: p.j2}\nreward:\n  rubric: r.md\n  prompt: j.j2\n  verifiers: [{kind: math_answer, tolerance: 5}]\n  failure: {policy: {penalty: x}}\n  mix: {mode: coin}\n";
        let e = errors(spec);
        assert_eq!(e.len(), 3, "{e:#?}");
        assert!(e[0].contains("reward.verifiers[0].tolerance` is out of range"), "{e:?}");
        assert!(e[1].contains("reward.failure.policy.penalty` must be a number"), "{e:?}");
        assert!(e[2].contains("missing key `verifier_prob` in `reward.mix`"), "{e:?}");
    }

    #[test]
    fn every_accepts_never_and_integers() {
        assert!(errors(&format!("{BASE}meta: {{every: never}}\n")).is_empty());
        assert!(errors(&format!("{BASE}meta: {{every: 5}}\n")).is_empty());
        let e = errors(&format!("{BASE}meta: {{every: 0}}\n"));
        assert_eq!(e.len(), 1, "{e:?}");
        let e = errors(&format!("{BASE}meta: {{every: nevr}}\n"));
        assert!(e[0].contains("did you mean `never`"), "{e:?}");
    }

    #[test]
    fn other_tools_names_say_what_to_write() {
        let e =
            errors(&format!("{BASE}meta: {{judge: {{backend: sglang}}}}\npolicy: {{lora: {{targets: [gate_proj, up, embed_tokens]}}}}\n"));
        assert_eq!(e.len(), 3, "{e:#?}");
        assert!(e[0].contains("write `backend: openai` with `dialect: sglang`"), "{e:?}");
        assert!(e[1].contains("write `gate`"), "{e:?}");
        assert!(!e[2].contains("write"), "no mpo module is `embed`: {e:?}");
        let e = errors(&format!("{BASE}eval: {{elo: {{judge: {{backend: llama.cpp}}}}}}\n"));
        assert!(e[0].contains("`dialect: llama_cpp`"), "{e:?}");
        let e = errors(&format!("{BASE}runtime: {{backend: cdua}}\n"));
        assert!(e[0].contains("did you mean `cuda`?"), "{e:?}");
    }

    #[test]
    fn a_whole_float_for_an_integer_names_the_integer() {
        let e = errors(&format!("{BASE}ppo: {{batch_size: 64.0}}\nmeta: {{every: 5.0}}\n"));
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(e[0].contains("found the float `64.0`") && e[0].ends_with("write `64`"), "{e:?}");
        assert!(e[1].contains("found the float `5.0`") && e[1].ends_with("write `5`"), "{e:?}");
        // `0` would fail the range: no suggestion that fails again
        let e = errors(&format!("{BASE}ppo: {{batch_size: 0.0}}\n"));
        assert!(e[0].ends_with("write a whole number, without a decimal point"), "{e:?}");
    }

    #[test]
    fn a_list_of_valid_values_for_one_value_is_pointed_to_the_sweep() {
        let e = errors(&format!("{BASE}runtime: {{seed: [0, 1, 2], backend: [cpu, wgpu]}}\n"));
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(e[0].contains("write it under `sweep.grid` as `runtime.seed: [0, 1, 2]`"), "{e:?}");
        assert!(e[1].contains("as `runtime.backend: [cpu, wgpu]`"), "{e:?}");
        let e = errors(&format!("{BASE}runtime: {{seed: [0, a]}}\n"));
        assert!(!e[0].contains("sweep"), "{e:?}");
    }

    #[test]
    fn deeply_nested_lists_are_checked_in_linear_time() {
        let deep = format!("{}0{}", "[".repeat(60), "]".repeat(60));
        let e = errors(&format!("{BASE}meta: {{every: {deep}}}\nruntime: {{seed: {deep}}}\n"));
        assert_eq!(e.len(), 2, "{e:#?}");
    }

    #[test]
    fn nested_sweep_keys_get_their_dotted_paths() {
        let e = errors(&format!("{BASE}sweep: {{zip: {{meta: {{every: [never, 5], samples: [2, 4]}}, runtime.seed: [0, 1]}}}}\n"));
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(e[0].ends_with("write `zip: {meta.every: [never, 5], meta.samples: [2, 4]}`"), "{e:?}");
    }

    #[test]
    fn missing_required_key() {
        let e = errors("name: t\ntask: {kind: math, prompt: p.j2}\nreward: {rubric: r.md, prompt: j.j2}\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].contains("missing key `train` in `task`"), "{e:?}");
    }
}
