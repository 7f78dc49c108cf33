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
        "inputs/index.json",
        "inputs/templates/policy/policy.j2",
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

/// Every file under `d` (relative path -> bytes), checkpoints, caches and the lock left out.
fn results_files(d: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, d: &Path, out: &mut std::collections::BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().to_string();
            if ["checkpoints", "judge-cache", "run.lock", "manifest.json"].iter().any(|x| rel.starts_with(x)) {
                continue;
            }
            if p.is_dir() {
                walk(base, &p, out)
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(d, d, &mut out);
    out
}

/// Files of `before` found, unchanged, either in place or under the run's `superseded/`
/// (TensorBoard's events are derived from metrics.jsonl and rebuilt from it).
fn nothing_lost(d: &Path, before: &std::collections::BTreeMap<String, Vec<u8>>) {
    let after = results_files(d);
    for (rel, bytes) in before.iter().filter(|(k, _)| !k.starts_with("events.out")) {
        let kept = after.get(rel) == Some(bytes)
            || after.iter().any(|(k, v)| k.starts_with("superseded/") && k.ends_with(rel.as_str()) && v == bytes)
            // a jsonl file may have been split: its lines are all somewhere
            || (rel.ends_with(".jsonl") && {
                let lines = |b: &[u8]| String::from_utf8_lossy(b).lines().map(str::to_string).collect::<Vec<_>>();
                let mut all: Vec<String> = after.iter().filter(|(k, _)| k.ends_with(rel.as_str())).flat_map(|(_, v)| lines(v)).collect();
                all.sort();
                lines(bytes).iter().all(|l| all.binary_search(l).is_ok())
            });
        assert!(kept, "{rel} was lost or changed");
    }
}

#[test]
fn a_damaged_checkpoint_falls_back_and_keeps_everything() {
    let r = root("damaged");
    let ov = format!("output.root={}", r.display());
    let out = mpo(&["run", SPEC, &ov, "--quiet", "--stop-after", "5"]);
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    let d = run_dir(&r);
    // checkpoints 4 and 5 are kept; a truncated write damages 5's state
    let state = d.join("checkpoints/update-000005/state.json");
    let text = std::fs::read_to_string(&state).unwrap();
    std::fs::write(&state, &text[..text.len() / 2]).unwrap();
    let before = results_files(&d);
    let out = mpo(&["run", SPEC, &ov]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("passing over a damaged checkpoint") && err.contains("update-000005/state.json"), "{err}");
    assert!(err.contains("resuming from") && err.contains("update-000004"), "{err}");
    same_metrics(&metrics(&d), &uninterrupted());
    nothing_lost(&d, &before);
    let aside = std::fs::read_dir(d.join("superseded")).unwrap().flatten().next().unwrap().path();
    assert!(aside.file_name().unwrap().to_string_lossy().ends_with("after-update-000004"));
    assert!(aside.join("samples/update-000005.jsonl").is_file());
    let _ = std::fs::remove_dir_all(r);
}

#[test]
fn with_no_intact_checkpoint_the_run_stops_and_only_restart_starts_over() {
    let r = root("noneintact");
    let ov = format!("output.root={}", r.display());
    let out = mpo(&["run", SPEC, &ov, "--quiet", "--stop-after", "3"]);
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    let d = run_dir(&r);
    for c in ["update-000002", "update-000003"] {
        let f = d.join("checkpoints").join(c).join("policy.safetensors");
        let mut b = std::fs::read(&f).unwrap();
        let n = b.len();
        b[n - 1] ^= 0xff;
        std::fs::write(&f, b).unwrap();
    }
    let before = results_files(&d);
    let out = mpo(&["run", SPEC, &ov, "--quiet"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no checkpoint of this run is intact") && err.contains("policy.safetensors"), "{err}");
    assert!(err.contains("help: `mpo run SPEC --restart`"), "{err}");
    assert_eq!(results_files(&d), before, "a failed resume changed the results");
    // the user asks for a restart: everything earlier is kept aside, the run starts over
    let out = mpo(&["run", SPEC, &ov, "--quiet", "--restart"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    same_metrics(&metrics(&d), &uninterrupted());
    nothing_lost(&d, &before);
    // a finished run is skipped, unless restarted
    let out = mpo(&["run", SPEC, &ov]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("--restart"));
    let _ = std::fs::remove_dir_all(r);
}

#[test]
fn a_run_that_stopped_before_its_first_checkpoint_keeps_its_files() {
    let r = root("nockpt");
    let ov = format!("output.root={}", r.display());
    let out = mpo(&["run", SPEC, &ov, "--quiet", "--stop-after", "1"]);
    assert_eq!(out.status.code(), Some(130));
    let d = run_dir(&r);
    // a process killed before its first checkpoint leaves no checkpoint behind
    std::fs::remove_dir_all(d.join("checkpoints")).unwrap();
    let before = results_files(&d);
    let out = mpo(&["run", SPEC, &ov]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("stopped before its first checkpoint"), "{err}");
    same_metrics(&metrics(&d), &uninterrupted());
    nothing_lost(&d, &before);
    let _ = std::fs::remove_dir_all(r);
}

#[test]
fn a_garbled_latest_is_passed_over() {
    let r = root("latest");
    let ov = format!("output.root={}", r.display());
    let out = mpo(&["run", SPEC, &ov, "--quiet", "--stop-after", "4"]);
    assert_eq!(out.status.code(), Some(130));
    let d = run_dir(&r);
    std::fs::write(d.join("checkpoints/LATEST"), "\0\0garbage").unwrap();
    let out = mpo(&["run", SPEC, &ov]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("LATEST") && err.contains("update-000004"), "{err}");
    same_metrics(&metrics(&d), &uninterrupted());
    let _ = std::fs::remove_dir_all(r);
}

/// Against a judge server that fails a good share of its requests in every way a fleet does
/// (503 with Retry-After, 500, 429, malformed and truncated bodies, hangs past the timeout),
/// the run finishes and every injected fault is in the metrics, by cause.
#[test]
fn every_injected_judge_fault_is_in_the_metrics_by_cause() {
    use mpo::bench::stub::{Reply, Stub};
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    let injected: Arc<Mutex<BTreeMap<&'static str, u64>>> = Arc::default();
    let log = injected.clone();
    let answer = "Correct final answer: 3\nAnswer in a box: 1\nSound reasoning: 1";
    let stub = Stub::start(move |r| {
        let (cause, reply) = match r.index % 9 {
            1 => ("http_503", Reply::Status { code: 503, retry_after: Some("0".into()), body: "overloaded".into() }),
            2 => ("http_500", Reply::Status { code: 500, retry_after: None, body: "oops".into() }),
            3 => ("http_429", Reply::Status { code: 429, retry_after: Some("0".into()), body: "slow down".into() }),
            4 => ("bad_body", Reply::Malformed("{not json".into())),
            5 => ("bad_body", Reply::Truncated),
            7 if r.index % 27 == 7 => ("timeout", Reply::Hang),
            _ => return Reply::Text(answer.into()),
        };
        *log.lock().unwrap().entry(cause).or_default() += 1;
        reply
    })
    .unwrap();
    let r = root("faults");
    let out = Command::new(env!("CARGO_BIN_EXE_mpo"))
        .args([
            "run",
            SPEC,
            &format!("output.root={}", r.display()),
            "reward.judge.backend=openai",
            "reward.judge.base_url_env=MPO_FAULTY_JUDGE",
            "reward.judge.max_tokens=64",
            "reward.judge.timeout_s=1",
            "reward.judge.max_retries=3",
        ])
        .env("MPO_FAULTY_JUDGE", &stub.url)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let d = run_dir(&r);
    let rows: Vec<J> =
        std::fs::read_to_string(d.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    let mut attempts = 0;
    for row in &rows {
        for (role, t) in row["judge_transport"].as_object().expect("an HTTP judge reports its transport") {
            assert!(role == "reward" || role == "meta", "{role}");
            attempts += t["attempts"].as_u64().unwrap();
            for k in ["retries", "failed"] {
                for (cause, n) in t[k].as_object().unwrap() {
                    *seen.entry(cause.clone()).or_default() += n.as_u64().unwrap();
                }
            }
        }
    }
    let injected: BTreeMap<String, u64> = injected.lock().unwrap().iter().map(|(k, v)| (k.to_string(), *v)).collect();
    assert!(injected.len() >= 5, "the script injected too few kinds of fault: {injected:?}");
    assert_eq!(seen, injected, "faults in the metrics (left) vs injected by the server (right)");
    assert_eq!(attempts as usize, stub.count(), "every HTTP request is counted");
    // the progress lines and the final summary say so; TensorBoard has them as scalars
    assert!(stderr.contains("reward judge:") && stderr.contains("retries"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("reward judge: "), "{}", String::from_utf8_lossy(&out.stdout));
    let tb = std::fs::read(d.join("events.out.tfevents.mpo")).unwrap();
    assert!(String::from_utf8_lossy(&tb).contains("judge_transport/reward/retries/http_503"));
    let _ = std::fs::remove_dir_all(r);
}
