//! Rubrics: the structured scoring guide the judge applies and the meta-reward model rewrites.
//!
//! A rubric is markdown: an optional preamble, then one `## Name (min-max)` heading per item
//! followed by its criteria. A heading without a range before the first item ("## Improved
//! rubric", which meta judges like to write) is part of the preamble. Bullets that start with `Award`/`+` and `Deduct`/`Penalize` are
//! kept as explicit point awards and deductions. Parsing is pure and total: any text yields
//! either a [`Rubric`] or a [`RubricError`] saying what to fix, never a panic — the meta
//! judge's output is untrusted.

use std::fmt::Write as _;
use std::sync::OnceLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// One scored criterion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub name: String,
    pub min: i64,
    pub max: i64,
    /// The item's body text as written (criteria, notes), trimmed.
    pub description: String,
    /// Explicit point awards (`Award ...`, `+2 ...`).
    pub awards: Vec<String>,
    /// Explicit deductions (`Deduct ...`, `-1 ...`).
    pub deductions: Vec<String>,
}

/// A parsed rubric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rubric {
    /// Text before the first item (title, instructions), trimmed.
    pub preamble: String,
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RubricError {
    #[error("the rubric has no items: write each criterion as a `## Name (min-max)` heading")]
    Empty,
    #[error("line {line}: item heading `{heading}` has no score range: write it as `## Name (0-4)`")]
    NoRange { line: usize, heading: String },
    #[error("line {line}: item `{name}` has an empty range {min}-{max}: the maximum must exceed the minimum")]
    BadRange { line: usize, name: String, min: i64, max: i64 },
    #[error("the rubric has {count} items, more than the allowed {max}")]
    TooMany { count: usize, max: usize },
}

fn heading_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"^#{2,3}\s+(?:\d+[.)]\s*)?(?P<name>.+?)\s*[(\[]\s*(?P<min>[-−]?\d+)\s*(?:-|–|—|to)\s*(?P<max>[-−]?\d+)\s*(?:points?|pts?)?\s*[)\]]\s*:?\s*$")
            .expect("static regex")
    })
}

fn parse_int(s: &str) -> i64 {
    s.replace('−', "-").parse().unwrap_or(0)
}

impl Rubric {
    /// Parse rubric markdown. Items with the same name (case- and space-insensitive) are
    /// merged into the first occurrence, so item order is deterministic.
    pub fn parse(text: &str) -> Result<Rubric, RubricError> {
        let mut preamble = String::new();
        let mut items: Vec<(Item, usize)> = Vec::new();
        let mut body = String::new();
        let flush = |items: &mut Vec<(Item, usize)>, body: &mut String| {
            if let Some((item, _)) = items.last_mut() {
                item.description = body.trim().to_string();
                for line in item.description.lines() {
                    let l = line.trim().trim_start_matches(['-', '*', '•']).trim();
                    let lower = l.to_lowercase();
                    if lower.starts_with("award") || l.starts_with('+') {
                        item.awards.push(l.to_string());
                    } else if lower.starts_with("deduct")
                        || lower.starts_with("penali")
                        || (l.starts_with('−'))
                        || line.trim().starts_with("- -")
                    {
                        item.deductions.push(l.to_string());
                    }
                }
            }
            body.clear();
        };
        let mut in_fence = false;
        let mut rangeless: Option<(usize, String)> = None;
        for (i, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("```") {
                in_fence = !in_fence;
            }
            let t = line.trim_end();
            if !in_fence && (t.starts_with("## ") || t.starts_with("### ")) {
                let Some(c) = heading_re().captures(t) else {
                    if items.is_empty() {
                        rangeless.get_or_insert((i + 1, t.to_string()));
                        preamble.push_str(line);
                        preamble.push('\n');
                        continue;
                    }
                    return Err(RubricError::NoRange { line: i + 1, heading: t.to_string() });
                };
                flush(&mut items, &mut body);
                let name = c["name"].trim().trim_matches(['*', '_', ':']).trim().to_string();
                let (min, max) = (parse_int(&c["min"]), parse_int(&c["max"]));
                if max <= min {
                    return Err(RubricError::BadRange { line: i + 1, name, min, max });
                }
                items.push((Item { name, min, max, description: String::new(), awards: vec![], deductions: vec![] }, i + 1));
            } else if items.is_empty() {
                preamble.push_str(line);
                preamble.push('\n');
            } else {
                body.push_str(line);
                body.push('\n');
            }
        }
        flush(&mut items, &mut body);
        if items.is_empty() {
            return Err(match rangeless {
                Some((line, heading)) => RubricError::NoRange { line, heading },
                None => RubricError::Empty,
            });
        }
        let mut out: Vec<Item> = Vec::new();
        for (item, _) in items {
            let key = normalize_name(&item.name);
            match out.iter_mut().find(|o| normalize_name(&o.name) == key) {
                Some(existing) => {
                    // The duplicate's lines join the first occurrence's text, so what the judge
                    // reads and a re-parse of `to_markdown` keep them.
                    let extra: Vec<&str> = item.description.lines().filter(|l| !existing.description.lines().any(|e| e == *l)).collect();
                    if !extra.is_empty() {
                        if !existing.description.is_empty() {
                            existing.description.push('\n');
                        }
                        existing.description.push_str(&extra.join("\n"));
                    }
                    for a in item.awards {
                        if !existing.awards.contains(&a) {
                            existing.awards.push(a);
                        }
                    }
                    for d in item.deductions {
                        if !existing.deductions.contains(&d) {
                            existing.deductions.push(d);
                        }
                    }
                }
                None => out.push(item),
            }
        }
        Ok(Rubric { preamble: preamble.trim().to_string(), items: out })
    }

    /// Reject rubrics with more than `max_items` items.
    pub fn validate(&self, max_items: usize) -> Result<(), RubricError> {
        if self.items.len() > max_items {
            return Err(RubricError::TooMany { count: self.items.len(), max: max_items });
        }
        Ok(())
    }

    pub fn max_score(&self) -> i64 {
        self.items.iter().map(|i| i.max).sum()
    }

    pub fn min_score(&self) -> i64 {
        self.items.iter().map(|i| i.min).sum()
    }

    /// Canonical markdown (what `rubrics/vNNN.md` holds and the judge sees).
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        if !self.preamble.is_empty() {
            s.push_str(&self.preamble);
            s.push_str("\n\n");
        }
        for (i, it) in self.items.iter().enumerate() {
            if i > 0 {
                s.push('\n');
            }
            let _ = writeln!(s, "## {} ({}-{})", it.name, it.min, it.max);
            if !it.description.is_empty() {
                let _ = writeln!(s, "{}", it.description);
            }
        }
        s
    }
}

/// The shape a grammar holds a meta judge's rubric to, on servers that take grammars
/// (`reward.judge.dialect` other than `openai`): at most `items` items, each a
/// `## Name (0-N)` heading (N at most 10) and one to `lines` award or deduction lines of at most
/// `line_chars` characters. Sized so that the longest rubric it allows fits the token budget:
/// every answer it admits is complete and parses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RubricShape {
    pub items: usize,
    pub lines: usize,
    pub line_chars: usize,
}

/// Longest item name a grammar allows (characters, all ASCII).
const SHAPE_NAME_CHARS: usize = 40;
/// Bytes of the longest heading: `## ` + name + ` (0-10)` + newline.
const SHAPE_HEADING_BYTES: usize = 3 + SHAPE_NAME_CHARS + 7 + 1;
/// Bytes of a line besides its criterion: `- Deduct 10 when ` + newline.
const SHAPE_LINE_BYTES: usize = 17 + 1;
/// A criterion shorter than this cannot say what is observed.
const SHAPE_MIN_LINE_CHARS: usize = 24;
/// Room for a criterion with its condition; below it, fewer but longer lines.
const SHAPE_GOOD_LINE_CHARS: usize = 40;
const SHAPE_MAX_LINE_CHARS: usize = 160;

impl RubricShape {
    /// The richest shape of at most `max_items` items whose longest rubric fits `max_tokens`
    /// (one token per byte, the bound for byte-level tokenizers; one more for the end token).
    /// Fewer lines per item first, then fewer items, when the budget is small.
    pub fn fit(max_items: usize, max_tokens: u32) -> RubricShape {
        let budget = (max_tokens as usize).saturating_sub(1);
        let line_chars = |items: usize, lines: usize| {
            ((budget / items.max(1)).saturating_sub(SHAPE_HEADING_BYTES) / lines).saturating_sub(SHAPE_LINE_BYTES)
        };
        for (lines, least) in [(3, SHAPE_GOOD_LINE_CHARS), (2, SHAPE_GOOD_LINE_CHARS), (1, SHAPE_MIN_LINE_CHARS)] {
            let c = line_chars(max_items, lines);
            if c >= least {
                return RubricShape { items: max_items, lines, line_chars: c.min(SHAPE_MAX_LINE_CHARS) };
            }
        }
        let least_item = SHAPE_HEADING_BYTES + SHAPE_LINE_BYTES + SHAPE_MIN_LINE_CHARS;
        let items = (budget / least_item).clamp(1, max_items.max(1));
        RubricShape { items, lines: 1, line_chars: line_chars(items, 1).clamp(1, SHAPE_MAX_LINE_CHARS) }
    }

    /// Tokens `items` items need at the least: one shortest criterion line each.
    pub fn least_tokens(items: usize) -> u32 {
        RubricShape { items, lines: 1, line_chars: SHAPE_MIN_LINE_CHARS }.most_tokens()
    }

    /// Tokens the longest rubric of this shape can take (its bytes, plus the end token).
    pub fn most_tokens(&self) -> u32 {
        (self.items * (SHAPE_HEADING_BYTES + self.lines * (SHAPE_LINE_BYTES + self.line_chars)) + 1) as u32
    }

    /// The grammar in GBNF (llama.cpp; also read by vLLM's and SGLang's xgrammar backends).
    pub fn gbnf(&self) -> String {
        format!(
            "root ::= item{{1,{items}}}\n\
             item ::= \"## \" name \" (0-\" points \")\\n\" line{{1,{lines}}}\n\
             name ::= [A-Z] [A-Za-z0-9 ,'/&-]{{1,{name_rest}}}\n\
             points ::= [1-9] | \"10\"\n\
             line ::= \"- \" (\"Award\" | \"Deduct\") \" \" points \" when \" [^\\n]{{1,{line_chars}}} \"\\n\"\n",
            items = self.items,
            lines = self.lines,
            name_rest = SHAPE_NAME_CHARS - 1,
            line_chars = self.line_chars,
        )
    }
}

/// Item names compare without case, punctuation or repeated spaces.
pub fn normalize_name(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_alphanumeric() || c.is_whitespace())
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_meta_grammar_fits_its_budget_and_what_it_admits_parses() {
        // a roomy budget keeps every item and three lines
        let roomy = RubricShape::fit(6, 2048);
        assert_eq!((roomy.items, roomy.lines), (6, 3));
        assert!(roomy.most_tokens() <= 2048, "{roomy:?}");
        // a tight one gives up lines, then items, never the fit
        for (items, tokens) in [(6, 192), (12, 1024), (3, 64), (1, 16)] {
            let s = RubricShape::fit(items, tokens);
            assert!(s.items >= 1 && s.items <= items && s.lines >= 1, "{s:?}");
            if s.line_chars >= SHAPE_MIN_LINE_CHARS {
                assert!(s.most_tokens() <= tokens, "{items} items in {tokens}: {s:?} takes {}", s.most_tokens());
            }
        }
        assert_eq!(RubricShape::fit(6, 192).items, 2);
        // the longest rubric the shape admits, written out, parses to that many items
        let s = RubricShape::fit(4, 1024);
        let name = format!("A{}", "b".repeat(SHAPE_NAME_CHARS - 1));
        let text: String = (0..s.items)
            .map(|k| {
                let lines = format!("- Deduct 10 when {}\n", "x".repeat(s.line_chars)).repeat(s.lines);
                format!("## {}{k} (0-10)\n{lines}", &name[..SHAPE_NAME_CHARS - 1])
            })
            .collect();
        assert!(text.len() < s.most_tokens() as usize, "{} bytes > {}", text.len(), s.most_tokens());
        let r = Rubric::parse(&text).unwrap();
        assert_eq!(r.items.len(), s.items);
        assert_eq!(r.items[0].deductions.len(), s.lines);
        insta::assert_snapshot!(RubricShape::fit(6, 1024).gbnf());
    }

    const R: &str = "# Math rubric\nScore each item.\n\n## Final answer (0-4)\n- Award 4 if the boxed answer is right.\n- Deduct 2 if there is no box.\n\n## Reasoning (0 - 3 points)\nShows steps.\n";

    #[test]
    fn parses_items_ranges_awards_and_deductions() {
        let r = Rubric::parse(R).unwrap();
        assert_eq!(r.preamble, "# Math rubric\nScore each item.");
        assert_eq!(r.items.len(), 2);
        assert_eq!((r.items[0].min, r.items[0].max), (0, 4));
        assert_eq!(r.items[0].awards, vec!["Award 4 if the boxed answer is right."]);
        assert_eq!(r.items[0].deductions, vec!["Deduct 2 if there is no box."]);
        assert_eq!(r.items[1].name, "Reasoning");
        assert_eq!(r.max_score(), 7);
    }

    #[test]
    fn markdown_round_trips() {
        let r = Rubric::parse(R).unwrap();
        assert_eq!(Rubric::parse(&r.to_markdown()).unwrap(), r);
    }

    #[test]
    fn duplicates_merge_into_the_first() {
        let r = Rubric::parse("## Clarity (0-2)\n- Award 2 if clear.\n## clarity (0-2)\n- Deduct 1 for jargon.\n").unwrap();
        assert_eq!(r.items.len(), 1);
        assert_eq!(r.items[0].deductions.len(), 1);
        // the merged item survives a round trip through the canonical markdown
        assert_eq!(Rubric::parse(&r.to_markdown()).unwrap(), r);
        assert!(r.to_markdown().contains("Deduct 1 for jargon."));
    }

    #[test]
    fn a_rangeless_heading_before_the_items_is_preamble() {
        let r = Rubric::parse("## Improved rubric\n\n## Clarity (0-2)\n- Award 2 if clear.\n").unwrap();
        assert_eq!((r.preamble.as_str(), r.items.len()), ("## Improved rubric", 1));
        // after an item it is still an error: it would swallow the item's criteria
        assert!(matches!(Rubric::parse("## A (0-1)\n## Notes\n"), Err(RubricError::NoRange { line: 2, .. })));
    }

    #[test]
    fn errors_are_typed() {
        assert_eq!(Rubric::parse("no items here"), Err(RubricError::Empty));
        assert_eq!(Rubric::parse(""), Err(RubricError::Empty));
        assert!(matches!(Rubric::parse("## Clarity\n"), Err(RubricError::NoRange { line: 1, .. })));
        assert!(matches!(Rubric::parse("## Clarity (3-1)\n"), Err(RubricError::BadRange { .. })));
        let r = Rubric::parse("## A (0-1)\n## B (0-1)\n").unwrap();
        assert!(r.validate(1).is_err());
    }
}
