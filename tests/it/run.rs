//! `mpo run` end to end on a tiny random-weight model of the real architecture: results
//! layout, a finished plan is skipped, and a run killed with SIGKILL (or stopped) resumes from
//! its last checkpoint and reproduces the uninterrupted run's metrics exactly.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as J;

const SPEC: &str = "tests/specs/valid/tiny.yaml";

fn root(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("mpo-run-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

fn mpo(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mpo")).args(args).output().unwrap()
}

/// The only run directory under `root`.
fn run_dir(root: &Path) -> PathBuf {
    let name = root.join("tiny");
    std::fs::read_dir(&name).unwrap().next().unwrap().unwrap().path()
}

/// Metrics rows without operational fields: wall-clock times, and how many judge answers came
/// from the cache (a resumed update finds the answers its killed predecessor already got).
fn metrics(dir: &Path) -> Vec<J> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: J = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("time_s");
            o.remove("wall_time");
            if let Some(t) = v.pointer_mut("/tokens/reward_judge").and_then(J::as_object_mut) {
                t.remove("cached");
            }
            v
        })
        .collect()
}

fn uninterrupted() -> Vec<J> {
    static M: std::sync::OnceLock<Vec<J>> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        let r = root("straight");
        let out = mpo(&["run", SPEC, &format!("output.root={}", r.display()), "--quiet"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let m = metrics(&run_dir(&r));
        let _ = std::fs::remove_dir_all(&r);
        m
    })
    .clone()
}

#[test]
fn results_layout_and_finished_runs_are_skipped() {
    let r = root("layout");
    let ov = format!("output.root={}", r.display());
    let out = mpo(&["run", SPEC, &ov, "--quiet"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let d = run_dir(&r);
    for f in [
        "spec.yaml",
        "resolved.yaml",
        "plan.json",
        "manifest.json",
        "metrics.jsonl",
        "events.out.tfevents.mpo",
        "rubrics/v000.md",
        "rubrics/history.jsonl",
        "samples/update-000001.jsonl",
        "eval/update-000003.jsonl",
        "checkpoints/LATEST",
    ] {
        assert!(d.join(f).exists(), "missing {f}");
    }
    let manifest: J = serde_json::from_str(&std::fs::read_to_string(d.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["status"], "finished");
    assert_eq!(manifest["updates_done"], 6);
    assert_eq!(
        d.file_name().unwrap().to_str().unwrap(),
        serde_json::from_str::<J>(&std::fs::read_to_string(d.join("plan.json")).unwrap()).unwrap()["run_id"].as_str().unwrap()
    );
    let m = metrics(&d);
    assert_eq!(m.len(), 6);
    assert!(m[2]["eval"]["accuracy"].is_number());
    assert!(m[1]["meta"]["ran"].as_bool().unwrap());
    // the rollouts are recorded with everything that went into their reward
    let s: J =
        serde_json::from_str(std::fs::read_to_string(d.join("samples/update-000001.jsonl")).unwrap().lines().next().unwrap()).unwrap();
    for k in ["question", "response", "reward", "judge_prompt", "judge_answers", "verdicts"] {
        assert!(s.get(k).is_some(), "sample has no {k}");
    }
    // a finished plan is not run again
    let before = std::fs::read_to_string(d.join("metrics.jsonl")).unwrap();
    let again = mpo(&["run", SPEC, &ov]);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("already finished"));
    assert_eq!(std::fs::read_to_string(d.join("metrics.jsonl")).unwrap(), before);
    // rubric commands read the history
    let log = mpo(&["rubric", "log", d.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&log.stdout).contains("v000  initial rubric"));
    let _ = std::fs::remove_dir_all(r);
}

#[test]
fn kill_9_then_resume_reproduces_the_uninterrupted_run() {
    let r = root("killed");
    let ov = format!("output.root={}", r.display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_mpo"))
        .args(["run", SPEC, &ov, "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // wait for the checkpoint of update 2 and the first row after it, then SIGKILL mid-run
    let t0 = Instant::now();
    loop {
        assert!(t0.elapsed() < Duration::from_secs(300), "the run never reached update 3");
        if let Ok(rd) = std::fs::read_dir(r.join("tiny"))
            && let Some(d) = rd.flatten().next().map(|e| e.path())
            && d.join("checkpoints/LATEST").exists()
            && std::fs::read_to_string(d.join("metrics.jsonl")).map(|t| t.lines().count() >= 3).unwrap_or(false)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(child.try_wait().unwrap().is_none(), "the run finished before it could be killed");
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    let d = run_dir(&r);
    let manifest: J = serde_json::from_str(&std::fs::read_to_string(d.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["status"], "running", "a killed run cannot mark itself");
    let out = mpo(&["run", SPEC, &ov, "--quiet"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let manifest: J = serde_json::from_str(&std::fs::read_to_string(d.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["status"], "finished");
    assert!(!manifest["resumed_from"].as_array().unwrap().is_empty());
    same_metrics(&metrics(&d), &uninterrupted());
    let _ = std::fs::remove_dir_all(r);
}

/// Equal metrics, reported row by row and field by field when they differ.
fn same_metrics(got: &[J], want: &[J]) {
    assert_eq!(got.len(), want.len(), "row count");
    for (g, w) in got.iter().zip(want) {
        for (k, wv) in w.as_object().unwrap() {
            assert_eq!(g.get(k), Some(wv), "update {}: field `{k}`", w["update"]);
        }
        assert_eq!(g, w);
    }
}

#[test]
fn a_stopped_run_resumes_to_the_same_metrics() {
    let r = root("stopped");
    let ov = format!("output.root={}", r.display());
    let out = mpo(&["run", SPEC, &ov, "--quiet", "--stop-after", "3"]);
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    let d = run_dir(&r);
    assert_eq!(metrics(&d).len(), 3);
    let out = mpo(&["run", SPEC, &ov, "--quiet"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    same_metrics(&metrics(&d), &uninterrupted());
    let _ = std::fs::remove_dir_all(r);
}
