//! A YAML document as a tree of nodes that remember where they were written.
//!
//! serde-saphyr parses the text (it is maintained, panic-free and reports positions); we keep
//! its output as an untyped [`Node`] tree rather than deserializing straight into the spec
//! types, because composition (`extends`, overrides, sweeps) works on trees, and because
//! structural checking over a tree can report every mistake of a file at once where serde
//! stops at the first.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use crate::diag::{Diagnostic, Origin, SourceId, Span};

/// A value with the place it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub origin: Origin,
}

/// A mapping key with its place.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub origin: Origin,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in document order (order matters for sweeps and for printing).
    Map(Vec<(Key, Node)>),
}

impl Value {
    /// What a user would call this kind of value, for messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

impl Node {
    pub fn new(value: Value, origin: Origin) -> Self {
        Node { value, origin }
    }

    pub fn map(entries: Vec<(Key, Node)>, origin: Origin) -> Self {
        Node::new(Value::Map(entries), origin)
    }

    /// The entry `key` of a mapping node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn get_key(&self, key: &str) -> Option<&Key> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k.name == key).map(|(k, _)| k),
            _ => None,
        }
    }

    /// Remove and return the entry `key` of a mapping node.
    pub fn take(&mut self, key: &str) -> Option<(Key, Node)> {
        match &mut self.value {
            Value::Map(entries) => {
                let i = entries.iter().position(|(k, _)| k.name == key)?;
                Some(entries.remove(i))
            }
            _ => None,
        }
    }

    /// Follow a dotted path (`ppo.kl_coef`, `reward.verifiers.0`); list indices are numbers.
    pub fn at_path(&self, path: &str) -> Option<&Node> {
        let mut cur = self;
        for seg in path.split('.').filter(|s| !s.is_empty()) {
            cur = match &cur.value {
                Value::Map(_) => cur.get(seg)?,
                Value::Seq(items) => items.get(seg.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(cur)
    }

    /// The origin of `path`, or of its nearest written ancestor (a defaulted value is reported
    /// at the section that would hold it).
    pub fn origin_near(&self, path: &str) -> Origin {
        let segs: Vec<&str> = path.split('.').filter(|s| !s.is_empty()).collect();
        for n in (0..=segs.len()).rev() {
            if let Some(node) = self.at_path(&segs[..n].join(".")) {
                if n == segs.len() {
                    return node.origin;
                }
                // Point at the key of the deepest existing section rather than its body.
                if n > 0 {
                    let parent = self.at_path(&segs[..n - 1].join("."));
                    if let Some(k) = parent.and_then(|p| p.get_key(segs[n - 1])) {
                        return k.origin;
                    }
                }
                return node.origin;
            }
        }
        self.origin
    }

    /// The origin of the key that names `path` (for "unknown key"-style messages), else of the
    /// value.
    pub fn key_origin(&self, path: &str) -> Option<Origin> {
        let (parent, last) = match path.rsplit_once('.') {
            Some((p, l)) => (self.at_path(p)?, l),
            None => (self, path),
        };
        parent.get_key(last).map(|k| k.origin)
    }

    /// Convert to JSON (for serde and for hashing); keys keep document order.
    pub fn to_json(&self) -> serde_json::Value {
        match &self.value {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => (*b).into(),
            Value::Int(i) => (*i).into(),
            Value::Float(f) => serde_json::Number::from_f64(*f).map(serde_json::Value::Number).unwrap_or(serde_json::Value::Null),
            Value::Str(s) => s.clone().into(),
            Value::Seq(items) => serde_json::Value::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => {
                let mut m = serde_json::Map::new();
                for (k, v) in entries {
                    m.insert(k.name.clone(), v.to_json());
                }
                serde_json::Value::Object(m)
            }
        }
    }

    /// A node without origins from a JSON value (values that come from defaults).
    pub fn from_json(v: &serde_json::Value) -> Node {
        let value = match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Value::Str(s.clone()),
            serde_json::Value::Array(a) => Value::Seq(a.iter().map(Node::from_json).collect()),
            serde_json::Value::Object(o) => {
                Value::Map(o.iter().map(|(k, v)| (Key { name: k.clone(), origin: Origin::Default }, Node::from_json(v))).collect())
            }
        };
        Node::new(value, Origin::Default)
    }

    /// Short rendering of a scalar for messages (`"abc"`, `12`, `a list`).
    pub fn describe(&self) -> String {
        match &self.value {
            Value::Null => "null".into(),
            Value::Bool(b) => format!("`{b}`"),
            Value::Int(i) => format!("`{i}`"),
            Value::Float(f) => format!("`{f}`"),
            Value::Str(s) => {
                let short: String = s.chars().take(40).collect();
                format!("string \"{short}{}\"", if s.chars().count() > 40 { "…" } else { "" })
            }
            other => other.kind_name().to_string(),
        }
    }
}

/// Parse YAML text registered as `source` into a node tree. An empty document is an empty
/// mapping. Syntax errors become a diagnostic at their position.
pub fn parse_yaml(text: &str, source: SourceId) -> Result<Node, Diagnostic> {
    if text.trim().lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
        return Ok(Node::map(Vec::new(), Origin::At(Span { source, line: 1, col: 1, len: 0 })));
    }
    // YAML 1.2 core booleans only: `y`, `no` and `on` stay strings (the "Norway problem").
    // serde-saphyr's default budgets bound nesting and alias expansion on hostile input.
    let options = serde_saphyr::options! { strict_booleans: true, reject_unsupported_tags: true };
    let parsed: Result<Spanned<Raw>, serde_saphyr::Error> = serde_saphyr::from_str_with_options(text, options);
    match parsed {
        Ok(sp) => Ok(convert(sp, source)),
        Err(e) => {
            let loc = e.location();
            let message = yaml_error_message(&e);
            let mut d = Diagnostic::error(format!("invalid YAML: {message}")).label(message.clone());
            if let Some(l) = loc.filter(|l| l.line() > 0) {
                d = d.at_span(Span { source, line: l.line() as u32, col: l.column().max(1) as u32, len: 1 });
            }
            Err(d)
        }
    }
}

/// The parser's message without its own location prefix or snippet (we render those).
fn yaml_error_message(e: &serde_saphyr::Error) -> String {
    let opts = serde_saphyr::render_options! {
        formatter: &serde_saphyr::UserMessageFormatter,
        snippets: serde_saphyr::SnippetMode::Off,
    };
    let text = e.without_snippet().render_with_options(opts);
    let first = text.lines().next().unwrap_or("").trim();
    let first = first.strip_prefix("error:").unwrap_or(first).trim();
    // "line 2 column 7: unclosed bracket" -> "unclosed bracket"
    let first = match first.strip_prefix("line ") {
        Some(rest) => rest.split_once(": ").map(|(_, m)| m).unwrap_or(first),
        None => first,
    };
    let first = first.split(" at line ").next().unwrap_or(first);
    first.trim_end_matches('.').to_string()
}

fn span_of(loc: &serde_saphyr::Location, source: SourceId) -> Origin {
    if loc.line() == 0 {
        return Origin::Default;
    }
    Origin::At(Span { source, line: loc.line() as u32, col: loc.column().max(1) as u32, len: loc.span().len() as u32 })
}

fn convert(sp: Spanned<Raw>, source: SourceId) -> Node {
    let origin = span_of(&sp.referenced, source);
    let value = match sp.value {
        Raw::Null => Value::Null,
        Raw::Bool(b) => Value::Bool(b),
        Raw::Int(i) => Value::Int(i),
        Raw::Float(f) => Value::Float(f),
        Raw::Str(s) => Value::Str(s),
        Raw::Seq(items) => Value::Seq(items.into_iter().map(|n| convert(n, source)).collect()),
        Raw::Map(entries) => Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| {
                    let korigin = span_of(&k.referenced, source);
                    let name = match k.value {
                        Raw::Str(s) => s,
                        Raw::Int(i) => i.to_string(),
                        Raw::Float(f) => f.to_string(),
                        Raw::Bool(b) => b.to_string(),
                        Raw::Null => "null".to_string(),
                        Raw::Seq(_) | Raw::Map(_) => "<complex key>".to_string(),
                    };
                    (Key { name, origin: korigin }, convert(v, source))
                })
                .collect(),
        ),
    };
    Node { value, origin }
}

/// What serde-saphyr hands us: a generic value whose children keep their spans.
enum Raw {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Raw>>),
    Map(Vec<(Spanned<Raw>, Spanned<Raw>)>),
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Raw, D::Error> {
        struct RawVisitor;
        impl<'de> Visitor<'de> for RawVisitor {
            type Value = Raw;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E>(self) -> Result<Raw, E> {
                Ok(Raw::Null)
            }
            fn visit_none<E>(self) -> Result<Raw, E> {
                Ok(Raw::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
                Raw::deserialize(d)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Raw, E> {
                Ok(Raw::Bool(b))
            }
            fn visit_i64<E>(self, i: i64) -> Result<Raw, E> {
                Ok(Raw::Int(i))
            }
            fn visit_u64<E>(self, u: u64) -> Result<Raw, E> {
                Ok(i64::try_from(u).map(Raw::Int).unwrap_or(Raw::Float(u as f64)))
            }
            fn visit_i128<E>(self, i: i128) -> Result<Raw, E> {
                Ok(i64::try_from(i).map(Raw::Int).unwrap_or(Raw::Float(i as f64)))
            }
            fn visit_u128<E>(self, u: u128) -> Result<Raw, E> {
                Ok(i64::try_from(u).map(Raw::Int).unwrap_or(Raw::Float(u as f64)))
            }
            fn visit_f64<E>(self, f: f64) -> Result<Raw, E> {
                Ok(Raw::Float(f))
            }
            fn visit_str<E>(self, s: &str) -> Result<Raw, E> {
                Ok(Raw::Str(s.to_string()))
            }
            fn visit_string<E>(self, s: String) -> Result<Raw, E> {
                Ok(Raw::Str(s))
            }
            fn visit_bytes<E>(self, b: &[u8]) -> Result<Raw, E> {
                Ok(Raw::Str(String::from_utf8_lossy(b).into_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Raw, A::Error> {
                let mut items = Vec::new();
                while let Some(x) = a.next_element()? {
                    items.push(x);
                }
                Ok(Raw::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Raw, A::Error> {
                let mut entries = Vec::new();
                while let Some(k) = a.next_key()? {
                    let v = a.next_value()?;
                    entries.push((k, v));
                }
                Ok(Raw::Map(entries))
            }
        }
        d.deserialize_any(RawVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_positions() {
        let n = parse_yaml("name: x\nppo:\n  kl_coef: 0.1\n  epochs: [1, 2]\n", 0).unwrap();
        let kl = n.at_path("ppo.kl_coef").unwrap();
        assert_eq!(kl.value, Value::Float(0.1));
        assert_eq!(kl.origin.span().map(|s| (s.line, s.col)), Some((3, 12)));
        let key = n.key_origin("ppo.kl_coef").unwrap().span().unwrap();
        assert_eq!((key.line, key.col, key.len), (3, 3, 7));
        assert_eq!(n.at_path("ppo.epochs.1").unwrap().value, Value::Int(2));
    }

    #[test]
    fn syntax_error_has_position() {
        let d = parse_yaml("name: x\ntask: [1,\n", 0).unwrap_err();
        assert!(d.message.contains("invalid YAML"), "{}", d.message);
        assert_eq!(d.span.map(|s| s.line), Some(2));
    }

    #[test]
    fn yaml_1_1_booleans_stay_strings() {
        let n = parse_yaml("a: y\nb: no\nc: true\n", 0).unwrap();
        assert_eq!(n.get("a").unwrap().value, Value::Str("y".into()));
        assert_eq!(n.get("b").unwrap().value, Value::Str("no".into()));
        assert_eq!(n.get("c").unwrap().value, Value::Bool(true));
    }

    #[test]
    fn empty_document_is_empty_map() {
        let n = parse_yaml("# only a comment\n", 0).unwrap();
        assert_eq!(n.value, Value::Map(vec![]));
    }
}
