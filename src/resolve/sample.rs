//! The sample contexts `mpo check` renders every template with: one real record of the task,
//! filled into the same context types a run builds (`template::context`), so what checks is
//! what a run sends.

use serde_json::Value as J;

use crate::meta::MetaShapes;
use crate::rubric::Rubric;
use crate::spec::MetaReview;
use crate::template::TemplateKind;
use crate::template::context::{self, JudgeContext, MetaContext, PairwiseContext, RubricContext, SampleContext, Stage};

/// The rubric the sample contexts grade with.
pub const SAMPLE_RUBRIC: &str = "## Correctness (0-4)\n- Award 4 when the final answer is right.\n";

/// A context of `kind`, filled from one real `record` of the task, used to check templates
/// before a run: built with the same types as the run's contexts.
pub fn sample_context(kind: TemplateKind, task: &str, record: &J, review: MetaReview) -> J {
    let rubric = Rubric::parse(SAMPLE_RUBRIC).expect("the sample rubric parses");
    let question = ["problem", "prompt", "text"].iter().find_map(|k| record.get(*k).and_then(J::as_str)).unwrap_or("An example question.");
    let response = "An example response. The answer is \\boxed{4}.";
    let rationale = "Correctness: the answer is right. Correctness: 3";
    let sample = SampleContext::new("u000001-r000", question, response, Some(3.0), 4.0, rationale, Some(1.0), record);
    let limits = MetaShapes::fit(12, 4096).expect("a roomy budget fits").limits();
    let meta = |stage| context::to_json(&MetaContext::new(task, &rubric, limits, stage));
    let refined = [SAMPLE_RUBRIC.to_string(), SAMPLE_RUBRIC.to_string()];
    let joint = review == MetaReview::Joint;
    match kind {
        TemplateKind::Policy => record.clone(),
        TemplateKind::Rubric | TemplateKind::InstrumentRubric => context::to_json(&RubricContext { task }),
        TemplateKind::Judge | TemplateKind::InstrumentJudge => {
            context::to_json(&JudgeContext::new(task, &rubric, question, response, record))
        }
        TemplateKind::Prescreen => meta(Stage::Prescreen { samples: vec![sample] }),
        TemplateKind::Analyze if joint => meta(Stage::AnalyzeJoint { samples: vec![sample.clone(), sample], guidelines: "" }),
        TemplateKind::Refine if joint => {
            meta(Stage::RefineJoint { samples: vec![sample.clone(), sample], guidelines: "", analysis: "The rubric does not check units." })
        }
        TemplateKind::Analyze => meta(Stage::Analyze { sample, guidelines: "" }),
        TemplateKind::Refine => meta(Stage::Refine { sample, guidelines: "", analysis: "The rubric does not check units." }),
        TemplateKind::Merge => meta(Stage::Merge { refined: &refined }),
        TemplateKind::Pairwise => {
            context::to_json(&PairwiseContext { task, question, response_a: "First response.", response_b: "Second response." })
        }
    }
}
