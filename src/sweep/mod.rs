//! Sweeps: run the cells of a sweep on this machine (`mpo sweep SPEC --jobs N`) or emit a Slurm
//! job array for a cluster (`--emit slurm`, see `slurm.rs`).
//!
//! Each cell runs as a child `mpo run ... --cell i` process: a cell's crash, its Ctrl-C
//! checkpoint and its thread pool stay its own, and resume-by-run-id works exactly as for a
//! single run. Finished cells are skipped without starting a process.

pub mod slurm;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::plan::Plan;
use crate::results::{MetricsRow, RunDir, Status};

/// How one cell of a local sweep ended.
#[derive(Debug, Clone)]
pub struct CellOutcome {
    pub index: usize,
    pub label: String,
    pub run_id: String,
    pub dir: PathBuf,
    /// `finished`, `skipped (already finished)`, `stopped`, `failed (exit N)`.
    pub status: String,
    pub wall_s: f64,
    pub log: PathBuf,
}

/// The last `metrics.jsonl` row of a run directory, if any.
pub fn last_metrics(dir: &Path) -> Option<MetricsRow> {
    RunDir { root: dir.to_path_buf() }.metrics().ok()?.pop()
}

/// Run every cell of `plans` (the compiled cells of `spec` with `overrides`), `jobs` at a time.
/// `exe` is the mpo binary the cells run with.
pub fn run_local(
    exe: &Path,
    spec: &Path,
    overrides: &[String],
    plans: &[Plan],
    jobs: usize,
    mut on_done: impl FnMut(&CellOutcome) + Send,
) -> Vec<CellOutcome> {
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<CellOutcome>> = Mutex::new(Vec::new());
    let report = Mutex::new(&mut on_done);
    // Share the machine: each concurrent cell gets an equal slice of the cores unless the spec
    // pins `runtime.threads` (which is not part of the run id, so this never changes results' identity).
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let threads = (cores / jobs.max(1)).max(1);
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1).min(plans.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(plan) = plans.get(i) else { break };
                    let o = run_cell(exe, spec, overrides, plan, i, threads);
                    (report.lock().expect("not poisoned"))(&o);
                    out.lock().expect("not poisoned").push(o);
                }
            });
        }
    });
    let mut v = out.into_inner().expect("not poisoned");
    v.sort_by_key(|o| o.index);
    v
}

fn run_cell(exe: &Path, spec: &Path, overrides: &[String], plan: &Plan, index: usize, threads: usize) -> CellOutcome {
    let dir = RunDir::for_plan(plan);
    let label = plan.cell.as_ref().map(|c| c.label.clone()).unwrap_or_default();
    let logs = dir.root.parent().map(|p| p.join("sweep-logs")).unwrap_or_else(|| PathBuf::from("sweep-logs"));
    let log = logs.join(format!("cell-{index:03}-{}.log", plan.run_id));
    let mut o = CellOutcome {
        index,
        label,
        run_id: plan.run_id.clone(),
        dir: dir.root.clone(),
        status: String::new(),
        wall_s: 0.0,
        log: log.clone(),
    };
    if dir.manifest().is_some_and(|m| m.status == Status::Finished) {
        o.status = "skipped (already finished)".into();
        return o;
    }
    let t0 = Instant::now();
    let file = std::fs::create_dir_all(&logs).and_then(|_| std::fs::File::create(&log));
    let file = match file {
        Ok(f) => f,
        Err(e) => {
            o.status = format!("failed (cannot write {}: {e})", log.display());
            return o;
        }
    };
    let err = file.try_clone().map(Stdio::from).unwrap_or_else(|_| Stdio::null());
    let mut cmd = Command::new(exe);
    cmd.arg("run").arg(spec).args(overrides).arg("--cell").arg(index.to_string()).arg("--quiet");
    if plan.spec.runtime.threads.is_none() {
        cmd.env("RAYON_NUM_THREADS", threads.to_string());
    }
    let status = cmd.stdin(Stdio::null()).stdout(Stdio::from(file)).stderr(err).status();
    o.wall_s = t0.elapsed().as_secs_f64();
    o.status = match status {
        Ok(s) if s.success() => "finished".into(),
        Ok(s) if s.code() == Some(130) => "stopped (resume with the same command)".into(),
        Ok(s) => format!("failed (exit {}; see {})", s.code().map(|c| c.to_string()).unwrap_or_else(|| "by signal".into()), log.display()),
        Err(e) => format!("failed (cannot start {}: {e})", exe.display()),
    };
    o
}

/// The end-of-sweep table: one row per cell with its final metrics.
pub fn summary_table(outcomes: &[CellOutcome]) -> String {
    let mut rows =
        vec![["cell", "factors", "run id", "status", "updates", "reward", "verifier", "kl", "rubric", "wall"].map(String::from).to_vec()];
    for o in outcomes {
        let m = last_metrics(&o.dir);
        let num = |f: fn(&MetricsRow) -> Option<f64>| m.as_ref().and_then(f).map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into());
        rows.push(vec![
            o.index.to_string(),
            o.label.clone(),
            o.run_id.clone(),
            o.status.split(" (").next().unwrap_or_default().to_string(),
            m.as_ref().map(|m| m.update.to_string()).unwrap_or_else(|| "-".into()),
            num(|m| m.reward.mean),
            num(|m| m.verifier_mean),
            num(|m| m.kl),
            m.as_ref().map(|m| format!("v{:03}", m.rubric_after())).unwrap_or_else(|| "-".into()),
            if o.wall_s > 0.0 { format!("{:.0}s", o.wall_s) } else { "-".into() },
        ]);
    }
    table(&rows)
}

/// Left-aligned text columns, two spaces apart.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().enumerate().map(|(c, s)| format!("{s:<w$}", w = width[c])).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(&[vec!["a".into(), "bb".into()], vec!["ccc".into(), "d".into()]]);
        assert_eq!(t, "a    bb\nccc  d\n");
    }
}
