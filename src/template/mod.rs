//! Prompt templates: one minijinja environment with strict undefined, and the contexts each
//! kind of template is rendered with.
//!
//! A misspelt variable is an error at the template's line, never an empty string: `mpo check`
//! renders every template of a spec against a real record of the task's data with
//! [`sample_context`], and the run renders with contexts of the same types (`context.rs`).

pub mod context;

use std::path::{Path, PathBuf};

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;
use serde_json::Value as J;

use crate::diag::{Diagnostic, Origin, Sources, Span};

/// A template file as read when the spec was resolved, or re-read from a plan (its hash
/// checked against the plan's).
#[derive(Debug, Clone)]
pub struct TemplateFile {
    pub path: PathBuf,
    pub text: String,
    pub sha256: String,
}

/// The kinds of template a spec names, each with its own context (see [`sample_context`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TemplateKind {
    /// `task.prompt`: the fields of one record.
    Policy,
    /// `reward.rubric`: `task`; renders to rubric markdown.
    Rubric,
    /// `reward.prompt`: `task`, `rubric`, `items`, `question`, `response`, `record`.
    Judge,
    /// `meta.stages.prescreen`: `task`, `rubric`, `items`, `limits`, `samples`.
    Prescreen,
    /// `meta.stages.analyze`: `task`, `rubric`, `items`, `limits`, `sample`, `guidelines`.
    Analyze,
    /// `meta.stages.refine`: as analyze plus `analysis`.
    Refine,
    /// `meta.stages.merge`: `task`, `rubric`, `items`, `limits`, `refined`, `max_items`.
    Merge,
    /// `eval.elo.prompt`: `task`, `question`, `response_a`, `response_b`.
    Pairwise,
    /// `eval.instrument.rubric`: as `reward.rubric`.
    InstrumentRubric,
    /// `eval.instrument.prompt`: as `reward.prompt`.
    InstrumentJudge,
}

impl TemplateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TemplateKind::Policy => "policy",
            TemplateKind::Rubric => "rubric",
            TemplateKind::Judge => "judge",
            TemplateKind::Prescreen => "prescreen",
            TemplateKind::Analyze => "analyze",
            TemplateKind::Refine => "refine",
            TemplateKind::Merge => "merge",
            TemplateKind::Pairwise => "pairwise",
            TemplateKind::InstrumentRubric => "instrument_rubric",
            TemplateKind::InstrumentJudge => "instrument_judge",
        }
    }
}

/// The environment every mpo template renders in: strict undefined, Python-style string
/// methods (HF chat templates use them), blocks trimmed like Jinja's defaults in HF.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    minijinja_contrib::add_to_environment(&mut env);
    env
}

/// A template failure with enough to point at it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("template {name}: {message}{}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
pub struct TemplateError {
    pub name: String,
    pub message: String,
    pub line: Option<u32>,
    /// Byte range in the template source, when minijinja knows it.
    pub range: Option<std::ops::Range<usize>>,
}

/// Compile template text without rendering it (syntax only).
pub fn check_syntax(name: &str, source: &str) -> Result<(), TemplateError> {
    let env = environment();
    env.template_from_named_str(name, source).map(|_| ()).map_err(|e| TemplateError {
        name: name.to_string(),
        message: error_message(&e),
        line: e.line().map(|l| l as u32),
        range: e.range(),
    })
}

/// Render template text `source` (named `name` in errors) with `ctx`.
pub fn render(name: &str, source: &str, ctx: &impl Serialize) -> Result<String, TemplateError> {
    let env = environment();
    let to_err = |e: minijinja::Error| TemplateError {
        name: name.to_string(),
        message: error_message(&e),
        line: e.line().map(|l| l as u32),
        range: e.range(),
    };
    let tmpl = env.template_from_named_str(name, source).map_err(to_err)?;
    tmpl.render(ctx).map_err(to_err)
}

fn error_message(e: &minijinja::Error) -> String {
    let mut m = match e.kind() {
        minijinja::ErrorKind::UndefinedError => "undefined variable".to_string(),
        k => k.to_string(),
    };
    if let Some(d) = e.detail() {
        m = format!("{m}: {d}");
    }
    m
}

/// Turn a [`TemplateError`] into a diagnostic pointing at the template's line (the template is
/// registered in `sources`), noting where the spec names the template.
pub fn diagnostic(err: &TemplateError, path: &Path, text: &str, named_at: Origin, sources: &mut Sources, ctx: &J) -> Diagnostic {
    let id = match sources.find_path(path) {
        Some(id) => id,
        None => sources.add(path.display().to_string(), Some(path.to_path_buf()), text.to_string()),
    };
    let (line, col, len) = match (&err.range, err.line) {
        (Some(r), _) if r.start <= text.len() => {
            let before = &text[..r.start];
            let line = before.matches('\n').count() as u32 + 1;
            let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) as u32 + 1;
            let len = text.get(r.clone()).map(|s| s.chars().count()).unwrap_or(1) as u32;
            (line, col, len)
        }
        (_, Some(l)) => (l, 1, 0),
        _ => (1, 1, 0),
    };
    let mut d = Diagnostic::error(format!("template `{}` does not render: {}", path.display(), err.message))
        .at_span(Span { source: id, line, col, len })
        .label(err.message.clone());
    if let Some(s) = named_at.span() {
        d = d.note(s, "template named here");
    }
    let vars: Vec<String> = ctx.as_object().map(|o| o.keys().map(|k| format!("`{k}`")).collect()).unwrap_or_default();
    if err.message.starts_with("undefined") && !vars.is_empty() {
        let mut h = format!("variables available here: {}", vars.join(", "));
        if let Some(word) = text.get(err.range.clone().unwrap_or(0..0)) {
            let word = word.trim().trim_start_matches("{{").trim_end_matches("}}").trim();
            let root = word.split(['.', '[', '|', ' ']).next().unwrap_or(word);
            let names: Vec<&str> = ctx.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
            if !names.contains(&root)
                && let Some(s) = crate::diag::did_you_mean(root, names)
            {
                h = format!("did you mean `{s}`? ({h})");
            }
        }
        d = d.help(h);
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_undefined_is_an_error_with_a_line() {
        let e = render("t", "line one\n{{ problem }}\n{{ probelm }}\n", &serde_json::json!({"problem": "x"})).unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("undefined"), "{}", e.message);
    }

    #[test]
    fn pycompat_methods_work() {
        let s = render("t", "{{ 'Abc'.upper() }} {{ ' x '.strip() }}", &serde_json::json!({})).unwrap();
        assert_eq!(s, "ABC x");
    }

    #[test]
    fn diagnostic_points_at_the_variable_and_suggests() {
        let mut sources = Sources::default();
        let text = "Solve:\n{{ probelm }}\n";
        let ctx = serde_json::json!({"problem": "1+1"});
        let e = render("p.j2", text, &ctx).unwrap_err();
        let d = diagnostic(&e, Path::new("p.j2"), text, Origin::Default, &mut sources, &ctx);
        let r = d.render(&sources);
        assert!(r.contains("p.j2:2:"), "{r}");
        assert!(r.contains("did you mean `problem`?"), "{r}");
    }
}
