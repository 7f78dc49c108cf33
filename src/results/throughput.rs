//! Wall time from measured throughput: the phase times that earlier runs recorded in their
//! `metrics.jsonl`, taken only from runs whose work had the same shape as the plan's (the same
//! policy, shapes and backend for generation and PPO; the same judge, prompt and batch for
//! scoring; ...), scaled to the plan's counts of updates, judge calls, meta steps and
//! evaluations. The range spans the fastest and the slowest measured unit of each phase.
//!
//! A short run on the target machine (two updates of the same spec, `ppo.total_episodes`
//! lowered: episodes do not enter any phase's key) or the first finished cell of a sweep is
//! what makes the estimate of the rest known. Nothing here is guessed from FLOP counts: a phase
//! no matching run measured stays unknown, and the total with it.

use std::path::{Path, PathBuf};

use serde_json::Value as J;

use super::RunDir;
use super::metrics::MetricsRow;
use crate::plan::{Phase, PhaseTime, Plan, WallTime};

/// A run that recorded at least one update, with what it was measured on.
pub struct MeasuredRun {
    pub dir: PathBuf,
    plan: Plan,
    rows: Vec<MetricsRow>,
    warmup_s: Option<f64>,
    /// Where it ran (`cpu, Intel Xeon ..., 2 threads`, or the GPU adapter), for the printout.
    pub machine: String,
}

/// The runs under each of `roots`: a results root (`ROOT/NAME/RUN_ID/`), one sweep's or
/// spec's folder (`ROOT/NAME/`) or a run folder, each run with what it set aside in
/// `superseded/` (a restart's or a resume's updates measured the same work). Only runs with a
/// plan and at least one metrics row count. A directory that cannot be read as a run of this
/// mpo is passed over: an estimate is made from what can be read, and names the runs it used.
pub fn scan(roots: &[PathBuf]) -> Vec<MeasuredRun> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<MeasuredRun>) {
        if dir.join("plan.json").is_file() {
            out.extend(subdirs(&dir.join("superseded")).iter().filter_map(|d| measured(d)));
            out.extend(measured(dir));
        } else if depth > 0 {
            for d in subdirs(dir) {
                walk(&d, depth - 1, out);
            }
        }
    }
    let mut out = Vec::new();
    for root in roots {
        walk(root, 2, &mut out);
    }
    out.sort_by(|a, b| a.dir.cmp(&b.dir));
    out.dedup_by(|a, b| a.dir == b.dir);
    out
}

fn subdirs(p: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(p).map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect()).unwrap_or_default();
    v.sort();
    v
}

fn measured(run: &Path) -> Option<MeasuredRun> {
    let dir = RunDir::open(run).ok()?;
    let plan = dir.plan().ok()?;
    let rows = dir.metrics().ok()?;
    if rows.is_empty() {
        return None;
    }
    let manifest = dir.manifest();
    let machine = match &manifest {
        Some(m) => match (&m.adapter, &m.host) {
            (Some(a), _) => format!("{} ({})", m.backend, a.name),
            (None, Some(h)) => format!("{} ({}, {} threads)", m.backend, h.cpu, h.threads),
            (None, None) => format!("{} ({})", m.backend, m.device),
        },
        None => plan.spec.runtime.backend.as_str().to_string(),
    };
    let warmup_s = manifest.as_ref().map(|m| m.warmup_s).filter(|w| *w > 0.0);
    Some(MeasuredRun { dir: run.to_path_buf(), plan, rows, warmup_s, machine })
}

/// What sets a phase's speed, read from a plan: two plans whose keys are equal do the phase's
/// unit of work alike.
type Key = fn(&Plan) -> J;
/// A metrics row's seconds per unit of a phase (none when the row did not measure one).
type Unit = fn(&MetricsRow) -> Option<f64>;

/// The plan's wall time at the rates of the matching runs in `runs`.
pub fn estimate(plan: &Plan, runs: &[MeasuredRun]) -> WallTime {
    let sc = &plan.schedule;
    let e = &plan.estimates;
    let evals = sc.eval_at.len() as u64;
    // (phase, its key, per-unit seconds of one row, units at the low end, at the high end)
    let phases: [(Phase, Key, Unit, u64, u64); 6] = [
        (Phase::Startup, policy_key, |_| None, 1, 1),
        (Phase::Generate, policy_key, |r| r.time_s.generate, sc.updates as u64, sc.updates as u64),
        (Phase::Judge, judge_key, judge_seconds_per_call, e.judge_calls, e.judge_calls),
        (Phase::Ppo, policy_key, |r| r.time_s.ppo, sc.updates as u64, sc.updates as u64),
        (Phase::Meta, meta_key, meta_seconds, sc.meta_at.len() as u64, sc.meta_at.len() as u64),
        // the base policy's evaluation comes from the cache when another run made it
        (Phase::Eval, eval_key, |r| r.eval.as_ref().and(r.time_s.eval), evals, if evals > 0 { evals + 1 } else { 0 }),
    ];
    let mut used: Vec<PathBuf> = Vec::new();
    let mut machines: Vec<String> = Vec::new();
    let phases = phases
        .into_iter()
        .map(|(phase, key, per_unit, low_units, high_units)| {
            let want = key(plan);
            let mut samples: Vec<f64> = Vec::new();
            for run in runs.iter().filter(|r| key(&r.plan) == want) {
                let before = samples.len();
                match phase {
                    Phase::Startup => samples.extend(run.warmup_s),
                    _ => samples.extend(run.rows.iter().filter_map(per_unit).filter(|s| s.is_finite() && *s >= 0.0)),
                }
                if samples.len() > before && high_units > 0 {
                    if !used.contains(&run.dir) {
                        used.push(run.dir.clone());
                    }
                    if !machines.contains(&run.machine) {
                        machines.push(run.machine.clone());
                    }
                }
            }
            let lo = samples.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = samples.iter().copied().fold(0.0, f64::max);
            PhaseTime {
                phase,
                units: high_units,
                seconds: (!samples.is_empty()).then_some((lo * low_units as f64, hi * high_units as f64)),
                samples: samples.len(),
            }
        })
        .collect();
    WallTime { phases, measured_by: used.iter().map(|p| p.display().to_string()).collect(), machines }
}

/// A row's reward-judge seconds per call the judge answered (cache hits cost no judge time).
fn judge_seconds_per_call(r: &MetricsRow) -> Option<f64> {
    let answered = r.tokens.reward_judge.calls.saturating_sub(r.tokens.reward_judge.cached);
    (answered > 0).then(|| r.time_s.judge.map(|s| s / answered as f64)).flatten()
}

/// A row's meta-step seconds, when the judge answered its calls (rows that do not count their
/// calls, written before 2026-12-06, cannot say and are passed over).
fn meta_seconds(r: &MetricsRow) -> Option<f64> {
    r.meta.as_ref().filter(|m| m.calls.unwrap_or(0) > m.cached.unwrap_or(0)).and(r.time_s.meta)
}

/// What no phase's speed depends on, wherever it stands in a picked object: when a phase runs,
/// seeds, the device index, the tournament (`mpo eval --elo`, after the run).
const ASIDE: &[&str] = &["every", "checkpoint_every", "seed", "device", "elo"];

/// Generation and PPO: the policy, its prompt template and shapes (not the training prompts:
/// another draw of the same task takes as long).
const POLICY: &[&str] = &[
    "/inputs/models/policy",
    "/inputs/templates/policy/sha256",
    "/spec/task/kind",
    "/spec/policy",
    "/spec/ppo/algorithm",
    "/spec/ppo/batch_size",
    "/spec/ppo/response_length",
    "/spec/ppo/temperature",
    "/spec/ppo/num_ppo_epochs",
    "/spec/ppo/num_mini_batches",
    "/spec/ppo/gradient_accumulation_steps",
    "/spec/ppo/critic",
    "/spec/ppo/group_size",
];

/// Scoring: the judge, what it is asked and how many answers it is asked at once.
const JUDGE: &[&str] = &[
    "/spec/reward/judge",
    "/inputs/models/judge",
    "/inputs/templates/judge/sha256",
    "/spec/reward/extraction",
    "/spec/reward/answer",
    "/spec/ppo/batch_size",
    "/spec/ppo/response_length",
];

/// A meta step: its settings (not when it runs), its judge and templates, the batch it reads.
const META: &[&str] = &[
    "/spec/meta",
    "/inputs/models/meta",
    "/inputs/templates/prescreen/sha256",
    "/inputs/templates/analyze/sha256",
    "/inputs/templates/refine/sha256",
    "/inputs/templates/merge/sha256",
    "/spec/ppo/batch_size",
    "/spec/ppo/response_length",
];

/// An evaluation, beside the policy's shapes: its settings and the held-out prompts.
const EVAL: &[&str] = &[
    "/spec/eval",
    "/inputs/test/sha256",
    "/inputs/test/used",
    "/inputs/transfer/sha256",
    "/inputs/transfer/used",
    "/inputs/models/instrument",
];

/// A phase's key: the values at `pointers` in the plan's identity (`plan::identity`: contents,
/// not paths; absent ones as null) and the runtime (backend, precision, rollout engine, batch),
/// each without `ASIDE`; and `runtime.threads`, not part of the run's identity but of its speed
/// on the CPU.
fn shape(p: &Plan, pointers: &[&str]) -> J {
    let v = crate::plan::identity(p);
    let mut parts: Vec<J> = pointers
        .iter()
        .chain(&["/spec/runtime"])
        .map(|ptr| {
            let mut x = v.pointer(ptr).cloned().unwrap_or(J::Null);
            if let Some(o) = x.as_object_mut() {
                for d in ASIDE {
                    o.remove(*d);
                }
            }
            x
        })
        .collect();
    parts.push(serde_json::json!(p.spec.runtime.threads));
    J::Array(parts)
}

fn policy_key(p: &Plan) -> J {
    shape(p, POLICY)
}

fn judge_key(p: &Plan) -> J {
    shape(p, JUDGE)
}

fn meta_key(p: &Plan) -> J {
    shape(p, META)
}

fn eval_key(p: &Plan) -> J {
    shape(p, &[POLICY, EVAL].concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(update: u32, generate: f64, ppo: f64, judge: (f64, u64, u64), meta: Option<f64>, eval: Option<f64>) -> MetricsRow {
        let mut r: MetricsRow = serde_json::from_value(serde_json::json!({"update": update})).unwrap();
        r.time_s.generate = Some(generate);
        r.time_s.ppo = Some(ppo);
        r.time_s.judge = Some(judge.0);
        r.tokens.reward_judge.calls = judge.1;
        r.tokens.reward_judge.cached = judge.2;
        if let Some(m) = meta {
            r.meta = Some(serde_json::from_value(serde_json::json!({"ran": true, "samples": 2, "calls": 5, "cached": 0})).unwrap());
            r.time_s.meta = Some(m);
        }
        if let Some(e) = eval {
            r.eval = Some(Default::default());
            r.time_s.eval = Some(e);
        }
        r
    }

    fn measured(plan: Plan, rows: Vec<MetricsRow>) -> MeasuredRun {
        MeasuredRun { dir: PathBuf::from("results/x/abc"), plan, rows, warmup_s: Some(2.0), machine: "cpu (test)".into() }
    }

    #[test]
    fn phases_scale_from_the_measured_units_to_the_plans_counts() {
        let short = crate::plan::test_plan(&["ppo.total_episodes=16", "meta.every=1", "eval.every=2"]);
        let long = crate::plan::test_plan(&["ppo.total_episodes=48", "meta.every=2", "eval.every=3"]);
        assert_eq!((short.schedule.updates, long.schedule.updates), (2, 6));
        let rows = vec![row(1, 10.0, 20.0, (4.0, 8, 0), Some(30.0), None), row(2, 12.0, 22.0, (1.0, 8, 6), None, Some(50.0))];
        let w = estimate(&long, &[measured(short, rows)]);
        let at = |p: Phase| w.phases.iter().find(|t| t.phase == p).unwrap().clone();
        assert_eq!(at(Phase::Generate).seconds, Some((60.0, 72.0)));
        assert_eq!(at(Phase::Ppo).seconds, Some((120.0, 132.0)));
        // 0.5 s per answered call (4 s / 8), and 0.5 again (1 s / 2 answered, 6 from the cache)
        assert_eq!(at(Phase::Judge).seconds, Some((0.5 * 48.0, 0.5 * 48.0)));
        // meta at updates 2 and 4; evaluations at 3 and 6, plus the base policy's at the high end
        assert_eq!(at(Phase::Meta).seconds, Some((60.0, 60.0)));
        assert_eq!(at(Phase::Eval).seconds, Some((100.0, 150.0)));
        assert_eq!(at(Phase::Startup).seconds, Some((2.0, 2.0)));
        assert_eq!(w.total(), Some((2.0 + 60.0 + 24.0 + 120.0 + 60.0 + 100.0, 2.0 + 72.0 + 24.0 + 132.0 + 60.0 + 150.0)));
        assert_eq!(w.measured_by, vec!["results/x/abc".to_string()]);
    }

    #[test]
    fn a_phase_no_matching_run_measured_stays_unknown_and_the_total_with_it() {
        let measured_plan = crate::plan::test_plan(&["ppo.total_episodes=16", "meta.every=never", "eval.every=never"]);
        let rows = vec![row(1, 10.0, 20.0, (4.0, 8, 0), None, None)];
        let mpo = crate::plan::test_plan(&["ppo.total_episodes=16", "meta.every=1", "eval.every=never"]);
        let w = estimate(&mpo, &[measured(measured_plan, rows.clone())]);
        let meta = w.phases.iter().find(|t| t.phase == Phase::Meta).unwrap();
        assert_eq!((meta.units, meta.seconds), (1, None));
        assert_eq!(w.total(), None);
        assert_eq!(w.unknown(), vec![Phase::Meta]);

        // another policy shape: nothing the policy does is known
        let longer = crate::plan::test_plan(&["ppo.response_length=128", "meta.every=never", "eval.every=never"]);
        let w = estimate(
            &longer,
            &[measured(crate::plan::test_plan(&["ppo.total_episodes=16", "meta.every=never", "eval.every=never"]), rows)],
        );
        assert_eq!(w.unknown(), vec![Phase::Startup, Phase::Generate, Phase::Judge, Phase::Ppo]);
        assert!(w.measured_by.is_empty());
    }

    #[test]
    fn rows_whose_judge_calls_all_came_from_the_cache_say_nothing_of_the_judge() {
        assert_eq!(judge_seconds_per_call(&row(1, 1.0, 1.0, (0.01, 8, 8), None, None)), None);
        assert_eq!(judge_seconds_per_call(&row(1, 1.0, 1.0, (3.0, 8, 2), None, None)), Some(0.5));
        let mut r = row(2, 1.0, 1.0, (3.0, 8, 2), Some(40.0), None);
        assert_eq!(meta_seconds(&r), Some(40.0));
        r.meta.as_mut().unwrap().cached = Some(5);
        assert_eq!(meta_seconds(&r), None);
        // a row from before steps counted their calls
        r.meta.as_mut().unwrap().calls = None;
        r.meta.as_mut().unwrap().cached = None;
        assert_eq!(meta_seconds(&r), None);
    }
}
