//! Semantic validation and input resolution: everything about a structurally valid spec that
//! the schema cannot say.
//!
//! Relative paths are resolved against the file that wrote them; data files are read and
//! hashed; every template is rendered against a real record with strict undefined; the
//! initial rubric is parsed; model references and the backend are checked; hyperparameters
//! are checked against each other (batch divisibility, meta samples per interval). All
//! problems are collected; the result is the set of [`Inputs`] a plan is compiled from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value as J;

use crate::diag::{Diagnostic, Origin, Sources};
use crate::model::registry::{self, ModelRef};
use crate::rubric::Rubric;
use crate::spec::compose::normalize;
use crate::spec::node::Node;
use crate::spec::*;
use crate::task::{self, DataError, DataSummary, Split};
use crate::template::{self, TemplateFile, TemplateKind};

/// Everything a spec refers to, read and checked.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub train: DataSummary,
    pub test: Option<DataSummary>,
    pub transfer: Option<DataSummary>,
    pub templates: BTreeMap<TemplateKind, TemplateFile>,
    /// Version 0 of the rubric (the rendered `reward.rubric`).
    pub rubric: Rubric,
    pub policy_model: ModelRef,
    pub judge_model: Option<ModelRef>,
    pub meta_model: Option<ModelRef>,
    /// The in-process model of `eval.elo.judge`, when it has one.
    pub elo_model: Option<ModelRef>,
    /// The in-process model of `eval.instrument.judge`, when it has one.
    pub instrument_model: Option<ModelRef>,
    /// The case file (`reward.cases`), read and parsed.
    pub cases: Option<TemplateFile>,
    /// The policy model's architecture, when it could be read (for memory estimates).
    pub policy_config: Option<crate::model::weights::LlamaConfig>,
    /// Tokens of the longest training prompt, bounded from above (see `prompt_tokens`).
    pub longest_prompt_tokens: Option<usize>,
}

struct V<'a> {
    tree: &'a Node,
    sources: &'a mut Sources,
    diags: &'a mut Vec<Diagnostic>,
}

impl V<'_> {
    fn origin(&self, path: &str) -> Origin {
        self.tree.origin_near(path)
    }

    fn error(&mut self, path: &str, msg: impl Into<String>, label: impl Into<String>) -> &mut Diagnostic {
        let o = self.origin(path);
        self.diags.push(Diagnostic::error(msg).at(o).label(label));
        self.diags.last_mut().expect("just pushed")
    }

    fn warn(&mut self, path: &str, msg: impl Into<String>, label: impl Into<String>) -> &mut Diagnostic {
        let o = self.origin(path);
        self.diags.push(Diagnostic::warning(msg).at(o).label(label));
        self.diags.last_mut().expect("just pushed")
    }

    fn note(&mut self, path: &str, msg: impl Into<String>, label: impl Into<String>) -> &mut Diagnostic {
        let o = self.origin(path);
        self.diags.push(Diagnostic::info(msg).at(o).label(label));
        self.diags.last_mut().expect("just pushed")
    }

    /// Resolve a path written at `field` against the directory of the file that wrote it.
    fn resolve(&self, field: &str, p: &Path) -> PathBuf {
        if p.is_absolute() {
            return p.to_path_buf();
        }
        normalize(&self.sources.base_dir(self.tree.origin_near(field)).join(p))
    }

    fn read_template(&mut self, field: &str, p: &mut PathBuf) -> Option<TemplateFile> {
        *p = self.resolve(field, p);
        match std::fs::read_to_string(&*p) {
            Ok(text) => {
                let sha256 = crate::hash::sha256_hex(text.as_bytes());
                Some(TemplateFile { path: p.clone(), text, sha256 })
            }
            Err(e) => {
                let shown = p.display().to_string();
                self.error(field, format!("cannot read template `{shown}`: {e}"), "template not found")
                    .help
                    .push("paths are relative to the spec file that names them".into());
                None
            }
        }
    }

    /// Render `t` with `ctx` (`None`: no record to render against, check the syntax only).
    fn check_render(&mut self, field: &str, kind: TemplateKind, t: &TemplateFile, ctx: Option<&J>) -> Option<String> {
        let empty = J::Object(Default::default());
        let result = match ctx {
            Some(ctx) => template::render(&t.path.display().to_string(), &t.text, ctx),
            None => template::check_syntax(&t.path.display().to_string(), &t.text).map(|_| String::new()),
        };
        let ctx = ctx.unwrap_or(&empty);
        match result {
            Ok(s) => Some(s),
            Err(e) => {
                let named_at = self.tree.origin_near(field);
                let mut d = template::diagnostic(&e, &t.path, &t.text, named_at, self.sources, ctx);
                d.message = format!("{} template: {}", kind.as_str(), d.message);
                self.diags.push(d);
                None
            }
        }
    }

    fn data(&mut self, field: &str, kind: TaskKind, src: &mut DataSource, seed: u64, split: Split) -> Option<DataSummary> {
        match (&src.path, &src.generate) {
            (Some(_), Some(_)) => {
                self.error(&format!("{field}.generate"), format!("`{field}` has both `path` and `generate`"), "pick one")
                    .help
                    .push("read records from `path`, or generate them with `generate`, not both".into());
                return None;
            }
            (None, None) => {
                self.error(field, format!("`{field}` needs `path` (a JSONL file) or `generate`"), "no data source").help.push(format!(
                    "e.g. `{}: {{path: ../tasks/{}/sample.jsonl}}`",
                    field.rsplit('.').next().unwrap_or(field),
                    kind.as_str()
                ));
                return None;
            }
            _ => {}
        }
        if src.generate.is_some() && kind != TaskKind::Math {
            self.error(
                &format!("{field}.generate"),
                format!("`generate` makes arithmetic problems; it only works with `task.kind: math`, not `{}`", kind.as_str()),
                "math only",
            );
            return None;
        }
        if let Some(f) = src.format
            && !task::formats_for(kind).contains(&f)
        {
            let ok: Vec<String> = task::formats_for(kind).iter().map(|f| format!("`{}`", task::format_name(*f))).collect();
            self.error(
                &format!("{field}.format"),
                format!("format `{}` does not fit task `{}`", task::format_name(f), kind.as_str()),
                "wrong format for this task",
            )
            .help
            .push(format!("use one of {}", ok.join(", ")));
            return None;
        }
        if let Some(p) = src.path.as_mut() {
            *p = self.resolve(&format!("{field}.path"), p);
        }
        match task::summarize(kind, src, seed, split) {
            Ok(d) => Some(d),
            Err(e) => {
                let at = format!("{field}.path");
                let d = self.error(&at, format!("{field}: {e}"), "bad data file");
                match e {
                    DataError::Io { .. } => d.help.push("paths are relative to the spec file that names them".into()),
                    DataError::MissingField { .. } => d.help.push(format!("set `{field}.format` if the file is in another format")),
                    _ => {}
                }
                None
            }
        }
    }

    /// Resolve a model reference (`${VAR}` expanded) and identify it by content: a Hugging Face
    /// folder is checked as loading it would check it (headers only), so a broken folder fails
    /// here and not after a job has queued.
    fn model(&mut self, field: &str, reference: &str) -> Option<ModelRef> {
        let base = self.sources.base_dir(self.tree.origin_near(field));
        let expanded = match expand_env(reference) {
            Ok(e) => e,
            Err(Unset(var)) => {
                self.error(field, format!("`{field}` names `${{{var}}}`, which is not set in this shell"), "variable not set")
                    .help
                    .push(format!("export {var}=/path/to/the/model/folder (it is read when the spec is checked, planned or run)"));
                return None;
            }
        };
        let resolved = match registry::resolve(&expanded, &base) {
            Ok(m) => m,
            Err(e) => {
                let help = e.help();
                self.error(field, format!("`{field}`: {e}"), "cannot resolve this model").help.push(help);
                return None;
            }
        };
        match crate::model::folder::identify(resolved) {
            Ok((m, _)) => Some(m),
            Err(e) => {
                let help = e.help();
                self.error(field, format!("`{field}`: {e}"), "not a model mpo can load").help.push(help);
                None
            }
        }
    }

    fn judge(&mut self, field: &str, j: &mut JudgeSpec, default_model: &str) -> Option<Option<ModelRef>> {
        for (k, name) in [("base_url_env", &j.base_url_env), ("api_key_env", &j.api_key_env)] {
            if !is_env_var(name) {
                // Never echo what may be the secret itself into the message.
                let found = if k == "api_key_env" { "a value that is not a variable name".to_string() } else { format!("`{name}`") };
                self.error(
                    &format!("{field}.{k}"),
                    format!("`{field}.{k}` must name an environment variable, found {found}"),
                    "not a variable name",
                )
                .help
                .push("secrets never go in the spec: put the value in an environment variable and name it here".into());
            }
        }
        match j.backend {
            JudgeBackend::Local => {
                let m = j.model.clone().unwrap_or_else(|| default_model.to_string());
                let field_m = if j.model.is_some() { format!("{field}.model") } else { "policy.model".into() };
                let errors = self.diags.len();
                let r = self.model(&field_m, &m).map(Some);
                if j.model.is_some()
                    && self.diags.len() > errors
                    && let Some(d) = self.diags.last_mut()
                {
                    // A server's model name read as an in-process model: say which backend chose it.
                    let written = self.tree.at_path(&format!("{field}.backend")).map(|n| n.origin);
                    let inherited = field == "meta.judge"
                        && written.is_some()
                        && written == self.tree.at_path("reward.judge.backend").map(|n| n.origin);
                    let how = match written {
                        _ if inherited => "inherited from `reward.judge`".to_string(),
                        Some(o) => o.span().map(|sp| format!("set at {}", self.sources.location(sp))).unwrap_or_else(|| "set".into()),
                        None => "the default".to_string(),
                    };
                    d.help.push(format!(
                        "`{field}.backend` is `local` ({how}): the model is loaded in process; for a model a server serves, set `{field}.backend: openai`"
                    ));
                }
                r
            }
            JudgeBackend::Openai => {
                if is_env_var(&j.base_url_env) && std::env::var_os(&j.base_url_env).is_none() {
                    self.warn(
                        &format!("{field}.base_url_env"),
                        format!(
                            "environment variable `{}` is not set; `{}` will need it",
                            j.base_url_env,
                            if field.starts_with("eval.elo") { "mpo eval --elo" } else { "mpo run" }
                        ),
                        "not set in this shell",
                    )
                    .help
                    .push(format!("export {}=http://host:port/v1 (several URLs separated by commas are load-balanced)", j.base_url_env));
                }
                Some(None)
            }
            JudgeBackend::Replay => {
                match &j.replay_from {
                    None => {
                        self.error(
                            &format!("{field}.backend"),
                            format!("`{field}.backend: replay` needs `replay_from`: the judge cache to answer from"),
                            "no cache named",
                        )
                        .help
                        .push("e.g. `replay_from: ../results/math/<run-id>/judge-cache`".into());
                    }
                    Some(p) => {
                        let r = self.resolve(&format!("{field}.replay_from"), p);
                        if !r.is_dir() {
                            self.error(
                                &format!("{field}.replay_from"),
                                format!("judge cache `{}` does not exist", r.display()),
                                "not a directory",
                            );
                        }
                        j.replay_from = Some(r);
                    }
                }
                Some(None)
            }
        }
    }
}

/// An environment variable a path names (`${NAME}`) that is not set.
struct Unset(String);

/// `${NAME}` replaced by the variable's value; the first one not set is the error.
fn expand_env(s: &str) -> Result<String, Unset> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        let Some(j) = rest[i..].find('}') else { break };
        let name = &rest[i + 2..i + j];
        out.push_str(&rest[..i]);
        out.push_str(&std::env::var(name).map_err(|_| Unset(name.to_string()))?);
        rest = &rest[i + j + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Validate `spec` (already structurally valid) and read its inputs; rewrites relative paths
/// in `spec` to resolved ones. Returns `None` when any error was found.
pub fn validate(spec: &mut Spec, tree: &Node, sources: &mut Sources, diags: &mut Vec<Diagnostic>) -> Option<Inputs> {
    let errors_before = diags.iter().filter(|d| d.is_error()).count();
    let mut v = V { tree, sources, diags };
    let kind = spec.task.kind;
    let data_seed = spec.data_seed();

    // --- runtime ---------------------------------------------------------------------------
    // A login node plans and emits jobs for a GPU it lacks: only `mpo run` needs the backend.
    if !spec.runtime.backend.compiled_in() {
        let b = spec.runtime.backend;
        v.note(
            "runtime.backend",
            format!(
                "backend `{}` is not compiled into this mpo: it checks, plans and emits jobs, but `mpo run` needs a build with it",
                b.as_str()
            ),
            "not compiled in",
        )
        .help
        .push(b.build_hint());
    }
    match (spec.runtime.precision, spec.runtime.backend) {
        (Precision::Bf16, BackendKind::Wgpu) => {
            v.error(
                "runtime.precision",
                "`runtime.precision: bf16` needs a backend with bf16 tensors, and wgpu's shading language (WGSL) has no bf16 type",
                "not on wgpu",
            )
            .help
            .push("use `runtime.backend: cuda` for bf16, or `runtime.precision: f32` on wgpu".into());
        }
        (Precision::Bf16, BackendKind::Cpu) => {
            v.warn(
                "runtime.precision",
                "bf16 on the CPU backend converts every bf16 product to f32 and back: slower than f32, with the roundings of bf16 on a GPU",
                "slower on cpu",
            )
            .help
            .push("keep it to check bf16's numerics before a GPU run; for speed on the CPU use `runtime.precision: f32`".into());
        }
        _ => {}
    }

    // --- data ------------------------------------------------------------------------------
    let train = v.data("task.train", kind, &mut spec.task.train, data_seed, Split::Train);
    let test_seed = spec.test_seed();
    let test = match spec.task.test.as_mut() {
        Some(t) => v.data("task.test", kind, t, test_seed, Split::Test),
        None => None,
    };
    let transfer = match spec.task.transfer.as_mut() {
        Some(t) => v.data("task.transfer", kind, t, test_seed, Split::Test),
        None => None,
    };
    for (field, held_out, summary) in [("task.test", &spec.task.test, &test), ("task.transfer", &spec.task.transfer, &transfer)] {
        if let (Some(src), Some(d)) = (held_out, summary)
            && let Some(g) = &src.generate
            && d.len < g.count
        {
            v.warn(
                &format!("{field}.generate.count"),
                format!(
                    "the held-out part of levels {:?} holds {} distinct problems: the split has {}, not {} (a test split never repeats a problem)",
                    g.levels, d.len, d.len, g.count
                ),
                "fewer distinct problems",
            )
            .help
            .push(format!("set `count: {}`, or add levels with more problems (levels 2, 4 and 5 hold thousands)", d.len));
        }
        if let (Some(_), Some(_), Some(t)) = (&train, summary, held_out)
            && let (Ok(a), Ok(b)) =
                (task::load(kind, &spec.task.train, data_seed, Split::Train), task::load(kind, t, test_seed, Split::Test))
        {
            let shared = task::shared_records(kind, &a.records, &b.records);
            if shared > 0 {
                v.warn(
                    field,
                    format!(
                        "{shared} of the {} held-out records also appear in the training set: evaluation would measure memorisation",
                        b.records.len()
                    ),
                    "overlaps task.train",
                )
                .help
                .push("use disjoint files (the shipped tasks have `*_train.jsonl` and `*_test.jsonl`)".into());
            }
        }
    }
    if spec.task.transfer.is_some() && spec.task.test.is_none() {
        v.error("task.transfer", "`task.transfer` is set but the task has no `test` split", "needs task.test")
            .help
            .push("the transfer split is evaluated beside `task.test`: add `task.test`".into());
    }
    if spec.eval.every != Every::Never && spec.task.test.is_none() {
        v.error("eval.every", "`eval.every` is set but the task has no `test` split", "needs task.test")
            .help
            .push("add `task.test: {path: ...}` or set `eval.every: never`".into());
    }
    if let Some(t) = &test {
        let n = spec.task.test.as_ref().and_then(|t| t.limit).map_or(t.len, |limit| t.len.min(limit));
        if spec.eval.samples > n {
            v.warn(
                "eval.samples",
                format!("`eval.samples` is {} but the test split has {n} records; all {n} are used", spec.eval.samples),
                "more than available",
            );
        }
    }
    // Without a record (the data failed, already reported) templates get a syntax check only.
    let record = train.as_ref().map(|d| d.first.clone());

    // --- templates -------------------------------------------------------------------------
    let mut templates = BTreeMap::new();
    let task_name = kind.as_str();
    let mut wanted: Vec<(String, TemplateKind, PathBuf)> = vec![
        ("task.prompt".into(), TemplateKind::Policy, spec.task.prompt.clone()),
        ("reward.rubric".into(), TemplateKind::Rubric, spec.reward.rubric.clone()),
        ("reward.prompt".into(), TemplateKind::Judge, spec.reward.prompt.clone()),
    ];
    let meta_on = spec.meta.every != Every::Never;
    match (&spec.meta.stages, meta_on) {
        (Some(st), _) => {
            if let Some(p) = &st.prescreen {
                wanted.push(("meta.stages.prescreen".into(), TemplateKind::Prescreen, p.clone()));
            }
            wanted.push(("meta.stages.analyze".into(), TemplateKind::Analyze, st.analyze.clone()));
            wanted.push(("meta.stages.refine".into(), TemplateKind::Refine, st.refine.clone()));
            match (&st.merge, spec.meta.review) {
                (Some(m), MetaReview::PerSample) => wanted.push(("meta.stages.merge".into(), TemplateKind::Merge, m.clone())),
                (Some(_), MetaReview::Joint) => {
                    v.warn(
                        "meta.stages.merge",
                        "`meta.stages.merge` is never used: `meta.review: joint` refines once from all samples, with no merge",
                        "ignored",
                    );
                }
                (None, MetaReview::PerSample) if meta_on => {
                    v.error("meta.stages", "`meta.stages.merge` is missing", "`meta.review: per_sample` merges the refined rubrics")
                        .help
                        .push("add `merge: prompt_templates/meta/merge.j2`, or set `meta.review: joint` (one refinement from all samples, no merge) with its own `analyze` and `refine` templates (`prompt_templates/meta/joint/`)".into());
                }
                (None, _) => {}
            }
        }
        (None, true) => {
            let every = spec.meta.every.interval().unwrap_or(0);
            v.error("meta.every", format!("`meta.every` is {every} but `meta.stages` is missing"), "meta steps need stage templates")
                .help
                .push("add `meta.stages: {analyze: ..., refine: ..., merge: ...}` or set `meta.every: never`".into());
        }
        (None, false) => {}
    }
    if let Some(p) = &spec.eval.elo.prompt {
        wanted.push(("eval.elo.prompt".into(), TemplateKind::Pairwise, p.clone()));
    }
    if let Some(i) = &spec.eval.instrument {
        wanted.push(("eval.instrument.rubric".into(), TemplateKind::InstrumentRubric, i.rubric.clone()));
        wanted.push(("eval.instrument.prompt".into(), TemplateKind::InstrumentJudge, i.prompt.clone()));
    }
    let mut rubric = None;
    let mut instrument_rubric = None;
    for (field, tk, mut p) in wanted {
        let Some(t) = v.read_template(&field, &mut p) else { continue };
        set_path(spec, &field, p);
        let ctx = match (tk, &record) {
            (TemplateKind::Rubric | TemplateKind::InstrumentRubric, _) => {
                Some(super::sample_context(tk, task_name, &J::Null, spec.meta.review))
            }
            (_, Some(r)) => Some(super::sample_context(tk, task_name, r, spec.meta.review)),
            (_, None) => None,
        };
        if let Some(rendered) = v.check_render(&field, tk, &t, ctx.as_ref())
            && tk == TemplateKind::InstrumentRubric
        {
            match Rubric::parse(&rendered) {
                Ok(r) if r.items.is_empty() => {
                    v.error(
                        &field,
                        format!("instrument rubric `{}` has no scored item (`## Name (min-max)`)", t.path.display()),
                        "no items",
                    );
                }
                Ok(r) => instrument_rubric = Some(r),
                Err(e) => {
                    v.error(&field, format!("instrument rubric `{}`: {e}", t.path.display()), "invalid rubric");
                }
            }
        } else if let Some(rendered) = v.check_render(&field, tk, &t, ctx.as_ref())
            && tk == TemplateKind::Rubric
        {
            match Rubric::parse(&rendered) {
                Ok(r) => {
                    if let Err(e) = r.validate(spec.meta.max_items) {
                        v.error("reward.rubric", format!("initial rubric `{}`: {e}", t.path.display()), "invalid rubric");
                    }
                    for (line, heading) in Rubric::duplicate_headings(&rendered) {
                        v.error(
                            "reward.rubric",
                            format!("initial rubric `{}` line {line}: `{heading}` repeats an earlier item's name; the two would be merged and the second range lost", t.path.display()),
                            "repeated item",
                        )
                        .help
                        .push("give each item its own name, or merge the two by hand".into());
                    }
                    if let Some(h) = r.preamble.lines().find(|l| l.starts_with("## ") || l.starts_with("### ")) {
                        v.warn(
                            "reward.rubric",
                            format!("initial rubric `{}`: heading `{h}` has no score range, so it is read as preamble", t.path.display()),
                            "heading without a range",
                        )
                        .help
                        .push(format!("if it is an item, give it a range: `{h} (0-4)`"));
                    }
                    rubric = Some(r);
                }
                Err(e) => {
                    v.error("reward.rubric", format!("initial rubric `{}`: {e}", t.path.display()), "invalid rubric");
                }
            }
        }
        templates.insert(tk, t);
    }
    let mut cases = None;
    if let Some(p) = spec.reward.cases.clone() {
        let r = v.resolve("reward.cases", &p);
        match std::fs::read_to_string(&r) {
            Ok(text) => match crate::cases::CaseFile::parse(&text) {
                Ok(_) => cases = Some(TemplateFile { path: r.clone(), sha256: crate::hash::sha256_hex(text.as_bytes()), text }),
                Err(e) => {
                    v.error("reward.cases", format!("case file `{}`: {e}", r.display()), "invalid case file");
                }
            },
            Err(e) => {
                v.error("reward.cases", format!("cannot read the case file `{}`: {e}", r.display()), "not found")
                    .help
                    .push("paths are relative to the spec file that names them".into());
            }
        }
        spec.reward.cases = Some(r);
    } else if spec.meta.gate {
        v.error("meta.gate", "`meta.gate` scores the rubric test cases, and the spec names none", "no `reward.cases`")
            .help
            .push("add `reward.cases: <file>` (the shipped ones are prompt_templates/<task>/cases.yaml), or remove `meta.gate`".into());
    }
    if v.tree.at_path("output.root").is_some() {
        spec.output.root = v.resolve("output.root", &spec.output.root.clone());
    }
    if let Some(p) = spec.policy.chat_template.clone() {
        let r = v.resolve("policy.chat_template", &p);
        if !r.is_file() {
            v.error("policy.chat_template", format!("chat template `{}` does not exist", r.display()), "not found");
        }
        spec.policy.chat_template = Some(r);
    }

    // --- models and judges -------------------------------------------------------------------
    let policy_model = v.model("policy.model", &spec.policy.model.clone());
    let policy_name = spec.policy.model.clone();
    let judge_model = v.judge("reward.judge", &mut spec.reward.judge, &policy_name);
    let meta_model = match spec.meta.judge.as_mut() {
        Some(j) => v.judge("meta.judge", j, &policy_name),
        None => Some(judge_model.clone().flatten()),
    };
    let elo_model = match spec.eval.elo.judge.as_mut() {
        Some(j) => v.judge("eval.elo.judge", j, &policy_name),
        None => Some(None),
    };
    let instrument_model = match spec.eval.instrument.as_mut() {
        Some(i) => v.judge("eval.instrument.judge", &mut i.judge, &policy_name),
        None => Some(None),
    };
    if let (Some(i), Some(jm), Some(im)) = (&spec.eval.instrument, &judge_model, &instrument_model) {
        let same = same_judge(&spec.reward.judge, jm.as_ref(), &i.judge, im.as_ref(), policy_model.as_ref());
        instrument_checks(&mut v, spec, i, same, instrument_rubric.as_ref());
    }
    if let Some(dir) = spec.runtime.rollouts.adapter_dir.clone() {
        spec.runtime.rollouts.adapter_dir = Some(v.resolve("runtime.rollouts.adapter_dir", &dir));
    }
    rollouts_checks(&mut v, spec, policy_model.as_ref());
    partition_checks(&mut v, spec, kind, data_seed);
    let mut seen = std::collections::BTreeSet::new();
    for t in &spec.policy.lora.targets {
        if !seen.insert(*t) {
            v.warn("policy.lora.targets", format!("LoRA target `{}` is listed twice", name_of(t)), "duplicate");
        }
    }

    // --- reward ------------------------------------------------------------------------------
    if spec.reward.answer == AnswerMode::Guided && matches!(spec.reward.extraction, Extraction::Json) {
        v.error(
            "reward.answer",
            "`reward.answer: guided` makes the judge write `Item: score` lines, which `reward.extraction: {method: json}` cannot read",
            "guided lines, not JSON",
        )
        .help
        .push("with JSON answers write `answer: free` (the schema holds the judge to the rubric); guided answers go with `extraction: {method: regex}`".into());
    }
    match &spec.reward.extraction {
        Extraction::Regex { pattern } => match compiled(pattern) {
            Ok(re) => {
                let names: Vec<&str> = re.capture_names().flatten().collect();
                if !names.contains(&"score") || !names.contains(&"item") {
                    v.error(
                        "reward.extraction.pattern",
                        "the score pattern needs named groups `item` and `score`",
                        "missing (?P<item>...) or (?P<score>...)",
                    );
                }
            }
            Err(e) => {
                let msg = e.to_string().lines().last().unwrap_or("invalid").to_string();
                v.error("reward.extraction.pattern", format!("invalid regular expression: {msg}"), "does not compile");
            }
        },
        Extraction::Logprobs { .. } if spec.reward.judge.backend == JudgeBackend::Replay => {}
        _ => {}
    }
    if let FailurePolicy::Penalty(x) = spec.reward.failure.policy
        && !x.is_finite()
    {
        v.error("reward.failure.policy.penalty", "the penalty must be a finite number", "not finite");
    }
    for (i, vs) in spec.reward.verifiers.iter().enumerate() {
        let f = format!("reward.verifiers.{i}");
        match vs {
            VerifierSpec::MathAnswer { .. } if kind != TaskKind::Math => {
                v.error(
                    &format!("{f}.kind"),
                    format!("verifier `math_answer` needs math records, but the task is `{task_name}`"),
                    "wrong task",
                );
            }
            VerifierSpec::Verdict if kind != TaskKind::EthicalReasoning => {
                v.error(
                    &format!("{f}.kind"),
                    format!("verifier `verdict` needs ethical_reasoning records, but the task is `{task_name}`"),
                    "wrong task",
                );
            }
            VerifierSpec::Length { min_words, max_words } if min_words > max_words => {
                v.error(
                    &format!("{f}.min_words"),
                    format!("`min_words` ({min_words}) is larger than `max_words` ({max_words})"),
                    "empty range",
                );
            }
            VerifierSpec::Format { pattern } => {
                if let Err(e) = compiled(pattern) {
                    let msg = e.to_string().lines().last().unwrap_or("invalid").to_string();
                    v.error(&format!("{f}.pattern"), format!("invalid regular expression: {msg}"), "does not compile");
                }
            }
            _ => {}
        }
    }
    if matches!(spec.reward.mix, MixSpec::Coin { .. }) && spec.reward.verifiers.is_empty() {
        v.error(
            "reward.mix",
            "`mix: coin` tosses between a verifier and the judge, but `reward.verifiers` is empty",
            "no verifier to toss for",
        )
        .help
        .push("add a verifier (e.g. `{kind: math_answer}`) or use `mix: {mode: weighted}`".into());
    }

    // GRPO's group-normalised advantages follow any scale; PPO's critic does not.
    if spec.reward.aggregate == Aggregate::Sum && spec.meta.every != Every::Never && spec.ppo.algorithm == Algorithm::Ppo {
        v.warn(
            "reward.aggregate",
            "`aggregate: sum` with `meta.every` set: each rubric the meta step writes moves the reward's scale, and the critic (value clipping at an absolute `ppo.cliprange_value`) lags behind it for many updates",
            "reward scale follows the rubric",
        )
        .help
        .push("use `aggregate: item_mean` (scale-free), or `ppo.recenter_critic: true` to re-centre the critic at each rubric switch".into());
    }
    if spec.ppo.recenter_critic && spec.ppo.algorithm == Algorithm::Grpo {
        v.warn("ppo.recenter_critic", "`ppo.recenter_critic` has no effect under GRPO: there is no critic to re-centre", "no critic")
            .help
            .push("remove it (GRPO's advantages are normalised within each group, whatever the rubric's scale)".into());
    }
    if let MixSpec::Coin { chunk, .. } = spec.reward.mix {
        if !spec.reward.aggregate.is_normalized() {
            v.error(
                "reward.aggregate",
                "`mix: coin` puts verifier rewards (0 or 1) and judge rewards in one batch, but `reward.aggregate` is `sum`: judge totals would be on the rubric's scale",
                "verifier and judge on different scales",
            )
            .help
            .push("use `aggregate: item_mean` or `range_share` (judge rewards in 0..1, like the verifier's)".into());
        }
        let g = spec.ppo.group_size;
        if spec.ppo.algorithm == Algorithm::Grpo && chunk > 1 && !chunk.is_multiple_of(g) {
            v.error(
                "reward.mix.chunk",
                format!(
                    "under GRPO a coin toss must cover whole groups, but `chunk` ({chunk}) is not a multiple of `ppo.group_size` ({g})"
                ),
                "splits a group",
            )
            .help
            .push(format!("use `chunk: 1` (one toss per group) or a multiple of {g}"));
        }
    }
    // A judge answer holds at least a line per item; below that it is cut off and never scored.
    let largest = if spec.meta.every == Every::Never { rubric.as_ref().map_or(0, |r| r.items.len()) } else { spec.meta.max_items };
    let least = largest as u32 * TOKENS_PER_ITEM_LINE;
    let json = spec.reward.extraction == Extraction::Json;
    if json {
        structured_budget(&mut v, spec, rubric.as_ref());
    } else if spec.reward.answer != AnswerMode::Guided && largest > 0 && spec.reward.judge.max_tokens < least {
        let which = if spec.meta.every == Every::Never {
            format!("the {largest}-item rubric")
        } else {
            format!("the largest rubric meta steps may write (`meta.max_items`: {largest})")
        };
        v.warn(
            "reward.judge.max_tokens",
            format!("`reward.judge.max_tokens` ({}) cannot hold one score line per item of {which}, about {least} tokens: answers would be cut off and never scored", spec.reward.judge.max_tokens),
            "too few tokens",
        )
        .help
        .push(format!("raise it to at least {least}"));
    }
    // The meta stages' answers are sized to `meta.max_tokens` (held to that shape where the
    // judge takes shapes, asked for in the prompt everywhere).
    let meta_on = spec.meta.every != Every::Never;
    match crate::meta::MetaShapes::fit(spec.meta.max_items, spec.meta.max_tokens) {
        Err(e) if meta_on => {
            v.error("meta.max_tokens", e.to_string(), "too few tokens for a meta answer");
        }
        Ok(shapes) if meta_on && shapes.rubric.items < spec.meta.max_items => {
            let r = shapes.rubric;
            v.warn(
                "meta.max_tokens",
                format!(
                    "`meta.max_tokens` ({}) holds a complete rubric of only {} item{} with {}-character lines, not `meta.max_items` ({}): refined and merged rubrics are limited to {} (the prompts say so)",
                    spec.meta.max_tokens,
                    r.items,
                    if r.items == 1 { "" } else { "s" },
                    r.line_chars,
                    spec.meta.max_items,
                    r.items
                ),
                "too few tokens",
            )
            .help
            .push(format!(
                "raise `meta.max_tokens` to at least {} for {} items, or lower `meta.max_items`",
                crate::rubric::RubricShape::least_tokens(spec.meta.max_items),
                spec.meta.max_items
            ));
        }
        _ => {}
    }
    if spec.meta.sampling == MetaSampling::ScoreTertiles && spec.meta.samples < 3 {
        v.error(
            "meta.sampling",
            format!(
                "`score_tertiles` draws a third of `meta.samples` from each score tertile, but `meta.samples` is {}",
                spec.meta.samples
            ),
            "a tertile would get no sample",
        )
        .help
        .push("set `meta.samples` to 3 or more (the reference's math step draws 2 per tertile: 6), or use `sampling: uniform`".into());
    }
    for (path, js) in [
        ("reward.judge", Some(&spec.reward.judge)),
        ("meta.judge", spec.meta.judge.as_ref()),
        ("eval.elo.judge", spec.eval.elo.judge.as_ref()),
        ("eval.instrument.judge", spec.eval.instrument.as_ref().map(|i| &i.judge)),
    ] {
        if let Some(js) = js {
            ignored_judge_fields(&mut v, path, js);
        }
    }
    if let Some(mj) = &spec.meta.judge
        && meta_on
        && mj.max_tokens != crate::spec::JudgeSpec::default().max_tokens
    {
        v.warn(
            "meta.judge.max_tokens",
            format!(
                "`meta.judge.max_tokens` ({}) is not used: every meta stage answers within `meta.max_tokens` ({})",
                mj.max_tokens, spec.meta.max_tokens
            ),
            "dead field",
        )
        .help
        .push("remove it and set `meta.max_tokens`".into());
    }
    if let (Some(EosPenalty::Absolute(x)), Some(r)) = (spec.ppo.missing_eos_penalty, rubric.as_ref()) {
        let range = crate::reward::reward_range(&spec.reward, (r.max_score() - r.min_score()) as f64);
        if x >= range {
            v.warn(
                "ppo.missing_eos_penalty",
                format!("the missing-EOS penalty ({x}) is at least the whole reward range ({range}): an unfinished response loses more than any grade can give, so training mostly teaches stopping early"),
                "larger than the reward range",
            )
            .help
            .push("express it on the reward's scale: `missing_eos_penalty: {share_of_range: 0.2}`".into());
        }
    }

    // --- ppo ---------------------------------------------------------------------------------
    let p = &spec.ppo;
    // A run that draws each training prompt many times measures memorisation as much as the
    // method (the paper's essay setup cycles its 160 prompts 40 times).
    if let Some(t) = &train {
        let n = spec.task.train.limit.map_or(t.len, |limit| t.len.min(limit)).max(1);
        let passes = p.total_episodes as f64 / n as f64;
        if passes > MAX_PASSES {
            v.warn(
                "ppo.total_episodes",
                format!("`ppo.total_episodes` ({}) draws each of the {n} training prompts about {passes:.0} times", p.total_episodes),
                "many passes over the prompts",
            )
            .help
            .push(format!(
                "more prompts (a larger `task.train`), or fewer episodes (at most {} for {MAX_PASSES} passes); expect held-out gains to lag training reward",
                (MAX_PASSES * n as f64) as usize
            ));
        }
    }
    // Both algorithms take the ratio against the full tempered softmax.
    let mut off = Vec::new();
    if spec.policy.top_p < 1.0 {
        off.push(format!("`policy.top_p: {}`", spec.policy.top_p));
    }
    if spec.policy.top_k > 0 {
        off.push(format!("`policy.top_k: {}`", spec.policy.top_k));
    }
    if p.temperature == 0.0 {
        off.push("`ppo.temperature: 0`".to_string());
    }
    if !off.is_empty() {
        v.warn(
            if p.temperature == 0.0 {
                "ppo.temperature"
            } else if spec.policy.top_p < 1.0 {
                "policy.top_p"
            } else {
                "policy.top_k"
            },
            format!("rollouts are sampled with {}, but the PPO ratio uses the full softmax at `ppo.temperature`: the update is then not against the behaviour policy", off.join(" and ")),
            "sampling differs from training",
        )
        .help
        .push("sample with `top_p: 1`, `top_k: 0` and a temperature above 0 for on-policy updates".into());
    }
    if !p.batch_size.is_multiple_of(p.num_mini_batches) {
        v.error(
            "ppo.num_mini_batches",
            format!("`ppo.batch_size` ({}) is not divisible by `ppo.num_mini_batches` ({})", p.batch_size, p.num_mini_batches),
            "must divide batch_size",
        );
    } else {
        let mb = p.batch_size / p.num_mini_batches;
        if !mb.is_multiple_of(p.gradient_accumulation_steps) {
            v.error(
                "ppo.gradient_accumulation_steps",
                format!(
                    "the mini-batch size ({mb} = batch_size / num_mini_batches) is not divisible by `ppo.gradient_accumulation_steps` ({})",
                    p.gradient_accumulation_steps
                ),
                "must divide the mini-batch size",
            );
        }
    }
    if p.algorithm == Algorithm::Grpo && !p.batch_size.is_multiple_of(p.group_size) {
        v.error(
            "ppo.group_size",
            format!("GRPO needs `ppo.batch_size` ({}) divisible by `ppo.group_size` ({})", p.batch_size, p.group_size),
            "must divide batch_size",
        );
    }
    if p.total_episodes < p.batch_size {
        v.error(
            "ppo.total_episodes",
            format!("`ppo.total_episodes` ({}) is smaller than one batch ({}): no update would run", p.total_episodes, p.batch_size),
            "too small",
        );
    } else if !p.total_episodes.is_multiple_of(p.batch_size) {
        let updates = p.total_episodes / p.batch_size;
        v.warn(
            "ppo.total_episodes",
            format!("`ppo.total_episodes` ({}) is not a multiple of `ppo.batch_size` ({}): {updates} updates run and the last {} episodes are dropped", p.total_episodes, p.batch_size, p.total_episodes % p.batch_size),
            "not a multiple of batch_size",
        );
    }
    if p.learning_rate == 0.0 {
        v.warn("ppo.learning_rate", "`ppo.learning_rate` is 0: the policy will not change", "zero");
    }
    let updates = p.total_episodes / p.batch_size.max(1);

    // --- meta --------------------------------------------------------------------------------
    if let Every::N(every) = spec.meta.every {
        let produced = every as usize * spec.ppo.batch_size;
        if spec.meta.samples > produced {
            v.error(
                "meta.samples",
                format!("`meta.samples` ({}) is larger than the rollouts produced between two meta steps ({produced} = meta.every {every} x ppo.batch_size {})", spec.meta.samples, spec.ppo.batch_size),
                "too many samples",
            );
        }
        if every as usize >= updates && updates > 0 {
            v.warn(
                "meta.every",
                format!("`meta.every` is {every} but the run has only {updates} update(s): the rubric is never rewritten"),
                "no meta step will run",
            )
            .help
            .push("lower `meta.every`, raise `ppo.total_episodes`, or say `never`".into());
        }
    }
    // --- eval --------------------------------------------------------------------------------
    if let Every::N(e) = spec.eval.every
        && e as usize > updates
        && updates > 0
    {
        v.warn(
            "eval.every",
            format!("`eval.every` is {e} but the run has {updates} update(s): only the final evaluation runs"),
            "longer than the run",
        );
    }

    let mut longest_prompt = None;
    if let (Some(m), Some(t)) = (&policy_model, templates.get(&TemplateKind::Policy)) {
        let splits: Vec<(&str, &DataSource, u64, Split)> = std::iter::once(("task.train", &spec.task.train, data_seed, Split::Train))
            .chain(spec.task.test.as_ref().map(|t| ("task.test", t, spec.test_seed(), Split::Test)))
            .chain(spec.task.transfer.as_ref().map(|t| ("task.transfer", t, spec.test_seed(), Split::Test)))
            .collect();
        longest_prompt = prompts_fit(&mut v, spec, m, t, &splits);
    }
    // The policy's config, for memory estimates (a known model's is in the registry).
    let policy_config = policy_model.as_ref().and_then(|m| crate::model::config(m).ok().flatten());
    if let Some(c) = &policy_config {
        device_memory(&mut v, spec, c, longest_prompt);
    }

    let errors_after = diags.iter().filter(|d| d.is_error()).count();
    if errors_after > errors_before {
        return None;
    }
    Some(Inputs {
        train: train?,
        test,
        transfer,
        templates,
        rubric: rubric?,
        policy_model: policy_model?,
        judge_model: judge_model?,
        meta_model: meta_model?,
        elo_model: elo_model?,
        instrument_model: instrument_model?,
        cases,
        policy_config,
        longest_prompt_tokens: longest_prompt.map(prompt_tokens),
    })
}

/// Tokens of a prompt of `bytes`, bounded from above: byte-level BPE averages 3.5-4.5 bytes a
/// token on English, so a third of the bytes, plus the chat template's markers.
fn prompt_tokens(bytes: usize) -> usize {
    bytes.div_ceil(3) + 32
}

/// The shapes memory is estimated at; `None` for the prompt length when no prompt was rendered.
pub fn memory_shapes(spec: &Spec, longest_prompt_tokens: usize, accumulation: usize) -> crate::model::memory::Shapes {
    let p = &spec.ppo;
    let mini = (p.batch_size / p.num_mini_batches.max(1)).max(1);
    crate::model::memory::Shapes {
        micro_rows: (mini / accumulation.max(1)).max(1),
        seq: longest_prompt_tokens + p.response_length,
        rollout_rows: spec.runtime.rollout_batch.min(p.batch_size.max(spec.eval.samples)),
        precision: spec.runtime.precision,
    }
}

/// The run's memory estimate against `runtime.device_memory_gib`, when one is stated.
fn device_memory(v: &mut V, spec: &Spec, c: &crate::model::weights::LlamaConfig, longest_prompt: Option<usize>) {
    use crate::model::memory::{estimate, gib};
    let Some(limit) = spec.runtime.device_memory_gib else { return };
    let limit_bytes = (limit * (1u64 << 30) as f64) as u64;
    let prompt = longest_prompt.map(prompt_tokens).unwrap_or(0);
    let l = &spec.policy.lora;
    let critic = (spec.ppo.algorithm == crate::spec::Algorithm::Ppo).then_some(spec.ppo.critic);
    let at = |acc: usize| estimate(c, l.rank, &l.targets, critic, memory_shapes(spec, prompt, acc));
    // The estimate counts tensors, not the allocator: a measured CPU step took 22% more
    // (`mpo bench train --batch 4 --seq 512`: 8.2 GB peak RSS against 6.7 GB estimated).
    let needed = |acc: usize| {
        let p = at(acc).peak();
        p.saturating_add(p / 4)
    };
    let peak = needed(spec.ppo.gradient_accumulation_steps);
    if peak <= limit_bytes {
        return;
    }
    let mini = (spec.ppo.batch_size / spec.ppo.num_mini_batches.max(1)).max(1);
    let fits = (1..=mini).filter(|&a| mini.is_multiple_of(a)).find(|&a| needed(a) <= limit_bytes);
    let d = v.warn(
        "runtime.device_memory_gib",
        format!(
            "the run needs about {} of device memory at its micro-batch (with 25% headroom), more than the {limit} GiB stated here",
            gib(peak)
        ),
        "does not fit",
    );
    d.help.push(match fits {
        Some(a) => format!(
            "set `ppo.gradient_accumulation_steps: {a}` (about {} at that micro-batch); `mpo plan` shows the breakdown",
            gib(needed(a))
        ),
        None => format!(
            "even one row per micro-batch needs about {}: shorten `ppo.response_length`, lower the LoRA rank, or use a larger device",
            gib(needed(mini))
        ),
    });
}

/// Passes over the training prompts beyond which `check` warns.
const MAX_PASSES: f64 = 4.0;

/// Bytes a chat template adds around a user message (role markers, a default system prompt).
const CHAT_OVERHEAD_BYTES: usize = 512;
/// Records per split whose prompts are measured: those with the most text.
const LONGEST_RECORDS: usize = 8;

/// Every policy prompt and its response fit the policy model's context. Cheap first: a
/// byte-level BPE token is at least one byte, so a prompt's bytes (plus the chat template's)
/// bound its tokens; only when that bound is over the context are the longest prompts
/// tokenized with the model's own tokenizer and chat template, and an error is certain.
/// Returns the longest training prompt's bytes (with the system message).
fn prompts_fit(v: &mut V, spec: &Spec, model: &ModelRef, t: &TemplateFile, splits: &[(&str, &DataSource, u64, Split)]) -> Option<usize> {
    let response = spec.ppo.response_length;
    let system = spec.policy.system.as_deref().unwrap_or("");
    let mut longest_train = 0;
    let mut worst: Option<(usize, String, &str, usize)> = None; // (bytes, prompt, split, record)
    for &(field, src, seed, split) in splits {
        let Ok(data) = task::load(spec.task.kind, src, seed, split) else { continue };
        let text_len = |r: &J| r.as_object().map(|o| o.values().filter_map(J::as_str).map(str::len).sum::<usize>()).unwrap_or(0);
        let mut idx: Vec<usize> = (0..data.records.len()).collect();
        idx.sort_by_key(|&i| std::cmp::Reverse(text_len(&data.records[i])));
        for &i in idx.iter().take(LONGEST_RECORDS) {
            let Ok(p) = template::render(&t.path.display().to_string(), &t.text, &data.records[i]) else { continue };
            if split == Split::Train {
                longest_train = longest_train.max(p.len());
            }
            if worst.as_ref().is_none_or(|w| p.len() > w.0) {
                worst = Some((p.len(), p, field, i));
            }
        }
    }
    let (bytes, prompt, field, record) = worst?;
    // training's backward passes see training prompts only
    let longest = Some(longest_train + system.len());
    let Ok(context) = crate::model::context_length(model) else { return longest };
    if bytes + system.len() + CHAT_OVERHEAD_BYTES + response <= context {
        return longest;
    }
    let tokens = crate::model::tokenizer(model).ok().flatten().and_then(|tok| {
        let chat_override = spec.policy.chat_template.as_ref().and_then(|p| std::fs::read_to_string(p).ok());
        let mut messages = Vec::new();
        if !system.is_empty() {
            messages.push(crate::model::tokenizer::Message::new("system", system.to_string()));
        }
        messages.push(crate::model::tokenizer::Message::new("user", prompt.clone()));
        let chat = tok.apply_chat_template(&messages, true, chat_override.as_deref()).ok()?;
        tok.encode(&chat).ok().map(|ids| ids.len())
    });
    let help = "shorten `task.prompt`, lower `ppo.response_length`, or use a model with a longer context";
    match tokens {
        Some(n) if n + response > context => {
            v.error(
                "ppo.response_length",
                format!(
                    "the record at index {record} of `{field}` makes a {n}-token prompt; with {response} response tokens that is {} positions, more than the policy model's context of {context}",
                    n + response
                ),
                "does not fit",
            )
            .help
            .push(help.into());
        }
        Some(_) => {}
        None => {
            v.warn(
                "ppo.response_length",
                format!(
                    "the record at index {record} of `{field}` makes a prompt of {bytes} bytes: with {response} response tokens it may not fit the policy model's context of {context} (the tokenizer is not at hand to count: fetch the model)"
                ),
                "may not fit",
            )
            .help
            .push(help.into());
        }
    }
    longest
}

/// Tokens a judge needs per rubric item for its score line (`Item name: 3`, with a little slack).
const TOKENS_PER_ITEM_LINE: u32 = 12;
/// Item names meta steps may write are unknown when a spec is checked: assume this many bytes.
const ASSUMED_ITEM_NAME_BYTES: usize = 32;

/// Fields of a judge spec its backend never reads: written, they would look like settings
/// that take effect. (Checked on what was written, so a default is never reported.)
/// Whether two judges answer as the same model: one in-process model (by resolved reference),
/// or one server model name (no name: whatever the same URL variable serves).
fn same_judge(a: &JudgeSpec, am: Option<&ModelRef>, b: &JudgeSpec, bm: Option<&ModelRef>, policy: Option<&ModelRef>) -> bool {
    match (a.backend, b.backend) {
        (JudgeBackend::Local, JudgeBackend::Local) => am.or(policy).is_some() && am.or(policy) == bm.or(policy),
        (JudgeBackend::Openai, JudgeBackend::Openai) => match (&a.model, &b.model) {
            (Some(x), Some(y)) => x == y,
            (None, None) => a.base_url_env == b.base_url_env,
            _ => false,
        },
        _ => false,
    }
}

/// Whether `name` can be an environment variable's name (what a spec gives for URLs and keys).
fn is_env_var(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !name.starts_with(|c: char| c.is_ascii_digit())
}

/// `runtime.rollouts`: what each engine needs, and fields it would ignore.
/// `meta.partition_by`: every training record has a family; the families fit the run.
fn partition_checks(v: &mut V, spec: &Spec, kind: TaskKind, data_seed: u64) {
    let fields = &spec.meta.partition_by;
    if fields.is_empty() {
        return;
    }
    // A fixed-rubric run reads no meta setting (the arms of a sweep share them).
    if spec.meta.every == Every::Never {
        return;
    }
    if spec.meta.gate {
        v.error(
            "meta.gate",
            "`meta.gate` cannot check rubric families yet: its cases are scored under one rubric",
            "with meta.partition_by",
        )
        .help
        .push("remove `meta.gate`, or `meta.partition_by` for one rubric".into());
    }
    if spec.ppo.recenter_critic {
        v.error(
            "ppo.recenter_critic",
            "`ppo.recenter_critic` shifts every rollout's values at a rubric switch, and with rubric families one family's switch leaves the others' rewards as they were",
            "with meta.partition_by",
        )
        .help
        .push("remove `ppo.recenter_critic`, or `meta.partition_by` for one rubric".into());
    }
    let Ok(train) = task::load(kind, &spec.task.train, data_seed, Split::Train) else { return };
    match crate::meta::family::Partition::new(fields).keys(&train.records) {
        Err(e) => {
            let d = v.error(
                "meta.partition_by",
                format!("task.train {e}: every training record needs every field of `meta.partition_by`"),
                "a record without a family",
            );
            // What the records do have, so a misspelt or missing field is plain.
            if let Some(J::Object(first)) = train.records.first() {
                let have: Vec<String> = first.keys().map(|k| format!("`{k}`")).collect();
                d.help.push(format!("the training records have {}", have.join(", ")));
            }
            // The script reads MATH files (seven subjects); generated arithmetic is not one.
            if fields.iter().any(|f| f == "cluster") && kind == TaskKind::Math && spec.task.train.path.is_some() {
                d.help.push(
                    "`scripts/math_clusters.sh IN.jsonl OUT.jsonl` adds the reference's difficulty `cluster` (1-3) to MATH records".into(),
                );
            }
        }
        Ok(keys) if keys.len() > spec.ppo.batch_size * 4 => {
            v.warn(
                "meta.partition_by",
                format!(
                    "{} rubric families for {} rollouts per update: most families see few rollouts between meta steps, and a family with none keeps its rubric",
                    keys.len(),
                    spec.ppo.batch_size
                ),
                "many families",
            );
        }
        Ok(_) => {}
    }
}

fn rollouts_checks(v: &mut V, spec: &Spec, policy: Option<&ModelRef>) {
    use crate::spec::RolloutEngine;
    let r = &spec.runtime.rollouts;
    let server_fields = ["base_url_env", "api_key_env", "adapter_dir"];
    let written = |v: &V, k: &str| v.tree.at_path(&format!("runtime.rollouts.{k}")).is_some();
    match r.engine {
        RolloutEngine::InProcess | RolloutEngine::LlamaServer => {
            for k in server_fields {
                if written(v, k) {
                    v.warn(
                        &format!("runtime.rollouts.{k}"),
                        format!(
                            "`runtime.rollouts.{k}` is ignored: it is for a running vLLM or SGLang server, and the engine is `{}`",
                            r.engine.as_str()
                        ),
                        "ignored",
                    );
                }
            }
        }
        RolloutEngine::Vllm | RolloutEngine::Sglang => {}
    }
    if r.engine == RolloutEngine::InProcess {
        return;
    }
    if spec.ppo.temperature == 0.0 {
        v.warn(
            "ppo.temperature",
            "greedy rollouts on an engine: the engine reports probability 1 for every greedy token while the trainer's log-probs are of the model's distribution, so `rollouts.drift` measures nothing",
            "greedy",
        );
    }
    if r.engine == RolloutEngine::Sglang && spec.policy.lora.targets.contains(&crate::spec::LoraTarget::LmHead) {
        v.warn(
            "policy.lora.targets",
            "SGLang's LoRA target modules are the attention and MLP projections: a server started for this adapter will likely refuse `lm_head`",
            "`lm_head` with `runtime.rollouts.engine: sglang`",
        )
        .help
        .push("drop `lm_head` from `policy.lora.targets`, or roll out on vLLM or in process".into());
    }
    if r.engine == RolloutEngine::LlamaServer {
        if !matches!(policy, None | Some(ModelRef::Known { .. } | ModelRef::Gguf { .. })) {
            v.error(
                "runtime.rollouts.engine",
                "llama-server serves a GGUF model with a llama.cpp adapter, and the policy is not a GGUF",
                "needs a GGUF policy",
            )
            .help
            .push("serve a Hugging Face folder on vLLM or SGLang (`engine: vllm` or `sglang`), or convert it with llama.cpp's convert_hf_to_gguf.py".into());
        }
        let tied = policy.and_then(|m| crate::model::config(m).ok().flatten()).is_some_and(|c| c.tie_word_embeddings);
        if tied && spec.policy.lora.targets.contains(&crate::spec::LoraTarget::LmHead) {
            v.error(
                "policy.lora.targets",
                "llama-server cannot serve this LoRA: the policy ties its output layer to the embedding, and llama.cpp adapts no tied output layer",
                "`lm_head` with `runtime.rollouts.engine: llama_server`",
            )
            .help
            .push("drop `lm_head` from `policy.lora.targets`, or generate in process (`runtime.rollouts.engine: in_process`)".into());
        }
        if crate::engine::llama_server::find_binary().is_none() {
            v.warn("runtime.rollouts.engine", "llama-server is not built on this machine; `mpo run` will need it", "not found")
                .help
                .push("`scripts/setup_llama_server.sh` builds it into ~/.cache/mpo (or point `MPO_LLAMA_SERVER` at a binary)".into());
        }
        return;
    }
    match &r.base_url_env {
        None => {
            v.error(
                "runtime.rollouts",
                format!("`runtime.rollouts.engine: {}` needs `base_url_env`: the variable holding the server's URL", r.engine.as_str()),
                "no server named",
            )
            .help
            .push("e.g. `base_url_env: MPO_ROLLOUT_URL`, then `export MPO_ROLLOUT_URL=http://host:8000`".into());
        }
        Some(name) if !is_env_var(name) => {
            v.error(
                "runtime.rollouts.base_url_env",
                format!("`runtime.rollouts.base_url_env` must name an environment variable, found `{name}`"),
                "not a variable name",
            );
        }
        Some(name) if std::env::var_os(name).is_none() => {
            v.warn(
                "runtime.rollouts.base_url_env",
                format!("environment variable `{name}` is not set; `mpo run` will need it"),
                "not set in this shell",
            )
            .help
            .push(format!("export {name}=http://host:port"));
        }
        Some(_) => {}
    }
    if let Some(k) = &r.api_key_env
        && !is_env_var(k)
    {
        v.error(
            "runtime.rollouts.api_key_env",
            "`runtime.rollouts.api_key_env` must name an environment variable, found a value that is not a variable name",
            "not a variable name",
        )
        .help
        .push("secrets never go in the spec: put the value in an environment variable and name it here".into());
    }
    if r.adapter_dir.is_none() {
        v.error(
            "runtime.rollouts",
            format!(
                "`runtime.rollouts.engine: {}` needs `adapter_dir`: a folder mpo writes each update's adapter into and the server reads",
                r.engine.as_str()
            ),
            "no adapter folder",
        )
        .help
        .push("a path on a filesystem both share, e.g. `adapter_dir: /shared/scratch/mpo-adapters`".into());
    }
}

/// `eval.instrument`: never the training judge unless said so, a score that is a share, and a
/// reading its answers can give.
fn instrument_checks(v: &mut V, spec: &Spec, i: &InstrumentSpec, same_as_training: bool, rubric: Option<&Rubric>) {
    if same_as_training && !i.training_judge {
        v.error(
            "eval.instrument.judge",
            "the instrument's judge is the training judge (`reward.judge`): the policies were optimised against it, so it favours them, and the arms would be measured by what trained them",
            "the training judge",
        )
        .help
        .push("name a different (best a stronger) model, e.g. `{backend: openai, model: Qwen/Qwen2.5-72B-Instruct, base_url_env: MPO_INSTRUMENT_URL}`; to use it anyway, knowingly, add `training_judge: true` (every summary then says so)".into());
    }
    if i.training_judge && !same_as_training {
        v.warn(
            "eval.instrument.training_judge",
            "`training_judge: true`, but the instrument's judge is not the training judge",
            "not needed",
        )
        .help
        .push("remove `training_judge` (summaries would say the scores come from the training judge)".into());
    }
    if i.aggregate == Aggregate::Sum {
        v.error(
            "eval.instrument.aggregate",
            "`sum` gives points, not a share: the instrument's score is averaged and compared across runs as a share of the rubric's range",
            "not a share",
        )
        .help
        .push("use `item_mean` (each item a share of its range, equal weights) or `range_share`".into());
    }
    if i.answer == AnswerMode::Guided && matches!(i.extraction, Extraction::Json) {
        v.error(
            "eval.instrument.answer",
            "`answer: guided` makes the judge write `Item: score` lines, which `extraction: {method: json}` cannot read",
            "guided lines, not JSON",
        )
        .help
        .push("with JSON answers write `answer: free`; guided answers go with `extraction: {method: regex}`".into());
    }
    if let Extraction::Regex { pattern } = &i.extraction
        && let Err(e) = compiled(pattern)
    {
        let msg = e.to_string().lines().last().unwrap_or("invalid").to_string();
        v.error("eval.instrument.extraction.pattern", format!("invalid regular expression: {msg}"), "does not compile");
    }
    if spec.task.test.is_none() {
        v.error("eval.instrument", "`eval.instrument` scores held-out responses, and the task has no `test` split", "needs task.test")
            .help
            .push("add `task.test: {path: ...}`, or remove `eval.instrument`".into());
    }
    if let Some(r) = rubric
        && r.items.len() > 12
    {
        v.warn(
            "eval.instrument.rubric",
            format!("the instrument rubric has {} items; judges follow long rubrics less reliably", r.items.len()),
            "long rubric",
        );
    }
}

fn ignored_judge_fields(v: &mut V, path: &str, js: &JudgeSpec) {
    const SERVER: [&str; 7] = ["base_url_env", "api_key_env", "api", "dialect", "concurrency", "timeout_s", "max_retries"];
    let ignored: &[&str] = match js.backend {
        JudgeBackend::Local => &[&SERVER[..], &["replay_from"]].concat(),
        JudgeBackend::Openai => &["replay_from"],
        JudgeBackend::Replay => &["base_url_env", "api_key_env", "concurrency", "timeout_s", "max_retries"],
    };
    let Some(node) = v.tree.at_path(path) else { return };
    // A field the meta judge inherited is reported once, at the reward judge that wrote it.
    let inherited = |f: &str| {
        path == "meta.judge"
            && v.tree.at_path(&format!("reward.judge.{f}")).is_some_and(|r| Some(r.origin) == node.get(f).map(|n| n.origin))
    };
    let written: Vec<String> = ignored.iter().filter(|f| node.get(f).is_some() && !inherited(f)).map(|f| f.to_string()).collect();
    let backend = name_of(&js.backend);
    for f in written {
        let what = match js.backend {
            JudgeBackend::Local => "the in-process judge talks to no server",
            JudgeBackend::Openai => "`replay_from` is read only by `backend: replay`",
            JudgeBackend::Replay => "a replay judge answers from its cache and calls no server",
        };
        v.error(&format!("{path}.{f}"), format!("`{path}.{f}` is not read by `backend: {backend}`: {what}"), "ignored by this backend")
            .help
            .push(format!("remove `{f}`, or set `{path}.backend` to the backend it belongs to (`openai` for a server)"));
    }
}

/// `extraction: json`: the schema must reach the server, and `reward.judge.max_tokens` must hold
/// a complete answer with rationales worth reading, for the initial rubric and for the largest
/// one meta steps may write.
fn structured_budget(v: &mut V, spec: &Spec, rubric: Option<&Rubric>) {
    let j = &spec.reward.judge;
    if !j.sends_schemas() {
        v.warn(
            "reward.extraction",
            "`extraction: {method: json}` on `/v1/completions` with `dialect: openai` sends no schema (OpenAI's completions endpoint has no `response_format`): answers are unconstrained and may not parse",
            "schema not sent",
        )
        .help
        .push("use `reward.judge.api: chat`, or the server's own dialect (`reward.judge.dialect: llama_cpp`, `vllm` or `sglang`)".into());
    }
    let assumed = "x".repeat(ASSUMED_ITEM_NAME_BYTES);
    let (names, which): (Vec<&str>, String) = if spec.meta.every == Every::Never {
        match rubric {
            Some(r) => (r.items.iter().map(|i| i.name.as_str()).collect(), format!("the {}-item rubric", r.items.len())),
            None => return,
        }
    } else {
        (
            vec![assumed.as_str(); spec.meta.max_items],
            format!(
                "the largest rubric meta steps may write (`meta.max_items`: {}, names of ~{ASSUMED_ITEM_NAME_BYTES} bytes)",
                spec.meta.max_items
            ),
        )
    };
    let b = crate::reward::score::answer_budget(crate::reward::score::AnswerShape::Json, names, j.max_tokens);
    if b.rationale_chars < crate::reward::score::MIN_RATIONALE_CHARS {
        let what = if b.most_tokens > j.max_tokens {
            format!(
                "cannot hold a complete JSON answer for {which} even with empty rationales (about {} tokens): answers would be cut off and never scored",
                b.most_tokens
            )
        } else {
            format!(
                "leaves {} characters per rationale in a JSON answer for {which}: the schema allows so little that the judge cannot explain its scores",
                b.rationale_chars
            )
        };
        v.warn("reward.judge.max_tokens", format!("`reward.judge.max_tokens` ({}) {what}", j.max_tokens), "too few tokens").help.push(
            format!(
                "raise it to at least {} (a complete answer with {}-character rationales)",
                b.least_tokens,
                crate::reward::score::MIN_RATIONALE_CHARS
            ),
        );
    }
}
/// Compile a user regex once per process (a sweep checks the same pattern in every cell).
fn compiled(pattern: &str) -> Result<regex::Regex, regex::Error> {
    static CACHE: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, Result<regex::Regex, regex::Error>>>> =
        std::sync::OnceLock::new();
    let mut c = CACHE.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    c.entry(pattern.to_string()).or_insert_with(|| regex::Regex::new(pattern)).clone()
}

/// Write a resolved path back into the spec field it came from.
fn set_path(spec: &mut Spec, field: &str, p: PathBuf) {
    match field {
        "task.prompt" => spec.task.prompt = p,
        "reward.rubric" => spec.reward.rubric = p,
        "reward.prompt" => spec.reward.prompt = p,
        "eval.elo.prompt" => spec.eval.elo.prompt = Some(p),
        "eval.instrument.rubric" | "eval.instrument.prompt" => {
            if let Some(i) = spec.eval.instrument.as_mut() {
                if field.ends_with("rubric") {
                    i.rubric = p;
                } else {
                    i.prompt = p;
                }
            }
        }
        _ => {
            if let Some(st) = spec.meta.stages.as_mut() {
                match field {
                    "meta.stages.prescreen" => st.prescreen = Some(p),
                    "meta.stages.analyze" => st.analyze = p,
                    "meta.stages.refine" => st.refine = p,
                    "meta.stages.merge" => st.merge = Some(p),
                    _ => {}
                }
            }
        }
    }
}
