//! Every prompt of every shipped spec, rendered on fixed real records (the first two training
//! records): a template change shows up as a snapshot diff in review.

use std::path::Path;

#[test]
fn every_prompt_of_every_shipped_spec() {
    for spec in mpo::bench::SHIPPED_SPECS {
        let loaded = mpo::spec::load(Path::new(spec), &[]);
        assert!(!loaded.has_errors(), "{}", loaded.render_diagnostics());
        let files = mpo::snapshot::render_all(&loaded.runs[0], 2).unwrap();
        let text: String = files.iter().map(|(n, t)| format!("===== {n} =====\n{t}\n")).collect();
        let name = Path::new(spec).file_stem().unwrap().to_string_lossy().to_string();
        insta::assert_snapshot!(format!("prompts_{name}"), text);
    }
}

#[test]
fn snapshot_command_detects_and_accepts_changes() {
    let dir = std::env::temp_dir().join(format!("mpo-snap-{}", std::process::id()));
    let run = |extra: &[&str]| {
        let mut args = vec!["snapshot", "specs/math.yaml", "--dir", dir.to_str().unwrap()];
        args.extend_from_slice(extra);
        std::process::Command::new(env!("CARGO_BIN_EXE_mpo")).args(&args).output().unwrap().status.code()
    };
    assert_eq!(run(&[]), Some(1), "a first snapshot is a change");
    assert_eq!(run(&["--update"]), Some(0));
    assert_eq!(run(&[]), Some(0));
    std::fs::write(dir.join("math/policy-0.txt"), "edited").unwrap();
    assert_eq!(run(&[]), Some(1));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn grade_exit_codes() {
    let grade =
        |args: &[&str]| std::process::Command::new(env!("CARGO_BIN_EXE_mpo")).arg("grade").args(args).output().unwrap().status.code();
    assert_eq!(grade(&["math", "--response", "so \\boxed{\\dfrac{1}{2}}", "--reference", "0.5"]), Some(0));
    assert_eq!(grade(&["math", "--response", "so \\boxed{3}", "--reference", "$\\boxed{4}$"]), Some(1));
    assert_eq!(grade(&["math", "--response", "no box", "--reference", "4"]), Some(1));
    assert_eq!(grade(&["ethical_reasoning", "--response", "<verdict>WRONG</verdict>", "--reference", "wrong"]), Some(0));
    assert_eq!(grade(&["ethical_reasoning", "--response", "x", "--reference", "maybe"]), Some(2));
    assert_eq!(grade(&["essay_writing", "--response", "x", "--reference", "y"]), Some(2));
    assert_eq!(grade(&["math", "--response", "x"]), Some(2));
    // negative answers need no `--`
    assert_eq!(grade(&["math", "--response", "\\boxed{-2}", "--reference", "-2"]), Some(0));
    assert_eq!(grade(&["math", "--reference", "-2", "--response", "\\boxed{2}"]), Some(1));
    assert_eq!(grade(&["math", "--response", "\\boxed{4036}", "--reference", "4{,}036"]), Some(0));
}
