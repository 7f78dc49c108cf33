//! Shapes an answer is held to, described once and printed for every engine that enforces them.
//!
//! A [`Shape`] is a regular language over characters (literals, character classes, sequences,
//! alternatives, bounded repetition, named parts). It prints as GBNF for servers (llama.cpp's
//! llama-server reads it; vLLM's and SGLang's xgrammar backends read the same), and as a regular
//! expression for the in-process judge, whose decoder enforces it with llguidance
//! (`model::constrain`) and whose checks test it with the `regex` crate. Both printings come
//! from the same tree, so the grammar a server is held to and the one the local judge is held
//! to cannot drift. Every shape mpo uses is bounded, which is what lets it be sized to a token
//! budget: [`Shape::longest`] is the most characters an admitted answer can have.

use std::fmt::Write as _;

/// A regular language over characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    Lit(String),
    /// One character in the ranges (inclusive) or, `negated`, any character outside them.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    Seq(Vec<Shape>),
    Alt(Vec<Shape>),
    Repeat {
        of: Box<Shape>,
        min: u32,
        max: u32,
    },
    /// A named part: its own GBNF rule (printed once however often it is used).
    Rule {
        name: String,
        of: Box<Shape>,
    },
}

impl Shape {
    pub fn lit(s: impl Into<String>) -> Shape {
        Shape::Lit(s.into())
    }

    /// A class from a compact description: single characters and `a-z` ranges.
    pub fn class(spec: &str) -> Shape {
        Shape::Class { negated: false, ranges: ranges_of(spec) }
    }

    /// Any character except those described (as in [`Shape::class`]).
    pub fn not(spec: &str) -> Shape {
        Shape::Class { negated: true, ranges: ranges_of(spec) }
    }

    /// A printable ASCII character (space to `~`) other than those listed: free text whose
    /// length in characters bounds its bytes, so its tokens, exactly (a negated class admits
    /// characters of up to four bytes).
    pub fn text_except(chars: &str) -> Shape {
        let mut ranges = Vec::new();
        let mut start: Option<char> = None;
        for c in ' '..='~' {
            match (chars.contains(c), start) {
                (false, None) => start = Some(c),
                (true, Some(s)) => {
                    ranges.push((s, char::from(c as u8 - 1)));
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            ranges.push((s, '~'));
        }
        Shape::Class { negated: false, ranges }
    }

    pub fn seq(parts: impl IntoIterator<Item = Shape>) -> Shape {
        Shape::Seq(parts.into_iter().collect())
    }

    pub fn alt(parts: impl IntoIterator<Item = Shape>) -> Shape {
        Shape::Alt(parts.into_iter().collect())
    }

    pub fn repeat(self, min: u32, max: u32) -> Shape {
        Shape::Repeat { of: Box::new(self), min, max }
    }

    pub fn optional(self) -> Shape {
        self.repeat(0, 1)
    }

    pub fn named(self, name: &str) -> Shape {
        Shape::Rule { name: name.into(), of: Box::new(self) }
    }

    /// The integers `min..=max` written in decimal.
    pub fn integers(min: i64, max: i64) -> Shape {
        if max.saturating_sub(min) > 100 {
            // a sign and up to six digits: wide ranges are checked after parsing
            return Shape::seq([Shape::lit("-").optional(), Shape::class("0-9"), Shape::class("0-9").repeat(0, 5)]);
        }
        Shape::alt((min..=max).map(|v| Shape::lit(v.to_string())))
    }

    /// The most characters an admitted string can have.
    pub fn longest(&self) -> usize {
        match self {
            Shape::Lit(s) => s.chars().count(),
            Shape::Class { .. } => 1,
            Shape::Seq(v) => v.iter().map(Shape::longest).sum(),
            Shape::Alt(v) => v.iter().map(Shape::longest).max().unwrap_or(0),
            Shape::Repeat { of, max, .. } => of.longest() * *max as usize,
            Shape::Rule { of, .. } => of.longest(),
        }
    }

    /// The most bytes an admitted string can have (UTF-8): what bounds its tokens under a
    /// byte-level tokenizer.
    pub fn longest_bytes(&self) -> usize {
        match self {
            Shape::Lit(s) => s.len(),
            Shape::Class { negated: true, .. } => 4,
            Shape::Class { ranges, .. } => ranges.iter().map(|&(_, hi)| hi.len_utf8()).max().unwrap_or(1),
            Shape::Seq(v) => v.iter().map(Shape::longest_bytes).sum(),
            Shape::Alt(v) => v.iter().map(Shape::longest_bytes).max().unwrap_or(0),
            Shape::Repeat { of, max, .. } => of.longest_bytes() * *max as usize,
            Shape::Rule { of, .. } => of.longest_bytes(),
        }
    }

    /// GBNF: `root ::= ...` and one rule per named part.
    pub fn gbnf(&self) -> String {
        let mut rules: Vec<(String, String)> = Vec::new();
        let root = self.gbnf_expr(&mut rules);
        let mut out = format!("root ::= {root}\n");
        for (name, body) in rules {
            let _ = writeln!(out, "{name} ::= {body}");
        }
        out
    }

    fn gbnf_expr(&self, rules: &mut Vec<(String, String)>) -> String {
        match self {
            Shape::Lit(s) => gbnf_literal(s),
            Shape::Class { negated, ranges } => class_text(*negated, ranges, gbnf_class_char),
            Shape::Seq(v) => v.iter().map(|p| p.gbnf_atom(rules)).collect::<Vec<_>>().join(" "),
            Shape::Alt(v) => v.iter().map(|p| p.gbnf_expr(rules)).collect::<Vec<_>>().join(" | "),
            Shape::Repeat { of, min, max } => format!("{}{}", of.gbnf_atom(rules), repeat_suffix(*min, *max)),
            Shape::Rule { name, of } => {
                if !rules.iter().any(|(n, _)| n == name) {
                    // reserve the name first: a part used inside itself prints once
                    rules.push((name.clone(), String::new()));
                    let body = of.gbnf_expr(rules);
                    rules.iter_mut().find(|(n, _)| n == name).expect("reserved above").1 = body;
                }
                name.clone()
            }
        }
    }

    fn gbnf_atom(&self, rules: &mut Vec<(String, String)>) -> String {
        let e = self.gbnf_expr(rules);
        match self {
            Shape::Seq(v) if v.len() > 1 => format!("({e})"),
            Shape::Alt(v) if v.len() > 1 => format!("({e})"),
            Shape::Seq(v) | Shape::Alt(v) if v.is_empty() => "\"\"".into(),
            _ => e,
        }
    }

    /// The same language as a regular expression (Rust `regex` syntax, which llguidance reads),
    /// unanchored: match it against a whole answer with [`Shape::matches`].
    pub fn regex(&self) -> String {
        match self {
            Shape::Lit(s) => s.chars().map(regex_char).collect(),
            Shape::Class { negated, ranges } => class_text(*negated, ranges, regex_class_char),
            Shape::Seq(v) => v.iter().map(Shape::regex_atom).collect(),
            Shape::Alt(v) => v.iter().map(Shape::regex).collect::<Vec<_>>().join("|"),
            Shape::Repeat { of, min, max } => format!("{}{}", of.regex_atom(), repeat_suffix(*min, *max)),
            Shape::Rule { of, .. } => of.regex(),
        }
    }

    fn regex_atom(&self) -> String {
        match self {
            Shape::Lit(s) if s.chars().count() == 1 => self.regex(),
            Shape::Class { .. } => self.regex(),
            Shape::Rule { of, .. } => of.regex_atom(),
            _ => format!("(?:{})", self.regex()),
        }
    }

    /// Whether the whole of `text` is in the language (the `regex` crate: an independent
    /// reading of [`Shape::regex`] from the engine that enforces it).
    pub fn matches(&self, text: &str) -> bool {
        regex::RegexBuilder::new(&format!("^(?:{})$", self.regex()))
            .size_limit(1 << 28)
            .build()
            .map(|re| re.is_match(text))
            .unwrap_or(false)
    }

    /// A shortest admitted string (the first alternative of each choice, fewest repetitions,
    /// the lowest character of a class): what the least complete answer costs.
    pub fn shortest(&self) -> String {
        match self {
            Shape::Lit(s) => s.clone(),
            Shape::Class { negated: false, ranges } => ranges.first().map(|r| r.0.to_string()).unwrap_or_default(),
            Shape::Class { negated: true, ranges } => {
                let banned = |c: char| ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
                ['x', 'a', '0', ' '].into_iter().find(|&c| !banned(c)).map(String::from).unwrap_or_default()
            }
            Shape::Seq(v) => v.iter().map(Shape::shortest).collect(),
            Shape::Alt(v) => v.iter().map(Shape::shortest).min_by_key(|s| s.len()).unwrap_or_default(),
            Shape::Repeat { of, min, .. } => of.shortest().repeat(*min as usize),
            Shape::Rule { of, .. } => of.shortest(),
        }
    }
}

fn ranges_of(spec: &str) -> Vec<(char, char)> {
    let c: Vec<char> = spec.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        if i + 2 < c.len() && c[i + 1] == '-' {
            out.push((c[i], c[i + 2]));
            i += 3;
        } else {
            out.push((c[i], c[i]));
            i += 1;
        }
    }
    out
}

fn repeat_suffix(min: u32, max: u32) -> String {
    match (min, max) {
        (0, 1) => "?".into(),
        (a, b) if a == b => format!("{{{a}}}"),
        (a, b) => format!("{{{a},{b}}}"),
    }
}

fn class_text(negated: bool, ranges: &[(char, char)], esc: fn(char) -> String) -> String {
    let mut s = String::from(if negated { "[^" } else { "[" });
    for &(lo, hi) in ranges {
        s += &esc(lo);
        if hi != lo {
            s.push('-');
            s += &esc(hi);
        }
    }
    s.push(']');
    s
}

/// A GBNF string literal.
pub fn gbnf_literal(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out += "\\\"",
            '\\' => out += "\\\\",
            '\n' => out += "\\n",
            '\r' => out += "\\r",
            '\t' => out += "\\t",
            c if (c as u32) < 0x20 => out += &format!("\\x{:02X}", c as u32),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn gbnf_class_char(c: char) -> String {
    match c {
        '\n' => "\\n".into(),
        '\r' => "\\r".into(),
        '\t' => "\\t".into(),
        ']' | '[' | '\\' => format!("\\{c}"),
        // llama.cpp reads only these escapes in a class; `-` and `^` go as code points
        '-' | '^' => format!("\\x{:02X}", c as u32),
        c if (c as u32) < 0x20 => format!("\\x{:02X}", c as u32),
        c => c.to_string(),
    }
}

fn regex_char(c: char) -> String {
    if c.is_ascii_alphanumeric() || c == ' ' || c == '_' || !c.is_ascii() && !c.is_control() {
        c.to_string()
    } else {
        format!("\\x{{{:X}}}", c as u32)
    }
}

fn regex_class_char(c: char) -> String {
    if c.is_ascii_alphanumeric() || c == ' ' || c == '_' { c.to_string() } else { format!("\\x{{{:X}}}", c as u32) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Shape {
        let name = Shape::seq([Shape::class("A-Z"), Shape::class("a-z -").repeat(1, 8)]).named("name");
        let line = Shape::seq([Shape::lit("- \"q\" "), Shape::not("\n.]"), Shape::lit(".\n")]).named("line");
        Shape::seq([Shape::lit("## "), name, Shape::lit(" (0-"), Shape::integers(1, 3), Shape::lit(")\n"), line.repeat(1, 2)]).repeat(1, 2)
    }

    #[test]
    fn prints_gbnf_and_a_regex_of_one_language() {
        let s = sample();
        insta::assert_snapshot!(s.gbnf(), @r###"
        root ::= ("## " name " (0-" ("1" | "2" | "3") ")\n" line{1,2}){1,2}
        name ::= [A-Z] [a-z \x2D]{1,8}
        line ::= "- \"q\" " [^\n.\]] ".\n"
        "###);
        for ok in ["## Ab (0-2)\n- \"q\" x.\n", "## Ab-c (0-3)\n- \"q\" ].\n- \"q\" y.\n"] {
            assert_eq!(s.matches(ok), !ok.contains(']'), "{ok:?}");
        }
        for bad in ["## ab (0-2)\n- \"q\" x.\n", "## Ab (0-4)\n- \"q\" x.\n", "## Ab (0-2)\n", "## Ab (0-2)\n- \"q\" ..\n"] {
            assert!(!s.matches(bad), "{bad:?}");
        }
        assert!(s.matches(&s.shortest()), "{:?}", s.shortest());
        assert_eq!(s.shortest(), "## Aa (0-1)\n- \"q\" x.\n");
        // the longest admitted answer: two items of 3 + 9 + 4 + 1 + 2 + two 9-character lines
        assert_eq!(s.longest(), 2 * (3 + 9 + 4 + 1 + 2 + 2 * 9));
        assert_eq!(Shape::integers(-1, 1).gbnf(), "root ::= \"-1\" | \"0\" | \"1\"\n");
        assert!(Shape::integers(-500, 500).matches("-437") && !Shape::integers(-500, 500).matches("4.5"));
    }
}
