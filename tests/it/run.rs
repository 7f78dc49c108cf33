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
            for counts in ["/tokens/reward_judge", "/meta"] {
                if let Some(t) = v.pointer_mut(counts).and_then(J::as_object_mut) {
                    t.remove("cached");
                }
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
    // its throughput sizes a longer plan of the same shape; another shape is not guessed at
    assert_eq!(manifest["host"]["threads"], 1, "the spec's runtime.threads");
    let longer = mpo(&["plan", SPEC, &ov, "ppo.total_episodes=48", "--json"]);
    assert!(longer.status.success(), "{}", String::from_utf8_lossy(&longer.stderr));
    let plan: J = serde_json::from_slice(&longer.stdout).unwrap();
    let phases = plan["estimates"]["wall_time"]["phases"].as_array().unwrap();
    for p in phases {
        // the tiny judge's answers give the meta steps no rollouts to learn from: a step that
        // asked no judge says nothing of a meta step's time
        assert_eq!(p["seconds"].is_array(), p["phase"] != "meta", "{p}");
    }
    let ppo = phases.iter().find(|p| p["phase"] == "ppo").unwrap();
    assert_eq!((ppo["units"].as_u64(), ppo["samples"].as_u64()), (Some(12), Some(6)));
    let text = String::from_utf8_lossy(&mpo(&["plan", SPEC, &ov, "ppo.total_episodes=48"]).stdout).to_string();
    assert!(text.contains("wall time unknown: no run of the same shape measured meta ("), "{text}");
    assert!(text.contains("known: start-up ") && text.contains(&format!("by {})", d.display())), "{text}");
    let fixed = String::from_utf8_lossy(&mpo(&["plan", SPEC, &ov, "ppo.total_episodes=48", "meta.every=never"]).stdout).to_string();
    assert!(fixed.contains("  wall time ") && fixed.contains(&format!("by {}\n", d.display())), "{fixed}");
    // a run folder named directly counts; a missing one is a usage error, not an empty search
    let named = mpo(&["plan", SPEC, "ppo.total_episodes=48", "meta.every=never", "--measured", d.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&named.stdout).contains(&format!("by {}\n", d.display())));
    let missing = mpo(&["plan", SPEC, "--measured", r.join("nowhere").to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nowhere: no such directory"));
    let other = String::from_utf8_lossy(&mpo(&["plan", SPEC, &ov, "ppo.response_length=7"]).stdout).to_string();
    assert!(other.contains("wall time unknown: no run of the same shape measured start-up, generate, judge, ppo, meta, eval"), "{other}");
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

/// `eval.instrument`: every evaluation (the base policy's too, never from a cache measured
/// without it) scores each response with the fixed judge and rubric, says how, and the run's
/// summary and `mpo eval compare` pair it by prompt beside the headline metric.
#[test]
fn a_fixed_instrument_scores_every_evaluation() {
    let r = root("instrument");
    let ov = format!("output.root={}", r.display());
    // the same model and evaluation settings without the instrument first: its cached base
    // evaluation has no instrument scores and must not stand in for the instrument run's
    let plain = mpo(&["run", SPEC, &ov, "--quiet"]);
    assert!(plain.status.success(), "{}", String::from_utf8_lossy(&plain.stderr));
    let out = mpo(&["run", "tests/specs/valid/tiny_instrument.yaml", &ov]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}{stdout}", String::from_utf8_lossy(&out.stderr));
    let d = std::fs::read_dir(r.join("tiny_instrument")).unwrap().next().unwrap().unwrap().path();
    let read = |f: &str| -> J { serde_json::from_str(&std::fs::read_to_string(d.join(f)).unwrap()).unwrap() };
    for label in ["base", "update-000003", "update-000006"] {
        let s = read(&format!("eval/{label}.json"));
        let i = &s["instrument"];
        assert!(i["judge"].as_str().unwrap().starts_with("local:"), "{label}: {s}");
        assert_eq!(i["training_judge"], true);
        assert_eq!(i["items"].as_array().unwrap().len(), 4, "the expert rubric's items: {s}");
        assert_eq!(i["aggregate"], "item_mean");
        let lines: Vec<J> = std::fs::read_to_string(d.join(format!("eval/{label}.jsonl")))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let scored: Vec<f64> = lines.iter().filter_map(|l| l["instrument"].as_f64()).collect();
        // guided answers held to the rubric's ranges: every response gets a score
        assert_eq!(scored.len(), lines.len(), "{label}");
        assert_eq!(i["scored"].as_u64().unwrap() as usize, lines.len());
        assert!(scored.iter().all(|x| (0.0..=1.0).contains(x)), "{scored:?}");
        let mean = scored.iter().sum::<f64>() / scored.len() as f64;
        assert!((s["metrics"]["instrument_score"].as_f64().unwrap() - mean).abs() < 1e-12, "{s}");
        assert_eq!(s["metrics"]["instrument_failures"], 0.0);
        assert!(lines.iter().all(|l| l["score"].is_number()), "the headline stays beside it");
    }
    let m = metrics(&d);
    assert!(m[2]["eval"]["instrument_score"].is_number(), "{}", m[2]);
    assert!(read("manifest.json")["judges"]["instrument"].as_str().unwrap().starts_with("local:"));
    // the summary compares both measures, saying how the instrument's was computed
    assert!(stdout.contains("accuracy on 4 held-out test prompts"), "{stdout}");
    assert!(stdout.contains("instrument_score on 4 held-out test prompts"), "{stdout}");
    assert!(stdout.contains("(the training judge)"), "{stdout}");
    let cmp = mpo(&["eval", "compare", d.join("eval/base.jsonl").to_str().unwrap(), d.join("eval/update-000006.jsonl").to_str().unwrap()]);
    let text = String::from_utf8_lossy(&cmp.stdout);
    assert!(cmp.status.success(), "{}{text}", String::from_utf8_lossy(&cmp.stderr));
    assert!(text.contains("instrument_score on 4 held-out test prompts") && text.contains("accuracy on 4"), "{text}");
    // an evaluation without the instrument compares on the headline alone, and says why
    let p = std::fs::read_dir(r.join("tiny")).unwrap().next().unwrap().unwrap().path();
    for (x, y) in [(&p, &d), (&d, &p)] {
        let args = [x.join("eval/update-000006.jsonl"), y.join("eval/update-000006.jsonl")];
        let cross = mpo(&["eval", "compare", args[0].to_str().unwrap(), args[1].to_str().unwrap()]);
        let text = String::from_utf8_lossy(&cross.stdout);
        assert!(cross.status.success(), "{}", String::from_utf8_lossy(&cross.stderr));
        assert!(text.contains("accuracy on 4") && !text.contains("instrument_score on"), "{text}");
        assert!(text.contains("instrument_score not compared") && text.contains("not scored by an instrument"), "{text}");
    }
    let _ = std::fs::remove_dir_all(r);
}

/// `mpo export --format peft`: the checkpoint's LoRA pairs under PEFT's names, transposed to
/// PEFT's layout; every checkpoint is kept by default; bad input writes nothing.
#[test]
fn a_checkpoint_exports_as_a_peft_adapter_and_bad_input_writes_nothing() {
    let r = root("export");
    let out = mpo(&["run", SPEC, &format!("output.root={}", r.display()), "--quiet"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let d = run_dir(&r);
    // `output.keep_checkpoints` defaults to `all`: nothing is pruned
    for u in [2, 4, 6] {
        assert!(d.join(format!("checkpoints/update-{u:06}/policy.safetensors")).is_file(), "update {u}");
    }
    let ex = mpo(&["export", d.to_str().unwrap(), "--format", "peft", "--logprobs", "2"]);
    let text = String::from_utf8_lossy(&ex.stdout);
    assert!(ex.status.success(), "{}{text}", String::from_utf8_lossy(&ex.stderr));
    let e = d.join("export/peft-update-000006");
    assert!(text.contains("exported update 6") && text.contains(e.to_str().unwrap()), "{text}");
    let cfg: J = serde_json::from_str(&std::fs::read_to_string(e.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!((cfg["peft_type"].as_str(), cfg["r"].as_u64(), cfg["lora_alpha"].as_f64()), (Some("LORA"), Some(4), Some(8.0)));
    assert_eq!(cfg["target_modules"], serde_json::json!(["lm_head", "q_proj", "v_proj"]));
    let peft = mpo::export::read_tensors(&e.join("adapter_model.safetensors")).unwrap();
    let ours = mpo::export::read_tensors(&d.join("checkpoints/update-000006/policy.safetensors")).unwrap();
    let layers = ours.keys().filter(|k| k.ends_with(".q.lora_a")).count();
    assert!(layers > 0);
    assert_eq!(peft.len(), 2 * (2 * layers + 1), "{:?}", peft.keys().collect::<Vec<_>>());
    let check = |mpo_name: &str, peft_name: &str| {
        let (sm, m) = &ours[mpo_name];
        let (sp, p) = &peft[peft_name];
        assert_eq!((sp[0], sp[1]), (sm[1], sm[0]), "{peft_name}");
        for i in 0..sm[0] {
            for j in 0..sm[1] {
                assert_eq!(p[j * sm[0] + i], m[i * sm[1] + j], "{peft_name}[{j}, {i}]");
            }
        }
    };
    check("layers.0.q.lora_a", "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
    check("layers.0.q.lora_b", "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight");
    check("layers.1.v.lora_b", "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight");
    check("lm_head.lora_a", "base_model.model.lm_head.lora_A.weight");
    // the trained adapter is not the fresh one (B starts at zero)
    assert!(peft["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"].1.iter().any(|x| *x != 0.0));
    let rows: Vec<J> =
        std::fs::read_to_string(e.join("mpo_logprobs.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2);
    for row in &rows {
        let lp = row["logprobs"].as_array().unwrap();
        assert_eq!(lp.len(), row["response_ids"].as_array().unwrap().len());
        assert!(lp.iter().all(|x| x.as_f64().unwrap() <= 0.0), "{row}");
    }
    // `merged`: a Hugging Face folder mpo itself loads, computing the adapter's logits
    let ex = mpo(&["export", d.to_str().unwrap(), "--format", "merged"]);
    assert!(ex.status.success(), "{}", String::from_utf8_lossy(&ex.stderr));
    let merged_dir = d.join("export/merged-update-000006");
    for f in ["config.json", "model.safetensors", "tokenizer.json", "mpo_export.json"] {
        assert!(merged_dir.join(f).is_file(), "merged export lacks {f}");
    }
    same_logits_merged_and_adapter(&merged_dir, &d.join("checkpoints/update-000006/policy.safetensors"));
    // an export is never replaced
    let before = std::fs::read(e.join("adapter_model.safetensors")).unwrap();
    let again = mpo(&["export", d.to_str().unwrap(), "--format", "peft"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(std::fs::read(e.join("adapter_model.safetensors")).unwrap(), before);
    // a checkpoint that is not there names those that are
    let none = mpo(&["export", d.to_str().unwrap(), "--format", "peft", "--checkpoint", "5"]);
    let err = String::from_utf8_lossy(&none.stderr);
    assert!(none.status.code() == Some(1) && err.contains("no checkpoint of update 5") && err.contains("2, 4, 6"), "{err}");
    // a damaged checkpoint is refused and nothing is written
    let f = d.join("checkpoints/update-000004/policy.safetensors");
    let mut bytes = std::fs::read(&f).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&f, bytes).unwrap();
    let bad = mpo(&["export", d.to_str().unwrap(), "--format", "peft", "--checkpoint", "4"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(bad.status.code() == Some(1) && err.contains("damaged") && err.contains("checksum"), "{err}");
    assert!(!d.join("export/peft-update-000004").exists());
    let mut left: Vec<String> =
        std::fs::read_dir(d.join("export")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into()).collect();
    left.sort();
    assert_eq!(left, ["merged-update-000006", "peft-update-000006"], "no temporary folder is left behind");
    // a run without checkpoints
    let empty = r.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::copy(d.join("plan.json"), empty.join("plan.json")).unwrap();
    let no = mpo(&["export", empty.to_str().unwrap(), "--format", "peft"]);
    assert!(String::from_utf8_lossy(&no.stderr).contains("has no checkpoint to export"));
    let _ = std::fs::remove_dir_all(r);
}

/// The merged folder, loaded as a Hugging Face model, computes what the base model with the
/// checkpoint's adapter computes (f32; only the order of additions differs).
fn same_logits_merged_and_adapter(merged: &Path, adapter: &Path) {
    use mpo::model::batch::{causal_mask, int_tensor, left_pad, mask_tensor, to_host};
    use mpo::model::registry::ModelRef;
    type Cpu = burn::backend::Flex;
    let dev = Default::default();
    let plan: J = serde_json::from_str(&std::fs::read_to_string(adapter.parent().unwrap().join("../../plan.json")).unwrap()).unwrap();
    let lora = plan["spec"]["policy"]["lora"].clone();
    let lora = mpo::model::LoraConfig::from_spec(&serde_json::from_value(lora).unwrap());
    let base = ModelRef::Random { name: "tiny-random-llama".into() };
    let with = mpo::model::load::<Cpu>(&base, Some(&lora), 1, &dev, &mut |_| {}).unwrap();
    let with = mpo::model::adapter::load(with.model, adapter).unwrap();
    let folder = ModelRef::HfDir { path: merged.to_path_buf(), sha256: String::new() };
    let m = mpo::model::load::<Cpu>(&folder, None, 1, &dev, &mut |_| {}).unwrap().model;
    let seq: Vec<u32> = (3..40).collect();
    let t = seq.len();
    let lay = left_pad(std::slice::from_ref(&seq), 0);
    let run = |model: &mpo::model::Llama<Cpu>, adapter: bool| -> Vec<f32> {
        let h = model.forward(
            int_tensor(lay.tokens.clone(), [1, t], &dev),
            int_tensor(lay.positions.clone(), [1, t], &dev),
            mask_tensor(causal_mask(&lay.pads, 0, t), 1, t, t, &dev),
            None,
            adapter,
        );
        to_host(model.logits(h, adapter)).unwrap()
    };
    let (a, b, base_logits) = (run(&with, true), run(&m, false), run(&with, false));
    let max = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
    let (diff, moved) = (max(&a, &b), max(&a, &base_logits));
    assert!(diff < 1e-4, "merged vs adapter: max |logit difference| {diff}");
    assert!(moved > 100.0 * diff, "the adapter moved the logits by only {moved}: the test would not see a wrong merge");
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

/// `runtime.rollouts` on a vLLM or SGLang server, played by a stub that speaks each one's
/// endpoints: every update's PEFT adapter is in `adapter_dir` when the server is asked to load
/// it (under a name never used before), the update's generations name it, the previous one is
/// unloaded after the next is loaded and the last one when the run ends, leaving `adapter_dir`
/// empty; an injected 503 is retried and counted in `rollouts.transport`, every request is
/// counted, and each row has the drift of the stub's log-probs from the trainer's. (The
/// request bodies are snapshot-tested in `engine::dialect`; the real engine path runs against
/// llama-server in `rollouts_on_llama_server_follow_the_trained_adapter`.)
#[test]
fn rollouts_on_a_vllm_or_sglang_server_load_each_update_and_count_faults() {
    use mpo::bench::stub::{Reply, Stub};
    use std::sync::{Arc, Mutex};
    for engine in ["vllm", "sglang"] {
        // (path, adapter name, adapter files present) per adapter request; adapter per generation
        let adapters: Arc<Mutex<Vec<(String, String, bool)>>> = Arc::default();
        let generations: Arc<Mutex<Vec<String>>> = Arc::default();
        let (log, gens) = (adapters.clone(), generations.clone());
        let vllm = engine == "vllm";
        let stub = Stub::start(move |r| {
            let ok = |body: String| Reply::Status { code: 200, retry_after: None, body };
            if r.path.contains("lora_adapter") {
                let name = r.body["lora_name"].as_str().unwrap_or_default().to_string();
                let present = r.body["lora_path"].as_str().is_some_and(|p| {
                    let p = Path::new(p);
                    p.join("adapter_config.json").is_file() && p.join("adapter_model.safetensors").is_file()
                });
                log.lock().unwrap().push((r.path.clone(), name.clone(), present));
                return ok(if vllm { format!("Success: LoRA adapter '{name}' added successfully.") } else { r#"{"success": true}"#.into() });
            }
            let mut g = gens.lock().unwrap();
            g.push(r.body[if vllm { "model" } else { "lora_path" }].as_str().unwrap_or_default().to_string());
            if g.len() == 3 {
                return Reply::Status { code: 503, retry_after: Some("0".into()), body: "overloaded".into() };
            }
            let prompt = r.body[if vllm { "prompt" } else { "input_ids" }].as_array().map_or(0, Vec::len) as u32;
            let ids: Vec<u32> = (0..6).map(|k| 20 + (prompt * 7 + k * 13) % 200).collect();
            let lps: Vec<f64> = (0..6).map(|k| -0.5 - 0.1 * k as f64).collect();
            let body = if vllm {
                serde_json::json!({"choices": [{"index": 0, "text": "x", "token_ids": ids, "finish_reason": "length", "stop_reason": null, "logprobs": {"token_logprobs": lps}}]})
            } else {
                let entries: Vec<J> = ids.iter().zip(&lps).map(|(i, l)| serde_json::json!([l, i, null])).collect();
                serde_json::json!({"text": "x", "output_ids": ids, "meta_info": {"finish_reason": {"type": "length", "length": 6}, "output_token_logprobs": entries}})
            };
            ok(body.to_string())
        })
        .unwrap();
        let r = root(&format!("engine-{engine}"));
        let adapter_dir = r.join("shared-adapters");
        let out = Command::new(env!("CARGO_BIN_EXE_mpo"))
            .args([
                "run",
                SPEC,
                &format!("output.root={}", r.display()),
                &format!("runtime.rollouts.engine={engine}"),
                "runtime.rollouts.base_url_env=MPO_STUB_ENGINE",
                &format!("runtime.rollouts.adapter_dir={}", adapter_dir.display()),
                "--quiet",
            ])
            .env("MPO_STUB_ENGINE", &stub.url)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{engine}: {stderr}");
        let rows: Vec<J> =
            std::fs::read_to_string(run_dir(&r).join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(rows.len(), 6);
        let (mut attempts, mut retries) = (0, serde_json::Map::new());
        for row in &rows {
            let ro = &row["rollouts"];
            assert_eq!(ro["engine"], engine);
            assert_eq!(ro["drift"]["tokens"].as_u64(), Some(4 * 6), "every trained token compared: {ro}");
            assert!(ro["load_s"].as_f64().is_some(), "{ro}");
            attempts += ro["transport"]["attempts"].as_u64().unwrap();
            for (k, v) in ro["transport"]["retries"].as_object().unwrap() {
                retries.insert(k.clone(), v.clone());
            }
        }
        assert_eq!(retries, serde_json::json!({"http_503": 1}).as_object().unwrap().clone(), "{engine}");
        // the last unload happens as the run ends, after its last row
        assert_eq!(attempts as usize + 1, stub.count(), "{engine}: every request but the final unload is in a row");
        let adapters = adapters.lock().unwrap().clone();
        let loads: Vec<&(String, String, bool)> = adapters.iter().filter(|(p, ..)| !p.contains("unload")).collect();
        let unloads: Vec<&String> = adapters.iter().filter(|(p, ..)| p.contains("unload")).map(|(_, n, _)| n).collect();
        assert_eq!(loads.len(), 6, "{engine}: one load per update: {adapters:?}");
        assert!(loads.iter().all(|(_, _, present)| *present), "{engine}: an adapter was loaded before it was written: {adapters:?}");
        let names: Vec<&String> = loads.iter().map(|(_, n, _)| n).collect();
        assert_eq!(names.iter().collect::<std::collections::BTreeSet<_>>().len(), 6, "{engine}: names are never reused");
        assert_eq!(unloads, names, "{engine}: each adapter is unloaded once the next is in (the last at the end)");
        let gens = generations.lock().unwrap().clone();
        assert_eq!(gens.len(), 6 * 4 + 1, "{engine}: 4 rollouts per update and one retry");
        assert!(gens.iter().all(|g| names.contains(&g)), "{engine}: every generation names a loaded adapter");
        assert_eq!(std::fs::read_dir(&adapter_dir).unwrap().count(), 0, "{engine}: adapter_dir is left empty");
        let _ = std::fs::remove_dir_all(&r);
    }
}

/// A short demo-shaped run (the real SmolLM2, two updates) with its rollouts on llama-server:
/// every row says so, with the drift of llama-server's log-probs from the trainer's over every
/// trained token (llama.cpp's Q8_0 products against mpo's f32 ones: a few hundredths of a nat),
/// the adapter load time and the HTTP requests; the server and its temporary folder are gone
/// when the run ends.
#[test]
fn a_demo_run_with_rollouts_on_llama_server_logs_the_drift() {
    mpo::engine::llama_server::find_binary()
        .expect("this test needs a real llama-server: run `scripts/setup_llama_server.sh` once, or the README's `scripts/test.sh`");
    crate::demo_model();
    let r = root("engine-llama");
    let out = mpo(&[
        "run",
        "specs/math.yaml",
        &format!("output.root={}", r.display()),
        "runtime.rollouts.engine=llama_server",
        "ppo.total_episodes=8",
        "ppo.batch_size=4",
        "ppo.response_length=32",
        "eval.every=never",
        "meta.every=never",
        "--quiet",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = std::fs::read_dir(r.join("math")).unwrap().next().unwrap().unwrap().path();
    let rows: Vec<J> =
        std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2);
    for row in &rows {
        let ro = &row["rollouts"];
        assert_eq!(ro["engine"], "llama_server", "{ro}");
        let d = &ro["drift"];
        assert_eq!(d["tokens"], row["tokens"]["policy_generated"], "every generated token compared: {ro}");
        assert_eq!(d["missing"], 0, "{ro}");
        let mean_abs = d["mean_abs"].as_f64().unwrap();
        assert!(mean_abs > 0.0 && mean_abs < 0.15, "llama-server's log-probs are not the trainer's: {ro}");
        assert!(ro["load_s"].as_f64().unwrap() > 0.0, "{ro}");
        assert_eq!(ro["transport"]["attempts"], 4, "one request per rollout: {ro}");
    }
    let plan: J = serde_json::from_str(&std::fs::read_to_string(run.join("plan.json")).unwrap()).unwrap();
    let scratch = std::env::temp_dir().join(format!("mpo-rollouts-{}-", plan["run_id"].as_str().unwrap()));
    let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.path().display().to_string().starts_with(&scratch.display().to_string()))
        .collect();
    assert!(left.is_empty(), "the engine's temporary folder outlived the run: {left:?}");
    let _ = std::fs::remove_dir_all(&r);
}

/// The text a stub-served judge was asked: a chat's messages or a completion's prompt.
fn asked(body: &J) -> String {
    match body["messages"].as_array() {
        Some(ms) => ms.iter().filter_map(|m| m["content"].as_str()).collect::<Vec<_>>().join("\n"),
        None => body["prompt"].as_str().unwrap_or_default().to_string(),
    }
}

/// A judge that grades every item of the rubric it is shown at its lowest point, analyses in
/// three findings, and refines to a rubric of its own whose second item's range comes from the
/// prompt's length (so each family's rubric differs, and a rerun asks and gets the same).
fn family_judge(r: &mpo::bench::stub::Request) -> mpo::bench::stub::Reply {
    use mpo::bench::stub::Reply;
    let p = asked(&r.body);
    if ["now rewrite the rubric", "Write the improved rubric", "Combine them into one rubric"].iter().any(|k| p.contains(k)) {
        let n = 1 + p.len() % 4;
        return Reply::Text(format!(
            "## Correct final answer (0-3)\n- Award 3 when the final answer equals the reference.\n## Shown steps (0-{n})\n- Award {n} when every step of the working is written out.\n"
        ));
    }
    if p.contains("senior instructor") {
        return Reply::Text(
            "1. The score is inflated for an answer with no working.\n2. A wrong final answer should cost every point.\n3. The rubric should reward shown steps.\n"
                .into(),
        );
    }
    let items: Vec<String> = p
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .filter_map(|h| h.rsplit_once(" (").map(|(name, range)| format!("{name}: {}", range.split('-').next().unwrap_or("0"))))
        .collect();
    Reply::Text(items.join("\n"))
}

/// `meta.partition_by`: one rubric per family of training records, each with its own history
/// and versions; a rollout is judged under its family's rubric in force; `mpo rubric` reads a
/// family by name; and a run stopped after a family's switch resumes to the same metrics.
#[test]
fn rubric_families_each_keep_their_own_rubric() {
    use mpo::bench::stub::Stub;
    let stub = Stub::start(family_judge).unwrap();
    let args = |r: &Path| -> Vec<String> {
        [
            "run",
            SPEC,
            &format!("output.root={}", r.display()),
            "--quiet",
            "reward.judge.backend=openai",
            "reward.judge.base_url_env=MPO_FAMILY_JUDGE",
            "reward.judge.max_tokens=64",
            "meta.partition_by=[level]",
            "meta.max_tokens=400",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |r: &Path, extra: &[&str]| {
        let mut a = args(r);
        a.extend(extra.iter().map(|s| s.to_string()));
        Command::new(env!("CARGO_BIN_EXE_mpo")).args(&a).env("MPO_FAMILY_JUDGE", &stub.url).output().unwrap()
    };
    let r = root("families");
    let out = run(&r, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 rubric families"), "{}", String::from_utf8_lossy(&out.stdout));
    let d = run_dir(&r);
    assert!(!d.join("rubrics/history.jsonl").exists(), "a run with families has no single history");
    let fam = |slug: &str, v: u32| {
        std::fs::read_to_string(d.join(format!("rubrics/families/{slug}/v{v:03}.md"))).unwrap_or_else(|e| panic!("{slug} v{v}: {e}"))
    };
    assert_eq!(fam("level-1", 0), fam("level-2", 0), "every family starts from reward.rubric");
    let first: J =
        serde_json::from_str(std::fs::read_to_string(d.join("rubrics/families/level-1/history.jsonl")).unwrap().lines().next().unwrap())
            .unwrap();
    assert_eq!(first["family"], "Level 1");

    // each rollout is judged under its family's rubric in force
    let loaded = mpo::resolve::load(Path::new(SPEC), &[]);
    let spec = &loaded.runs[0].spec;
    let train = mpo::task::load(spec.task.kind, &spec.task.train, spec.data_seed(), mpo::task::Split::Train).unwrap();
    let rows = metrics(&d);
    let mut switched = 0;
    let mut checked = 0;
    for row in &rows {
        let versions = row["rubric_versions"].as_object().expect("each row says every family's version");
        assert_eq!(versions.keys().collect::<Vec<_>>(), vec!["Level 1", "Level 2"]);
        let sum: u64 = versions.values().map(|v| v.as_u64().unwrap()).sum();
        assert_eq!(row["rubric_version"].as_u64().unwrap(), sum, "rubric_version is the rewrites in force");
        if let Some(fs) = row["meta"]["families"].as_array() {
            assert!(!fs.is_empty());
            switched += fs.iter().filter(|f| f["new_version"].is_u64()).count();
        }
        let u = row["update"].as_u64().unwrap();
        let samples = std::fs::read_to_string(d.join(format!("samples/update-{u:06}.jsonl"))).unwrap();
        for line in samples.lines() {
            let s: J = serde_json::from_str(line).unwrap();
            let Some(prompt) = s["judge_prompt"].as_str() else { continue };
            let level = train.records[s["record_index"].as_u64().unwrap() as usize]["level"].as_str().unwrap().to_string();
            let v = versions[&level].as_u64().unwrap() as u32;
            let slug = if level == "Level 1" { "level-1" } else { "level-2" };
            let rubric = mpo::rubric::Rubric::parse(&fam(slug, v)).unwrap();
            for it in &rubric.items {
                assert!(prompt.contains(&format!("## {} ({}-{})", it.name, it.min, it.max)), "update {u} {level} v{v}: {prompt}");
            }
            checked += 1;
        }
    }
    assert!(switched >= 2, "both families were rewritten: {rows:?}");
    assert!(checked > 0);

    // `mpo rubric` names families
    let log = mpo(&["rubric", "log", d.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&log.stdout);
    assert!(log.status.success() && text.contains("== Level 1") && text.contains("== Level 2") && text.contains("v001"), "{text}");
    let show = mpo(&["rubric", "show", d.to_str().unwrap(), "v001", "--family", "Level 2"]);
    assert_eq!(String::from_utf8_lossy(&show.stdout), fam("level-2", 1));
    let bare = mpo(&["rubric", "show", d.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&bare.stderr);
    assert!(!bare.status.success() && err.contains("--family") && err.contains("`Level 1`"), "{err}");
    let diff = mpo(&["rubric", "diff", d.to_str().unwrap(), "v000", "v001", "--family", "level-1"]);
    assert!(String::from_utf8_lossy(&diff.stdout).contains("+## Shown steps"), "{}", String::from_utf8_lossy(&diff.stdout));

    // stopped after the first meta step (both families switched), resumed: the same run
    let r2 = root("families-resume");
    let out = run(&r2, &["--stop-after", "3"]);
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&r2, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let d2 = run_dir(&r2);
    same_metrics(&metrics(&d2), &rows);
    for slug in ["level-1", "level-2"] {
        for f in ["history.jsonl", "v001.md"] {
            let p = format!("rubrics/families/{slug}/{f}");
            assert_eq!(std::fs::read_to_string(d2.join(&p)).unwrap(), std::fs::read_to_string(d.join(&p)).unwrap(), "{p}");
        }
    }
    let _ = std::fs::remove_dir_all(r);
    let _ = std::fs::remove_dir_all(r2);
}
