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

use crate::grammar::Shape;

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
    #[error("line {line}: item name `{name}` has a colon: a judge's `{name}: 4` could never be read as its score; name it without one")]
    NameColon { line: usize, name: String },
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
                if name.contains(':') {
                    return Err(RubricError::NameColon { line: i + 1, name });
                }
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

    /// [`Rubric::problems`] of the rubric `text` parses to, and items written twice with
    /// different ranges (the parse keeps the first range and merges the second's lines into
    /// it, which is never what the writer meant).
    pub fn problems_of_text(text: &str, max_points: i64) -> Result<Vec<String>, RubricError> {
        let r = Rubric::parse(text)?;
        let mut out = Vec::new();
        for (line, heading) in Rubric::duplicate_headings(text) {
            let again = Rubric::parse(&heading).ok().and_then(|d| d.items.into_iter().next());
            if let Some(d) = again
                && let Some(first) = r.items.iter().find(|i| normalize_name(&i.name) == normalize_name(&d.name))
                && (first.min, first.max) != (d.min, d.max)
            {
                out.push(format!("line {line}: `{}` is written again as {}-{} after {}-{}", d.name, d.min, d.max, first.min, first.max));
            }
        }
        out.extend(r.problems(max_points));
        Ok(out)
    }

    /// Item headings that repeat an earlier item's name (`(line, heading)`): [`Rubric::parse`]
    /// merges them into the first, so a hand-written rubric that repeats a name loses the second
    /// range without saying so.
    pub fn duplicate_headings(text: &str) -> Vec<(usize, String)> {
        let mut seen = Vec::new();
        let mut out = Vec::new();
        for (i, line, name) in item_headings(text) {
            let key = normalize_name(&name);
            if seen.contains(&key) {
                out.push((i + 1, line.trim_end().to_string()));
            } else {
                seen.push(key);
            }
        }
        out
    }

    /// `text` without the items that repeat an earlier item's name (heading and lines), and
    /// which were dropped: a merge is asked to combine without repetition, and the first time an
    /// item is written is the one kept (the reference drops exact repeats).
    pub fn without_repeats(text: &str) -> (String, Vec<String>) {
        let repeats = Rubric::duplicate_headings(text);
        if repeats.is_empty() {
            return (text.to_string(), Vec::new());
        }
        let starts: Vec<usize> = repeats.iter().map(|(line, _)| line - 1).collect();
        let headings: Vec<usize> = item_headings(text).into_iter().map(|(i, _, _)| i).collect();
        let mut dropping = false;
        let mut kept = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if headings.contains(&i) {
                dropping = starts.contains(&i);
            }
            if !dropping {
                kept.push(line);
            }
        }
        let mut out = kept.join("\n");
        if text.ends_with('\n') {
            out.push('\n');
        }
        (out, repeats.into_iter().map(|(line, heading)| format!("line {line}: `{}`", heading.trim())).collect())
    }

    /// What keeps a written rubric from being accepted as a new version, beyond parsing: names
    /// that are not names (a title, a date, numbers), ranges wider than `max_points`, award
    /// or deduction amounts outside the item's range, and lines cut off mid-sentence. Empty
    /// when the rubric is sound. Judges' rubrics are untrusted; this is what "accepted" claims.
    pub fn problems(&self, max_points: i64) -> Vec<String> {
        let mut out = Vec::new();
        for it in &self.items {
            let n = &it.name;
            let words = n.split_whitespace().count();
            if !n.chars().all(|c| c.is_alphabetic() || " -'&,".contains(c))
                || !n.starts_with(|c: char| c.is_alphabetic())
                || words > 6
                || n.to_lowercase().starts_with("rubric")
            {
                out.push(format!("`{n}` is not an item name (one to six words of letters, not a title, date or number)"));
            }
            let span = it.max - it.min;
            if span > max_points {
                out.push(format!("`{n}` ranges over {span} points, more than {max_points}"));
            }
            let lines: Vec<&String> = it.awards.iter().chain(&it.deductions).collect();
            for (k, line) in lines.iter().enumerate() {
                if let Some(k) = amount(line)
                    && (k < 1 || k > span)
                {
                    out.push(format!("`{n} ({}-{})`: `{line}` gives {k} points, outside 1-{span}", it.min, it.max));
                }
                if !line.trim_end().ends_with(['.', '!', '?', ')']) || ends_on_a_dangling_word(line) {
                    out.push(format!("`{n}`: `{line}` stops mid-sentence"));
                }
                if lines[..k].contains(line) {
                    out.push(format!("`{n}`: `{line}` is written twice"));
                }
            }
        }
        out
    }

    /// What this rubric changed against `prev`, item by item (matched by name): items dropped,
    /// added and re-ranged, the heaviest item of `prev` (the one that carries the most points,
    /// on math the correctness item) marked, so that losing it shows in the history.
    pub fn changes_from(&self, prev: &Rubric) -> Vec<String> {
        let heaviest = prev.items.iter().max_by_key(|i| i.max - i.min).map(|i| normalize_name(&i.name));
        let find = |r: &'_ Rubric, name: &str| r.items.iter().find(|i| normalize_name(&i.name) == normalize_name(name)).cloned();
        let mark = |name: &str| if heaviest.as_deref() == Some(normalize_name(name).as_str()) { " (the heaviest item)" } else { "" };
        let mut out = Vec::new();
        for p in &prev.items {
            match find(self, &p.name) {
                None => out.push(format!("dropped `{} ({}-{})`{}", p.name, p.min, p.max, mark(&p.name))),
                Some(n) if (n.min, n.max) != (p.min, p.max) => {
                    out.push(format!("`{}` {}-{} -> {}-{}{}", p.name, p.min, p.max, n.min, n.max, mark(&p.name)))
                }
                Some(n) if n.description != p.description => out.push(format!("`{}` reworded{}", p.name, mark(&p.name))),
                Some(_) => {}
            }
        }
        for n in &self.items {
            if find(prev, &n.name).is_none() {
                out.push(format!("added `{} ({}-{})`", n.name, n.min, n.max));
            }
        }
        out
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

/// The shape a meta judge's rubric is held to (on servers that take grammars, and always in
/// process): at most `items` items, each a `## Name (0-N)` heading with N at most
/// [`MAX_POINTS`], then one to `lines` lines `- Award k when <criterion>.` or `- Deduct k when
/// <criterion>.` with k within the item's range, a criterion of [`CRITERION_MIN_CHARS`] to
/// `line_chars` characters that starts in lower case and ends at its first full stop (a line
/// ends where its sentence does, never cut mid-word by a length limit it could not see), and
/// a name of one to four words of letters. Sized so that the longest rubric it admits fits the
/// token budget: every answer it admits is complete and parses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RubricShape {
    pub items: usize,
    pub lines: usize,
    pub line_chars: usize,
    /// The widest item range (`meta.max_points`, at most [`MAX_POINTS`]).
    pub max_points: i64,
}

/// The widest item range a written rubric may use (`meta.max_points` may lower it): under
/// `reward.aggregate: sum` or `range_share` no single item can swamp the rest.
pub const MAX_POINTS: i64 = 10;
/// The shortest criterion a rubric line may have (characters between `when ` and the stop).
pub const CRITERION_MIN_CHARS: usize = 12;
/// Below this longest criterion a line cannot say what is observed and under which condition:
/// the shape gives up lines, then items, before going under it, and `mpo check` refuses a
/// budget that cannot hold one item with it.
pub const MIN_USEFUL_LINE_CHARS: usize = 40;
/// Room for a criterion with its condition; below it, fewer but longer lines.
const GOOD_LINE_CHARS: usize = 50;
const MAX_LINE_CHARS: usize = 160;
/// A name: a capitalised word and up to three more, each of at most ten letters.
const NAME_WORDS: u32 = 4;
const WORD_CHARS: u32 = 10;
/// Bytes of the longest heading: `## ` + name + ` (0-10)` + newline.
const HEADING_BYTES: usize = 3 + (WORD_CHARS as usize + 1) * NAME_WORDS as usize - 1 + 7 + 1;
/// Bytes of a line besides its criterion: `- Deduct 10 when ` + `.` + newline.
const LINE_BYTES: usize = 17 + 2;

impl RubricShape {
    /// The richest shape of at most `max_items` items whose longest rubric fits `max_tokens`
    /// (one token per byte, the bound for byte-level tokenizers; one more for the end token):
    /// fewer lines per item first, then fewer items, never lines shorter than
    /// [`MIN_USEFUL_LINE_CHARS`]. `None` when not even one such item fits.
    pub fn fit(max_items: usize, max_tokens: u32) -> Option<RubricShape> {
        let budget = (max_tokens as usize).saturating_sub(1);
        let line_chars =
            |items: usize, lines: usize| ((budget / items.max(1)).saturating_sub(HEADING_BYTES) / lines).saturating_sub(LINE_BYTES);
        for (lines, least) in [(3, GOOD_LINE_CHARS), (2, GOOD_LINE_CHARS), (1, MIN_USEFUL_LINE_CHARS)] {
            let c = line_chars(max_items, lines);
            if c >= least {
                return Some(RubricShape { items: max_items.max(1), lines, line_chars: c.min(MAX_LINE_CHARS), max_points: MAX_POINTS });
            }
        }
        let items = budget / Self::item_bytes(1, MIN_USEFUL_LINE_CHARS);
        (items >= 1).then(|| RubricShape { items, lines: 1, line_chars: line_chars(items, 1).min(MAX_LINE_CHARS), max_points: MAX_POINTS })
    }

    /// The same shape with item ranges of at most `max_points` (clamped to 1..=[`MAX_POINTS`]).
    pub fn with_max_points(self, max_points: i64) -> RubricShape {
        RubricShape { max_points: max_points.clamp(1, MAX_POINTS), ..self }
    }

    fn item_bytes(lines: usize, line_chars: usize) -> usize {
        HEADING_BYTES + lines * (LINE_BYTES + line_chars)
    }

    /// Tokens `items` items need at the least: one line of [`MIN_USEFUL_LINE_CHARS`] each.
    pub fn least_tokens(items: usize) -> u32 {
        (items * Self::item_bytes(1, MIN_USEFUL_LINE_CHARS) + 1) as u32
    }

    /// Tokens the longest rubric of this shape can take (its bytes, plus the end token).
    pub fn most_tokens(&self) -> u32 {
        self.shape().longest_bytes() as u32 + 1
    }

    /// The shape itself: what servers get as GBNF and the local judge as a regex.
    pub fn shape(&self) -> Shape {
        let word = Shape::class("a-z").repeat(1, WORD_CHARS - 1);
        let name = Shape::seq([
            Shape::class("A-Z"),
            word.clone(),
            Shape::seq([Shape::lit(" "), Shape::class("A-Za-z"), Shape::class("a-z").repeat(0, WORD_CHARS - 1)]).repeat(0, NAME_WORDS - 1),
        ])
        .named("name");
        let criterion = Shape::seq([
            Shape::class("a-z"),
            Shape::text_except(".").repeat(CRITERION_MIN_CHARS as u32 - 1, self.line_chars.max(CRITERION_MIN_CHARS) as u32 - 1),
        ])
        .named("criterion");
        let verb = Shape::alt([Shape::lit("- Award "), Shape::lit("- Deduct ")]).named("verb");
        let item = |n: i64| {
            let line = Shape::seq([verb.clone(), Shape::integers(1, n), Shape::lit(" when "), criterion.clone(), Shape::lit(".\n")]);
            Shape::seq([Shape::lit("## "), name.clone(), Shape::lit(format!(" (0-{n})\n")), line.repeat(1, self.lines as u32)])
                .named(&format!("item{n}"))
        };
        Shape::alt((1..=self.max_points).map(item)).named("item").repeat(1, self.items as u32)
    }

    /// The grammar in GBNF (llama.cpp; also read by vLLM's and SGLang's xgrammar backends).
    pub fn gbnf(&self) -> String {
        self.shape().gbnf()
    }
}

/// The item headings of `text` outside code fences: `(line index, line, name as written)`.
fn item_headings(text: &str) -> Vec<(usize, &str, String)> {
    let mut in_fence = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
        }
        if let Some(c) = heading_re().captures(line.trim_end()).filter(|_| !in_fence) {
            out.push((i, line, c["name"].trim().trim_matches(['*', '_', ':']).to_string()));
        }
    }
    out
}

/// A sentence whose last word is one that cannot end it (`... the reference answer or.`): the
/// writer was cut off and a full stop forced.
fn ends_on_a_dangling_word(line: &str) -> bool {
    const DANGLING: &[&str] = &[
        "a", "an", "the", "and", "or", "but", "of", "to", "in", "on", "at", "for", "with", "by", "from", "is", "are", "when", "if", "that",
        "than", "as",
    ];
    let last = line.trim_end().trim_end_matches(['.', '!', '?']).rsplit(' ').next().unwrap_or("").to_lowercase();
    DANGLING.contains(&last.as_str())
}

/// The points an award or deduction line names (`Award 4 when`, `Deduct 2 if`, `+1 for`).
fn amount(line: &str) -> Option<i64> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"(?i)^(?:award|deduct|penali[sz]e)?\s*[+−-]?\s*(\d+)\b").expect("static regex"));
    re.captures(line.trim()).and_then(|c| c[1].parse().ok())
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
        let roomy = RubricShape::fit(6, 2048).unwrap();
        assert_eq!((roomy.items, roomy.lines), (6, 3));
        assert!(roomy.most_tokens() <= 2048, "{roomy:?}");
        // a tight one gives up lines, then items, never the fit nor a useful line length
        for (items, tokens) in [(6, 192), (12, 1024), (3, 640), (1, 120)] {
            let s = RubricShape::fit(items, tokens).unwrap();
            assert!(s.items >= 1 && s.items <= items && s.lines >= 1, "{s:?}");
            assert!(s.line_chars >= MIN_USEFUL_LINE_CHARS, "{items} items in {tokens}: {s:?}");
            assert!(s.most_tokens() <= tokens, "{items} items in {tokens}: {s:?} takes {}", s.most_tokens());
        }
        // 12 items in 1024 tokens: fewer items with lines that can say something (the old
        // shape cut every line to 24 characters to keep 11 items)
        assert_eq!(RubricShape::fit(12, 1024).unwrap().items, 1023 / RubricShape::item_bytes(1, MIN_USEFUL_LINE_CHARS));
        assert_eq!(RubricShape::fit(3, 640).unwrap().lines, 2);
        assert_eq!(RubricShape::fit(6, 40), None);
        assert!(RubricShape::least_tokens(1) > 40);
        // the longest rubric the shape admits, written out, is admitted, fits and parses
        let s = RubricShape::fit(2, 512).unwrap();
        let text: String = (0..s.items)
            .map(|k| {
                let lines: String = (0..s.lines)
                    .map(|l| format!("- Deduct 10 when a{}{}.\n", "x".repeat(s.line_chars - 2), (b'a' + l as u8) as char))
                    .collect();
                // distinct names, or the parse would merge the items
                format!("## Abcdefghij Abcdefghij Abcdefghij Abcdefghi{} (0-10)\n{lines}", (b'a' + k as u8) as char)
            })
            .collect();
        let shape = s.shape();
        assert!(shape.matches(&text), "{text}");
        assert_eq!(text.len() + 1, s.most_tokens() as usize);
        let r = Rubric::parse(&text).unwrap();
        assert_eq!(r.items.len(), s.items);
        assert_eq!(r.items[0].deductions.len(), s.lines);
        assert!(r.problems(MAX_POINTS).is_empty(), "{:?}", r.problems(MAX_POINTS));
        // what it refuses: points beyond the item's range, a line cut mid-sentence, a date as
        // a name, a second range in a name
        for bad in [
            "## Correct answer (0-1)\n- Award 2 when the final answer is right.\n",
            "## Correct answer (0-2)\n- Award 1 when the final answer is written in\n",
            "## Rubric for math solutions 10/01/2023 12/ (0-1)\n- Award 1 when the final answer is right.\n",
            "## Correct (0-4) answer (0-2)\n- Award 1 when the final answer is right.\n",
        ] {
            assert!(!shape.matches(bad), "{bad}");
        }
        insta::assert_snapshot!(RubricShape::fit(6, 1024).unwrap().gbnf());
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
    fn a_written_rubric_is_sound_or_says_why_not() {
        // the rubric a 135M meta judge wrote under the old grammar (issue 28): every problem named
        let v001 = "## Rubric for math solutions 10/01/2023 12/ (0-1)\n- Award 1 when the final answer is written in\n\n## Answer in a box (0-2)\n- Award 4 when the answer is boxed.\n- Deduct 3 when there is no box.\n";
        let r = Rubric::parse(v001).unwrap();
        let p = r.problems(MAX_POINTS);
        assert_eq!(p.len(), 4, "{p:#?}");
        assert!(p[0].contains("not an item name"), "{}", p[0]);
        assert!(p[1].contains("stops mid-sentence"), "{}", p[1]);
        assert!(p[2].contains("gives 4 points, outside 1-2") && p[3].contains("gives 3 points"), "{p:?}");
        // the shipped initial rubric is sound
        let v0 = Rubric::parse(&std::fs::read_to_string("prompt_templates/math/rubric_v0.md").unwrap()).unwrap();
        assert_eq!(v0.problems(MAX_POINTS), Vec::<String>::new());
        assert!(Rubric::parse("## Style (0-20)\n").unwrap().problems(MAX_POINTS)[0].contains("20 points"));
        // `meta.max_points` lowers the bound, in the check and in the shape
        let wide = "## Style (0-6)\n- Award 6 when every paragraph has one clear topic sentence.\n";
        assert!(Rubric::problems_of_text(wide, MAX_POINTS).unwrap().is_empty());
        assert!(Rubric::problems_of_text(wide, 5).unwrap()[0].contains("ranges over 6 points, more than 5"));
        let shape = RubricShape::fit(2, 600).unwrap();
        assert!(shape.shape().matches(wide) && !shape.with_max_points(5).shape().matches(wide));
        // what the demo's 135M meta judge wrote under a 53-character line limit: a full stop
        // forced after `or`, a line twice, an item twice with another range
        let demo = "## Correct final answer (0-4)\n- Deduct 4 when the final answer differs from the reference answer or.\n## Sound reasoning (0-2)\n- Award 2 when every step follows from the previous one.\n- Award 2 when every step follows from the previous one.\n## Sound reasoning (0-3)\n- Award 3 when every step follows from the previous one.\n";
        let p = Rubric::problems_of_text(demo, MAX_POINTS).unwrap();
        assert!(p[0].starts_with("line 6: `Sound reasoning` is written again as 0-3 after 0-2"), "{p:#?}");
        assert!(p.iter().any(|x| x.contains("answer or.` stops mid-sentence")), "{p:#?}");
        assert!(p.iter().any(|x| x.contains("is written twice")), "{p:#?}");
        assert!(p.iter().any(|x| x.contains("gives 3 points, outside 1-2")), "{p:#?}");
        // a merge keeps the first time an item is written and drops its repeats whole
        let (kept, dropped) = Rubric::without_repeats(demo);
        assert_eq!(dropped, vec!["line 6: `## Sound reasoning (0-3)`".to_string()]);
        assert!(!kept.contains("(0-3)") && kept.contains("## Sound reasoning (0-2)") && kept.ends_with(".\n"), "{kept}");
        assert!(!Rubric::problems_of_text(&kept, MAX_POINTS).unwrap().iter().any(|x| x.contains("written again")));
    }

    #[test]
    fn changes_name_items_dropped_added_and_reranged() {
        let v0 = Rubric::parse(R).unwrap();
        let v1 = Rubric::parse("## Reasoning (0-5)\nShows steps.\n## Units (0-1)\n").unwrap();
        assert_eq!(
            v1.changes_from(&v0),
            vec!["dropped `Final answer (0-4)` (the heaviest item)", "`Reasoning` 0-3 -> 0-5", "added `Units (0-1)`"]
        );
        assert!(v0.changes_from(&v0).is_empty());
    }

    #[test]
    fn names_a_judge_cannot_answer_and_repeated_headings_are_found() {
        assert_eq!(Rubric::parse("## Thesis: clarity (0-5)\n"), Err(RubricError::NameColon { line: 1, name: "Thesis: clarity".into() }));
        let text = "## Clarity (0-2)\n- Award 2 if clear.\n## clarity (0-4)\n";
        assert_eq!(Rubric::duplicate_headings(text), vec![(3, "## clarity (0-4)".to_string())]);
        assert!(Rubric::duplicate_headings(R).is_empty());
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
