//! Every prompt a spec will send, rendered on fixed samples: for `mpo snapshot` (users' CI)
//! and for mpo's own template snapshots. A template change becomes a reviewable text diff.

use std::path::Path;

use serde_json::{Value as J, json};

use crate::spec::Resolved;
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

/// `(name, text)` of every prompt of `r` on its first `n` training records.
pub fn render_all(r: &Resolved, n: usize) -> Result<Vec<(String, String)>, String> {
    let task = r.spec.task.kind.as_str();
    let data = crate::task::load(
        r.spec.task.kind,
        &r.spec.task.train,
        r.spec.task.seed.unwrap_or_else(|| crate::rng::sub_seed(r.spec.runtime.seed, "task/data")),
    )
    .map_err(|e| e.to_string())?;
    let t = |k: TemplateKind| r.inputs.templates.get(&k).ok_or_else(|| format!("no {} template", k.as_str()));
    let rubric = &r.inputs.rubric;
    let rubric_md = rubric.to_markdown();
    let mut out = vec![("rubric-v0.md".to_string(), rubric_md.clone())];
    let render = |k: TemplateKind, ctx: &J| -> Result<String, String> {
        let f = t(k)?;
        template::render(&f.path.display().to_string(), &f.text, ctx).map_err(|e| e.to_string())
    };
    for (i, rec) in data.records.iter().take(n).enumerate() {
        let question = render(TemplateKind::Policy, rec)?;
        out.push((format!("policy-{i}.txt"), question.clone()));
        let response = canned_response(task);
        let judge_ctx =
            json!({"task": task, "rubric": rubric_md, "items": rubric.items, "question": question, "response": response, "record": rec});
        out.push((format!("judge-{i}.txt"), render(TemplateKind::Judge, &judge_ctx)?));
        let sample = json!({"id": format!("sample-{i}"), "question": question, "response": response, "score": 3, "max_score": rubric.max_score(),
            "rationale": "The answer is right but the steps are terse.", "judge_answer": "The answer is right but the steps are terse.", "verifier": 1.0, "record": rec});
        let base = json!({"task": task, "rubric": rubric_md, "items": rubric.items, "max_items": r.spec.meta.max_items});
        let with = |extra: &[(&str, J)]| {
            let mut c = base.clone();
            for (k, v) in extra {
                c[*k] = v.clone();
            }
            c
        };
        if r.inputs.templates.contains_key(&TemplateKind::Analyze) {
            out.push((
                format!("meta-analyze-{i}.txt"),
                render(TemplateKind::Analyze, &with(&[("sample", sample.clone()), ("guidelines", "".into())]))?,
            ));
            out.push((
                format!("meta-refine-{i}.txt"),
                render(
                    TemplateKind::Refine,
                    &with(&[
                        ("sample", sample.clone()),
                        ("guidelines", "".into()),
                        ("analysis", "The rubric does not reward showing the steps.".into()),
                    ]),
                )?,
            ));
        }
        if i == 0 {
            if r.inputs.templates.contains_key(&TemplateKind::Prescreen) {
                out.push((
                    "meta-prescreen.txt".into(),
                    render(TemplateKind::Prescreen, &with(&[("samples", J::Array(vec![sample.clone()]))]))?,
                ));
            }
            if r.inputs.templates.contains_key(&TemplateKind::Merge) {
                out.push(("meta-merge.txt".into(), render(TemplateKind::Merge, &with(&[("refined", json!([rubric_md, rubric_md]))]))?));
            }
            if r.inputs.templates.contains_key(&TemplateKind::Pairwise) {
                out.push((
                    "elo-pairwise.txt".into(),
                    render(
                        TemplateKind::Pairwise,
                        &json!({"task": task, "question": question, "response_a": response, "response_b": "A shorter answer."}),
                    )?,
                ));
            }
        }
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
        for e in rd.flatten() {
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
