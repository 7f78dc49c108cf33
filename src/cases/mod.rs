//! Rubric cases: a case file of (record, response, expectations) plus hack probes built from
//! the task's training records (`file.rs`, pure); the cases scored exactly as a run scores a
//! rollout (`score.rs`); the expectations checked against the outcomes (`expect.rs`). Shared by
//! `mpo rubric test` (`rubric_test/`) and the run-time meta gate (`meta/gate.rs`), neither of
//! which imports the other.

mod expect;
pub mod file;
mod score;

pub use expect::{Check, Reading, check, check_read, fmt};
pub use file::{Case, CaseFile, CaseFileError, build};
pub use score::{Fallback, NO_RECORDING, Outcome, ScoreError, Scored, Scorer};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rubric::Rubric;

    #[test]
    fn expectations_probes_order_and_known_failures() {
        let rubric = Rubric::parse("## Correct (0-4)\n- Award 4 when right.\n\n## Boxed (0-1)\n- Award 1 when boxed.\n").unwrap();
        let file = CaseFile::parse(
            "cases:\n  - {id: good, record: {problem: p}, response: r, expect: {total: [4, 5], items: {Boxed: [1, 1]}}}\n  - {id: bad, record: {problem: p}, response: r}\n\
             order: [[good, bad]]\nknown_failures: {'bad: above `good`': 'never', probe: 'the 135M judge gives it 3'}\n",
        )
        .unwrap();
        let mut cases = build(&file, "math", &[], &rubric);
        cases.push(Case {
            id: "probe".into(),
            kind: "empty".into(),
            record: serde_json::json!({}),
            response: String::new(),
            expect: file::Expect::default(),
            at_most: Some(0.25),
        });
        let outs = vec![
            Outcome::of("good", &[("Correct", 4.0), ("Boxed", 0.0)], None),
            Outcome::of("bad", &[("Correct", 0.0), ("Boxed", 0.0)], None),
            Outcome::of("probe", &[("Correct", 3.0), ("Boxed", 0.0)], None),
        ];
        let checks = check(&file, &cases, &outs, &rubric);
        let show: Vec<String> = checks.iter().map(|c| format!("{} | {} | {:?} | {:?}", c.case, c.what, c.got, c.known)).collect();
        assert_eq!(
            show,
            [
                "good | total in 4..=5 | None | None",
                "good | `Boxed` in 1..=1 | Some(\"`Boxed` 0\") | None",
                "probe | total <= 1.25 (the bottom 25% of 0..=5) | Some(\"total 3\") | Some(\"the 135M judge gives it 3\")",
                "good | above `bad` | None | None",
            ]
        );
        // An unscored case fails its expectations with the reason.
        let outs = vec![
            Outcome::of("good", &[], Some("the answer cannot be parsed: x")),
            Outcome::of("bad", &[("Correct", 1.0), ("Boxed", 0.0)], None),
        ];
        let checks = check(&file, &cases[..2], &outs, &rubric);
        assert_eq!(checks[0].got.as_deref(), Some("no score (the answer cannot be parsed: x)"));
        assert_eq!(checks.last().unwrap().got.as_deref(), Some("no score (the answer cannot be parsed: x) vs 1"));
    }
}
