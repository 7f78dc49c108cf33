//! Reading item scores out of a judge's answer: by regular expression, as JSON, or as the
//! probability-weighted expectation over score tokens. Pure functions; every way an answer can
//! be unusable is a [`ScoreFailure`].

use std::collections::BTreeMap;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::grammar::Shape;
use crate::judge::TokenLogprob;
use crate::rubric::{Rubric, normalize_name};

/// Why an answer yields no reward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ScoreFailure {
    #[error("no score for item `{item}`")]
    Missing { item: String },
    #[error("score {score} for `{item}` is outside {min}..={max}")]
    OutOfRange { item: String, score: f64, min: i64, max: i64 },
    #[error("the answer cannot be parsed: {message}")]
    Unparseable { message: String },
    #[error("the judge failed: {message}")]
    JudgeFailed { message: String },
    #[error("the answer was cut off at max_tokens = {max_tokens} (raise reward.judge.max_tokens)")]
    Truncated { max_tokens: u32 },
}

impl ScoreFailure {
    /// The kind a metrics row counts it under (its `kind` tag in `samples/`).
    pub fn kind(&self) -> &'static str {
        match self {
            ScoreFailure::Missing { .. } => "missing",
            ScoreFailure::OutOfRange { .. } => "out_of_range",
            ScoreFailure::Unparseable { .. } => "unparseable",
            ScoreFailure::JudgeFailed { .. } => "judge_failed",
            ScoreFailure::Truncated { .. } => "truncated",
        }
    }
}

/// Item scores of one answer, in rubric order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemScores {
    pub scores: Vec<(String, f64)>,
}

impl ItemScores {
    pub fn total(&self) -> f64 {
        self.scores.iter().map(|(_, s)| s).sum()
    }
}

/// The rubric item a written name refers to: exact (normalized), then containment, then the
/// closest spelling.
fn match_item<'a>(rubric: &'a Rubric, written: &str) -> Option<&'a str> {
    let w = normalize_name(written);
    if w.is_empty() {
        return None;
    }
    let names: Vec<(&str, String)> = rubric.items.iter().map(|i| (i.name.as_str(), normalize_name(&i.name))).collect();
    if let Some((n, _)) = names.iter().find(|(_, k)| *k == w) {
        return Some(n);
    }
    let contained: Vec<&&str> = names.iter().filter(|(_, k)| w.contains(k.as_str()) || k.contains(w.as_str())).map(|(n, _)| n).collect();
    if contained.len() == 1 {
        return Some(contained[0]);
    }
    crate::diag::did_you_mean(&w, names.iter().map(|(_, k)| k.as_str())).and_then(|k| names.iter().find(|(_, kk)| kk == k).map(|(n, _)| *n))
}

fn finish(rubric: &Rubric, found: BTreeMap<String, f64>) -> Result<ItemScores, ScoreFailure> {
    let mut scores = Vec::with_capacity(rubric.items.len());
    for it in &rubric.items {
        let s = *found.get(&it.name).ok_or_else(|| ScoreFailure::Missing { item: it.name.clone() })?;
        if !s.is_finite() || s < it.min as f64 - 1e-9 || s > it.max as f64 + 1e-9 {
            return Err(ScoreFailure::OutOfRange { item: it.name.clone(), score: s, min: it.min, max: it.max });
        }
        scores.push((it.name.clone(), s));
    }
    Ok(ItemScores { scores })
}

/// Scores from lines matching `re` (named groups `item`, `score`); the last score given for an
/// item counts (judges restate their final numbers).
pub fn by_regex(rubric: &Rubric, re: &Regex, answer: &str) -> Result<ItemScores, ScoreFailure> {
    let mut found = BTreeMap::new();
    for c in re.captures_iter(answer) {
        let (Some(item), Some(score)) = (c.name("item"), c.name("score")) else { continue };
        let Some(name) = match_item(rubric, item.as_str()) else { continue };
        if let Ok(s) = score.as_str().trim().parse::<f64>() {
            found.insert(name.to_string(), s);
        }
    }
    if found.is_empty() {
        return Err(ScoreFailure::Unparseable { message: "no `Item: score` lines".into() });
    }
    finish(rubric, found)
}

/// Scores from the first JSON object in the answer: `{"Item name": {"rationale", "score"}, ...}`
/// (what [`json_schema`] asks for), `{"items": [{"name", "score", ...}]}` or
/// `{"Item name": score, ...}`.
pub fn by_json(rubric: &Rubric, answer: &str) -> Result<ItemScores, ScoreFailure> {
    let start = answer.find('{').ok_or_else(|| ScoreFailure::Unparseable { message: "no JSON object".into() })?;
    let mut de = serde_json::Deserializer::from_str(&answer[start..]).into_iter::<serde_json::Value>();
    let v = match de.next() {
        Some(Ok(v)) => v,
        Some(Err(e)) => return Err(ScoreFailure::Unparseable { message: format!("invalid JSON: {e}") }),
        None => return Err(ScoreFailure::Unparseable { message: "no JSON object".into() }),
    };
    let mut found = BTreeMap::new();
    let mut put = |name: &str, score: &serde_json::Value| {
        let s = score.as_f64().or_else(|| score.as_str().and_then(|s| s.trim().parse().ok()));
        if let (Some(n), Some(s)) = (match_item(rubric, name), s) {
            found.insert(n.to_string(), s);
        }
    };
    match v.get("items").and_then(|i| i.as_array()) {
        Some(items) => {
            for it in items {
                if let (Some(n), Some(s)) = (it.get("name").and_then(|n| n.as_str()), it.get("score")) {
                    put(n, s);
                }
            }
        }
        None => {
            if let Some(o) = v.as_object() {
                for (k, s) in o {
                    put(k, s.get("score").unwrap_or(s));
                }
            }
        }
    }
    finish(rubric, found)
}

/// Tokens a compact JSON answer spends besides its rationales: the braces, and per item its
/// quoted name, the `rationale` and `score` keys, the score and separators (`"Name": {"rationale":
/// "", "score": -10}, ` is the name's bytes + 35), with room for a few spaces. Counted as one
/// token per byte of structure and per character of rationale: byte-level BPE tokens cover at
/// least one byte, so that is an upper bound for plain-ASCII rationales.
const JSON_FIXED_TOKENS: u32 = 4;
const JSON_TOKENS_PER_ITEM: u32 = 40;
/// A free answer's structure per item: the newline after the rationale, `: `, a score of up to
/// three characters and a newline, besides the name.
const FREE_TOKENS_PER_ITEM: u32 = 8;
/// A rationale shorter than this says little; `mpo check` warns when the budget allows less.
pub const MIN_RATIONALE_CHARS: u32 = 24;
/// One or two sentences; a longer rationale adds tokens, not information.
pub const MAX_RATIONALE_CHARS: u32 = 320;

/// The two answer shapes a server can be held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerShape {
    /// [`json_schema`]: one `{rationale, score}` object per item.
    Json,
    /// [`free_grammar`]: per item a rationale line, then `Name: score`.
    Free,
}

/// How a held answer fits its token budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerBudget {
    /// Longest rationale per item (characters).
    pub rationale_chars: u32,
    /// Tokens a complete answer needs with [`MIN_RATIONALE_CHARS`]-character rationales.
    pub least_tokens: u32,
    /// Tokens the longest compact answer can take.
    pub most_tokens: u32,
}

/// Rationale length so that a complete answer of `shape` with items named `names` fits
/// `max_tokens`.
pub fn answer_budget<'a>(shape: AnswerShape, names: impl IntoIterator<Item = &'a str>, max_tokens: u32) -> AnswerBudget {
    let (fixed, per_item) = match shape {
        AnswerShape::Json => (JSON_FIXED_TOKENS, JSON_TOKENS_PER_ITEM),
        AnswerShape::Free => (1, FREE_TOKENS_PER_ITEM),
    };
    let (mut n, mut structure) = (0u32, fixed);
    for name in names {
        n += 1;
        structure += per_item + name.len() as u32;
    }
    let n = n.max(1);
    let rationale_chars = (max_tokens.saturating_sub(structure) / n).min(MAX_RATIONALE_CHARS);
    AnswerBudget { rationale_chars, least_tokens: structure + n * MIN_RATIONALE_CHARS, most_tokens: structure + n * rationale_chars }
}

/// A guided value: an integer in `min..=max` after an optional space (servers get it as a
/// grammar per label; the local judge holds each value to it, then a newline).
pub fn value_shape(min: i64, max: i64) -> Shape {
    Shape::seq([Shape::lit(" ").optional(), Shape::integers(min, max)])
}

/// The shape of a complete free answer, for the default score pattern: per rubric item, in
/// order, a rationale line of at most `rationale_chars` characters (no colon, so it can never
/// be read as a score line) and then `Name: score` with the score in the item's range.
pub fn free_shape(rubric: &Rubric, rationale_chars: u32) -> Shape {
    Shape::seq(rubric.items.iter().enumerate().map(|(k, it)| {
        Shape::seq([
            Shape::text_except(":").repeat(0, rationale_chars),
            Shape::lit(format!("\n{}: ", it.name)),
            Shape::integers(it.min, it.max),
            Shape::lit("\n"),
        ])
        .named(&format!("item{k}"))
    }))
}

/// [`free_shape`] as GBNF, for servers.
pub fn free_grammar(rubric: &Rubric, rationale_chars: u32) -> String {
    free_shape(rubric, rationale_chars).gbnf()
}

/// The JSON schema of a complete answer: exactly one property per rubric item, in rubric order,
/// each a rationale of at most `rationale_chars` characters and an integer score in the item's
/// range. A server that enforces it cannot return an answer [`by_json`] rejects.
pub fn json_schema(rubric: &Rubric, rationale_chars: u32) -> serde_json::Value {
    let mut props = serde_json::Map::new();
    for it in &rubric.items {
        props.insert(
            it.name.clone(),
            serde_json::json!({
                "type": "object",
                "properties": {
                    "rationale": { "type": "string", "maxLength": rationale_chars },
                    "score": { "type": "integer", "minimum": it.min, "maximum": it.max },
                },
                "required": ["rationale", "score"],
                "additionalProperties": false,
            }),
        );
    }
    let names: Vec<&str> = rubric.items.iter().map(|i| i.name.as_str()).collect();
    serde_json::json!({ "type": "object", "properties": props, "required": names, "additionalProperties": false })
}

/// Scores as expectations: at the token where an item's score is written (`Item: <score>`),
/// the probability-weighted mean of the alternatives that are integers in the item's range.
///
/// On a tokenizer that writes numbers digit by digit (SmolLM2, Qwen2.5) an item whose range
/// reaches 10 has no one token per value: the first digit's `1` stands for 1 and for 10-19, and
/// what follows it is known only on the path the judge took. Such an item is read as the number
/// the judge wrote (all its digits), not an expectation. Where numbers are single tokens (Llama
/// 3 writes up to three digits as one) the expectation covers the whole range.
pub fn by_logprobs(rubric: &Rubric, tokens: &[TokenLogprob]) -> Result<ItemScores, ScoreFailure> {
    let mut text = String::new();
    let mut found = BTreeMap::new();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    for (k, t) in tokens.iter().enumerate() {
        let line_start = text.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let line = &text[line_start..];
        if let Some((name, rest)) = line.rsplit_once(':')
            && rest.trim().is_empty()
            && let Some(item) = match_item(rubric, name)
            && t.token.trim().parse::<i64>().is_ok()
        {
            let it = rubric.items.iter().find(|i| i.name == item).expect("matched item exists");
            // The number as written: this token and the digit tokens right after it.
            let written: String =
                std::iter::once(t.token.trim()).chain(tokens[k + 1..].iter().map(|n| n.token.as_str()).take_while(|n| digits(n))).collect();
            let multi_token_values = it.max >= 10 && !t.top.iter().any(|(tok, _)| tok.trim().len() > 1 && digits(tok.trim()));
            let mut alts: Vec<(i64, f64)> = if multi_token_values {
                written.parse::<i64>().ok().map(|v| vec![(v, 1.0)]).unwrap_or_default()
            } else {
                t.top
                    .iter()
                    .filter_map(|(tok, lp)| {
                        tok.trim().parse::<i64>().ok().filter(|v| (it.min..=it.max).contains(v)).map(|v| (v, (*lp as f64).exp()))
                    })
                    .collect()
            };
            if alts.is_empty()
                && let Ok(v) = written.parse::<i64>()
            {
                alts.push((v, 1.0));
            }
            let mass: f64 = alts.iter().map(|(_, p)| p).sum();
            if mass > 0.0 {
                found.insert(item.to_string(), alts.iter().map(|(v, p)| *v as f64 * p).sum::<f64>() / mass);
            }
        }
        text.push_str(&t.token);
    }
    if found.is_empty() {
        return Err(ScoreFailure::Unparseable { message: "no score tokens after `Item:`".into() });
    }
    finish(rubric, found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_kind_is_its_serde_tag() {
        let all = [
            ScoreFailure::Missing { item: "a".into() },
            ScoreFailure::OutOfRange { item: "a".into(), score: 9.0, min: 0, max: 1 },
            ScoreFailure::Unparseable { message: "x".into() },
            ScoreFailure::JudgeFailed { message: "x".into() },
            ScoreFailure::Truncated { max_tokens: 1 },
        ];
        for f in all {
            assert_eq!(serde_json::to_value(&f).unwrap()["kind"], f.kind());
        }
    }
    use crate::spec::default_score_regex;

    fn rubric() -> Rubric {
        Rubric::parse("## Final answer (0-4)\n- Award 4 if right.\n## Reasoning (0-3)\nSteps.\n").unwrap()
    }

    #[test]
    fn regex_reads_item_lines_and_types_failures() {
        let re = Regex::new(&default_score_regex()).unwrap();
        let r = rubric();
        let a = "The answer matches.\nFinal answer: 4\nThe steps are thin.\n**Reasoning**: 2/3\n";
        assert_eq!(by_regex(&r, &re, a).unwrap().total(), 6.0);
        // the last score for an item wins; names match loosely
        let a = "final answer: 1\nScore for Final Answer: 3\nreasoning : 0";
        assert_eq!(by_regex(&r, &re, a).unwrap().scores, vec![("Final answer".into(), 3.0), ("Reasoning".into(), 0.0)]);
        assert_eq!(by_regex(&r, &re, "Final answer: 4"), Err(ScoreFailure::Missing { item: "Reasoning".into() }));
        assert!(matches!(by_regex(&r, &re, "Final answer: 9\nReasoning: 1"), Err(ScoreFailure::OutOfRange { score: 9.0, max: 4, .. })));
        assert!(matches!(by_regex(&r, &re, "I cannot grade this."), Err(ScoreFailure::Unparseable { .. })));
    }

    #[test]
    fn json_both_shapes() {
        let r = rubric();
        let a = "```json\n{\"items\": [{\"name\": \"Final answer\", \"rationale\": \"ok\", \"score\": 4}, {\"name\": \"Reasoning\", \"rationale\": \"x\", \"score\": \"1\"}]}\n```";
        assert_eq!(by_json(&r, a).unwrap().total(), 5.0);
        assert_eq!(by_json(&r, "{\"Final answer\": 2, \"Reasoning\": 3}").unwrap().total(), 5.0);
        assert!(matches!(by_json(&r, "{\"items\": [}"), Err(ScoreFailure::Unparseable { .. })));
        let a = "{\"Final answer\": {\"rationale\": \"right\", \"score\": 4}, \"Reasoning\": {\"rationale\": \"thin\", \"score\": 1}}";
        assert_eq!(by_json(&r, a).unwrap().scores, vec![("Final answer".into(), 4.0), ("Reasoning".into(), 1.0)]);
    }

    #[test]
    fn the_schema_pins_every_item_its_range_and_the_rationale_length() {
        let r = rubric();
        let s = json_schema(&r, 50);
        insta::assert_snapshot!(serde_json::to_string_pretty(&s).unwrap());
        let keys: Vec<&String> = s["properties"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["Final answer", "Reasoning"], "rubric order");
        // answers the schema allows parse; the bounds are the rubric's
        let ok = "{\"Final answer\": {\"rationale\": \"\", \"score\": 0}, \"Reasoning\": {\"rationale\": \"x\", \"score\": 3}}";
        assert_eq!(by_json(&r, ok).unwrap().total(), 3.0);
    }

    #[test]
    fn the_rationale_limit_makes_the_longest_answer_fit() {
        let names = ["Final answer", "Reasoning"];
        let b = answer_budget(AnswerShape::Json, names, 256);
        assert!(b.most_tokens <= 256 && b.rationale_chars >= MIN_RATIONALE_CHARS, "{b:?}");
        // the longest valid answer, written out, has no more bytes than the budget counts
        let r = rubric();
        let longest = serde_json::json!({
            "Final answer": {"rationale": "x".repeat(b.rationale_chars as usize), "score": -10},
            "Reasoning": {"rationale": "y".repeat(b.rationale_chars as usize), "score": -10},
        });
        let text = serde_json::to_string(&longest).unwrap().replace(",", ", ").replace(":", ": ");
        assert!(text.len() as u32 <= b.most_tokens, "{} > {}", text.len(), b.most_tokens);
        assert!(by_json(&r, &text).is_err(), "-10 is out of range");
        // too small a budget: no rationale at all, and `least_tokens` says what is needed
        let tight = answer_budget(AnswerShape::Json, names, 60);
        assert_eq!(tight.rationale_chars, 0);
        assert!(tight.least_tokens > 60);
        assert_eq!(answer_budget(AnswerShape::Json, names, 100_000).rationale_chars, MAX_RATIONALE_CHARS);
    }

    #[test]
    fn the_free_grammar_admits_only_answers_the_default_pattern_reads_in_range() {
        let r = Rubric::parse("## Final answer (0-4)\n## \"Quoted\" name (0-2)\n").unwrap();
        let b = answer_budget(AnswerShape::Free, r.items.iter().map(|i| i.name.as_str()), 64);
        assert_eq!(b.rationale_chars, (64 - 1 - 8 - 12 - 8 - 13) / 2);
        let g = free_grammar(&r, b.rationale_chars);
        insta::assert_snapshot!(g);
        // the longest answer it admits reads back, in range, and fits
        let longest = format!(
            "{}\nFinal answer: 4\n{}\n\"Quoted\" name: 2\n",
            "x".repeat(b.rationale_chars as usize),
            "y".repeat(b.rationale_chars as usize)
        );
        assert!(longest.len() as u32 <= b.most_tokens);
        let re = Regex::new(&default_score_regex()).unwrap();
        assert_eq!(by_regex(&r, &re, &longest).unwrap().total(), 6.0);
        // the local judge's reading of the same shape admits it too, and nothing out of range
        let shape = free_shape(&r, b.rationale_chars);
        assert!(shape.matches(&longest));
        assert!(!shape.matches(&longest.replace("name: 2", "name: 3")));
    }

    /// A generated token with its top alternatives (`(token, logprob)`).
    fn t(token: &str, top: &[(&str, f32)]) -> TokenLogprob {
        TokenLogprob { token: token.into(), logprob: 0.0, top: top.iter().map(|(a, b)| (a.to_string(), *b)).collect() }
    }

    #[test]
    fn logprob_expectation() {
        let r = rubric();
        let toks = vec![
            t("Final", &[]),
            t(" answer", &[]),
            t(":", &[]),
            t(" 4", &[(" 4", 0.75f32.ln()), (" 2", 0.25f32.ln()), (" x", -1.0)]),
            t("\n", &[]),
            t("Reasoning", &[]),
            t(": ", &[]),
            t("1", &[("1", 0.5f32.ln()), ("3", 0.5f32.ln()), ("9", -0.1)]),
        ];
        let s = by_logprobs(&r, &toks).unwrap();
        assert!((s.scores[0].1 - 3.5).abs() < 1e-6);
        assert!((s.scores[1].1 - 2.0).abs() < 1e-6, "9 is out of range and ignored");
    }

    #[test]
    fn logprob_scores_of_two_digit_values_on_digit_tokenizers() {
        let r = Rubric::parse("## Quality (0-10)\n## Brief (0-2)\n").unwrap();
        // "10" written as "1" "0": the first token's "1" is not a 1 (reading it as one gave
        // 0.9 * 1 + 0.1 * 9 = 1.8); the number written is 10
        let toks = vec![
            t("Quality", &[]),
            t(": ", &[]),
            t("1", &[("1", 0.9f32.ln()), ("9", 0.1f32.ln())]),
            t("0", &[("0", 0.8f32.ln()), ("\n", 0.2f32.ln())]),
            t("\n", &[]),
            t("Brief", &[]),
            t(": ", &[]),
            t("2", &[("2", 0.5f32.ln()), ("0", 0.5f32.ln())]),
        ];
        let s = by_logprobs(&r, &toks).unwrap();
        assert_eq!(s.scores[0], ("Quality".into(), 10.0));
        assert!((s.scores[1].1 - 1.0).abs() < 1e-6, "a single-digit range keeps the expectation");
        // where values up to 10 are single tokens, the expectation covers them
        let toks = vec![
            t("Quality", &[]),
            t(": ", &[]),
            t("10", &[("10", 0.5f32.ln()), ("8", 0.5f32.ln())]),
            t("\n", &[]),
            t("Brief", &[]),
            t(": ", &[]),
            t("2", &[]),
        ];
        assert!((by_logprobs(&r, &toks).unwrap().scores[0].1 - 9.0).abs() < 1e-6);
        // a number written past the range is out of range, not a near miss
        let toks = vec![
            t("Quality", &[]),
            t(": ", &[]),
            t("1", &[("1", 0.0)]),
            t("2", &[]),
            t("\n", &[]),
            t("Brief", &[]),
            t(": ", &[]),
            t("2", &[]),
        ];
        assert!(matches!(by_logprobs(&r, &toks), Err(ScoreFailure::OutOfRange { score: 12.0, .. })));
    }
}
