//! Diagnostics: errors and warnings that point into source text, rendered like rustc's.
//!
//! Every user-facing problem with a spec, an override, a template or a data file becomes a
//! [`Diagnostic`] with a [`Span`] into a registered source, so the CLI can print
//! `path/to/file.yaml:LINE:COL`, the offending line and a caret, plus `help:` lines. Sources
//! are kept in a [`Sources`] table so nodes can carry a small copyable [`Span`].

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Index of a registered source text in [`Sources`].
pub type SourceId = u32;

/// A region of a registered source: 1-based line and column (in characters), length in
/// characters on that line (0 = point at the column only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Span {
    pub source: SourceId,
    pub line: u32,
    pub col: u32,
    pub len: u32,
}

/// Where a value came from: a place in a source, or nowhere (a built-in default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Origin {
    /// Not written anywhere: the spec type's default.
    #[default]
    Default,
    /// Written in a registered source (a spec file, or the `<overrides>` pseudo-file).
    At(Span),
}

impl Origin {
    pub fn span(self) -> Option<Span> {
        match self {
            Origin::At(s) => Some(s),
            Origin::Default => None,
        }
    }
}

/// One registered source text (a file, or a pseudo-file such as the command-line overrides).
#[derive(Debug, Clone)]
pub struct Source {
    /// Name shown in diagnostics: the path as the user gave it, or `<overrides>`.
    pub name: String,
    /// Filesystem path, when the source is a file (relative paths inside resolve against its
    /// directory).
    pub path: Option<PathBuf>,
    pub text: String,
}

/// The table of every source text a load has read; diagnostics index into it.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    list: Vec<Source>,
}

impl Sources {
    pub fn add(&mut self, name: impl Into<String>, path: Option<PathBuf>, text: String) -> SourceId {
        self.list.push(Source { name: name.into(), path, text });
        (self.list.len() - 1) as SourceId
    }

    pub fn get(&self, id: SourceId) -> &Source {
        &self.list[id as usize]
    }

    /// The registered source whose path is `path`, if any.
    pub fn find_path(&self, path: &Path) -> Option<SourceId> {
        self.list.iter().position(|s| s.path.as_deref() == Some(path)).map(|i| i as SourceId)
    }

    /// Directory that relative paths written in `origin` resolve against: the directory of the
    /// file it came from, else the current directory (overrides, defaults).
    pub fn base_dir(&self, origin: Origin) -> PathBuf {
        origin
            .span()
            .and_then(|s| self.get(s.source).path.as_ref())
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// `file:line:col` for a span.
    pub fn location(&self, span: Span) -> String {
        format!("{}:{}:{}", self.get(span.source).name, span.line, span.col)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
    /// Information that changes nothing now (a backend this build lacks, needed only by `run`).
    Note,
}

/// A problem found while loading, validating or compiling a spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    /// Primary location; `None` when the problem has no place (a missing default file, say).
    pub span: Option<Span>,
    /// Short text under the caret.
    pub label: String,
    /// Extra places worth showing (e.g. where a cycle started), each with its label.
    pub notes: Vec<(Span, String)>,
    /// `help:` lines: what to do about it.
    pub help: Vec<String>,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            span: None,
            label: String::new(),
            notes: Vec::new(),
            help: Vec::new(),
        }
    }

    pub fn warning(message: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Warning, ..Diagnostic::error(message) }
    }

    pub fn info(message: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Note, ..Diagnostic::error(message) }
    }

    pub fn at(mut self, origin: Origin) -> Self {
        self.span = origin.span();
        self
    }

    pub fn at_span(mut self, span: Span) -> Self {
        self.span = Some(span);
        self
    }

    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    pub fn note(mut self, span: Span, label: impl Into<String>) -> Self {
        self.notes.push((span, label.into()));
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help.push(help.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Render rustc-style against `sources`.
    pub fn render(&self, sources: &Sources) -> String {
        let mut out = String::new();
        let kind = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Note => "note",
        };
        let _ = writeln!(out, "{kind}: {}", self.message);
        let mut gutter = 0;
        let mut spans: Vec<(Span, &str)> = Vec::new();
        if let Some(s) = self.span {
            spans.push((s, self.label.as_str()));
        }
        for (s, l) in &self.notes {
            spans.push((*s, l.as_str()));
        }
        for (s, _) in &spans {
            gutter = gutter.max(s.line.to_string().len());
        }
        let pad = " ".repeat(gutter);
        for (i, (span, label)) in spans.iter().enumerate() {
            let src = sources.get(span.source);
            let arrow = if i == 0 { "-->" } else { ":::" };
            let _ = writeln!(out, "{pad}{arrow} {}", sources.location(*span));
            if let Some(line_text) = src.text.lines().nth(span.line.saturating_sub(1) as usize) {
                let line_text = line_text.trim_end_matches('\r');
                let _ = writeln!(out, "{pad} |");
                let _ = writeln!(out, "{:>gutter$} | {}", span.line, line_text.replace('\t', " "));
                let col = span.col.saturating_sub(1) as usize;
                let avail = line_text.chars().count().saturating_sub(col).max(1);
                let n = (span.len as usize).clamp(1, avail);
                let caret = "^".repeat(n);
                let lbl = if label.is_empty() { String::new() } else { format!(" {label}") };
                let _ = writeln!(out, "{pad} | {}{caret}{lbl}", " ".repeat(col));
            }
        }
        if !spans.is_empty() && !self.help.is_empty() {
            let _ = writeln!(out, "{pad} |");
        }
        for h in &self.help {
            let _ = writeln!(out, "{pad} = help: {h}");
        }
        out
    }
}

/// Render a list of diagnostics with a closing count.
pub fn render_all(diags: &[Diagnostic], sources: &Sources) -> String {
    // Errors first, then in source order: files in the order they were read, overrides last.
    let mut sorted: Vec<&Diagnostic> = diags.iter().collect();
    sorted.sort_by_key(|d| (d.severity, d.span.map(|s| (s.source, s.line, s.col))));
    let mut out = String::new();
    for d in &sorted {
        out.push_str(&d.render(sources));
        out.push('\n');
    }
    let errors = diags.iter().filter(|d| d.is_error()).count();
    let warnings = diags.iter().filter(|d| d.severity == Severity::Warning).count();
    if errors > 0 {
        let _ = writeln!(
            out,
            "error: {} error{} found{}",
            errors,
            if errors == 1 { "" } else { "s" },
            if warnings > 0 { format!(", {warnings} warning{}", if warnings == 1 { "" } else { "s" }) } else { String::new() }
        );
    }
    out
}

/// The closest candidate to `word` among `candidates`, if one is close enough to be a typo.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(&word.to_lowercase(), &c.to_lowercase());
        let close = score > 0.82 || strsim::levenshtein(word, c) <= 2.min(c.len() / 2);
        if close && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_snippet_with_caret_and_help() {
        let mut s = Sources::default();
        let id = s.add("specs/x.yaml", None, "name: x\nppo:\n  kl_coeff: 0.1\n".into());
        let d = Diagnostic::error("unknown key `kl_coeff` in `ppo`")
            .at_span(Span { source: id, line: 3, col: 3, len: 8 })
            .label("unknown key")
            .help("did you mean `kl_coef`?");
        let r = d.render(&s);
        assert_eq!(
            r,
            "error: unknown key `kl_coeff` in `ppo`\n --> specs/x.yaml:3:3\n  |\n3 |   kl_coeff: 0.1\n  |   ^^^^^^^^ unknown key\n  |\n  = help: did you mean `kl_coef`?\n"
        );
    }

    #[test]
    fn suggestions() {
        assert_eq!(did_you_mean("kl_coeff", ["kl_coef", "cliprange", "vf_coef"]), Some("kl_coef"));
        assert_eq!(did_you_mean("cdua", ["cpu", "wgpu", "cuda"]), Some("cuda"));
        assert_eq!(did_you_mean("zzzzzz", ["cpu", "wgpu", "cuda"]), None);
    }
}
