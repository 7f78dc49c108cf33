//! The meta-reward pipeline: every `meta.every` updates a senior judge reads recent rollouts
//! (with their scores and the junior judge's rationales) and rewrites the rubric.
//!
//! Stages, each a template in `prompt_templates/meta/`: optional prescreen (which samples are
//! worth analysing) -> analyze (per sample: what the rubric missed, reward hacking) -> refine
//! (per sample: an improved rubric with explicit awards and deductions) -> merge (one rubric).
//! The merged text is parsed and validated; on any failure the current rubric stays and the
//! reason is recorded. Nothing here writes files: [`history`] does.

pub mod family;
pub mod gate;
pub mod history;

use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use serde_json::Value as J;

use crate::grammar::Shape;
use crate::judge::{Judge, JudgeRequest, TokenUsage};
use crate::rubric::{Rubric, RubricShape};
use crate::template::context::{MetaContext, MetaLimits, SampleContext, Stage};

/// Templates and settings of the pipeline.
#[derive(Debug, Clone)]
pub struct MetaConfig {
    pub task: String,
    pub prescreen: Option<(String, String)>,
    pub analyze: (String, String),
    pub refine: (String, String),
    /// `None` under `meta.review: joint`.
    pub merge: Option<(String, String)>,
    pub review: crate::spec::MetaReview,
    pub samples: usize,
    pub sampling: crate::spec::MetaSampling,
    pub domain_guidelines: bool,
    pub max_tokens: u32,
    pub temperature: f64,
    /// What the stages' answers may be, sized to `max_tokens` (the prompts state these limits).
    pub shapes: MetaShapes,
    /// Whether the meta judge is held to `shapes` (the in-process judge; a server whose dialect
    /// sends grammars). Otherwise the limits are only asked for.
    pub held: bool,
}

/// The shape of an analysis: exactly `findings` numbered findings (one per question the analyze
/// template asks), each one sentence that starts with a capital and ends at its first full
/// stop, of at most `chars` characters. A bounded, numbered answer is evidence the refine stage
/// can use; a free one from a small model is often one sentence repeated until the budget ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnalysisShape {
    pub findings: usize,
    pub chars: usize,
}

/// Findings an analysis gives: the analyze template's three questions.
const FINDINGS: usize = 3;
/// A finding shorter than this cannot name what was missed and why.
const MIN_FINDING_CHARS: usize = 40;
const MAX_FINDING_CHARS: usize = 240;

impl AnalysisShape {
    /// The longest findings that fit `max_tokens` (one token per byte, plus the end token).
    pub fn fit(max_tokens: u32) -> Option<AnalysisShape> {
        let per = (max_tokens as usize).saturating_sub(1) / FINDINGS;
        // `1. ` and `.\n` around each finding
        let chars = per.saturating_sub(5).min(MAX_FINDING_CHARS);
        (chars >= MIN_FINDING_CHARS).then_some(AnalysisShape { findings: FINDINGS, chars })
    }

    pub fn least_tokens() -> u32 {
        (FINDINGS * (MIN_FINDING_CHARS + 5) + 1) as u32
    }

    pub fn shape(&self) -> Shape {
        Shape::seq((1..=self.findings).map(|k| {
            Shape::seq([
                Shape::lit(format!("{k}. ")),
                Shape::class("A-Z"),
                Shape::text_except(".").repeat(11, self.chars as u32 - 1),
                Shape::lit(".\n"),
            ])
        }))
    }
}

/// The shapes of the meta stages' answers for one token budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaShapes {
    pub rubric: RubricShape,
    pub analysis: AnalysisShape,
}

/// `meta.max_tokens` cannot hold a complete answer of the meta stages.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "`meta.max_tokens` ({max_tokens}) cannot hold a complete answer of the meta stages (a one-item rubric with a {}-character line, or {FINDINGS} findings of {MIN_FINDING_CHARS} characters): it must be at least {least}",
    crate::rubric::MIN_USEFUL_LINE_CHARS
)]
pub struct BudgetTooSmall {
    pub max_tokens: u32,
    /// The smallest budget that holds one.
    pub least: u32,
}

impl MetaShapes {
    /// The same shapes with rubric item ranges of at most `max_points` (`meta.max_points`).
    pub fn with_max_points(self, max_points: i64) -> MetaShapes {
        MetaShapes { rubric: self.rubric.with_max_points(max_points), ..self }
    }

    /// The shapes for rubrics of at most `max_items` items in `max_tokens`, or what the budget
    /// must be (a check error names it).
    pub fn fit(max_items: usize, max_tokens: u32) -> Result<MetaShapes, BudgetTooSmall> {
        let least = RubricShape::least_tokens(1).max(AnalysisShape::least_tokens());
        match (RubricShape::fit(max_items, max_tokens), AnalysisShape::fit(max_tokens)) {
            (Some(rubric), Some(analysis)) => Ok(MetaShapes { rubric, analysis }),
            _ => Err(BudgetTooSmall { max_tokens, least }),
        }
    }

    pub fn limits(&self) -> MetaLimits {
        MetaLimits {
            items: self.rubric.items,
            lines: self.rubric.lines,
            line_chars: self.rubric.line_chars,
            max_points: self.rubric.max_points,
            findings: self.analysis.findings,
            finding_chars: self.analysis.chars,
        }
    }
}

/// A rollout offered to the meta judge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetaSample {
    pub id: String,
    pub question: String,
    pub response: String,
    /// The judge's rubric total (None when the judge did not score it).
    pub score: Option<f64>,
    pub max_score: f64,
    /// The judge's answer (its rationale and scores).
    pub rationale: String,
    pub verifier: Option<f64>,
    pub record: J,
}

/// Why a meta step keeps the rubric in force. Its text is what the history (`history.jsonl`)
/// and the metrics row (`meta.kept_because`) record.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Kept {
    #[error("no rollouts to learn from")]
    NoRollouts,
    /// A meta template did not render.
    #[error("{0}")]
    Template(String),
    #[error("prescreen failed: {0}")]
    Prescreen(Unanswered),
    #[error("the analysis failed: {0}")]
    Analysis(Unanswered),
    #[error("the refinement failed: {0}")]
    Refinement(Unanswered),
    #[error("every analysis failed")]
    EveryAnalysisFailed,
    /// No refinement gave a rubric: what happened to each (cut off, not answered, not a rubric).
    #[error("no usable refined rubric: of {asked} asked for, {}", why.join(", "))]
    NoUsableRefinement { asked: usize, why: Vec<String> },
    #[error("meta.stages.merge is missing (meta.review: per_sample merges)")]
    NoMergeStage,
    #[error("merge failed: {0}")]
    Merge(Unanswered),
    #[error("the {what} rubric is invalid: {message}")]
    Invalid { what: &'static str, message: String },
    #[error("the {what} rubric is not sound: {}", problems.join("; "))]
    NotSound { what: &'static str, problems: Vec<String> },
    #[error("the {what} rubric is the current one")]
    Unchanged { what: &'static str },
    /// `meta.gate`: expectations that hold under the rubric in force fail under the merged one.
    #[error("meta gate: {} of {checked} case expectation(s) hold under the rubric in force and fail under the merged rubric: {}", regressed.len(), regressed.join("; "))]
    Regressed { checked: usize, regressed: Vec<String> },
    /// `meta.gate`: expectations the judge gave no score on, so no comparison.
    #[error("meta gate: {} of {checked} case expectation(s) could not be measured (the judge gave a case no score), so the merged rubric cannot be shown to do no worse: {}", unmeasured.len(), unmeasured.join("; "))]
    Unmeasured { checked: usize, unmeasured: Vec<String> },
}

/// Why a meta judge's request gave no usable text.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Unanswered {
    /// A rubric cut off by `max_tokens` would silently lose its last items.
    #[error("the answer was cut off at max_tokens = {0} (raise meta.max_tokens)")]
    Cut(u32),
    #[error(transparent)]
    Judge(#[from] crate::judge::JudgeError),
}

/// What one meta step did.
#[derive(Debug, Clone, PartialEq)]
pub struct MetaOutcome {
    pub trigger_update: u32,
    /// Ids of the samples the meta judge saw.
    pub evidence: Vec<String>,
    pub prescreen_raw: Option<String>,
    pub analyses: Vec<String>,
    pub refined: Vec<String>,
    pub merged_raw: Option<String>,
    /// Items the merge wrote again after their first time, dropped (`line N: heading`).
    pub repeats_dropped: Vec<String>,
    /// The new rubric, or why the current one stays.
    pub result: Result<Rubric, Kept>,
    pub usage: TokenUsage,
    /// What `meta.gate` found in the merged rubric (`None`: no gate, or nothing merged).
    pub gate: Option<gate::GateVerdict>,
}

/// Short guidance per MATH subject, added to the analysis when `meta.domain_guidelines` is on.
pub fn math_guidelines(subject: &str) -> &'static str {
    match subject {
        "Algebra" | "Intermediate Algebra" => "Check that each algebraic manipulation is valid and that extraneous roots are discarded.",
        "Geometry" => "Check that figures' properties are justified, not read off a picture, and that units are consistent.",
        "Counting & Probability" => "Check for double counting and that cases are exhaustive; probabilities must lie in [0, 1].",
        "Number Theory" => "Check divisibility arguments and modular arithmetic step by step.",
        "Precalculus" => "Check trigonometric identities and the domain of every function used.",
        "Prealgebra" | "Arithmetic" => "Check every arithmetic step; the final answer must be exact.",
        _ => "",
    }
}

/// Ask `judge`, counting tokens; answers as text or why there is none. An answer cut off by
/// `max_tokens` is an error where the answer is a rubric (`whole`): a truncated rubric would
/// silently lose its last items.
fn ask(judge: &mut dyn Judge, reqs: Vec<JudgeRequest>, usage: &mut TokenUsage, whole: bool) -> Vec<Result<String, Unanswered>> {
    let max_tokens: Vec<u32> = reqs.iter().map(|r| r.max_tokens).collect();
    judge
        .complete(&reqs)
        .into_iter()
        .zip(max_tokens)
        .map(|(r, m)| {
            usage.record(&r);
            match r {
                Ok(x) if whole && x.truncated => Err(Unanswered::Cut(m)),
                Ok(x) => Ok(x.text),
                Err(e) => Err(e.into()),
            }
        })
        .collect()
}

fn render(t: &(String, String), ctx: &MetaContext) -> Result<String, Kept> {
    crate::template::render(&t.0, &t.1, ctx).map_err(|e| Kept::Template(e.to_string()))
}

impl MetaSample {
    /// How the meta stages' templates see this rollout.
    pub fn context(&self) -> SampleContext<'_> {
        SampleContext::new(
            &self.id,
            &self.question,
            &self.response,
            self.score,
            self.max_score,
            &self.rationale,
            self.verifier,
            &self.record,
        )
    }
}

/// The analysis guidance for a record: its MATH subject's, when `meta.domain_guidelines` is on.
pub fn analyze_guidelines(domain_guidelines: bool, record: &J) -> &'static str {
    if domain_guidelines { math_guidelines(record.get("type").and_then(J::as_str).unwrap_or("")) } else { "" }
}

/// A joint review's guidelines: the samples' own when they share them, else none (a review of
/// several MATH subjects gets no one subject's hint).
pub fn joint_guidelines<'a>(hints: &[&'a str]) -> &'a str {
    match hints.first() {
        Some(h) if hints.iter().all(|x| x == h) => h,
        _ => "",
    }
}

/// `n` samples of `candidates`, drawn with `rng` as `sampling` says. Score tertiles: sorted by
/// score (ties by id), cut into three contiguous parts whose sizes differ by at most one (the
/// first parts larger), `n / 3` drawn from each with the remainder going to the top parts; a
/// part smaller than its share gives all it has (the reference then lowers the share for the
/// parts after it; mpo does not).
fn select<'a>(
    candidates: &'a [MetaSample],
    n: usize,
    sampling: crate::spec::MetaSampling,
    rng: &mut impl rand::Rng,
) -> Vec<&'a MetaSample> {
    let mut all: Vec<&MetaSample> = candidates.iter().collect();
    if sampling.is_uniform() {
        all.shuffle(rng);
        all.truncate(n);
        return all;
    }
    all.sort_by(|a, b| a.score.unwrap_or(f64::NEG_INFINITY).total_cmp(&b.score.unwrap_or(f64::NEG_INFINITY)).then(a.id.cmp(&b.id)));
    let len = all.len();
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    for part in 0..3 {
        let size = len / 3 + usize::from(part < len % 3);
        let share = n / 3 + usize::from(2 - part < n % 3);
        let mut chunk: Vec<&MetaSample> = all[start..start + size].to_vec();
        chunk.shuffle(rng);
        out.extend(chunk.into_iter().take(share));
        start += size;
    }
    out
}

/// Run one meta step on `candidates` (the rollouts since the last step) for the rubric
/// `family` (`""`: the run's one rubric): its random streams are the family's own.
pub fn run(
    judge: &mut dyn Judge,
    cfg: &MetaConfig,
    current: &Rubric,
    candidates: &[MetaSample],
    seed: u64,
    update: u32,
    family: &str,
) -> MetaOutcome {
    let mut out = MetaOutcome {
        trigger_update: update,
        evidence: vec![],
        prescreen_raw: None,
        analyses: vec![],
        refined: vec![],
        merged_raw: None,
        repeats_dropped: vec![],
        result: Err(Kept::NoRollouts),
        usage: TokenUsage::default(),
        gate: None,
    };
    out.result = step(judge, cfg, current, candidates, seed, update, family, &mut out);
    out
}

/// A stream name of the meta step at `update`, the family's own when there are families (the
/// run's one rubric keeps the names it always had).
fn stream(what: &str, update: u32, family: &str) -> String {
    if family.is_empty() { format!("meta/{what}/u{update:06}") } else { format!("meta/{what}/u{update:06}/{family}") }
}

#[allow(clippy::too_many_arguments)]
fn step(
    judge: &mut dyn Judge,
    cfg: &MetaConfig,
    current: &Rubric,
    candidates: &[MetaSample],
    seed: u64,
    update: u32,
    family: &str,
    out: &mut MetaOutcome,
) -> Result<Rubric, Kept> {
    if candidates.is_empty() {
        return Err(Kept::NoRollouts);
    }
    let mut rng = crate::rng::stream(seed, &stream("select", update, family));
    let mut picked = select(candidates, cfg.samples.max(1), cfg.sampling, &mut rng);
    // Deterministic order for prompts: by id.
    picked.sort_by(|a, b| a.id.cmp(&b.id));
    let limits = cfg.shapes.limits();
    let ctx = |stage| MetaContext::new(&cfg.task, current, limits, stage);
    let req = |prompt: String, k: usize, stage: &str| {
        let shape = match stage {
            "refine" | "merge" => Some(cfg.shapes.rubric.shape()),
            "analyze" => Some(cfg.shapes.analysis.shape()),
            _ => None,
        };
        JudgeRequest {
            prompt,
            max_tokens: cfg.max_tokens,
            temperature: cfg.temperature,
            seed: crate::rng::sub_seed(seed, &format!("{}/{k}", stream(stage, update, family))),
            ..Default::default()
        }
        .held_to(shape.filter(|_| cfg.held))
    };
    if let Some(t) = &cfg.prescreen {
        let prompt = render(t, &ctx(Stage::Prescreen { samples: picked.iter().map(|s| s.context()).collect() }))?;
        let answer = ask(judge, vec![req(prompt, 0, "prescreen")], &mut out.usage, false).remove(0);
        match answer {
            Ok(text) => {
                let keep: Vec<usize> = text
                    .lines()
                    .filter_map(|l| l.trim().strip_prefix("KEEP:").or_else(|| l.trim().strip_prefix("Keep:")))
                    .filter_map(|n| n.trim().parse::<usize>().ok())
                    .filter(|&n| n >= 1 && n <= picked.len())
                    .collect();
                if !keep.is_empty() {
                    picked = keep.iter().map(|&n| picked[n - 1]).collect();
                    picked.dedup_by(|a, b| a.id == b.id);
                }
                out.prescreen_raw = Some(text);
            }
            Err(e) => return Err(Kept::Prescreen(e)),
        }
    }
    out.evidence = picked.iter().map(|s| s.id.clone()).collect();
    if cfg.review == crate::spec::MetaReview::Joint {
        // One review of every sample, continued into one refinement: the reference's math step,
        // whose cases run from low to high grades.
        picked.sort_by(|a, b| a.score.unwrap_or(f64::NEG_INFINITY).total_cmp(&b.score.unwrap_or(f64::NEG_INFINITY)).then(a.id.cmp(&b.id)));
        let samples = || picked.iter().map(|s| s.context()).collect::<Vec<_>>();
        let hints: Vec<&str> = picked.iter().map(|s| analyze_guidelines(cfg.domain_guidelines, &s.record)).collect();
        let guidelines = joint_guidelines(&hints);
        let prompt = render(&cfg.analyze, &ctx(Stage::AnalyzeJoint { samples: samples(), guidelines }))?;
        let analysis = ask(judge, vec![req(prompt, 0, "analyze")], &mut out.usage, false).remove(0).map_err(Kept::Analysis)?;
        out.analyses = vec![analysis.clone()];
        let prompt = render(&cfg.refine, &ctx(Stage::RefineJoint { samples: samples(), guidelines, analysis: &analysis }))?;
        let refined = ask(judge, vec![req(prompt, 0, "refine")], &mut out.usage, true).remove(0).map_err(Kept::Refinement)?;
        out.refined = vec![refined.clone()];
        return accept(&refined, "refined", current, limits, out);
    }
    // analyze
    let prompts: Vec<JudgeRequest> = picked
        .iter()
        .enumerate()
        .map(|(k, s)| {
            let guidelines = analyze_guidelines(cfg.domain_guidelines, &s.record);
            render(&cfg.analyze, &ctx(Stage::Analyze { sample: s.context(), guidelines })).map(|p| req(p, k, "analyze"))
        })
        .collect::<Result<_, _>>()?;
    let analyses = ask(judge, prompts, &mut out.usage, false);
    let ok: Vec<(&MetaSample, String)> = picked.iter().zip(analyses).filter_map(|(s, a)| a.ok().map(|a| (*s, a))).collect();
    out.analyses = ok.iter().map(|(_, a)| a.clone()).collect();
    if ok.is_empty() {
        return Err(Kept::EveryAnalysisFailed);
    }
    // refine
    let prompts: Vec<JudgeRequest> = ok
        .iter()
        .enumerate()
        .map(|(k, (s, a))| {
            // The refinement continues the review: the sample, its score, the guidelines the
            // analysis had, and the analysis itself.
            let guidelines = analyze_guidelines(cfg.domain_guidelines, &s.record);
            render(&cfg.refine, &ctx(Stage::Refine { sample: s.context(), guidelines, analysis: a })).map(|p| req(p, k, "refine"))
        })
        .collect::<Result<_, _>>()?;
    let refined = ask(judge, prompts, &mut out.usage, true);
    let asked = refined.len();
    let cut = refined.iter().filter(|r| matches!(r, Err(Unanswered::Cut(_)))).count();
    let failed: Vec<crate::judge::JudgeError> = refined
        .iter()
        .filter_map(|r| match r {
            Err(Unanswered::Judge(e)) => Some(e.clone()),
            _ => None,
        })
        .collect();
    out.refined = refined.into_iter().filter_map(Result::ok).collect();
    let parsed: Vec<(String, Result<Rubric, crate::rubric::RubricError>)> =
        out.refined.iter().map(|r| (r.clone(), Rubric::parse(r))).collect();
    let usable: Vec<String> = parsed.iter().filter(|(_, p)| p.is_ok()).map(|(r, _)| r.clone()).collect();
    if usable.is_empty() {
        // Say what happened to each of the rubrics asked for.
        let mut why = Vec::new();
        if cut > 0 {
            why.push(format!("{cut} cut off at max_tokens = {} (raise meta.max_tokens)", cfg.max_tokens));
        }
        if !failed.is_empty() {
            why.push(format!("{} not answered ({})", failed.len(), failed[0]));
        }
        let unparsed: Vec<&crate::rubric::RubricError> = parsed.iter().filter_map(|(_, p)| p.as_ref().err()).collect();
        if let Some(first) = unparsed.first() {
            why.push(format!("{} not a rubric ({first})", unparsed.len()));
        }
        return Err(Kept::NoUsableRefinement { asked, why });
    }
    // merge
    let merge = cfg.merge.as_ref().ok_or(Kept::NoMergeStage)?;
    let prompt = render(merge, &ctx(Stage::Merge { refined: &usable }))?;
    let merged = ask(judge, vec![req(prompt, 0, "merge")], &mut out.usage, true).remove(0).map_err(Kept::Merge)?;
    out.merged_raw = Some(merged.clone());
    accept(&merged, "merged", current, limits, out)
}

/// The rubric a meta step wrote (`what`: merged or refined), when it may become the next
/// version: items written again dropped (the first kept), whole, sound, within the limits and
/// not the current rubric.
fn accept(
    text: &str,
    what: &'static str,
    current: &Rubric,
    limits: crate::template::context::MetaLimits,
    out: &mut MetaOutcome,
) -> Result<Rubric, Kept> {
    let (merged, dropped) = Rubric::without_repeats(text);
    out.repeats_dropped = dropped;
    let invalid = |e: crate::rubric::RubricError| Kept::Invalid { what, message: e.to_string() };
    let mut rubric = Rubric::parse(&merged).map_err(invalid)?;
    rubric.validate(limits.items).map_err(invalid)?;
    let problems = Rubric::problems_of_text(&merged, limits.max_points).map_err(invalid)?;
    if !problems.is_empty() {
        return Err(Kept::NotSound { what, problems });
    }
    // The meta stages rewrite the items; the rubric's title and grading instructions stay.
    // Text a meta judge writes before the first item is chatter ("Here is the improved
    // rubric:") more often than instructions; it stays in the history's raw output.
    rubric.preamble = current.preamble.clone();
    if rubric.items == current.items {
        return Err(Kept::Unchanged { what });
    }
    Ok(rubric)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::JudgeResponse;
    use crate::judge::scripted::ScriptedJudge;
    use serde_json::json;

    /// Answers by stage, recognised from the prompt's first words; `merge_cut` answers the
    /// merge as if cut off by `max_tokens`.
    fn stage_judge(merged: &str, merge_cut: bool) -> impl Judge {
        let merged = merged.to_string();
        ScriptedJudge::new("test:stages", move |r, _| {
            let truncated = merge_cut && r.prompt.starts_with("MERGE");
            let text = if r.prompt.starts_with("ANALYZE") {
                "The rubric ignores units.".to_string()
            } else if r.prompt.starts_with("REFINE") {
                "## Correct (0-4)\n- Award 4 when right.\n## Units (0-1)\n- Award 1 when units are given.".to_string()
            } else {
                merged.clone()
            };
            Ok(JudgeResponse { prompt_tokens: 1, completion_tokens: 1, truncated, ..JudgeResponse::answer(text) })
        })
    }

    fn cfg() -> MetaConfig {
        MetaConfig {
            task: "math".into(),
            prescreen: None,
            analyze: ("analyze".into(), "ANALYZE {{ sample.response }} under {{ rubric }}".into()),
            refine: ("refine".into(), "REFINE {{ analysis }}".into()),
            merge: Some(("merge".into(), "MERGE {% for r in refined %}{{ r }}{% endfor %} max {{ max_items }}".into())),
            review: crate::spec::MetaReview::PerSample,
            samples: 2,
            sampling: crate::spec::MetaSampling::Uniform,
            domain_guidelines: true,
            max_tokens: 64,
            temperature: 0.0,
            shapes: MetaShapes {
                rubric: RubricShape { items: 3, lines: 2, line_chars: 60, max_points: crate::rubric::MAX_POINTS },
                analysis: AnalysisShape { findings: 3, chars: 60 },
            },
            held: false,
        }
    }

    fn samples() -> Vec<MetaSample> {
        (0..5)
            .map(|i| MetaSample {
                id: format!("u1-r{i}"),
                question: "q".into(),
                response: format!("resp {i}"),
                score: Some(2.0),
                max_score: 4.0,
                rationale: "Correct: 2".into(),
                verifier: None,
                record: json!({"type": "Algebra"}),
            })
            .collect()
    }

    #[test]
    fn merged_rubric_becomes_the_next_version() {
        let current = Rubric::parse("# Preamble\n## Correct (0-4)\n").unwrap();
        let mut j = stage_judge(
            "Here is the improved rubric:\n## Correct (0-4)\n- Award 4 when right.\n## Units (0-1)\n- Award 1 for units.",
            false,
        );
        let o = run(&mut j, &cfg(), &current, &samples(), 1, 2, "");
        let r = o.result.unwrap();
        assert_eq!(r.items.len(), 2);
        assert_eq!(r.preamble, "# Preamble");
        assert_eq!(o.evidence.len(), 2);
        assert_eq!((o.analyses.len(), o.refined.len()), (2, 2));
        // the same seed picks the same evidence
        let again = run(&mut j, &cfg(), &current, &samples(), 1, 2, "");
        assert_eq!(again.evidence, o.evidence);
    }

    #[test]
    fn bad_merges_keep_the_current_rubric_with_a_reason() {
        let current = Rubric::parse("## Correct (0-4)\n").unwrap();
        for (merged, why) in [
            ("", "invalid"),
            ("just prose", "invalid"),
            ("## A (0-1)\n## B (0-1)\n## C (0-1)\n## D (0-1)", "4 items"),
            ("## Correct (0-4)", "is the current one"),
        ] {
            let mut j = stage_judge(merged, false);
            let o = run(&mut j, &cfg(), &current, &samples(), 1, 2, "");
            let e = o.result.unwrap_err().to_string();
            assert!(e.contains(why), "{merged:?}: {e}");
        }
        let mut j = stage_judge("", false);
        assert!(run(&mut j, &cfg(), &current, &[], 1, 2, "").result.unwrap_err().to_string().contains("no rollouts"));
    }

    #[test]
    fn a_truncated_merge_never_becomes_the_rubric() {
        // A merge cut off after its first item still parses as a rubric: only the finish
        // reason tells it from a complete one.
        let current = Rubric::parse("## Correct (0-4)\n").unwrap();
        let mut j = stage_judge("## Correct (0-4)\n- Award 4 when right.\n## Units (0-1)\n- Award", true);
        let e = run(&mut j, &cfg(), &current, &samples(), 1, 2, "").result.unwrap_err().to_string();
        assert!(e.contains("cut off at max_tokens = 64"), "{e}");
    }

    #[test]
    fn every_refined_rubric_lost_is_named_by_what_happened() {
        let current = Rubric::parse("## Correct (0-4)\n").unwrap();
        let cut_refines = ScriptedJudge::new("test:cut", |r, _| {
            let text = if r.prompt.starts_with("REFINE") { "## Correct (0-4)\n- Award" } else { "The rubric ignores units." };
            Ok(JudgeResponse { truncated: r.prompt.starts_with("REFINE"), ..JudgeResponse::answer(text) })
        });
        let mut j = cut_refines;
        let e = run(&mut j, &cfg(), &current, &samples(), 1, 2, "").result.unwrap_err().to_string();
        assert_eq!(e, "no usable refined rubric: of 2 asked for, 2 cut off at max_tokens = 64 (raise meta.max_tokens)");
        let mut prose = ScriptedJudge::new("test:prose", |_, _| Ok(JudgeResponse::answer("I would improve it.")));
        let e = run(&mut prose, &cfg(), &current, &samples(), 1, 2, "").result.unwrap_err().to_string();
        assert!(e.starts_with("no usable refined rubric: of 2 asked for, 2 not a rubric (the rubric has no items"), "{e}");
    }

    #[test]
    fn a_merged_rubric_that_is_not_sound_is_refused_with_its_problems() {
        let current = Rubric::parse("## Correct (0-4)\n").unwrap();
        let mut j = stage_judge("## Correct (0-1)\n- Award 2 when the final answer is right.\n", false);
        let e = run(&mut j, &cfg(), &current, &samples(), 1, 2, "").result.unwrap_err().to_string();
        assert!(e.contains("not sound") && e.contains("gives 2 points, outside 1-1"), "{e}");
    }

    #[test]
    fn the_shapes_fit_their_budget_or_name_the_least_one() {
        let s = MetaShapes::fit(6, 640).unwrap();
        assert!(s.rubric.most_tokens() <= 640 && s.analysis.shape().longest_bytes() < 640, "{s:?}");
        assert_eq!(s.limits().findings, 3);
        let e = MetaShapes::fit(6, 100).unwrap_err().to_string();
        assert!(e.contains(&format!("at least {}", RubricShape::least_tokens(1).max(AnalysisShape::least_tokens()))), "{e}");
        // what an analysis may be: three numbered sentences
        let a = AnalysisShape::fit(640).unwrap().shape();
        assert!(a.matches(
            "1. The rubric ignores units entirely here.\n2. No reward hacking is visible in it.\n3. Item two is vague about the box.\n"
        ));
        assert!(!a.matches("1. The rubric ignores units. The rubric ignores units.\n"));
    }

    #[test]
    fn score_tertiles_draw_from_low_middle_and_high_grades() {
        let pool: Vec<MetaSample> = (0..9)
            .map(|i| MetaSample {
                id: format!("s{i}"),
                question: "q".into(),
                response: "r".into(),
                score: Some(i as f64),
                max_score: 8.0,
                rationale: String::new(),
                verifier: None,
                record: json!({}),
            })
            .collect();
        let third = |s: &MetaSample| (s.score.unwrap() as usize) / 3;
        for seed in 0..20 {
            let mut rng = crate::rng::stream(seed, "t");
            let mut parts: Vec<usize> =
                select(&pool, 3, crate::spec::MetaSampling::ScoreTertiles, &mut rng).iter().map(|s| third(s)).collect();
            parts.sort();
            assert_eq!(parts, vec![0, 1, 2], "one from each tertile (seed {seed})");
            // 4 samples: the extra one from the top part; 6: two from each (the reference's k = 2)
            let mut rng = crate::rng::stream(seed, "t");
            let mut parts: Vec<usize> =
                select(&pool, 4, crate::spec::MetaSampling::ScoreTertiles, &mut rng).iter().map(|s| third(s)).collect();
            parts.sort();
            assert_eq!(parts, vec![0, 1, 2, 2]);
            let mut rng = crate::rng::stream(seed, "t");
            assert_eq!(select(&pool, 6, crate::spec::MetaSampling::ScoreTertiles, &mut rng).len(), 6);
        }
        // a pool smaller than the ask gives what it has; uniform draws any
        let mut rng = crate::rng::stream(0, "t");
        assert_eq!(select(&pool[..2], 3, crate::spec::MetaSampling::ScoreTertiles, &mut rng).len(), 2);
        assert_eq!(select(&pool, 3, crate::spec::MetaSampling::Uniform, &mut rng).len(), 3);
    }

    #[test]
    fn a_merge_that_writes_an_item_twice_keeps_the_first() {
        let current = Rubric::parse("## Correct (0-4)\n").unwrap();
        let merged = "## Correct (0-3)\n- Award 3 when the final answer equals the reference.\n## Units (0-1)\n- Award 1 when the answer states its units.\n## Correct (0-4)\n- Award 4 when every step is right.\n";
        let mut j = stage_judge(merged, false);
        let o = run(&mut j, &cfg(), &current, &samples(), 1, 2, "");
        let r = o.result.unwrap();
        assert_eq!(r.items.iter().map(|i| (i.name.as_str(), i.max)).collect::<Vec<_>>(), vec![("Correct", 3), ("Units", 1)]);
        assert_eq!(o.repeats_dropped, vec!["line 5: `## Correct (0-4)`".to_string()]);
    }

    #[test]
    fn a_joint_review_reads_every_sample_in_one_prompt_and_refines_once_without_a_merge() {
        let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let log = asked.clone();
        let mut j = ScriptedJudge::new("test:joint", move |r, _| {
            log.lock().unwrap().push(r.prompt.clone());
            let text = if r.prompt.starts_with("ANALYZE") {
                "The rubric ignores units.".to_string()
            } else {
                "## Correct (0-4)\n- Award 4 when right.\n## Units (0-1)\n- Award 1 when units are given.".to_string()
            };
            Ok(JudgeResponse::answer(text))
        });
        let mut c = cfg();
        c.review = crate::spec::MetaReview::Joint;
        c.merge = None;
        c.samples = 3;
        c.analyze = ("analyze".into(), "ANALYZE{% for s in samples %} {{ s.id }}={{ s.score }}{% endfor %}".into());
        c.refine = ("refine".into(), "REFINE {{ samples | length }} {{ analysis }}".into());
        let mut pool = samples();
        for (i, s) in pool.iter_mut().enumerate() {
            s.score = Some(4.0 - i as f64);
        }
        let current = Rubric::parse("## Correct (0-4)\n").unwrap();
        let o = run(&mut j, &c, &current, &pool, 1, 2, "Algebra / 1");
        assert_eq!(o.result.unwrap().items.len(), 2);
        let asked = asked.lock().unwrap().clone();
        assert_eq!(asked.len(), 2, "one analysis, one refinement, no merge: {asked:?}");
        // the cases in the prompt run from low to high grades
        let scores: Vec<f64> = asked[0].split(' ').skip(1).map(|kv| kv.split('=').nth(1).unwrap().parse().unwrap()).collect();
        assert_eq!(scores.len(), 3);
        assert!(scores.windows(2).all(|w| w[0] <= w[1]), "{}", asked[0]);
        assert_eq!(asked[1], "REFINE 3 The rubric ignores units.");
        assert_eq!((o.analyses.len(), o.refined.len(), o.merged_raw), (1, 1, None));
        // a family's streams are its own: another family draws other samples from the same pool
        let draws = |family: &str| {
            (0..8).map(|u| run(&mut stage_judge("", false), &cfg(), &current, &samples(), 1, u, family).evidence).collect::<Vec<_>>()
        };
        assert_eq!(draws(""), draws(""));
        assert_ne!(draws("Algebra / 1"), draws("Algebra / 2"));
    }

    #[test]
    fn a_heading_before_the_first_item_is_preamble() {
        let current = Rubric::parse("## Correct (0-4)\n").unwrap();
        let mut j =
            stage_judge("## Improved rubric\n\n## Correct (0-4)\n- Award 4 when right.\n## Units (0-1)\n- Award 1 for units.", false);
        let r = run(&mut j, &cfg(), &current, &samples(), 1, 2, "").result.unwrap();
        assert_eq!(r.items.len(), 2);
    }
}
