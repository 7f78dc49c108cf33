//! The plan: a checked spec compiled into exactly what a run will do.
//!
//! `compile` is a pure function of a [`Resolved`] spec: it fixes the schedule (which updates
//! run a meta step, an evaluation, a checkpoint), records the content hashes of every input,
//! and estimates the work. The plan's hash is the run id, so two specs that mean the same run
//! share results, and a change to any template or data file makes a new run. What does not
//! change results (the output root, thread count, descriptions, where files live) is left out
//! of the hash.

mod files;
mod print;
mod wall_time;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value as J;

pub use files::{PlanFileError, relative_path_help};
pub use print::{judge as describe_judge, render_summary, render_sweep_table};
pub use wall_time::{Phase, PhaseTime, WallTime, duration};

use crate::model::registry::ModelRef;
use crate::resolve::Resolved;
use crate::spec::{Every, JudgeBackend, MixSpec, Spec};
use crate::template::TemplateKind;

/// Bumped when the plan's shape or meaning changes.
pub const PLAN_FORMAT: u32 = 1;

/// A fully resolved, content-hashed execution plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub format: u32,
    /// Short hash of the plan's identity: results go to `<root>/<name>/<run_id>/`.
    pub run_id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell: Option<CellInfo>,
    /// The resolved spec (paths resolved, defaults filled in, no sweep section).
    pub spec: Spec,
    pub inputs: PlanInputs,
    pub schedule: Schedule,
    pub estimates: Estimates,
}

/// Which sweep cell a plan is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellInfo {
    pub index: usize,
    pub label: String,
    pub factors: Vec<(String, J)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanInputs {
    pub train: DataInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<DataInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<DataInfo>,
    /// Template kind -> file and content hash.
    pub templates: BTreeMap<String, FileInfo>,
    pub rubric_v0: RubricInfo,
    pub models: Models,
    /// The case file `meta.gate` scores merged rubrics on (only when the gate is on: then its
    /// content is part of the run's identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cases: Option<FileInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataInfo {
    /// The file, or `generate:arithmetic`.
    pub source: String,
    pub sha256: String,
    /// Records available after loading.
    pub records: usize,
    /// Records a run uses (after `limit`).
    pub used: usize,
    /// Records dropped on load (e.g. Scruples without an action).
    pub dropped: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileInfo {
    pub path: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RubricInfo {
    /// `Name (min-max)` per item.
    pub items: Vec<String>,
    pub min_score: i64,
    pub max_score: i64,
    pub sha256: String,
}

impl RubricInfo {
    /// The item names, without their ranges.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.items.iter().map(|it| it.rsplit_once(" (").map_or(it.as_str(), |(name, _)| name))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Models {
    pub policy: ModelRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<ModelRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<ModelRef>,
    /// The in-process model of `eval.elo.judge` (not part of the run's identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elo: Option<ModelRef>,
    /// The in-process model of `eval.instrument.judge`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instrument: Option<ModelRef>,
}

/// What happens when. Updates are numbered from 1; an event "at" update u happens after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub updates: u32,
    pub episodes_per_update: u32,
    /// Meta steps: the rubric they produce is used from the next update on. None after the
    /// last update (nothing would use it).
    pub meta_at: Vec<u32>,
    /// Evaluations of the trained policy; with any, the base policy is evaluated before update 1.
    pub eval_at: Vec<u32>,
    pub checkpoint_at: Vec<u32>,
}

/// Upper-bound work estimates (responses may stop early; retries are not counted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Estimates {
    pub episodes: u64,
    pub policy_tokens: u64,
    pub judge_calls: u64,
    pub judge_tokens: u64,
    pub meta_calls: u64,
    pub eval_episodes: u64,
    /// Device memory (see `model::memory`), when the policy's architecture is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryPlan>,
    /// Wall time from the throughput earlier runs of the same shape measured
    /// (`results::throughput`): filled in by `mpo plan` and `mpo sweep`, which can see the
    /// results; `compile` cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_time: Option<WallTime>,
}

/// Device memory at the spec's micro-batch, and without gradient accumulation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryPlan {
    /// Rows per backward pass at the spec's `gradient_accumulation_steps`.
    pub micro_rows: usize,
    /// Longest training prompt (bounded from above) plus `ppo.response_length`.
    pub seq: usize,
    pub at_spec: crate::model::memory::Memory,
    /// With `gradient_accumulation_steps: 1` (the whole mini-batch in one backward pass).
    pub without_accumulation: crate::model::memory::Memory,
}

/// Compile a resolved spec into its plan.
pub fn compile(r: &Resolved) -> Plan {
    let spec = &r.spec;
    let inputs = &r.inputs;
    let p = &spec.ppo;
    let updates = (p.total_episodes / p.batch_size.max(1)) as u32;
    let multiples = |every: Every, include_last: bool| -> Vec<u32> {
        let mut v: Vec<u32> = match every.interval() {
            Some(n) => (1..=updates).filter(|u| u % n == 0).collect(),
            None => Vec::new(),
        };
        if include_last && v.last() != Some(&updates) && updates > 0 {
            v.push(updates);
        }
        v
    };
    let meta_at: Vec<u32> = multiples(spec.meta.every, false).into_iter().filter(|&u| u < updates).collect();
    let eval_at = if spec.eval.every == Every::Never { Vec::new() } else { multiples(spec.eval.every, true) };
    let checkpoint_at = multiples(spec.runtime.checkpoint_every, true);
    let schedule = Schedule { updates, episodes_per_update: p.batch_size as u32, meta_at, eval_at, checkpoint_at };

    let episodes = updates as u64 * p.batch_size as u64;
    let judged_share = match &spec.reward.mix {
        MixSpec::Coin { verifier_prob, .. } => 1.0 - verifier_prob,
        MixSpec::Weighted { judge_weight, .. } => {
            if *judge_weight == 0.0 {
                0.0
            } else {
                1.0
            }
        }
    };
    let judge_calls = (episodes as f64 * judged_share).ceil() as u64;
    let meta_steps = schedule.meta_at.len() as u64;
    let prescreen = spec.meta.stages.as_ref().is_some_and(|s| s.prescreen.is_some()) as u64;
    // per step: analyses and refinements per sample and a merge, or one of each (joint); with
    // rubric families, per family that has rollouts (the count printed says so)
    let per_step = match spec.meta.review {
        crate::spec::MetaReview::PerSample => 2 * spec.meta.samples as u64 + 1,
        crate::spec::MetaReview::Joint => 2,
    };
    let meta_calls = meta_steps * (per_step + prescreen);
    let used = |d: &Option<crate::task::DataSummary>, s: &Option<crate::spec::DataSource>| {
        d.as_ref().map(|t| t.len.min(s.as_ref().and_then(|s| s.limit).unwrap_or(usize::MAX))).unwrap_or(0)
    };
    let per_eval =
        spec.eval.samples.min(used(&inputs.test, &spec.task.test)) + spec.eval.samples.min(used(&inputs.transfer, &spec.task.transfer));
    // The trained policy at each planned update, and the base policy once before the first.
    let evals = if schedule.eval_at.is_empty() { 0 } else { schedule.eval_at.len() as u64 + 1 };
    let eval_episodes = evals * per_eval as u64;
    // Meta stages answer with `meta.max_tokens` whichever judge serves them.
    let meta_judge_tokens = spec.meta.max_tokens as u64;
    let attempts = 1 + spec.reward.failure.retries as u64;
    let estimates = Estimates {
        episodes,
        policy_tokens: (episodes + eval_episodes) * p.response_length as u64,
        judge_calls,
        judge_tokens: judge_calls * attempts * spec.reward.judge.max_tokens as u64 + meta_calls * meta_judge_tokens,
        meta_calls,
        eval_episodes,
        memory: inputs.policy_config.as_ref().map(|c| {
            let prompt = inputs.longest_prompt_tokens.unwrap_or(0);
            let critic = (p.algorithm == crate::spec::Algorithm::Ppo).then_some(p.critic);
            let l = &spec.policy.lora;
            let at = |acc| {
                let shapes = crate::resolve::memory_shapes(spec, prompt, acc);
                (shapes, crate::model::memory::estimate(c, l.rank, &l.targets, critic, shapes))
            };
            let (shapes, at_spec) = at(p.gradient_accumulation_steps);
            MemoryPlan { micro_rows: shapes.micro_rows, seq: shapes.seq, at_spec, without_accumulation: at(1).1 }
        }),
        wall_time: None,
    };

    let data_info = |d: &crate::task::DataSummary, src: &crate::spec::DataSource| DataInfo {
        source: match (&src.path, &src.generate) {
            (Some(p), _) => p.display().to_string(),
            _ => "generate:arithmetic".into(),
        },
        sha256: d.sha256.clone(),
        records: d.len,
        used: d.len.min(src.limit.unwrap_or(usize::MAX)),
        dropped: d.dropped,
    };
    let rubric_md = inputs.rubric.to_markdown();
    let plan_inputs = PlanInputs {
        train: data_info(&inputs.train, &spec.task.train),
        test: inputs.test.as_ref().zip(spec.task.test.as_ref()).map(|(d, s)| data_info(d, s)),
        transfer: inputs.transfer.as_ref().zip(spec.task.transfer.as_ref()).map(|(d, s)| data_info(d, s)),
        templates: inputs
            .templates
            .iter()
            .map(|(k, t)| (k.as_str().to_string(), FileInfo { path: t.path.display().to_string(), sha256: t.sha256.clone() }))
            .collect(),
        rubric_v0: RubricInfo {
            items: inputs.rubric.items.iter().map(|i| format!("{} ({}-{})", i.name, i.min, i.max)).collect(),
            min_score: inputs.rubric.min_score(),
            max_score: inputs.rubric.max_score(),
            sha256: crate::hash::sha256_hex(rubric_md.as_bytes()),
        },
        models: Models {
            policy: inputs.policy_model.clone(),
            judge: if spec.reward.judge.backend == JudgeBackend::Local { inputs.judge_model.clone() } else { None },
            meta: if spec.meta.every == Every::Never { None } else { inputs.meta_model.clone() },
            elo: if spec.eval.elo.judge.as_ref().is_some_and(|j| j.backend == JudgeBackend::Local) {
                inputs.elo_model.clone()
            } else {
                None
            },
            instrument: if spec.eval.instrument.as_ref().is_some_and(|i| i.judge.backend == JudgeBackend::Local) {
                inputs.instrument_model.clone()
            } else {
                None
            },
        },
        cases: inputs
            .cases
            .as_ref()
            .filter(|_| spec.meta.gate)
            .map(|t| FileInfo { path: t.path.display().to_string(), sha256: t.sha256.clone() }),
    };
    let mut plan = Plan {
        format: PLAN_FORMAT,
        run_id: String::new(),
        name: spec.name.clone(),
        cell: r.cell.as_ref().map(|c| CellInfo { index: c.index, label: c.label.clone(), factors: c.factors.clone() }),
        spec: spec.clone(),
        inputs: plan_inputs,
        schedule,
        estimates,
    };
    plan.run_id = run_id(&plan);
    plan
}

/// The identity of a plan: what determines its results. Paths, the output root, the thread
/// count, descriptions and the cell label are not part of it (contents are, by hash).
pub fn identity(plan: &Plan) -> J {
    let mut v = serde_json::to_value(plan).expect("plan serializes");
    let o = v.as_object_mut().expect("object");
    o.remove("run_id");
    o.remove("cell");
    o.remove("estimates");
    if let Some(spec) = o.get_mut("spec").and_then(J::as_object_mut) {
        for k in ["$schema", "output", "description"] {
            spec.remove(k);
        }
        remove_path(spec, &["runtime", "threads"]);
        remove_path(spec, &["runtime", "device_memory_gib"]);
        // Which engine generates changes the rollouts; where it is and how it is reached do not.
        for k in ["base_url_env", "api_key_env", "adapter_dir", "concurrency", "timeout_s", "max_retries"] {
            remove_path(spec, &["runtime", "rollouts", k]);
        }
        for p in [
            &["task", "prompt"][..],
            &["task", "train", "path"],
            &["task", "test", "path"],
            &["reward", "rubric"],
            &["reward", "prompt"],
            &["reward", "cases"],
            &["eval", "elo", "prompt"],
            // a tournament's judge rates runs after the fact: it decides nothing in them
            &["eval", "elo", "judge"],
            &["eval", "instrument", "rubric"],
            &["eval", "instrument", "prompt"],
            &["meta", "stages"],
        ] {
            remove_path(spec, p);
        }
    }
    // A model named by path is identified by its content digest: a moved folder keeps the
    // id, replaced weights change it. The written reference is then only where it was.
    let by_content = |m: Option<&ModelRef>| matches!(m, Some(ModelRef::HfDir { .. } | ModelRef::Gguf { .. }));
    let models = &plan.inputs.models;
    if let Some(spec) = o.get_mut("spec").and_then(J::as_object_mut) {
        if by_content(Some(&models.policy)) {
            remove_path(spec, &["policy", "model"]);
        }
        if by_content(models.judge.as_ref()) {
            remove_path(spec, &["reward", "judge", "model"]);
        }
        if by_content(models.meta.as_ref()) {
            remove_path(spec, &["meta", "judge", "model"]);
        }
        if by_content(models.instrument.as_ref()) {
            remove_path(spec, &["eval", "instrument", "judge", "model"]);
        }
        // A fixed-rubric run never reads its meta settings (nor re-centres its critic, which
        // happens only at a rubric switch): arms of two sweeps that differ in them share it.
        if plan.spec.meta.every == Every::Never {
            spec.remove("meta");
            remove_path(spec, &["ppo", "recenter_critic"]);
        }
    }
    if let Some(inputs) = o.get_mut("inputs").and_then(J::as_object_mut) {
        if let Some(m) = inputs.get_mut("models").and_then(J::as_object_mut) {
            for (_, r) in m.iter_mut() {
                if let Some(r) = r.as_object_mut()
                    && r.get("kind").and_then(J::as_str).is_some_and(|k| k == "hf_dir" || k == "gguf")
                {
                    r.remove("path");
                }
            }
        }
        if plan.spec.meta.every == Every::Never
            && let Some(t) = inputs.get_mut("templates").and_then(J::as_object_mut)
        {
            for k in [TemplateKind::Prescreen, TemplateKind::Analyze, TemplateKind::Refine, TemplateKind::Merge] {
                t.remove(k.as_str());
            }
        }
        if plan.spec.meta.every == Every::Never {
            inputs.remove("cases");
        }
        for split in ["train", "test"] {
            if let Some(d) = inputs.get_mut(split).and_then(J::as_object_mut) {
                d.remove("source");
            }
        }
        remove_path(inputs, &["cases", "path"]);
        remove_path(inputs, &["models", "elo"]);
        if let Some(t) = inputs.get_mut("templates").and_then(J::as_object_mut) {
            for (_, f) in t.iter_mut() {
                if let Some(f) = f.as_object_mut() {
                    f.remove("path");
                }
            }
        }
    }
    v
}

fn remove_path(o: &mut serde_json::Map<String, J>, path: &[&str]) {
    match path {
        [] => {}
        [last] => {
            o.remove(*last);
        }
        [first, rest @ ..] => {
            if let Some(c) = o.get_mut(*first).and_then(J::as_object_mut) {
                remove_path(c, rest);
            }
        }
    }
}

impl Plan {
    /// The arm a run belongs to: its sweep cell's factors other than `runtime.seed`
    /// (`(base)` outside a sweep). `mpo report` groups runs by it.
    pub fn arm(&self) -> String {
        let f: Vec<String> = self
            .cell
            .iter()
            .flat_map(|c| c.factors.iter())
            .filter(|(k, _)| k != "runtime.seed")
            .map(|(k, v)| format!("{k}={}", v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
            .collect();
        if f.is_empty() { "(base)".into() } else { f.join(" ") }
    }

    /// What the runs of one arm share, hashed (12 hex digits): the plan's identity without
    /// `runtime.seed` and what that seed alone decides (the generated training split, when
    /// `task.seed` is unset). Runs with the same `arm_id` differ only by their seed.
    pub fn arm_id(&self) -> String {
        let mut v = identity(self);
        if let Some(o) = v.as_object_mut() {
            if let Some(spec) = o.get_mut("spec").and_then(J::as_object_mut) {
                remove_path(spec, &["runtime", "seed"]);
            }
            if self.spec.task.seed.is_none()
                && self.spec.task.train.generate.is_some()
                && let Some(inputs) = o.get_mut("inputs").and_then(J::as_object_mut)
            {
                remove_path(inputs, &["train", "sha256"]);
            }
        }
        crate::hash::sha256_json(&v)[..12].to_string()
    }
}

/// A small math plan with server judges (no model loads), under `overrides`: for tests.
#[cfg(test)]
pub fn test_plan(overrides: &[&str]) -> Plan {
    let text = "name: t\ntask: {kind: math, train: {generate: {count: 64}}, test: {generate: {count: 8}}, prompt: prompt_templates/math/policy.j2}\n\
                policy: {model: tiny-random-llama}\n\
                reward: {judge: {backend: openai, base_url_env: MPO_TEST_NEVER_SET_JUDGE_URL, max_tokens: 200}, rubric: prompt_templates/math/rubric_v0.md, prompt: prompt_templates/math/judge.j2}\n\
                meta: {judge: {backend: openai, base_url_env: MPO_TEST_NEVER_SET_JUDGE_URL}, samples: 2, stages: \
                {analyze: prompt_templates/meta/analyze.j2, refine: prompt_templates/meta/refine.j2, merge: prompt_templates/meta/merge.j2}}\n\
                ppo: {batch_size: 8, num_mini_batches: 2, num_ppo_epochs: 1, total_episodes: 16, response_length: 6}\n\
                runtime: {rollout_batch: 8}\n";
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    let loaded = crate::resolve::load_str(std::path::Path::new("t.yaml"), text, &overrides);
    assert!(!loaded.has_errors(), "{:?}", loaded.diags);
    crate::plan::compile(&loaded.runs[0])
}

/// The run id: the first 12 hex digits of the sha256 of the canonical identity JSON.
pub fn run_id(plan: &Plan) -> String {
    crate::hash::sha256_json(&identity(plan))[..12].to_string()
}
