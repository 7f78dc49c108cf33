//! The context each kind of template renders with, one type per kind. The run, `mpo check`,
//! `mpo snapshot` and `mpo eval` all build their contexts from these types, so a template that
//! renders at check time sees exactly the variables, and the value types, a run gives it.

use serde::Serialize;
use serde_json::Value as J;

use crate::rubric::{Item, Rubric};

/// `reward.rubric`: the task's name.
#[derive(Debug, Serialize)]
pub struct RubricContext<'a> {
    pub task: &'a str,
}

/// `reward.prompt`: one rollout under the current rubric.
#[derive(Debug, Serialize)]
pub struct JudgeContext<'a> {
    pub task: &'a str,
    /// The rubric as markdown.
    pub rubric: String,
    pub items: &'a [Item],
    /// The policy prompt as rendered (before the chat template).
    pub question: &'a str,
    pub response: &'a str,
    /// The task record the question came from.
    pub record: &'a J,
}

impl<'a> JudgeContext<'a> {
    pub fn new(task: &'a str, rubric: &'a Rubric, question: &'a str, response: &'a str, record: &'a J) -> Self {
        JudgeContext { task, rubric: rubric.to_markdown(), items: &rubric.items, question, response, record }
    }
}

/// A rollout as the meta stages see it.
#[derive(Debug, Clone, Serialize)]
pub struct SampleContext<'a> {
    pub id: &'a str,
    pub question: &'a str,
    pub response: &'a str,
    /// The judge's rubric total, to 2 decimals (`None`: not judged).
    pub score: Option<f64>,
    pub max_score: f64,
    /// The judge's answer (its rationale and scores).
    pub rationale: &'a str,
    /// The same text under the name the reference's templates use.
    pub judge_answer: &'a str,
    pub verifier: Option<f64>,
    pub record: &'a J,
}

impl<'a> SampleContext<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: &'a str,
        question: &'a str,
        response: &'a str,
        score: Option<f64>,
        max_score: f64,
        rationale: &'a str,
        verifier: Option<f64>,
        record: &'a J,
    ) -> Self {
        let score = score.map(|x| (x * 100.0).round() / 100.0);
        SampleContext { id, question, response, score, max_score, rationale, judge_answer: rationale, verifier, record }
    }
}

/// A meta stage's variables beyond the shared ones.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Stage<'a> {
    /// `meta.stages.prescreen`.
    Prescreen { samples: Vec<SampleContext<'a>> },
    /// `meta.stages.analyze`.
    Analyze { sample: SampleContext<'a>, guidelines: &'a str },
    /// `meta.stages.refine`.
    Refine { sample: SampleContext<'a>, guidelines: &'a str, analysis: &'a str },
    /// `meta.stages.analyze` under `meta.review: joint`: every sample in one prompt.
    AnalyzeJoint { samples: Vec<SampleContext<'a>>, guidelines: &'a str },
    /// `meta.stages.refine` under `meta.review: joint`: the samples and the one analysis.
    RefineJoint { samples: Vec<SampleContext<'a>>, guidelines: &'a str, analysis: &'a str },
    /// `meta.stages.merge`: the refined rubrics that parse.
    Merge { refined: &'a [String] },
}

/// What a meta stage's answer may be: the limits its shape holds it to (`meta::MetaShapes`),
/// stated in the prompt so that what is asked is what the grammar admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MetaLimits {
    /// Most items of a written rubric.
    pub items: usize,
    /// Most award/deduction lines per item.
    pub lines: usize,
    /// Most characters of a line's criterion.
    pub line_chars: usize,
    /// Widest item range (`0-N`).
    pub max_points: i64,
    /// Numbered findings an analysis gives.
    pub findings: usize,
    /// Most characters of a finding.
    pub finding_chars: usize,
}

/// `meta.stages.*`: the current rubric, the limits of the stage's answer and the stage's own
/// variables.
#[derive(Debug, Serialize)]
pub struct MetaContext<'a> {
    pub task: &'a str,
    pub rubric: String,
    pub items: &'a [Item],
    /// `limits.items` (kept under its first name for existing templates).
    pub max_items: usize,
    pub limits: MetaLimits,
    #[serde(flatten)]
    pub stage: Stage<'a>,
}

impl<'a> MetaContext<'a> {
    pub fn new(task: &'a str, rubric: &'a Rubric, limits: MetaLimits, stage: Stage<'a>) -> Self {
        MetaContext { task, rubric: rubric.to_markdown(), items: &rubric.items, max_items: limits.items, limits, stage }
    }
}

/// `eval.elo.prompt`: two responses to one question.
#[derive(Debug, Serialize)]
pub struct PairwiseContext<'a> {
    pub task: &'a str,
    pub question: &'a str,
    pub response_a: &'a str,
    pub response_b: &'a str,
}

/// A context as JSON (the form diagnostics list variables from).
pub fn to_json(ctx: &impl Serialize) -> J {
    serde_json::to_value(ctx).unwrap_or(J::Null)
}
