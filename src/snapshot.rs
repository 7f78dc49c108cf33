//! Every prompt a spec will send, rendered on fixed samples: for `mpo snapshot` (users' CI)
//! and for mpo's own template snapshots. A template change becomes a reviewable text diff.

use std::path::Path;

use serde_json::Value as J;

use crate::resolve::Resolved;
use crate::template::context::{JudgeContext, MetaContext, PairwiseContext, SampleContext, Stage, to_json};
use crate::template::{self, TemplateKind};

/// A canned response per task, so judge and meta prompts have something realistic to show.
pub fn canned_response(task: &str) -> &'static str {
    match task {
        "math" => "We add the numbers step by step. The total is 12, so the answer is $\\boxed{12}$.",
        "essay_writing" => {
            "Public libraries remain essential. They give everyone free access to books, quiet space and the internet, and they anchor communities. Critics say the internet made them obsolete, but access is not equal."
        }
        "summarization" => "The paper proposes a method and shows it improves results on standard benchmarks.",
        _ => "The author kept a promise to a friend and told the truth, which is fair to everyone involved. <verdict>RIGHT</verdict>",
    }
}

/// Why a spec's prompts could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Data(#[from] crate::task::DataError),
    #[error("no {0} template")]
    NoTemplate(&'static str),
    #[error(transparent)]
    Template(#[from] crate::template::TemplateError),
    /// The meta settings leave no room for a rubric or an analysis (`meta.max_items`, `meta.max_tokens`).
    #[error("{0}")]
    Meta(String),
    #[error("the instrument rubric: {0}")]
    InstrumentRubric(#[from] crate::rubric::RubricError),
}

/// `(name, text)` of every prompt of `r` on its first `n` training records, rendered with the
/// run's own context types.
pub fn render_all(r: &Resolved, n: usize) -> Result<Vec<(String, String)>, SnapshotError> {
    let task = r.spec.task.kind.as_str();
    let data = crate::task::train(&r.spec)?;
    let has = |k: TemplateKind| r.inputs.templates.contains_key(&k);
    let render = |k: TemplateKind, ctx: J| -> Result<String, SnapshotError> {
        let f = r.inputs.templates.get(&k).ok_or(SnapshotError::NoTemplate(k.as_str()))?;
        Ok(template::render(&f.path.display().to_string(), &f.text, &ctx)?)
    };
    let rubric = &r.inputs.rubric;
    let limits = crate::meta::MetaShapes::fit(r.spec.meta.max_items, r.spec.meta.max_tokens)
        .map_err(|e| SnapshotError::Meta(e.to_string()))?
        .with_max_points(r.spec.meta.max_points)
        .limits();
    let mut out = vec![("rubric-v0.md".to_string(), rubric.to_markdown())];
    // `meta.review: joint` reads every sample in one prompt: rendered once, after the loop.
    let mut joint_cases: Vec<(String, String, &J)> = Vec::new();
    for (i, rec) in data.records.iter().take(n).enumerate() {
        let question = render(TemplateKind::Policy, rec.clone())?;
        out.push((format!("policy-{i}.txt"), question.clone()));
        let response = canned_response(task);
        out.push((
            format!("judge-{i}.txt"),
            render(TemplateKind::Judge, to_json(&JudgeContext::new(task, rubric, &question, response, rec)))?,
        ));
        let id = format!("sample-{i}");
        let rationale = "The answer is right but the steps are terse.";
        let sample = SampleContext::new(&id, &question, response, Some(3.0), rubric.max_score() as f64, rationale, Some(1.0), rec);
        let meta = |stage| to_json(&MetaContext::new(task, rubric, limits, stage));
        let joint = r.spec.meta.review == crate::spec::MetaReview::Joint;
        if joint {
            joint_cases.push((id.clone(), question.clone(), rec));
        }
        if has(TemplateKind::Analyze) && !joint {
            let guidelines = crate::meta::analyze_guidelines(r.spec.meta.domain_guidelines, rec);
            out.push((
                format!("meta-analyze-{i}.txt"),
                render(TemplateKind::Analyze, meta(Stage::Analyze { sample: sample.clone(), guidelines }))?,
            ));
            let analysis = "The rubric does not reward showing the steps.";
            out.push((
                format!("meta-refine-{i}.txt"),
                render(TemplateKind::Refine, meta(Stage::Refine { sample: sample.clone(), guidelines: "", analysis }))?,
            ));
        }
        if i == 0 {
            if has(TemplateKind::Prescreen) {
                out.push((
                    "meta-prescreen.txt".into(),
                    render(TemplateKind::Prescreen, meta(Stage::Prescreen { samples: vec![sample.clone()] }))?,
                ));
            }
            if has(TemplateKind::Merge) {
                let refined = [rubric.to_markdown(), rubric.to_markdown()];
                out.push(("meta-merge.txt".into(), render(TemplateKind::Merge, meta(Stage::Merge { refined: &refined }))?));
            }
            if has(TemplateKind::InstrumentJudge) && has(TemplateKind::InstrumentRubric) {
                let text = render(TemplateKind::InstrumentRubric, to_json(&crate::template::context::RubricContext { task }))?;
                let fixed = crate::rubric::Rubric::parse(&text)?;
                out.push((
                    "instrument-judge.txt".into(),
                    render(TemplateKind::InstrumentJudge, to_json(&JudgeContext::new(task, &fixed, &question, response, rec)))?,
                ));
            }
            if has(TemplateKind::Pairwise) {
                let ctx = PairwiseContext { task, question: &question, response_a: response, response_b: "A shorter answer." };
                out.push(("elo-pairwise.txt".into(), render(TemplateKind::Pairwise, to_json(&ctx))?));
            }
        }
    }
    if has(TemplateKind::Analyze) && !joint_cases.is_empty() {
        let rationale = "The answer is right but the steps are terse.";
        let response = canned_response(task);
        let max = rubric.max_score() as f64;
        let samples = || -> Vec<SampleContext> {
            joint_cases
                .iter()
                .enumerate()
                .map(|(k, (id, q, rec))| SampleContext::new(id, q, response, Some(k as f64), max, rationale, Some(1.0), rec))
                .collect()
        };
        let meta = |stage| to_json(&MetaContext::new(task, rubric, limits, stage));
        let hints: Vec<&str> =
            joint_cases.iter().map(|(_, _, rec)| crate::meta::analyze_guidelines(r.spec.meta.domain_guidelines, rec)).collect();
        let guidelines = crate::meta::joint_guidelines(&hints);
        out.push(("meta-analyze.txt".into(), render(TemplateKind::Analyze, meta(Stage::AnalyzeJoint { samples: samples(), guidelines }))?));
        let analysis = "The rubric does not reward showing the steps.";
        out.push((
            "meta-refine.txt".into(),
            render(TemplateKind::Refine, meta(Stage::RefineJoint { samples: samples(), guidelines, analysis }))?,
        ));
    }
    Ok(out)
}

/// Compare `files` with `dir` (or write them with `update`); returns the names that differ.
pub fn sync(dir: &Path, files: &[(String, String)], update: bool) -> std::io::Result<Vec<String>> {
    let mut changed = Vec::new();
    for (name, text) in files {
        let p = dir.join(name);
        let old = std::fs::read_to_string(&p).ok();
        if old.as_deref() != Some(text.as_str()) {
            changed.push(name.clone());
            if update {
                crate::fsx::write_atomic(&p, text.as_bytes())?;
            }
        }
    }
    // files that no longer correspond to a prompt
    if let Ok(rd) = std::fs::read_dir(dir) {
        // Subfolders are not prompts: `rubric/` holds `mpo rubric test`'s scores and recordings.
        for e in rd.flatten().filter(|e| !e.path().is_dir()) {
            let n = e.file_name().to_string_lossy().to_string();
            if !files.iter().any(|(f, _)| *f == n) {
                changed.push(n);
                if update {
                    std::fs::remove_file(e.path())?;
                }
            }
        }
    }
    Ok(changed)
}
