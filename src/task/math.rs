//! Math answers: finding the final `\boxed{...}` answer in a solution or response.

/// Length of the content before the `}` that closes an already opened brace (`None`: it is
/// never closed).
pub fn balanced(s: &str) -> Option<usize> {
    let mut depth = 1usize;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// The content of the last `\boxed{...}` (or `\fbox{...}`) in `s`, braces balanced.
/// `\boxed 5` (no braces) yields `5`.
pub fn last_boxed(s: &str) -> Option<String> {
    let (idx, tag) = ["\\boxed", "\\fbox"].iter().filter_map(|t| s.rfind(t).map(|i| (i, *t))).max_by_key(|(i, _)| *i)?;
    let rest = &s[idx + tag.len()..];
    let trimmed = rest.trim_start();
    if let Some(body) = trimmed.strip_prefix('{') {
        balanced(body).map(|n| body[..n].trim().to_string())
    } else if rest.starts_with(' ') {
        let tok: String = trimmed.chars().take_while(|c| !c.is_whitespace() && *c != '$').collect();
        (!tok.is_empty()).then_some(tok)
    } else {
        None
    }
}

/// The answer of a response that does not box it: the number after the last "answer is"
/// (or "answer:"), else the last number in the response. Lenient on purpose, for small models
/// that rarely write `\boxed{}`; a spec opts in with `accept_unboxed`.
pub fn unboxed_answer(s: &str) -> Option<String> {
    static PHRASE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    static NUMBER: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let num = r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?";
    let phrase = PHRASE.get_or_init(|| regex::Regex::new(&format!(r"(?i)answer\s*(?:is|:|=)\s*\$?\s*({num})")).expect("static regex"));
    let number = NUMBER.get_or_init(|| regex::Regex::new(num).expect("static regex"));
    let clean = |m: &str| m.replace(',', "");
    if let Some(c) = phrase.captures_iter(s).last() {
        return Some(clean(&c[1]));
    }
    number.find_iter(s).last().map(|m| clean(m.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unboxed_answers_prefer_the_answer_phrase() {
        assert_eq!(unboxed_answer("32 + 39 = 71, so the answer is 71.\nTry 5 more"), Some("71".into()));
        assert_eq!(unboxed_answer("$4 + 3 = 7$"), Some("7".into()));
        assert_eq!(unboxed_answer("Answer: -1,200.5 then 3"), Some("-1200.5".into()));
        assert_eq!(unboxed_answer("no digits"), None);
    }

    #[test]
    fn finds_last_balanced_box() {
        assert_eq!(last_boxed("so $\\boxed{\\frac{1}{2}}$."), Some("\\frac{1}{2}".into()));
        assert_eq!(last_boxed("\\boxed{1} then \\boxed{ 2 }"), Some("2".into()));
        assert_eq!(last_boxed("\\boxed 5$"), Some("5".into()));
        assert_eq!(last_boxed("\\fbox{7}"), Some("7".into()));
        assert_eq!(last_boxed("no box"), None);
        assert_eq!(last_boxed("\\boxed{unclosed"), None);
    }
}
