//! Every prompt of every shipped spec, rendered on fixed real records (the first two training
//! records): a template change shows up as a snapshot diff in review.

use std::path::Path;

#[test]
fn every_prompt_of_every_shipped_spec() {
    for spec in mpo::bench::SHIPPED_SPECS {
        let loaded = mpo::resolve::load(Path::new(spec), &[]);
        assert!(!loaded.has_errors(), "{}", loaded.render_diagnostics());
        let files = mpo::snapshot::render_all(&loaded.runs[0], 2).unwrap();
        let text: String = files.iter().map(|(n, t)| format!("===== {n} =====\n{t}\n")).collect();
        let name = Path::new(spec).file_stem().unwrap().to_string_lossy().to_string();
        insta::assert_snapshot!(format!("prompts_{name}"), text);
    }
}

/// `meta.review: joint` sends one analysis and one refinement with every sample in it: the
/// snapshot renders them once, with every case, from the lowest grade up.
#[test]
fn a_joint_review_snapshots_one_prompt_with_every_case() {
    let overrides: Vec<String> = [
        "meta.review=joint",
        "meta.stages.analyze=prompt_templates/meta/joint/analyze.j2",
        "meta.stages.refine=prompt_templates/meta/joint/refine.j2",
        "meta.stages.merge=null",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let loaded = mpo::resolve::load(Path::new("specs/math.yaml"), &overrides);
    assert!(!loaded.has_errors(), "{}", loaded.render_diagnostics());
    let files = mpo::snapshot::render_all(&loaded.runs[0], 3).unwrap();
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).filter(|n| n.starts_with("meta-")).collect();
    assert_eq!(names, vec!["meta-analyze.txt", "meta-refine.txt"]);
    let analyze = &files.iter().find(|(n, _)| n == "meta-analyze.txt").unwrap().1;
    assert!(analyze.contains("graded 3 math responses") && analyze.contains("Case 3") && !analyze.contains("Case 4"), "{analyze}");
    assert!(analyze.contains("Reference solution:"), "math cases show the reference solution: {analyze}");
    let g: Vec<usize> = (1..=3).map(|k| analyze.find(&format!("gave {}.0 out of", k - 1)).unwrap()).collect();
    assert!(g.windows(2).all(|w| w[0] < w[1]), "from the lowest grade up");
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

/// Every template file mpo ships renders through the same context builders a run uses, against
/// a real record of its task (templates no shipped spec names included).
#[test]
fn every_shipped_template_renders_through_the_context_builders() {
    use mpo::resolve::sample_context;
    use mpo::template::{TemplateKind, render};
    let mut records = std::collections::BTreeMap::new();
    for spec in mpo::bench::SHIPPED_SPECS {
        let loaded = mpo::resolve::load(Path::new(spec), &[]);
        let r = &loaded.runs[0];
        let data = mpo::task::load(r.spec.task.kind, &r.spec.task.train, 0, mpo::task::Split::Train).unwrap();
        records.insert(r.spec.task.kind.as_str().to_string(), data.records[0].clone());
    }
    let mut rendered = 0;
    // Groups are folders of prompt_templates/; a folder inside one (meta/neutral, the earlier
    // meta templates kept as a named alternative) belongs to its group.
    let mut files = Vec::new();
    for dir in std::fs::read_dir("prompt_templates").unwrap().flatten() {
        let group = dir.file_name().to_string_lossy().to_string();
        for f in std::fs::read_dir(dir.path()).unwrap().flatten() {
            if f.path().is_dir() {
                files.extend(std::fs::read_dir(f.path()).unwrap().flatten().map(|g| (group.clone(), g)));
            } else {
                files.push((group.clone(), f));
            }
        }
    }
    for (group, f) in files {
        {
            let name = f.file_name().to_string_lossy().to_string();
            if name == "cases.yaml" {
                // Rubric test cases, not a template: they must parse.
                let text = std::fs::read_to_string(f.path()).unwrap();
                mpo::cases::CaseFile::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", f.path().display()));
                continue;
            }
            let kind = match (group.as_str(), name.as_str()) {
                ("meta", "prescreen.j2") => TemplateKind::Prescreen,
                ("meta", "analyze.j2") => TemplateKind::Analyze,
                ("meta", "refine.j2") => TemplateKind::Refine,
                ("meta", "merge.j2") => TemplateKind::Merge,
                ("elo", "pairwise.j2") => TemplateKind::Pairwise,
                (_, n) if n.starts_with("policy") => TemplateKind::Policy,
                (_, n) if n.starts_with("judge") => TemplateKind::Judge,
                (_, n) if n.starts_with("rubric") => TemplateKind::Rubric,
                other => panic!("a shipped template this test does not know: {other:?}"),
            };
            let task = if records.contains_key(&group) { group.clone() } else { "math".to_string() };
            // prompt_templates/meta/joint/: the templates of `meta.review: joint`
            let joint = f.path().parent().is_some_and(|d| d.ends_with("joint"));
            let review = if joint { mpo::spec::MetaReview::Joint } else { mpo::spec::MetaReview::PerSample };
            let ctx = sample_context(kind, &task, &records[&task], review);
            let text = std::fs::read_to_string(f.path()).unwrap();
            let out = render(&f.path().display().to_string(), &text, &ctx).unwrap_or_else(|e| panic!("{e}"));
            assert!(!out.trim().is_empty(), "{} renders empty", f.path().display());
            if kind == TemplateKind::Rubric {
                mpo::rubric::Rubric::parse(&out).unwrap_or_else(|e| panic!("{}: {e}", f.path().display()));
            }
            rendered += 1;
        }
    }
    assert_eq!(rendered, 36, "every file under prompt_templates/");
}
