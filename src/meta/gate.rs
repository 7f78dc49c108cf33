//! `meta.gate`: a merged rubric against the rubric in force on the spec's cases, scored with the
//! run's judge; refused only on a regression (or a case it could not measure).

use std::collections::{BTreeMap, BTreeSet};

use super::Kept;
use crate::cases::{Case, CaseFile, Check, Reading, ScoreError, Scorer, check_read};
use crate::judge::{Judge, TokenUsage};
use crate::rubric::Rubric;

/// `meta.gate`'s verdict on a merged rubric, against the rubric in force on the same cases:
/// how many case expectations were checked, those that hold under the rubric in force and fail
/// under the merged one (any keeps the current rubric), and, for reading, those that fail under
/// both and those the merged rubric fixes.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GateVerdict {
    pub checked: usize,
    /// Regressions: each one refuses the merged rubric (`failing`: rows written before the
    /// gate compared with the rubric in force, when every failure refused).
    #[serde(alias = "failing")]
    pub regressed: Vec<String>,
    /// Expectations that fail under the rubric in force and the merged one alike.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failing_both: Vec<String>,
    /// Expectations that fail under the rubric in force and hold under the merged one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fixed: Vec<String>,
    /// Expectations a rubric could not be measured on (the judge gave a case no score): the
    /// gate cannot show the merged rubric does no worse there, so each one refuses it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unmeasured: Vec<String>,
    /// Expectations that held under the rubric in force on items the merged rubric no longer
    /// has: they no longer apply (item expectations follow the items a rubric keeps).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<String>,
}

impl GateVerdict {
    /// The merged rubric when it does no worse than the rubric in force on any case; else why
    /// the current one stays (the regressions, named).
    pub fn apply(&self, merged: Result<Rubric, Kept>) -> Result<Rubric, Kept> {
        if self.regressed.is_empty() && self.unmeasured.is_empty() {
            return merged;
        }
        if self.regressed.is_empty() {
            return Err(Kept::Unmeasured { checked: self.checked, unmeasured: self.unmeasured.clone() });
        }
        Err(Kept::Regressed { checked: self.checked, regressed: self.regressed.clone() })
    }
}

/// `meta.gate`: a merged rubric is scored on the cases (with the run's judge) beside the rubric
/// in force, and may become the next version unless it does worse on some case: an
/// expectation that holds under the rubric in force and fails under the merged one (and is not
/// listed in the case file's `known_failures`) keeps the current rubric.
///
/// Every expectation is read on scale-free terms (see [`Reading`]): the case file's numbers
/// were written for the run's initial rubric (v0), and are checked at the same shares of each
/// rubric's range, so a rubric that rescales or renames its items is compared on what it
/// ranks, not on its numbers.
pub struct Gate {
    file: CaseFile,
    /// Built once from rubric v0, as `mpo rubric test` builds them: every candidate is
    /// measured on the same cases.
    cases: Vec<Case>,
    scorer: Scorer,
    /// The rubric the case file's numbers are read against.
    v0: Rubric,
    /// Checks of the rubrics scored last (the one in force and the last candidate), by the
    /// sha256 of their markdown, when every case was scored: the rubric in force is scored once
    /// while it stays in force, and an accepted candidate is not scored again as the next
    /// step's rubric in force.
    scored: Vec<(String, Vec<Check>)>,
}

fn rubric_sha(r: &Rubric) -> String {
    crate::hash::sha256_hex(r.to_markdown().as_bytes())
}

impl Gate {
    /// `records`: the task's training records the probes are built from; `v0`: the run's
    /// initial rubric (the keyword-stuffing probe stuffs its words, and the case file's numbers
    /// are read against its ranges).
    pub fn new(file: CaseFile, records: &[serde_json::Value], task: &str, v0: &Rubric, scorer: Scorer) -> Self {
        let cases = crate::cases::build(&file, task, records, v0);
        Gate { file, cases, scorer, v0: v0.clone(), scored: Vec::new() }
    }

    /// The expectations of `rubric`, scored with `judge` unless it was scored last time.
    fn checks(&mut self, judge: &mut dyn Judge, rubric: &Rubric, usage: &mut TokenUsage) -> Result<Vec<Check>, ScoreError> {
        // Another judge scores another way: the cache holds a judge's own scorings only.
        let key = format!("{}\n{}", judge.identity(), rubric_sha(rubric));
        if let Some((_, c)) = self.scored.iter().find(|(k, _)| *k == key) {
            return Ok(c.clone());
        }
        let s = self.scorer.score(judge, rubric, &self.cases)?;
        usage.add(&s.usage);
        let reading = Reading { written_for: &self.v0, items_required: false };
        let c = check_read(&self.file, &self.cases, &s.outcomes, rubric, reading);
        // A case the judge failed on may have met a passing fault (a timeout): asked again next
        // time (the judge cache answers what the judge did answer).
        if s.outcomes.iter().all(|o| o.failure.is_none()) {
            self.scored.push((key, c.clone()));
        }
        Ok(c)
    }

    /// `candidate` against `in_force` on the cases, and the judge's token usage (nothing is
    /// asked for a rubric scored by the previous call).
    pub fn verdict(
        &mut self,
        judge: &mut dyn Judge,
        in_force: &Rubric,
        candidate: &Rubric,
    ) -> Result<(GateVerdict, TokenUsage), ScoreError> {
        let mut usage = TokenUsage::default();
        let before = self.checks(judge, in_force, &mut usage)?;
        let now = self.checks(judge, candidate, &mut usage)?;
        // Keep only these two: the next step's rubric in force is one of them.
        let keep = [rubric_sha(in_force), rubric_sha(candidate)];
        self.scored.retain(|(k, _)| keep.iter().any(|s| k.ends_with(s.as_str())));
        let held: BTreeMap<String, &Check> = before.iter().map(|c| (c.key(), c)).collect();
        let mut v = GateVerdict { checked: now.len(), ..Default::default() };
        for c in &now {
            let was = held.get(&c.key());
            // A check either side could not measure cannot show the candidate does no worse:
            // it refuses (unless known to fail) rather than pass or blame as a regression.
            if c.unmeasured || (was.is_some_and(|b| b.unmeasured) && !c.holds()) {
                if c.known.is_none() {
                    v.unmeasured.push(c.line());
                }
                continue;
            }
            match (was.map(|b| b.holds()), c.holds()) {
                (Some(true), false) if c.known.is_none() => v.regressed.push(c.line()),
                (Some(false), false) => v.failing_both.push(c.line()),
                (Some(false), true) => v.fixed.push(c.line()),
                _ => {}
            }
        }
        // Expectations of items the candidate dropped no longer apply; said, not hidden.
        let kept: BTreeSet<String> = now.iter().map(Check::key).collect();
        v.dropped =
            before.iter().filter(|b| b.holds() && !kept.contains(&b.key())).map(|b| format!("{}: {}", b.case, b.expected())).collect();
        Ok((v, usage))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cases::check;
    use crate::judge::{JudgeRequest, JudgeResponse};
    use crate::spec::{MixSpec, RewardSpec};
    use crate::template::TemplateFile;

    /// A gate on one good case (with an item expectation) and two probes, written for `v0`, and a
    /// judge that follows whatever rubric it is shown: full marks on every item for a right
    /// answer (or under a rubric that awards every answer), the bottom of every item otherwise.
    fn gate_and_judge() -> (Gate, Rubric, impl Judge) {
        use crate::judge::scripted::ScriptedJudge;
        use crate::spec::{AnswerMode, Extraction, FailureSpec, JudgeSpec};
        let spec = RewardSpec {
            judge: JudgeSpec::default(),
            rubric: "r.md".into(),
            prompt: "j.j2".into(),
            extraction: Extraction::default(),
            answer: AnswerMode::Free,
            aggregate: crate::spec::Aggregate::RangeShare,
            failure: FailureSpec::default(),
            verifiers: vec![],
            mix: MixSpec::Coin { verifier_prob: 1.0, chunk: 1 },
            cases: None,
        };
        let tf = |name: &str, text: &str| TemplateFile { path: name.into(), text: text.into(), sha256: String::new() };
        let judge_t = tf("judge", "Rubric:\n{{ rubric }}\nQ: {{ question }}\nA: {{ response }}");
        let scorer = Scorer::new(&spec, "math", &judge_t, tf("policy", "{{ problem }}"), 7).unwrap();
        let file = CaseFile::parse(
            "probes: {records: 1, kinds: [empty, one-line]}\ncases:\n  - {id: good, record: {problem: '2+2?', answer: '4'}, response: 'So \\boxed{4}.', expect: {total: [3, 5], items: {Work: [1, 1]}}}\n",
        )
        .unwrap();
        let v0 =
            Rubric::parse("## Correct (0-4)\n- Award 4 when the answer is right.\n\n## Work (0-1)\n- Award 1 when the steps are shown.\n")
                .unwrap();
        let gate = Gate::new(file, &[serde_json::json!({"problem": "3+4?", "answer": "7"})], "math", &v0, scorer);
        let judge = ScriptedJudge::new("test:follows-the-rubric", |q: &JudgeRequest, _| {
            let full = q.prompt.contains("every answer") || q.prompt.contains("\\boxed{4}");
            let rubric = q.prompt.split("\nQ: ").next().unwrap_or_default().trim_start_matches("Rubric:\n");
            let r = Rubric::parse(rubric).expect("the prompt shows the rubric");
            let lines: Vec<String> = r.items.iter().map(|i| format!("{}: {}", i.name, if full { i.max } else { i.min })).collect();
            Ok(JudgeResponse::answer(lines.join("\n")))
        });
        (gate, v0, judge)
    }

    /// `r` with every item's range (and its award lines' points) doubled.
    fn doubled(r: &Rubric) -> Rubric {
        let mut d = r.clone();
        for it in &mut d.items {
            (it.min, it.max) = (2 * it.min, 2 * it.max);
        }
        Rubric::parse(&d.to_markdown().replace("Award 4", "Award 8").replace("Award 1", "Award 2")).unwrap()
    }

    #[test]
    fn the_meta_gate_rejects_a_rubric_that_lets_a_probe_through() {
        let (mut gate, v0, mut judge) = gate_and_judge();
        let lenient = Rubric::parse("## Correct (0-4)\n- Award 4 to every answer.\n\n## Work (0-1)\n- Award 1 always.\n").unwrap();
        // Every case goes to the judge, even under a mix that gives every rollout to the verifier;
        // the rubric in force is scored once, not again as the candidate.
        let (v, usage) = gate.verdict(&mut judge, &v0, &v0).unwrap();
        assert_eq!((v.checked, v.regressed.len(), v.failing_both.len(), usage.calls), (4, 0, 0, 3), "{v:?}");
        assert!(v.apply(Ok(v0.clone())).is_ok());

        // The rubric in force is not asked about again while it stays in force.
        let (v, usage) = gate.verdict(&mut judge, &v0, &lenient).unwrap();
        assert_eq!(usage.calls, 3, "only the candidate is scored");
        assert_eq!(
            v.regressed,
            [
                "probe-empty-0: expected total <= 1.25 (the bottom 25% of 0..=5), got total 5",
                "probe-one-line-0: expected total <= 1.25 (the bottom 25% of 0..=5), got total 5"
            ]
        );
        let kept = v.apply(Ok(lenient.clone())).unwrap_err().to_string();
        assert!(
            kept.starts_with(
                "meta gate: 2 of 4 case expectation(s) hold under the rubric in force and fail under the merged rubric: probe-empty-0: "
            ),
            "{kept}"
        );

        // Doubled, the lenient rubric is refused all the same (the bottom quarter of 0..=10).
        let (v, _) = gate.verdict(&mut judge, &v0, &doubled(&lenient)).unwrap();
        assert_eq!(v.regressed[0], "probe-empty-0: expected total <= 2.5 (the bottom 25% of 0..=10), got total 10");
        assert!(v.apply(Ok(lenient.clone())).is_err());

        // Under a lenient rubric in force, the same probes fail under both: nothing regresses,
        // and going back to v0 fixes them.
        let (v, _) = gate.verdict(&mut judge, &lenient, &lenient).unwrap();
        assert!(v.regressed.is_empty() && v.failing_both.len() == 2, "{v:?}");
        let (v, _) = gate.verdict(&mut judge, &lenient, &v0).unwrap();
        assert!(v.regressed.is_empty() && v.fixed.len() == 2, "{v:?}");
    }

    #[test]
    fn a_rubric_with_every_range_doubled_passes_the_gate_whenever_the_original_does() {
        let (mut gate, v0, mut judge) = gate_and_judge();
        let lenient = Rubric::parse("## Correct (0-4)\n- Award 4 to every answer.\n\n## Work (0-1)\n- Award 1 always.\n").unwrap();
        for in_force in [v0.clone(), doubled(&v0), lenient.clone()] {
            for candidate in [v0.clone(), lenient.clone()] {
                let (plain, _) = gate.verdict(&mut judge, &in_force, &candidate).unwrap();
                let (twice, _) = gate.verdict(&mut judge, &in_force, &doubled(&candidate)).unwrap();
                assert_eq!(plain.regressed.is_empty(), twice.regressed.is_empty(), "{plain:?}\n{twice:?}");
                assert_eq!(plain.regressed.len(), twice.regressed.len());
            }
        }
        // The doubled v0 passes, where the absolute expectations of the case file fail it.
        let (v, _) = gate.verdict(&mut judge, &v0, &doubled(&v0)).unwrap();
        assert!(v.regressed.is_empty() && v.failing_both.is_empty(), "{v:?}");
        let scored = gate.scorer.score(&mut judge, &doubled(&v0), &gate.cases).unwrap();
        let absolute = check(&gate.file, &gate.cases, &scored.outcomes, &doubled(&v0));
        let failing: Vec<String> = absolute.iter().filter(|c| !c.holds()).map(Check::line).collect();
        assert_eq!(failing, ["good: expected total in 3..=5, got total 10", "good: expected `Work` in 1..=1, got `Work` 2"]);
        // Read against v0, the same outcomes hold, at the same shares of the doubled ranges.
        let scaled =
            check_read(&gate.file, &gate.cases, &scored.outcomes, &doubled(&v0), Reading { written_for: &v0, items_required: false });
        assert!(scaled.iter().all(Check::holds), "{scaled:?}");
        assert_eq!(scaled[0].expected(), "total in 6..=10 of 0..=10 (the case file's 3..=5 of 0..=5)");
        assert_eq!(scaled[0].key(), "good: total in 3..=5", "keys (and known_failures) keep the case file's numbers");
    }

    #[test]
    fn a_case_the_judge_could_not_score_refuses_rather_than_passes_or_blames() {
        let (mut gate, v0, _) = gate_and_judge();
        let candidate = doubled(&v0);
        // Scores v0 fully on every case; under the candidate it answers nothing usable.
        let mut flaky = crate::judge::scripted::ScriptedJudge::new("test:flaky", |q: &JudgeRequest, _| {
            if q.prompt.contains("(0-8)") {
                return Ok(JudgeResponse::answer("I would rather not say."));
            }
            Ok(JudgeResponse::answer("Correct: 4\nWork: 1"))
        });
        let (v, _) = gate.verdict(&mut flaky, &v0, &candidate).unwrap();
        assert!(v.regressed.is_empty() && !v.unmeasured.is_empty(), "{v:?}");
        let e = v.apply(Ok(candidate.clone())).unwrap_err().to_string();
        assert!(e.contains("could not be measured"), "{e}");
        // and an unmeasured rubric in force does not wave a failing candidate through as
        // `failing_both`
        let (v, _) = gate.verdict(&mut flaky, &candidate, &v0).unwrap();
        assert!(v.failing_both.is_empty(), "{v:?}");
    }

    #[test]
    fn item_expectations_follow_the_items_a_rubric_keeps() {
        let (mut gate, v0, mut judge) = gate_and_judge();
        // `Work` renamed: its expectation no longer applies, which is no regression.
        let renamed =
            Rubric::parse("## Correct (0-4)\n- Award 4 when the answer is right.\n\n## Steps shown (0-1)\n- Award 1 when shown.\n")
                .unwrap();
        let (v, _) = gate.verdict(&mut judge, &v0, &renamed).unwrap();
        assert!(v.regressed.is_empty(), "{v:?}");
        assert_eq!(v.checked, 3, "the item expectation is not checked under a rubric without the item");
        assert_eq!(v.dropped, vec!["good: `Work` in 1..=1".to_string()], "the dropped expectation is said");
        // Kept under another spelling (normalised names match) with a wider range, and scored
        // at its bottom: a regression, named on the item's own range.
        let stingy =
            Rubric::parse("## Correct (0-4)\n- Award 4 when the answer is right.\n\n## WORK (0-3)\n- Award 3 when the steps are shown.\n")
                .unwrap();
        // The same judge scores v0 as before (Work full on the good case) and gives WORK 0
        // under the stingy rubric: a regression of the candidate, not of the judge.
        let mut stingy_judge = crate::judge::scripted::ScriptedJudge::new("test:stingy", |q: &JudgeRequest, _| {
            let right = q.prompt.contains("\\boxed{4}");
            let stingy = q.prompt.contains("## WORK (0-3)");
            Ok(JudgeResponse::answer(match (right, stingy) {
                (true, true) => "Correct: 4\nWORK: 0",
                (true, false) => "Correct: 4\nWork: 1",
                (false, true) => "Correct: 0\nWORK: 0",
                (false, false) => "Correct: 0\nWork: 0",
            }))
        });
        let (v, _) = gate.verdict(&mut stingy_judge, &v0, &stingy).unwrap();
        assert!(v.failing_both.is_empty() && v.unmeasured.is_empty(), "v0 was rescored by this judge: {v:?}");
        assert!(
            v.regressed.contains(&"good: expected `Work` in 3..=3 of 0..=3 (the case file's 1..=1 of 0..=1), got `Work` 0".to_string()),
            "{v:?}"
        );
    }
}
