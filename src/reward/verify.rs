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

/// What `mpo grade` found: whether the response is correct, and how it was read.
#[derive(Debug, Clone, PartialEq)]
pub struct Grade {
    pub correct: bool,
    /// The answers compared, as the verifier read them.
    pub reading: String,
}

/// Why a response cannot be graded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GradeError {
    #[error("task `{}` has no programmatic verifier (only its judge); `mpo grade` takes math or ethical_reasoning", .0.as_str())]
    NoVerifier(crate::spec::TaskKind),
    #[error("the reference must be RIGHT or WRONG, got {0:?}")]
    NotAVerdict(String),
}

/// Grade `response` against `reference` with `task`'s verifier, as a run's verifier reads it
/// (math: the last `\boxed{}` answers, equal within `tolerance`; ethical reasoning: the verdict).
pub fn grade(task: crate::spec::TaskKind, response: &str, reference: &str, tolerance: f64) -> Result<Grade, GradeError> {
    use crate::spec::TaskKind;
    let mark = |ok: bool| if ok { "correct" } else { "incorrect" };
    match task {
        TaskKind::Math => {
            let want = last_boxed(reference).unwrap_or_else(|| reference.trim().to_string());
            let Some(got) = last_boxed(response) else {
                return Ok(Grade {
                    correct: false,
                    reading: format!("incorrect: the response has no \\boxed{{}} answer (reference: {want})"),
                });
            };
            let correct = math_eq::equivalent(&got, &want, tolerance);
            let reading = format!(
                "{}: response {got:?} -> {:?}, reference {want:?} -> {:?}",
                mark(correct),
                math_eq::normalize(&got),
                math_eq::normalize(&want)
            );
            Ok(Grade { correct, reading })
        }
        TaskKind::EthicalReasoning => {
            let want = reference.trim().to_uppercase();
            if want != "RIGHT" && want != "WRONG" {
                return Err(GradeError::NotAVerdict(reference.to_string()));
            }
            Ok(match verdict(response) {
                Some(got) => {
                    let correct = got == want;
                    Grade { correct, reading: format!("{}: response verdict {got}, reference {want}", mark(correct)) }
                }
                None => Grade {
                    correct: false,
                    reading: format!(
                        "incorrect: no <verdict>RIGHT|WRONG</verdict> tag, nor one of the bare words RIGHT or WRONG alone, in the response (reference: {want})"
                    ),
                },
            })
        }
        TaskKind::EssayWriting | TaskKind::Summarization => Err(GradeError::NoVerifier(task)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grade_reads_answers_as_the_verifiers_do_and_refuses_what_it_cannot_grade() {
        use crate::spec::TaskKind;
        let g = grade(TaskKind::Math, "so \\boxed{\\dfrac{1}{2}}", "0.5", 1e-6).unwrap();
        assert!(g.correct && g.reading.starts_with("correct: "), "{g:?}");
        assert!(!grade(TaskKind::Math, "no box", "4", 1e-6).unwrap().correct);
        assert!(grade(TaskKind::EthicalReasoning, "<verdict>WRONG</verdict>", "wrong", 0.0).unwrap().correct);
        assert_eq!(grade(TaskKind::EthicalReasoning, "x", "maybe", 0.0), Err(GradeError::NotAVerdict("maybe".into())));
        assert_eq!(grade(TaskKind::Summarization, "x", "y", 0.0), Err(GradeError::NoVerifier(TaskKind::Summarization)));
    }
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
