//! Programmatic verifiers: checks on a response that need no judge. Each returns a score in
//! [0, 1] and the evidence it used (extracted answers), for the logs and `mpo grade`.

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value as J;

use super::math_eq;
use crate::spec::VerifierSpec;
use crate::task::math::last_boxed;

/// One verifier's verdict on one response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub verifier: String,
    pub score: f64,
    /// What was extracted from the response (`None`: nothing to extract).
    pub extracted: Option<String>,
    /// The reference it was compared with.
    pub reference: Option<String>,
}

/// The verdict tag of an ethical-reasoning response: the first `<verdict>X</verdict>` (or
/// `Verdict: X`), upper-cased, as the reference reads it (`re.search`): a response that states
/// its verdict and then argues the other side is held to what it stated first.
pub fn verdict_tag(response: &str) -> Option<String> {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(r"(?i)<verdict>\s*(RIGHT|WRONG)\s*</verdict>|verdict\s*[:=]\s*\**\s*(RIGHT|WRONG)\b").expect("static regex")
    });
    re.captures(response).and_then(|c| c.get(1).or_else(|| c.get(2))).map(|m| m.as_str().to_uppercase())
}

/// The verdict of an ethical-reasoning response as the reference's evaluation reads it: the
/// first tag; without one, the bare word `RIGHT` or `WRONG` (upper case) when only one of the
/// two appears, and none when both do.
pub fn verdict(response: &str) -> Option<String> {
    static WORD: std::sync::OnceLock<(Regex, Regex)> = std::sync::OnceLock::new();
    if let Some(t) = verdict_tag(response) {
        return Some(t);
    }
    let (right, wrong) = WORD.get_or_init(|| (Regex::new(r"\bRIGHT\b").expect("static"), Regex::new(r"\bWRONG\b").expect("static")));
    match (right.is_match(response), wrong.is_match(response)) {
        (true, false) => Some("RIGHT".into()),
        (false, true) => Some("WRONG".into()),
        _ => None,
    }
}

/// The reference answer of a math record: its `answer`, else the solution's boxed answer.
pub fn math_reference(record: &J) -> Option<String> {
    record.get("answer").and_then(J::as_str).map(str::to_string).or_else(|| record.get("solution").and_then(J::as_str).and_then(last_boxed))
}

/// Apply one verifier to `response` for `record`.
pub fn verify(v: &VerifierSpec, response: &str, record: &J) -> Verdict {
    match v {
        VerifierSpec::MathAnswer { tolerance, accept_unboxed } => {
            let got = last_boxed(response).or_else(|| accept_unboxed.then(|| crate::task::math::unboxed_answer(response)).flatten());
            let want = math_reference(record);
            let ok = matches!((&got, &want), (Some(g), Some(w)) if math_eq::equivalent(g, w, *tolerance));
            Verdict { verifier: "math_answer".into(), score: ok as u8 as f64, extracted: got, reference: want }
        }
        VerifierSpec::Verdict => {
            let got = verdict(response);
            let want = record.get("binarized_label").and_then(J::as_str).map(|s| s.to_uppercase());
            let ok = got.is_some() && got == want;
            Verdict { verifier: "verdict".into(), score: ok as u8 as f64, extracted: got, reference: want }
        }
        VerifierSpec::Length { min_words, max_words } => {
            let n = response.split_whitespace().count();
            Verdict {
                verifier: "length".into(),
                score: (n >= *min_words && n <= *max_words) as u8 as f64,
                extracted: Some(format!("{n} words")),
                reference: Some(format!("{min_words}..{max_words}")),
            }
        }
        VerifierSpec::Format { pattern } => {
            let ok = Regex::new(pattern).map(|re| re.is_match(response)).unwrap_or(false);
            Verdict { verifier: "format".into(), score: ok as u8 as f64, extracted: None, reference: Some(pattern.clone()) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn verifiers() {
        let rec = json!({"problem": "1+1", "solution": "so $\\boxed{2}$", "binarized_label": "WRONG"});
        let m = VerifierSpec::MathAnswer { tolerance: 1e-6, accept_unboxed: false };
        assert_eq!(verify(&m, "It is \\boxed{2.0}.", &rec).score, 1.0);
        let v = verify(&m, "It is 2.", &rec);
        assert_eq!((v.score, v.extracted), (0.0, None));
        let lenient = VerifierSpec::MathAnswer { tolerance: 1e-6, accept_unboxed: true };
        let v = verify(&lenient, "It is 2.", &rec);
        assert_eq!((v.score, v.extracted.as_deref()), (1.0, Some("2")));
        assert_eq!(verify(&lenient, "\\boxed{3}, the answer is 2", &rec).score, 0.0, "a box wins over the phrase");
        assert_eq!(verify(&VerifierSpec::Verdict, "...so <verdict>wrong</verdict>", &rec).score, 1.0);
        // the first tag counts, as in the reference
        assert_eq!(verify(&VerifierSpec::Verdict, "<verdict>WRONG</verdict> no, Verdict: RIGHT", &rec).score, 1.0);
        assert_eq!(verify(&VerifierSpec::Verdict, "Verdict: RIGHT. On reflection <verdict>WRONG</verdict>", &rec).score, 0.0);
        assert_eq!(verify(&VerifierSpec::Verdict, "no tag", &rec).score, 0.0);
        // without a tag, a bare upper-case word when only one of the two appears
        assert_eq!(verify(&VerifierSpec::Verdict, "The author is WRONG here.", &rec).score, 1.0);
        assert_eq!(verdict("Was it RIGHT or WRONG? Hard to say."), None);
        assert_eq!(verdict("the right thing"), None, "a lower-case word is no verdict");
        assert_eq!(verdict_tag("The author is WRONG here."), None, "a bare word is no tag");
        assert_eq!(verify(&VerifierSpec::Length { min_words: 2, max_words: 3 }, "one two", &rec).score, 1.0);
        assert_eq!(verify(&VerifierSpec::Format { pattern: "^A".into() }, "B", &rec).score, 0.0);
    }
}
