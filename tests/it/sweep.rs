//! Sweeps, Slurm emission, reports and evaluation end to end on the tiny random model.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value as J;

const SPEC: &str = "tests/specs/valid/tiny_sweep.yaml";

fn root(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("mpo-sweep-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

fn mpo(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mpo")).args(args).output().unwrap()
}

fn ok(out: &std::process::Output) -> String {
    assert!(out.status.success(), "stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn run_dirs(results: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(results).unwrap().flatten().map(|e| e.path()).filter(|p| p.join("plan.json").exists()).collect();
    v.sort();
    v
}

fn json(p: &Path) -> J {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

#[test]
fn sweep_report_eval_and_elo() {
    let r = root("local");
    let root_arg = format!("output.root={}", r.display());
    let out = ok(&mpo(&["sweep", SPEC, &root_arg, "--jobs", "2"]));
    assert!(out.contains("all 2 cells finished"), "{out}");
    assert_eq!(out.lines().filter(|l| l.contains("finished")).count(), 3, "{out}");
    // a second sweep skips both cells
    let again = ok(&mpo(&["sweep", SPEC, &root_arg]));
    assert_eq!(again.lines().filter(|l| l.contains("  skipped")).count(), 2, "{again}");

    let results = r.join("tiny-sweep");
    let table = ok(&mpo(&["report", results.to_str().unwrap()]));
    assert!(table.contains("meta.every=never") && table.contains("meta.every=1"), "{table}");
    let md = std::fs::read_to_string(results.join("report.md")).unwrap();
    assert!(md.contains("| meta.every=1 | 1 (1) |"), "{md}");
    let csv = std::fs::read_to_string(results.join("report.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(csv.starts_with("factor,runs,finished,updates_mean,updates_std,verifier_mean_mean"), "{csv}");
    assert!(csv.lines().next().unwrap().contains(",training_reward_own_rubric_mean,"), "{csv}");
    assert!(md.contains("do not compare") && md.contains("How each number is computed"), "{md}");
    assert!(csv.lines().nth(1).unwrap().starts_with("meta.every=never,1,1,2,0,"), "{csv}");
    for svg in ["reward.svg", "verifier.svg"] {
        let s = std::fs::read_to_string(results.join(svg)).unwrap();
        assert!(s.starts_with("<svg") && s.contains("<polyline"), "{svg}");
        assert!(s.contains("meta.every=1"), "{svg} has a legend");
    }

    // eval: the latest checkpoint gives the in-run evaluation's responses (same stream)
    let dirs = run_dirs(&results);
    assert_eq!(dirs.len(), 2);
    let d = dirs[0].to_str().unwrap();
    let e = ok(&mpo(&["eval", d, "--checkpoint", "2"]));
    assert!(e.contains("checkpoint-000002 on 4 test prompts") && e.contains("accuracy"), "{e}");
    let metrics = json(&dirs[0].join("eval/checkpoint-000002.json"));
    assert_eq!(metrics["samples"], 4);
    assert_eq!(
        std::fs::read_to_string(dirs[0].join("eval/checkpoint-000002.jsonl")).unwrap(),
        std::fs::read_to_string(dirs[0].join("eval/update-000002.jsonl")).unwrap()
    );
    ok(&mpo(&["eval", d, "--checkpoint", "base"]));
    let missing = mpo(&["eval", d, "--checkpoint", "7"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no checkpoint of update 7; saved: 2"));

    // A tournament between the two arms and the base model's responses, as `mpo eval --elo
    // results/NAME/*` calls it (slurm/ and the report's files are skipped with a note), judged
    // by a server judge named in a file: a stub that prefers the longer response, whichever
    // side it is shown on.
    let stub = mpo::bench::stub::Stub::start(|r| {
        let prompt = r.body["messages"][0]["content"].as_str().unwrap_or("").to_string();
        let part = |from: &str, to: &str| prompt.split(from).nth(1).and_then(|s| s.split(to).next()).unwrap_or("").trim().len();
        let (a, b) = (part("Response A:", "Response B:"), part("Response B:", "Reply with one line"));
        mpo::bench::stub::Reply::Text(
            if a > b {
                " A"
            } else if b > a {
                " B"
            } else {
                " tie"
            }
            .into(),
        )
    })
    .unwrap();
    let judge = r.join("judge.yaml");
    std::fs::write(&judge, "backend: openai\nmodel: stub\nbase_url_env: MPO_TEST_TOURNAMENT_URL\nmax_retries: 0\n").unwrap();
    std::fs::create_dir_all(results.join("slurm/logs")).unwrap();
    let mut star: Vec<String> = std::fs::read_dir(&results).unwrap().flatten().map(|e| e.path().display().to_string()).collect();
    star.sort();
    let base = dirs[0].join("eval/base.jsonl");
    star.push(base.display().to_string());
    let elo_args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["eval", "--elo"].iter().map(|s| s.to_string()).collect();
        a.extend(star.iter().cloned());
        a.extend(["--matches", "4", "--bootstrap", "20"].iter().map(|s| s.to_string()));
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let tournament = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_mpo")).args(elo_args(extra)).env("MPO_TEST_TOURNAMENT_URL", &stub.url).output().unwrap()
    };
    // no judge named: a clear error, nothing judged
    let none = tournament(&[]);
    assert_eq!(none.status.code(), Some(1));
    let e = String::from_utf8_lossy(&none.stderr);
    assert!(e.contains("no tournament judge named") && e.contains("--judge FILE") && e.contains("--training-judge"), "{e}");
    assert_eq!(stub.count(), 0);
    let out = tournament(&["--judge", judge.to_str().unwrap()]);
    let elo = ok(&out);
    let notes = String::from_utf8_lossy(&out.stderr);
    assert!(notes.contains("note: skipped") && notes.contains("slurm: not a run directory (no plan.json)"), "{notes}");
    assert!(notes.contains("report.md: not a run directory"), "{notes}");
    assert!(elo.contains("rank") && elo.contains("BT rating") && elo.contains("judge: openai stub"), "{elo}");
    assert!(elo.contains("position consistency 100.0%") && !elo.contains("training judge"), "{elo}");
    // 3 players, 3 pairs x 4 matches, each judged in both orders
    assert_eq!(stub.count(), 24);
    let t = json(&results.join("elo/elo.json"));
    assert_eq!(t["format"], 2);
    assert_eq!(t["judge"]["training_judge"], false);
    assert_eq!(t["judge"]["identity"], "openai-chat:stub");
    let players: Vec<&str> = t["players"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(players.len(), 3);
    assert!(players.contains(&"meta.every=never") && players.contains(&"meta.every=1"), "{players:?}");
    assert!(players.iter().any(|p| p.ends_with(" @base")), "{players:?}");
    assert_eq!(t["standings"].as_array().unwrap().len(), 3);
    assert_eq!((t["matches"].as_u64(), t["incomplete_matches"].as_u64()), (Some(12), Some(0)));
    assert_eq!(t["position"]["consistency"], 1.0);
    let mean: f64 = t["standings"].as_array().unwrap().iter().map(|s| s["rating"].as_f64().unwrap()).sum::<f64>() / 3.0;
    assert!((mean - 1000.0).abs() < 1e-6, "{mean}");
    assert_eq!(std::fs::read_to_string(results.join("elo/matches.jsonl")).unwrap().lines().count(), 12);
    // the report shows it
    ok(&mpo(&["report", results.to_str().unwrap()]));
    let md = std::fs::read_to_string(results.join("report.md")).unwrap();
    assert!(md.contains("## Pairwise tournament") && md.contains("`elo/elo.json`") && md.contains("| 1 |"), "{md}");
    // and every arm against the fixed-rubric arm on the same held-out prompts, with the exact test
    assert!(md.contains("## Arms against the baseline") && md.contains("Baseline: `meta.every=never`"), "{md}");
    assert!(md.contains("### `meta.every=1` against `meta.every=never`"), "{md}");
    assert!(md.contains("accuracy on 4 held-out test prompts") && md.contains("exact McNemar test: "), "{md}");
    // counts read as counts
    assert!(md.contains("| meta.every=never | 1 (1) | 2 |"), "{md}");
    // a baseline that is not an arm is refused, naming the arms
    let bad = mpo(&["report", results.to_str().unwrap(), "--baseline", "meta.every=3"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no arm `meta.every=3`; the arms are: meta.every=never; meta.every=1"));
    let _ = std::fs::remove_dir_all(&r);
}

#[test]
fn slurm_script_passes_bash_n_and_runs_one_cell() {
    let r = root("slurm");
    let root_arg = format!("output.root={}", r.display());
    let out_dir = r.join("slurm");
    ok(&mpo(&[
        "sweep",
        SPEC,
        &root_arg,
        "--emit",
        "slurm",
        "--out",
        out_dir.to_str().unwrap(),
        "--partition",
        "gpu",
        "--gpus-per-task",
        "0",
        "--max-parallel",
        "4",
    ]));
    let script = out_dir.join("sweep.sbatch");
    let text = std::fs::read_to_string(&script).unwrap();
    for want in
        ["#SBATCH --array=0-1%4", "#SBATCH --partition=gpu", "#SBATCH --requeue", "run --plan", "generate in process: no server needed"]
    {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert!(!text.contains("#SBATCH --gres"), "no GPUs asked for");
    let syntax = Command::new("bash").arg("-n").arg(&script).output().unwrap();
    assert!(syntax.status.success(), "{}", String::from_utf8_lossy(&syntax.stderr));
    let plans = json(&out_dir.join("plans.json"));
    assert_eq!(plans["runs"].as_array().unwrap().len(), 2);

    // outside Slurm without a task id: a clear error
    let no_id = Command::new("bash").arg(&script).env("MPO", env!("CARGO_BIN_EXE_mpo")).env_remove("SLURM_ARRAY_TASK_ID").output().unwrap();
    assert!(!no_id.status.success());
    assert!(String::from_utf8_lossy(&no_id.stderr).contains("SLURM_ARRAY_TASK_ID"));

    // array task 1, run by hand: cell 1 runs and finishes in its run-id directory
    let run = Command::new("bash").arg(&script).env("MPO", env!("CARGO_BIN_EXE_mpo")).env("SLURM_ARRAY_TASK_ID", "1").output().unwrap();
    ok(&run);
    let id = plans["runs"][1]["run_id"].as_str().unwrap();
    let manifest = json(&r.join("tiny-sweep").join(id).join("manifest.json"));
    assert_eq!(manifest["status"], "finished");
    assert!(!r.join("tiny-sweep").join(plans["runs"][0]["run_id"].as_str().unwrap()).exists(), "only cell 1 ran");
    // a requeued task finds its run finished
    let requeued =
        Command::new("bash").arg(&script).env("MPO", env!("CARGO_BIN_EXE_mpo")).env("SLURM_ARRAY_TASK_ID", "1").output().unwrap();
    assert!(String::from_utf8_lossy(&ok(&requeued).into_bytes()).contains("already finished"));
    let _ = std::fs::remove_dir_all(&r);
}

#[test]
fn a_spec_evaluates_its_base_model_and_training_keeps_it() {
    let r = root("base");
    let root_arg = format!("output.root={}", r.display());
    let spec = "tests/specs/valid/tiny.yaml";
    let e = ok(&mpo(&["eval", spec, &root_arg]));
    assert!(e.contains("base on 4 test prompts"), "{e}");
    let name = r.join("tiny");
    let dir = std::fs::read_dir(&name).unwrap().next().unwrap().unwrap().path();
    let before = std::fs::read_to_string(dir.join("eval/base.jsonl")).unwrap();
    ok(&mpo(&["run", spec, &root_arg, "--quiet"]));
    assert_eq!(std::fs::read_to_string(dir.join("eval/base.jsonl")).unwrap(), before, "training keeps the base evaluation");
    assert!(dir.join("eval/update-000003.jsonl").exists());
    let bad = mpo(&["eval", spec, &root_arg, "--checkpoint", "3"]);
    assert_eq!(bad.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&r);
}

/// Slurm signals the batch shell before the time limit; the script forwards it to mpo, which
/// checkpoints and stops (exit 130), so a re-submitted task resumes.
#[test]
fn the_slurm_script_forwards_the_time_limit_signal_to_mpo() {
    let r = root("signal");
    let root_arg = format!("output.root={}", r.display());
    let out_dir = r.join("slurm");
    ok(&mpo(&["sweep", SPEC, &root_arg, "ppo.total_episodes=800", "--emit", "slurm", "--out", out_dir.to_str().unwrap()]));
    let plans = json(&out_dir.join("plans.json"));
    let run = r.join("tiny-sweep").join(plans["runs"][0]["run_id"].as_str().unwrap());
    // Slurm starts the batch shell with default signal dispositions; a test run from a
    // backgrounded shell inherits SIGINT ignored, which bash can then never trap: reset it.
    let mut child = Command::new("env")
        .args(["--default-signal=INT", "bash"])
        .arg(out_dir.join("sweep.sbatch"))
        .env("MPO", env!("CARGO_BIN_EXE_mpo"))
        .env("SLURM_ARRAY_TASK_ID", "0")
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(run.join("metrics.jsonl")).map(|m| m.lines().count()).unwrap_or(0) < 1 {
        assert!(t0.elapsed().as_secs() < 120, "no update within 2 minutes");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "mpo stopped on the forwarded signal");
    let manifest = json(&run.join("manifest.json"));
    assert_eq!(manifest["status"], "interrupted");
    let done = manifest["updates_done"].as_u64().unwrap();
    assert!((1..200).contains(&done), "{done}");
    assert!(run.join("checkpoints/LATEST").exists());
    let _ = std::fs::remove_dir_all(&r);
}

/// A run with evaluations ends with the base policy against the trained one on the held-out
/// split, with intervals; `mpo eval` on the run reports the same numbers; the base
/// evaluation is measured once per model and settings and reused by the next run.
#[test]
fn a_run_measures_before_and_after_and_mpo_eval_agrees() {
    let r = root("beforeafter");
    let root_arg = format!("output.root={}", r.display());
    let spec = "tests/specs/valid/tiny.yaml";
    let out = mpo(&["run", spec, &root_arg]);
    let stdout = ok(&out);
    for want in ["accuracy on 4 held-out test prompts", "base ", "trained ", "change ", "95% Wilson", "exact McNemar test: "] {
        assert!(stdout.contains(want), "missing `{want}` in:\n{stdout}");
    }
    let dir = std::fs::read_dir(r.join("tiny")).unwrap().flatten().map(|e| e.path()).find(|p| p.join("plan.json").exists()).unwrap();
    let rows: Vec<serde_json::Value> =
        std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let in_run = rows[5]["eval"]["accuracy"].as_f64().unwrap();
    // `mpo eval` on the finished run: the latest checkpoint is update 6's, answered as in the run
    let e = ok(&mpo(&["eval", dir.to_str().unwrap()]));
    assert!(e.contains("checkpoint-000006 on 4 test prompts"), "{e}");
    assert!(e.contains(&format!("accuracy                 {in_run:.4}")), "{e}\n(in-run accuracy {in_run})");
    assert!(e.contains("change ") && e.contains("exact McNemar test: "), "{e}");
    // `mpo eval compare` on two evaluation files of the run: the same pairing and test as the
    // run's own summary printed
    let file = |f: &str| dir.join("eval").join(f).display().to_string();
    let c = ok(&mpo(&["eval", "compare", &file("base.jsonl"), &file("update-000006.jsonl")]));
    assert!(c.contains("accuracy on 4 held-out test prompts") && c.contains("exact McNemar test: "), "{c}");
    let summary_test = stdout.lines().find(|l| l.contains("exact McNemar test: ")).unwrap().trim();
    assert!(c.lines().any(|l| l.trim() == summary_test), "{summary_test}\nnot in\n{c}");
    // one side only: a usage error (exit 2) that says how to call it
    let bad = mpo(&["eval", "compare", &file("base.jsonl")]);
    assert_eq!(bad.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad.stderr));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("mpo eval compare A B"));
    let responses = |f: &str| -> Vec<String> {
        std::fs::read_to_string(dir.join("eval").join(f))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["response"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(responses("checkpoint-000006.jsonl"), responses("update-000006.jsonl"));
    // another seed of the same spec: the base policy's evaluation comes from the cache
    let again = mpo(&["run", spec, &root_arg, "runtime.seed=4"]);
    ok(&again);
    assert!(String::from_utf8_lossy(&again.stderr).contains("from the cache"), "{}", String::from_utf8_lossy(&again.stderr));
    let _ = std::fs::remove_dir_all(&r);
}

/// Two judge models (reward and meta) on servers the task starts: one server per model, each
/// variable set to the server of its model, the task's GPUs split between the servers and mpo,
/// the servers waited for and stopped at the end. The servers and mpo are stubs that record how
/// they were started; the stub server answers `/v1/models` over real HTTP.
#[test]
fn the_slurm_script_starts_one_server_per_judge_model_and_splits_the_gpus() {
    let r = root("servers");
    let root_arg = format!("output.root={}", r.display());
    let out_dir = r.join("slurm");
    let spec = "tests/specs/valid/two_judges.yaml";
    std::fs::create_dir_all(&r).unwrap();
    let setup = r.join("site.sh");
    std::fs::write(&setup, "# site set-up\nexport SITE_SETUP_RAN=1\n").unwrap();
    let emit = |extra: &[&str], out: &Path| {
        let mut args = vec!["sweep", spec, root_arg.as_str(), "--emit", "slurm", "--out", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        mpo(&args)
    };
    let serve = [
        "--serve",
        "vllm",
        "--server-gpus",
        "2,3",
        "--gpus-per-task",
        "1",
        "--server-model",
        "judge-72b=/models/q72",
        "--server-wait",
        "1",
        "--qos",
        "high",
        "--constraint",
        "h100",
        "--sbatch=--exclusive",
    ];
    let setup_arg = format!("--setup={}", setup.display());
    let mut with_setup = serve.to_vec();
    with_setup.push(&setup_arg);
    let emitted = ok(&emit(&with_setup, &out_dir));
    // the fixed-rubric cell asks no meta judge: its array starts (and holds GPUs for) one server
    assert!(emitted.contains("sweep-1.sbatch") && emitted.contains("sweep-2.sbatch"), "{emitted}");
    let fixed = std::fs::read_to_string(out_dir.join("sweep-1.sbatch")).unwrap();
    assert!(fixed.contains("#SBATCH --gres=gpu:3") && fixed.contains("CELLS=(0)") && !fixed.contains("judge-72b"), "{fixed}");
    let script = out_dir.join("sweep-2.sbatch");
    let text = std::fs::read_to_string(&script).unwrap();
    assert!(text.contains("CELLS=(1)"), "{text}");
    for want in
        ["#SBATCH --gres=gpu:6", "#SBATCH --qos=high", "#SBATCH --constraint=h100", "#SBATCH --exclusive", "export SITE_SETUP_RAN=1"]
    {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    let syntax = Command::new("bash").arg("-n").arg(&script).output().unwrap();
    assert!(syntax.status.success(), "{}", String::from_utf8_lossy(&syntax.stderr));

    let stubs = r.join("stubs");
    std::fs::create_dir_all(&stubs).unwrap();
    let log = r.join("stub.log");
    let write_exe = |name: &str, body: &str| {
        let p = stubs.join(name);
        std::fs::write(&p, body).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    };
    write_exe(
        "vllm",
        "#!/usr/bin/env bash\nport=; model=; tp=\nwhile [ $# -gt 0 ]; do case \"$1\" in --port) port=$2; shift;; --served-model-name) model=$2; shift;; --tensor-parallel-size) tp=$2; shift;; esac; shift; done\n\
         echo \"server $model port=$port tp=$tp gpus=$CUDA_VISIBLE_DEVICES\" >> \"$STUB_LOG\"\n\
         mkdir -p \"$STUB_DIR/www-$port/v1\" && echo \"{\\\"data\\\": [{\\\"id\\\": \\\"$model\\\"}]}\" > \"$STUB_DIR/www-$port/v1/models\"\n\
         exec python3 -m http.server \"$port\" --bind 127.0.0.1 --directory \"$STUB_DIR/www-$port\"\n",
    );
    let fake_mpo = write_exe(
        "mpo-stub",
        "#!/usr/bin/env bash\necho \"mpo $* reward=$MPO_T_REWARD_URL meta=$MPO_T_META_URL gpus=$CUDA_VISIBLE_DEVICES setup=${SITE_SETUP_RAN:-no}\" >> \"$STUB_LOG\"\n",
    );
    let port_base = 30000 + (std::process::id() % 5000) * 4;
    let path = format!("{}:{}", stubs.display(), std::env::var("PATH").unwrap());
    let run = Command::new("bash")
        .arg(&script)
        .env("PATH", &path)
        .env("MPO", &fake_mpo)
        .env("STUB_LOG", &log)
        .env("STUB_DIR", &stubs)
        .env("SLURM_ARRAY_TASK_ID", "0")
        .env("SLURM_JOB_ID", "77")
        .env("CUDA_VISIBLE_DEVICES", "3,4,5,6,7,8")
        .env("MPO_PORT_BASE", port_base.to_string())
        .output()
        .unwrap();
    ok(&run);
    let lines = std::fs::read_to_string(&log).unwrap();
    let (p0, p1) = (port_base, port_base + 1);
    assert!(lines.contains(&format!("server judge-32b port={p0} tp=2 gpus=3,4")), "{lines}");
    assert!(lines.contains(&format!("server judge-72b port={p1} tp=3 gpus=5,6,7")), "{lines}");
    assert!(text.contains("vllm serve /models/q72 --served-model-name judge-72b"), "{text}");
    assert!(
        lines.contains(&format!("--cell 1 --quiet reward=http://127.0.0.1:{p0}/v1 meta=http://127.0.0.1:{p1}/v1 gpus=8 setup=1")),
        "{lines}"
    );
    // the servers stop with the task
    std::thread::sleep(std::time::Duration::from_millis(300));
    for p in [p0, p1] {
        let up = std::net::TcpStream::connect(("127.0.0.1", p as u16)).is_ok();
        assert!(!up, "server on port {p} outlived its task");
    }

    // a repeated emission is fine; a different plan set never replaces the frozen one
    let again = ok(&emit(&serve, &out_dir));
    assert!(again.contains("unchanged"), "{again}");
    let frozen = std::fs::read_to_string(out_dir.join("plans.json")).unwrap();
    let changed = mpo(&["sweep", spec, &root_arg, "ppo.kl_coef=0.5", "--emit", "slurm", "--out", out_dir.to_str().unwrap()]);
    assert_eq!(changed.status.code(), Some(1));
    let e = String::from_utf8_lossy(&changed.stderr);
    assert!(e.contains("holds a different plan set") && e.contains("--out DIR"), "{e}");
    assert_eq!(std::fs::read_to_string(out_dir.join("plans.json")).unwrap(), frozen);

    // servers started elsewhere: the task says which variable is missing before mpo starts
    let external = r.join("slurm-external");
    ok(&emit(&[], &external));
    let run = Command::new("bash")
        .arg(external.join("sweep-2.sbatch"))
        .env("MPO", &fake_mpo)
        .env("STUB_LOG", &log)
        .env("SLURM_ARRAY_TASK_ID", "0")
        .env_remove("MPO_T_REWARD_URL")
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("export MPO_T_REWARD_URL=http://HOST:PORT/v1, the server of judge-32b"));

    // a served model no judge uses is a mistake, not a silent no-op
    let unused = mpo(&[
        "sweep",
        spec,
        &root_arg,
        "--emit",
        "slurm",
        "--serve",
        "vllm",
        "--server-model",
        "judge-7b=/m",
        "--out",
        r.join("slurm-unused").to_str().unwrap(),
    ]);
    assert_eq!(unused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unused.stderr).contains("`judge-7b`, which no judge of these cells uses"));
    // two models behind one variable cannot be served
    let shared = mpo(&[
        "sweep",
        spec,
        &root_arg,
        "meta.judge.base_url_env=MPO_T_REWARD_URL",
        "--emit",
        "slurm",
        "--serve",
        "vllm",
        "--out",
        r.join("slurm-shared").to_str().unwrap(),
    ]);
    assert_eq!(shared.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&shared.stderr).contains("read their URL from the same variable `MPO_T_REWARD_URL`"));
    let _ = std::fs::remove_dir_all(&r);
}

/// Rollouts on vLLM (`runtime.rollouts`) need a server of the policy's base model that loads
/// adapters at run time: with `--serve` the script starts one beside the judges' (vLLM's
/// run-time LoRA switch, the policy's rank, log-probs of the tempered distribution), points the
/// rollout variable at it and counts its GPUs; without `--serve` it demands the variable.
#[test]
fn the_slurm_script_starts_the_rollout_server_with_run_time_adapters() {
    let r = root("rollout-server");
    let out = r.join("slurm");
    let spec = "tests/specs/valid/rollouts_vllm.yaml";
    let root_arg = format!("output.root={}", r.display());
    let serve = ["--emit", "slurm", "--out", out.to_str().unwrap(), "--serve", "vllm", "--gpus-per-task", "1"];
    // a random test model (or a GGUF) is nothing vLLM loads: the weights must be named
    let refused = mpo(&[&["sweep", spec, &root_arg][..], &serve[..]].concat());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("--server-model tiny-random-llama=PATH"), "{err}");
    ok(&mpo(&[&["sweep", spec, &root_arg][..], &serve[..], &["--server-model", "tiny-random-llama=/models/tiny"]].concat()));
    let text = std::fs::read_to_string(out.join("sweep-2.sbatch")).unwrap();
    for want in [
        "#SBATCH --gres=gpu:4",
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve /models/tiny --served-model-name tiny-random-llama",
        "--enable-lora --max-lora-rank 8 --logprobs-mode processed_logprobs",
        "export MPO_T_ROLLOUT_URL=\"$SERVER2\"",
        "# server 2: tiny-random-llama for runtime.rollouts via $MPO_T_ROLLOUT_URL",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    // the judges' servers get no LoRA flags
    assert_eq!(text.matches("--enable-lora").count(), 1, "{text}");
    let syntax = Command::new("bash").arg("-n").arg(out.join("sweep-2.sbatch")).output().unwrap();
    assert!(syntax.status.success(), "{}", String::from_utf8_lossy(&syntax.stderr));
    let plain = r.join("plain");
    ok(&mpo(&["sweep", spec, &root_arg, "--emit", "slurm", "--out", plain.to_str().unwrap()]));
    let text = std::fs::read_to_string(plain.join("sweep-2.sbatch")).unwrap();
    assert!(text.contains(": \"${MPO_T_ROLLOUT_URL:?export MPO_T_ROLLOUT_URL="), "{text}");
    let _ = std::fs::remove_dir_all(&r);
}
