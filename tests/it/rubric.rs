//! `mpo rubric test` from the committed recordings: no model, server or network. The shipped
//! snapshot passes; a changed rubric line makes every case name the missing recordings (and
//! the command that records them) instead of failing obscurely.

use std::path::{Path, PathBuf};
use std::process::Command;

fn mpo(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mpo"))
        // Nothing may be fetched or loaded: an empty model cache proves the replay needs none.
        .env("MPO_CACHE_DIR", std::env::temp_dir().join(format!("mpo-rubric-empty-cache-{}", std::process::id())))
        .args(args)
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

#[test]
fn the_shipped_rubric_tests_replay_and_pass() {
    let (code, out, err) = mpo(&["rubric", "test", "specs/math.yaml"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("13 cases scored by local:smollm2-135m-instruct (replayed from recordings)"), "{out}");
    assert!(out.contains("outcomes unchanged from the snapshot"), "{out}");
    assert!(!out.contains("FAIL"), "{out}");

    let (code, xml, _) = mpo(&["rubric", "test", "specs/math.yaml", "--format", "junit"]);
    assert_eq!(code, 0);
    assert!(xml.contains("<testsuite name=\"math\" tests=\"13\" failures=\"0\">"), "{xml}");
}

#[test]
fn an_edited_rubric_names_the_cases_that_need_recording() {
    let d = std::env::temp_dir().join(format!("mpo-rubric-edit-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let rubric = std::fs::read_to_string(repo("prompt_templates/math/rubric_v0.md")).unwrap();
    let edited =
        rubric.replace("- Award 1 when the final answer is written inside \\boxed{}.", "- Award 1 when the final answer is boxed.");
    assert_ne!(edited, rubric, "the line to edit is in the shipped rubric");
    std::fs::write(d.join("rubric.md"), edited).unwrap();
    std::fs::write(d.join("spec.yaml"), format!("extends: {}\nreward: {{rubric: rubric.md}}\n", repo("specs/math.yaml").display()))
        .unwrap();
    let dir = repo("prompt_snapshots");
    let (code, out, err) = mpo(&["rubric", "test", d.join("spec.yaml").to_str().unwrap(), "--dir", dir.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("no recorded judge answer for 13 case(s)"), "{out}");
    assert!(out.contains(&format!("`mpo rubric test {} --record`", d.join("spec.yaml").display())), "{out}");
    assert!(out.contains("rubric: sha256 "), "the diff says the rubric changed: {out}");
    assert!(out.contains("good-sum: total 2.882 -> failed (no recorded judge answer)"), "{out}");
    // Replaying never writes: the committed snapshot is untouched.
    let (code, _, _) = mpo(&["rubric", "test", "specs/math.yaml"]);
    assert_eq!(code, 0);
}

#[test]
fn every_shipped_task_spec_replays_its_rubric_tests() {
    let specs = ["specs/math.yaml", "specs/essay_writing.yaml", "specs/summarization.yaml", "specs/ethical_reasoning.yaml"];
    let mut args = vec!["rubric", "test"];
    args.extend(specs);
    args.extend(["--format", "junit"]);
    let (code, xml, err) = mpo(&args);
    assert_eq!(code, 0, "{xml}\n{err}");
    // One document, one suite per spec.
    assert_eq!(xml.matches("<?xml").count(), 1, "{xml}");
    for name in ["math", "essay_writing", "summarization", "ethical_reasoning"] {
        assert!(xml.contains(&format!("<testsuite name=\"{name}\"")), "{name}: {xml}");
    }
    // The prompts half of the same folders: the committed rendered prompts are current.
    let mut args = vec!["snapshot"];
    args.extend(specs);
    let (code, out, err) = mpo(&args);
    assert_eq!(code, 0, "{out}\n{err}");
}

#[test]
fn a_run_directory_gets_a_case_by_version_table() {
    let root = std::env::temp_dir().join(format!("mpo-rubric-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let cases = repo("prompt_templates/math/cases.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_mpo"))
        .args([
            "run",
            "tests/specs/valid/tiny.yaml",
            "ppo.total_episodes=8",
            &format!("reward.cases={}", cases.display()),
            "meta.gate=true",
            &format!("output.root={}", root.display()),
            "--quiet",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = std::fs::read_dir(root.join("tiny")).unwrap().next().unwrap().unwrap().path();
    // The gate's case file is part of the plan (and so of the run's identity).
    let plan = std::fs::read_to_string(run.join("plan.json")).unwrap();
    assert!(plan.contains("\"cases\"") && plan.contains("\"gate\": true"), "{plan}");

    // Replaying asks nothing: what no recording holds is named, with the command that asks.
    let (code, replayed, err) = mpo(&["rubric", "test", run.to_str().unwrap()]);
    assert_eq!(code, 1, "{replayed}\n{err}");
    assert!(replayed.contains("| probe-empty-0 | empty | ? |"), "{replayed}");
    assert!(replayed.contains("no recorded judge answer for 13 (version, case) pair(s)"), "{replayed}");
    assert!(replayed.contains(&format!("`mpo rubric test {} --record`", run.display())), "{replayed}");
    assert!(!replayed.contains("asked of the judge and recorded"), "{replayed}");

    let (code, first, err) = mpo(&["rubric", "test", run.to_str().unwrap(), "--record"]);
    assert_eq!(code, 0, "{first}\n{err}");
    assert!(first.contains("| case | kind | v000 (0-7) |"), "{first}");
    assert!(first.contains("| probe-empty-0 | empty |"), "{first}");
    assert!(first.contains("answer(s) asked of the judge and recorded"), "{first}");
    let table = std::fs::read_to_string(run.join("rubric_tests/table.md")).unwrap();
    assert!(run.join("rubric_tests/heatmap.svg").is_file());
    // The second time every answer is replayed, and the table is the same.
    let (code, second, _) = mpo(&["rubric", "test", run.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(!second.contains("asked of the judge"), "{second}");
    assert_eq!(std::fs::read_to_string(run.join("rubric_tests/table.md")).unwrap(), table);

    // The report links the table.
    let (code, _, err) = mpo(&["report", root.join("tiny").to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let report = std::fs::read_to_string(root.join("tiny/report.md")).unwrap();
    assert!(report.contains("rubric_tests/table.md"), "{report}");
    let _ = std::fs::remove_dir_all(&root);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() { copy_dir(&src, &dst) } else { std::fs::copy(&src, &dst).map(|_| ()).unwrap() }
    }
}

fn files(d: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(d).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.insert(p.clone(), std::fs::read(&p).unwrap());
        }
    }
    out
}

/// A run folder copied elsewhere (as off a cluster) and read from a directory where none of
/// the plan's relative paths resolve: the rubric test replays, the checkpoint is evaluated and
/// the report is written, from the folder's own copies of its inputs.
#[test]
fn a_run_folder_copied_elsewhere_is_replayed_evaluated_and_reported_from_anywhere() {
    let root = std::env::temp_dir().join(format!("mpo-copied-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let out = Command::new(env!("CARGO_BIN_EXE_mpo"))
        .args([
            "run",
            "tests/specs/valid/tiny.yaml",
            "ppo.total_episodes=8",
            // relative, as a spec's own paths usually are: it resolves only from here
            "reward.cases=prompt_templates/math/cases.yaml",
            "meta.gate=true",
            &format!("output.root={}", root.join("cluster").display()),
            "--quiet",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = std::fs::read_dir(root.join("cluster/tiny")).unwrap().next().unwrap().unwrap().path();
    let id = run.file_name().unwrap().to_owned();
    let index = std::fs::read_to_string(run.join("inputs/index.json")).unwrap();
    assert!(index.contains("\"cases\"") && index.contains("inputs/templates/judge/judge.j2"), "{index}");
    assert!(run.join("inputs/cases/cases.yaml").is_file());
    let before = files(&run);

    let copy = root.join("laptop/tiny").join(&id);
    copy_dir(&run, &copy);
    let away = root.join("elsewhere");
    std::fs::create_dir_all(&away).unwrap();
    let mpo_away = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_mpo"))
            .current_dir(&away)
            .env("MPO_CACHE_DIR", root.join("empty-cache"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let c = copy.to_str().unwrap();
    let (code, o, e) = mpo_away(&["rubric", "test", c, "--record"]);
    assert_eq!(code, 0, "{o}\n{e}");
    assert!(o.contains("Cases from `prompt_templates/math/cases.yaml`"), "{o}");
    let (code, o, e) = mpo_away(&["rubric", "test", c]);
    assert_eq!(code, 0, "{o}\n{e}");
    assert!(!o.contains("asked of the judge"), "{o}");
    let (code, o, e) = mpo_away(&["eval", c]);
    assert_eq!(code, 0, "{o}\n{e}");
    assert!(copy.join("eval/checkpoint-000002.json").is_file(), "{o}");
    let (code, o, e) = mpo_away(&["report", root.join("laptop/tiny").to_str().unwrap()]);
    assert_eq!(code, 0, "{o}\n{e}");
    assert!(root.join("laptop/tiny/report.md").is_file());

    // The copy's plan and run id are the run's; the original folder is untouched.
    assert_eq!(std::fs::read(copy.join("plan.json")).unwrap(), std::fs::read(run.join("plan.json")).unwrap());
    assert_eq!(files(&run), before);

    // A folder without the copy (made before copies were) names the file and what to do.
    std::fs::remove_file(copy.join("inputs/cases/cases.yaml")).unwrap();
    let (code, o, e) = mpo_away(&["rubric", "test", c]);
    assert_eq!(code, 1, "{o}\n{e}");
    assert!(e.contains("cases `prompt_templates/math/cases.yaml`") && e.contains("put a copy"), "{e}");
    assert!(e.contains(&copy.join("inputs/cases/cases.yaml").display().to_string()), "{e}");
    let _ = std::fs::remove_dir_all(&root);
}
