//! Math answers: finding the final `\boxed{...}` answer in a solution or response.

/// The content of the last `\boxed{...}` (or `\fbox{...}`) in `s`, braces balanced.
/// `\boxed 5` (no braces) yields `5`.
pub fn last_boxed(s: &str) -> Option<String> {
    let (idx, tag) = ["\\boxed", "\\fbox"].iter().filter_map(|t| s.rfind(t).map(|i| (i, *t))).max_by_key(|(i, _)| *i)?;
    let rest = &s[idx + tag.len()..];
    let trimmed = rest.trim_start();
    if let Some(body) = trimmed.strip_prefix('{') {
        let mut depth = 1usize;
        for (i, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(body[..i].trim().to_string());
                    }
                }
                _ => {}
            }
        }
        None
    } else if rest.starts_with(' ') {
        let tok: String = trimmed.chars().take_while(|c| !c.is_whitespace() && *c != '$').collect();
        (!tok.is_empty()).then_some(tok)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
