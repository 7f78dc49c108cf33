//! The spec language end to end: shipped specs plan, invalid specs fail with the right
//! diagnostics (snapshotted), the loader never panics, and the CLI's exit codes hold.

use std::path::{Path, PathBuf};
use std::process::Command;

use mpo::plan;
use mpo::resolve;
use mpo::spec;
use proptest::prelude::*;

const SHIPPED: &[&str] = &[
    "specs/math.yaml",
    "specs/essay_writing.yaml",
    "specs/summarization.yaml",
    "specs/ethical_reasoning.yaml",
    "specs/ablations/meta_every.yaml",
    "specs/ablations/meta_every_cpu.yaml",
    "specs/ablations/meta_templates_cpu.yaml",
];

fn snapshot_name(path: &str) -> String {
    Path::new(path).file_stem().unwrap().to_string_lossy().replace('.', "_")
}

#[test]
fn shipped_specs_check_and_plan() {
    for path in SHIPPED {
        let loaded = resolve::load(Path::new(path), &[]);
        assert!(!loaded.has_errors(), "{path}:\n{}", loaded.render_diagnostics());
        // clean: no overlap, sampling or token-budget warnings (an unset judge URL is the shell's)
        let warnings: Vec<String> = loaded
            .render_diagnostics()
            .lines()
            .filter(|l| l.starts_with("warning") && !l.contains("is not set"))
            .map(String::from)
            .collect();
        assert!(warnings.is_empty(), "{path}: {warnings:#?}");
        let plans: Vec<plan::Plan> = loaded.runs.iter().map(plan::compile).collect();
        let text = if loaded.is_sweep { plan::render_sweep_table(&plans) } else { plan::render_summary(&plans[0]) };
        insta::assert_snapshot!(format!("plan_{}", snapshot_name(path)), text);
    }
}

#[test]
fn math_plan_json_is_stable() {
    let loaded = resolve::load(Path::new("specs/math.yaml"), &[]);
    let p = plan::compile(&loaded.runs[0]);
    insta::assert_json_snapshot!("plan_math_json", p);
    // The run id is the hash of the identity, and a round trip through JSON keeps it.
    let back: plan::Plan = serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
    assert_eq!(plan::run_id(&back), p.run_id);
}

#[test]
fn run_id_ignores_output_root_and_threads_but_not_hyperparameters() {
    let id = |o: &[&str]| {
        let o: Vec<String> = o.iter().map(|s| s.to_string()).collect();
        plan::compile(&resolve::load(Path::new("specs/math.yaml"), &o).runs[0]).run_id
    };
    let base = id(&[]);
    assert_eq!(base, id(&["output.root=/tmp/elsewhere", "runtime.threads=2", "description=other words", "runtime.device_memory_gib=80"]));
    assert_ne!(base, id(&["ppo.kl_coef=0.05"]));
    assert_ne!(base, id(&["runtime.seed=1"]));
}

/// The engine that generates rollouts changes them, so it is in the run id; where the engine is
/// and how it is reached are not.
#[test]
fn the_rollout_engine_is_in_the_run_id_and_how_it_is_reached_is_not() {
    let id = |o: &[&str]| {
        let o: Vec<String> = o.iter().map(|s| s.to_string()).collect();
        plan::compile(&resolve::load(Path::new("specs/math.yaml"), &o).runs[0]).run_id
    };
    let base = id(&[]);
    assert_eq!(base, id(&["runtime.rollouts.engine=in_process"]), "the default writes nothing");
    let llama = id(&["runtime.rollouts.engine=llama_server"]);
    assert_ne!(base, llama);
    assert_eq!(llama, id(&["runtime.rollouts.engine=llama_server", "runtime.rollouts.concurrency=1", "runtime.rollouts.timeout_s=30"]));
    let vllm = |dir: &str, var: &str| {
        id(&[
            "runtime.rollouts.engine=vllm",
            &format!("runtime.rollouts.base_url_env={var}"),
            &format!("runtime.rollouts.adapter_dir={dir}"),
        ])
    };
    assert_ne!(vllm("/a", "A"), llama);
    assert_eq!(vllm("/a", "A"), vllm("/b", "B"));
}

/// What an engine cannot do is said at check time: greedy rollouts leave the drift nothing to
/// measure; SGLang adapts no LM head.
#[test]
fn rollout_engine_settings_that_cannot_work_are_warned_about() {
    let o = |s: &str| s.to_string();
    let overrides = [
        o("runtime.rollouts.engine=sglang"),
        o("runtime.rollouts.base_url_env=MPO_ROLLOUT_URL"),
        o("runtime.rollouts.adapter_dir=/tmp/adapters"),
        o("ppo.temperature=0"),
        o("policy.lora.targets=[q, v, lm_head]"),
    ];
    let loaded = resolve::load(Path::new("specs/math.yaml"), &overrides);
    assert!(!loaded.has_errors(), "{}", loaded.render_diagnostics());
    let d = loaded.render_diagnostics();
    assert!(d.contains("`rollouts.drift` measures nothing") && d.contains("will likely refuse `lm_head`"), "{d}");
    // in process, neither applies
    let d = resolve::load(Path::new("specs/math.yaml"), &overrides[3..]).render_diagnostics();
    assert!(!d.contains("rollouts.drift") && !d.contains("lm_head"), "{d}");
}

#[test]
fn sweep_cells_have_distinct_run_ids_and_the_cli_overrides_win() {
    let loaded = resolve::load(Path::new("specs/ablations/meta_every.yaml"), &[]);
    let ids: std::collections::BTreeSet<String> = loaded.runs.iter().map(|r| plan::compile(r).run_id).collect();
    assert_eq!(ids.len(), 12);
    // every cell, whatever its seed, is evaluated on the same test prompts
    assert!(loaded.runs.iter().all(|r| r.spec.test_seed() == loaded.runs[0].spec.test_seed()));
    assert!(loaded.runs.iter().any(|r| r.spec.runtime.seed != loaded.runs[0].spec.runtime.seed));
    let pinned = resolve::load(Path::new("specs/ablations/meta_every.yaml"), &["runtime.seed=7".into()]);
    assert!(pinned.runs.iter().all(|r| r.spec.runtime.seed == 7));
}

#[test]
fn explain_says_where_each_value_came_from() {
    let loaded = resolve::load(Path::new("specs/ablations/meta_every.yaml"), &["ppo.kl_coef=0.05".into()]);
    let rows = spec::explain(&loaded.runs[0].spec, &loaded.runs[0].tree, &loaded.sources);
    let find = |p: &str| rows.iter().find(|r| r.path == p).unwrap_or_else(|| panic!("no row {p}"));
    assert_eq!(find("ppo.kl_coef").origin, "<overrides>:1:13");
    assert_eq!(find("ppo.batch_size").origin, "specs/ablations/meta_every.yaml:9:15");
    assert_eq!(find("task.kind").origin, "specs/math.yaml:17:9");
    assert_eq!(find("ppo.cliprange").origin, "default");
    assert!(find("meta.every").origin.starts_with("specs/ablations/meta_every.yaml:"));
}

/// Every invalid spec fails, and its diagnostics are snapshotted.
#[test]
fn invalid_specs_fail_with_located_diagnostics() {
    let dir = Path::new("tests/specs/invalid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 25, "{} invalid specs", files.len());
    for f in files {
        let name = f.file_stem().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&f).unwrap();
        let overrides: Vec<String> = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# overrides:"))
            .map(|o| o.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        let loaded = resolve::load(&f, &overrides);
        assert!(loaded.has_errors(), "{name} should fail");
        assert!(loaded.runs.is_empty());
        let out = loaded.render_diagnostics();
        assert!(out.contains("-->"), "{name}: every error points somewhere:\n{out}");
        insta::assert_snapshot!(format!("invalid_{name}"), out);
    }
}

/// What `mpo check` warns about: results that would be measured wrongly, not invalid specs.
#[test]
fn misleading_settings_are_warned_about() {
    let loaded = resolve::load(Path::new("tests/specs/fixtures/misleading.yaml"), &[]);
    assert!(!loaded.has_errors(), "{}", loaded.render_diagnostics());
    insta::assert_snapshot!("warnings_misleading_settings", loaded.render_diagnostics());
}

#[test]
fn structured_judge_budgets_are_warned_about() {
    let o = |s: &str| s.to_string();
    // the schema cannot be sent on completions in the openai dialect; 150 tokens leave no room
    // for rationales; 200 meta tokens hold one grammar-shaped rubric item, not four
    let overrides = [
        o("reward.judge.api=completions"),
        o("reward.judge.dialect=openai"),
        o("reward.judge.max_tokens=150"),
        o("meta.every=1"),
        o("meta.max_tokens=200"),
    ];
    let loaded = resolve::load(Path::new("tests/specs/valid/structured_judge.yaml"), &overrides);
    assert!(!loaded.has_errors(), "{}", loaded.render_diagnostics());
    let d = loaded.render_diagnostics();
    assert!(d.contains("sends no schema") && d.contains("even with empty rationales"), "{d}");
    insta::assert_snapshot!("warnings_structured_judge_budgets", d);
    // the meta stages' shapes are sized to the budget for every judge (held to them where the
    // judge takes grammars, asked for in the prompt otherwise)
    let overrides = [o("reward.judge.max_tokens=150"), o("meta.every=1"), o("meta.max_tokens=200")];
    let d = resolve::load(Path::new("tests/specs/valid/structured_judge.yaml"), &overrides).render_diagnostics();
    assert!(d.contains("holds a complete rubric of only 1 item with 126-character lines"), "{d}");
    insta::assert_snapshot!("warnings_structured_meta_grammar", d);
    // a budget that holds no useful meta answer is an error naming the least one
    let overrides = [o("meta.every=1"), o("meta.max_tokens=100")];
    let loaded = resolve::load(Path::new("tests/specs/valid/structured_judge.yaml"), &overrides);
    let d = loaded.render_diagnostics();
    assert!(loaded.has_errors() && d.contains("it must be at least 136"), "{d}");
}

#[test]
fn rubric_scale_advice_names_the_critic_only_where_there_is_one() {
    let warnings = |o: &[&str]| {
        let o: Vec<String> = o.iter().map(|s| s.to_string()).collect();
        let loaded = resolve::load(Path::new("specs/math.yaml"), &o);
        assert!(!loaded.has_errors(), "{}", loaded.render_diagnostics());
        loaded.render_diagnostics()
    };
    assert!(warnings(&["reward.aggregate=sum"]).contains("the critic (value clipping"));
    let grpo = warnings(&["reward.aggregate=sum", "ppo.algorithm=grpo", "ppo.recenter_critic=true"]);
    assert!(!grpo.contains("the critic (value clipping"), "GRPO has no critic to lag: {grpo}");
    assert!(grpo.contains("no critic to re-centre"), "{grpo}");
}

#[test]
fn a_partial_meta_judge_inherits_from_the_reward_judge() {
    let o = |s: &str| s.to_string();
    // structured_judge's reward judge is a llama-server; a meta judge naming only its model
    // talks to the same server (not a silent `backend: local`), its budget still meta.max_tokens
    let overrides = [o("meta.every=1"), o("meta.judge={model: judge-72b, temperature: 0.5}")];
    let loaded = resolve::load(Path::new("tests/specs/valid/structured_judge.yaml"), &overrides);
    assert!(!loaded.has_errors(), "{}", loaded.render_diagnostics());
    let mj = loaded.runs[0].spec.meta.judge.clone().expect("written");
    let rj = &loaded.runs[0].spec.reward.judge;
    assert_eq!((mj.backend, mj.base_url_env.as_str(), mj.dialect, mj.concurrency), (rj.backend, "MPO_TEST_JUDGE_URL", rj.dialect, 4));
    assert_eq!((mj.model.as_deref(), mj.temperature), (Some("judge-72b"), 0.5));
    assert_eq!(mj.max_tokens, mpo::spec::JudgeSpec::default().max_tokens, "the meta budget is meta.max_tokens, not the reward judge's");
    let explained = spec::explain(&loaded.runs[0].spec, &loaded.runs[0].tree, &loaded.sources);
    let row = explained.iter().find(|r| r.path == "meta.judge.base_url_env").expect("explained");
    assert!(row.origin.contains("structured_judge.yaml:16"), "inherited values point at the reward judge: {}", row.origin);
    // a server's model name on an inherited in-process backend: the error says where `local` came from
    let overrides = [o("meta.judge=null"), o("meta.judge={model: Qwen/Qwen2.5-72B-Instruct}")];
    let d = resolve::load(Path::new("specs/math.yaml"), &overrides).render_diagnostics();
    assert!(d.contains("`meta.judge.backend` is `local` (inherited from `reward.judge`)"), "{d}");
    // another backend inherits nothing
    let overrides = [o("meta.every=1"), o("meta.judge={backend: local}")];
    let loaded = resolve::load(Path::new("tests/specs/valid/structured_judge.yaml"), &overrides);
    assert!(!loaded.has_errors(), "{}", loaded.render_diagnostics());
    assert_eq!(loaded.runs[0].spec.meta.judge.as_ref().unwrap().base_url_env, mpo::spec::JudgeSpec::default().base_url_env);
}

#[test]
fn committed_schema_is_current() {
    let committed: serde_json::Value = serde_json::from_str(&std::fs::read_to_string("mpo.schema.json").unwrap()).unwrap();
    assert_eq!(committed, spec::json_schema(), "run `cargo run -- schema > mpo.schema.json`");
}

// ---- CLI ------------------------------------------------------------------------------------

fn mpo(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mpo")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn cli_exit_codes() {
    let (c, o, _) = mpo(&["check", "specs/math.yaml"]);
    assert_eq!(c, 0);
    assert!(o.contains("ok (run id"));
    let (c, _, e) = mpo(&["check", "specs/math.yaml", "ppo.kl_coeff=1"]);
    assert_eq!(c, 1);
    assert!(e.contains("did you mean `kl_coef`?"), "{e}");
    let (c, _, _) = mpo(&["check"]);
    assert_eq!(c, 2);
    let (c, o, _) = mpo(&["check", "specs/math.yaml", "--explain"]);
    assert_eq!(c, 0);
    assert!(o.contains("ppo.cliprange") && o.contains("default"));
    // every command: bad input is 1 (with a message), a wrong command line is 2
    let bad = "tests/specs/invalid/01-typo-top-level-key.yaml";
    for args in [
        vec!["snapshot", bad],
        vec!["run", "--plan", "no/such/plan.json"],
        vec!["eval", "no/such/run"],
        vec!["rubric", "log", "no/such/run"],
        vec!["report", "no/such/results"],
    ] {
        let (c, _, e) = mpo(&args);
        assert_eq!(c, 1, "{args:?}: {e}");
        assert!(e.contains("error"), "{args:?}: {e}");
    }
    let (c, _, e) = mpo(&["run", "specs/math.yaml", "--cell", "1"]);
    assert_eq!(c, 2, "{e}");
    assert!(e.contains("`--cell` is for sweeps"), "{e}");
    let (c, _, e) = mpo(&["rubric", "show", "results/math-meta-every-cpu/d1b9dd9bbe29", "vx"]);
    assert_eq!(c, 2, "{e}");
    for args in [["bench", "judge", "--concurrency", "0"], ["sweep", "specs/math.yaml", "--jobs", "0"]] {
        let (c, _, e) = mpo(&args);
        assert_eq!(c, 2, "{args:?}: {e}");
        assert!(e.contains("must be at least 1"), "{e}");
    }
    let (c, _, e) = mpo(&["eval", "specs/math.yaml", "--checkpoint", "3"]);
    assert_eq!(c, 2, "{e}");
    assert!(e.contains("a spec has no checkpoints yet"), "{e}");
}

#[test]
fn cli_overrides_written_as_flags_say_how_to_write_them() {
    for (args, fixed) in [
        (&["check", "specs/math.yaml", "--meta.every=5"][..], "`meta.every=5`"),
        (&["plan", "specs/math.yaml", "ppo.kl_coef=0.1", "--ppo.kl_coef", "0.1"][..], "`ppo.kl_coef=0.1`"),
    ] {
        let (c, _, e) = mpo(args);
        assert_eq!(c, 2, "{args:?}: {e}");
        assert!(e.contains(&format!("overrides are written without dashes: {fixed}")), "{args:?}: {e}");
        assert!(!e.contains("-- --"), "clap's tip would pass the flag on unchanged: {e}");
    }
    // past `--` the loader says the same, at the override
    let (c, _, e) = mpo(&["check", "specs/math.yaml", "--", "--meta.every=5"]);
    assert_eq!(c, 1, "{e}");
    assert!(e.contains("<overrides>:1:1") && e.contains("overrides are written without dashes: `meta.every=5`"), "{e}");
    // a mistyped flag is still one
    let (c, _, e) = mpo(&["check", "specs/math.yaml", "--expalin"]);
    assert_eq!(c, 2, "{e}");
    assert!(e.contains("'--explain'") && !e.contains("without dashes"), "{e}");
    // the overrides are documented on every command that takes them
    for cmd in ["check", "plan", "run", "sweep"] {
        let (_, o, _) = mpo(&[cmd, "--help"]);
        assert!(o.contains("`key.path=value` pairs (no dashes)"), "{cmd}: {o}");
    }
}

#[test]
fn cli_plan_json_for_a_sweep_has_runs() {
    let (c, o, e) = mpo(&["plan", "specs/ablations/meta_every.yaml", "--json"]);
    assert_eq!(c, 0, "{e}");
    let v: serde_json::Value = serde_json::from_str(&o).unwrap();
    assert_eq!(v["runs"].as_array().unwrap().len(), 12);
    assert_eq!(v["runs"][3]["cell"]["label"], "meta.every=5 runtime.seed=0");
    let (c, o, _) = mpo(&["schema"]);
    assert_eq!(c, 0);
    assert!(o.contains("\"title\": \"mpo experiment spec\""));
}

// ---- the loader never panics ---------------------------------------------------------------

fn mutate(text: &str, ops: &[(u8, usize, String)]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for (op, at, s) in ops {
        if lines.is_empty() {
            lines.push(String::new());
        }
        let i = at % lines.len();
        match op % 6 {
            0 => {
                lines.remove(i);
            }
            1 => lines.insert(i, s.clone()),
            2 => {
                let l = lines[i].clone();
                lines.insert(i, l);
            }
            3 => {
                let l = &mut lines[i];
                let cut = (s.len() % (l.len() + 1)).min(l.len());
                let cut = (0..=cut).rev().find(|c| l.is_char_boundary(*c)).unwrap_or(0);
                l.truncate(cut);
            }
            4 => lines[i] = format!("  {}", lines[i]),
            _ => lines[i].push_str(s),
        }
    }
    lines.join("\n")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}", o in proptest::collection::vec("\\PC{0,40}", 0..3)) {
        let _ = resolve::load_str(Path::new("specs/fuzz.yaml"), &text, &o);
    }

    #[test]
    fn mutated_specs_never_panic(which in 0usize..5, ops in proptest::collection::vec((any::<u8>(), any::<usize>(), "[ -~]{0,20}"), 1..6)) {
        let path = SHIPPED[which];
        let text = std::fs::read_to_string(path).unwrap();
        let loaded = resolve::load_str(Path::new(path), &mutate(&text, &ops), &[]);
        if !loaded.has_errors() {
            for r in &loaded.runs {
                let _ = plan::compile(r);
            }
        }
    }

    #[test]
    fn yaml_fragments_never_panic(text in "([a-z_.]{1,10}: ?(\\[|\\{|\"|'|-|[0-9.e+-]{1,6}|~|null|never|&a|\\*a|!!str|\\||>)?\n {0,4}){0,12}") {
        let _ = resolve::load_str(Path::new("specs/fuzz.yaml"), &text, &[]);
    }
}

// ---- model folders, run ids, backends -------------------------------------------------------

/// The tiny model as a complete Hugging Face folder (a context long enough for tiny.yaml).
fn hf_folder(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mpo-spec-hf-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let weights = crate::model::tiny_hf_dir(&d);
    std::fs::write(d.join("model.safetensors"), weights).unwrap();
    edit_config(&d, |c| c["max_position_embeddings"] = 2048.into());
    d
}

fn edit_config(d: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = d.join("config.json");
    let mut c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut c);
    std::fs::write(&p, c.to_string()).unwrap();
}

fn tiny_with_model(model: &str, more: &[&str]) -> resolve::Loaded {
    let mut o = vec![format!("policy.model={model}")];
    o.extend(more.iter().map(|s| s.to_string()));
    resolve::load(Path::new("tests/specs/valid/tiny.yaml"), &o)
}

#[test]
fn a_model_folder_is_checked_before_a_job_is_queued_and_identified_by_its_content() {
    let d = hf_folder("ok");
    let loaded = tiny_with_model(&d.display().to_string(), &[]);
    assert!(!loaded.has_errors(), "{}", loaded.render_diagnostics());
    let id = plan::compile(&loaded.runs[0]).run_id;

    // moved: the same weights, the same run id
    let moved = d.with_file_name(format!("{}-moved", d.file_name().unwrap().to_string_lossy()));
    let _ = std::fs::remove_dir_all(&moved);
    std::fs::rename(&d, &moved).unwrap();
    assert_eq!(plan::compile(&tiny_with_model(&moved.display().to_string(), &[]).runs[0]).run_id, id, "moving a folder keeps its id");
    // replaced weights at the same path: a new id, and a frozen plan refuses to run on them
    let frozen = plan::compile(
        &tiny_with_model(
            &moved.display().to_string(),
            &["output.root=/nonexistent/mpo-frozen".to_string()].iter().map(String::as_str).collect::<Vec<_>>(),
        )
        .runs[0],
    );
    let w = moved.join("model.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&w, &bytes).unwrap();
    assert_ne!(plan::compile(&tiny_with_model(&moved.display().to_string(), &[]).runs[0]).run_id, id, "new weights, new id");
    match mpo::run::run(&frozen, &mpo::run::RunOptions { quiet: true, ..Default::default() }) {
        Err(e @ mpo::run::RunError::ModelChanged { .. }) => assert!(e.to_string().contains("changed since the plan was made"), "{e}"),
        other => panic!("a frozen plan ran on replaced weights: {:?}", other.map(|_| ())),
    }
    assert!(!Path::new("/nonexistent/mpo-frozen").exists());

    // each broken folder is a check error naming the file and the fix
    let error = |dir: &Path| {
        let loaded = tiny_with_model(&dir.display().to_string(), &[]);
        assert!(loaded.has_errors(), "{} should fail", dir.display());
        loaded.render_diagnostics()
    };
    let only_config = hf_folder("only-config");
    for f in ["model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::remove_file(only_config.join(f)).unwrap();
    }
    let e = error(&only_config);
    assert!(e.contains("holds no weights") && e.contains("huggingface-cli download"), "{e}");

    let cut = hf_folder("cut");
    let text = std::fs::read_to_string(cut.join("config.json")).unwrap();
    std::fs::write(cut.join("config.json"), &text[..text.len() / 2]).unwrap();
    let e = error(&cut);
    assert!(e.contains("config.json`: not valid JSON"), "{e}");

    let gemma = hf_folder("gemma");
    edit_config(&gemma, |c| c["model_type"] = "gemma2".into());
    let e = error(&gemma);
    assert!(e.contains("unsupported architecture `gemma2`"), "{e}");

    let shape = hf_folder("shape");
    edit_config(&shape, |c| c["intermediate_size"] = 96.into());
    let e = error(&shape);
    assert!(e.contains("has shape [64, 32], the config says [96, 32]"), "{e}");

    let no_tok = hf_folder("no-tok");
    std::fs::remove_file(no_tok.join("tokenizer.json")).unwrap();
    let e = error(&no_tok);
    assert!(e.contains("has no tokenizer.json") && e.contains("copy tokenizer.json"), "{e}");

    let short = hf_folder("short");
    let w = short.join("model.safetensors");
    let len = std::fs::metadata(&w).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&w).unwrap().set_len(len - 100).unwrap();
    let e = error(&short);
    assert!(e.contains("cut off or damaged"), "{e}");

    let e = error(&std::env::temp_dir().join("mpo-no-such-model-dir/"));
    assert!(e.contains("does not exist") && !e.contains("unknown model"), "{e}");
    let e = tiny_with_model("Qwen/Qwen2.5-1.5B-Instruct", &[]).render_diagnostics();
    assert!(e.contains("not the Hub") && e.contains("huggingface-cli download Qwen/Qwen2.5-1.5B-Instruct --local-dir"), "{e}");

    // a folder named by an environment variable, which must be set
    let e = tiny_with_model("${MPO_TEST_UNSET_MODEL_DIR}", &[]).render_diagnostics();
    assert!(e.contains("names `${MPO_TEST_UNSET_MODEL_DIR}`, which is not set") && e.contains("export MPO_TEST_UNSET_MODEL_DIR="), "{e}");
    // SAFETY: no other test reads or writes this variable.
    unsafe { std::env::set_var("MPO_TEST_SPEC_MODEL_DIR", &moved) };
    let loaded = tiny_with_model("${MPO_TEST_SPEC_MODEL_DIR}", &[]);
    assert!(!loaded.has_errors(), "{}", loaded.render_diagnostics());
    for dir in [&moved, &only_config, &cut, &gemma, &shape, &no_tok, &short] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn a_fixed_rubric_arm_is_identified_without_the_meta_settings_it_never_reads() {
    let id = |o: &[&str]| {
        let o: Vec<String> = o.iter().map(|s| s.to_string()).collect();
        let loaded = resolve::load(Path::new("tests/specs/valid/tiny.yaml"), &o);
        assert!(!loaded.has_errors(), "{}", loaded.render_diagnostics());
        plan::compile(&loaded.runs[0]).run_id
    };
    let never = id(&["meta.every=never"]);
    assert_eq!(never, id(&["meta.every=never", "meta.samples=4", "meta.max_tokens=300", "ppo.recenter_critic=true"]));
    assert_eq!(never, id(&["meta.every=never", "meta.stages.analyze=prompt_templates/meta/neutral/analyze.j2"]));
    // an MPO arm is identified by them
    assert_ne!(id(&["meta.samples=2"]), id(&["meta.samples=4"]));
    assert_ne!(never, id(&["meta.every=never", "ppo.kl_coef=0.5"]));
}

#[test]
fn a_backend_this_build_lacks_checks_and_plans_and_only_run_refuses() {
    if cfg!(feature = "cuda") {
        return;
    }
    let spec_path = "tests/specs/valid/cuda_backend.yaml";
    let loaded = resolve::load(Path::new(spec_path), &[]);
    assert!(!loaded.has_errors(), "{}", loaded.render_diagnostics());
    let d = loaded.render_diagnostics();
    assert!(d.contains("note: backend `cuda` is not compiled into this mpo") && d.contains("CUDARC_CUDA_VERSION=13000 cargo build"), "{d}");
    let (c, o, e) = mpo(&["plan", spec_path]);
    assert_eq!(c, 0, "{e}");
    assert!(o.contains("cuda"), "{o}");
    let out = std::env::temp_dir().join(format!("mpo-cuda-plan-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let (c, _, e) = mpo(&["run", spec_path, &format!("output.root={}", out.display())]);
    assert_eq!(c, 1, "{e}");
    assert!(e.contains("backend `cuda` is not compiled into this mpo"), "{e}");
    assert!(!out.exists(), "a refused run writes nothing");
}

/// A Qwen2.5-1.5B-Instruct folder as `mpo check` sees one: its real config.json, safetensors
/// headers of every tensor at its real shape (bf16), the file as long as they say but sparse
/// (no 3 GB written), and a tokenizer. Made once per test process.
fn qwen_1_5b_folder() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("mpo-qwen-1.5b-shaped-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let config = serde_json::json!({
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 1536,
            "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
            "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": true,
            "torch_dtype": "bfloat16"
        });
        std::fs::write(d.join("config.json"), config.to_string()).unwrap();
        let c = mpo::model::weights::LlamaConfig::from_hf(&config).unwrap();
        let mut header = serde_json::Map::new();
        let mut offset = 0u64;
        for name in c.tensor_names() {
            let shape = c.tensor_shape(&name).unwrap();
            let bytes = shape.iter().product::<usize>() as u64 * 2;
            header.insert(name, serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes]}));
            offset += bytes;
        }
        let text = serde_json::Value::Object(header).to_string();
        let mut f = std::fs::File::create(d.join("model.safetensors")).unwrap();
        use std::io::Write;
        f.write_all(&(text.len() as u64).to_le_bytes()).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f.set_len(8 + text.len() as u64 + offset).unwrap();
        let tok = mpo::model::tokenizer::Tok::tiny();
        tok.inner.save(d.join("tokenizer.json"), false).unwrap();
        std::fs::write(
            d.join("tokenizer_config.json"),
            serde_json::json!({"eos_token": "<|im_end|>", "chat_template": tok.chat_template}).to_string(),
        )
        .unwrap();
        d
    })
    .clone()
}

const PAPER: &[&str] =
    &["specs/paper/essay_writing.yaml", "specs/paper/summarization.yaml", "specs/paper/ethical_reasoning.yaml", "specs/paper/math.yaml"];

/// The paper's experiments check, plan (with memory that fits the stated 80 GB) and emit a
/// Slurm array on this CPU machine, with the policy folder named by its variable.
#[test]
fn the_papers_experiments_check_plan_and_emit_here() {
    let qwen = qwen_1_5b_folder();
    // SAFETY: no other test reads or writes this variable.
    unsafe { std::env::set_var("MPO_QWEN2_5_1_5B_INSTRUCT", &qwen) };
    for path in PAPER {
        let loaded = resolve::load(Path::new(path), &[]);
        let d = loaded.render_diagnostics();
        assert!(!loaded.has_errors(), "{path}:\n{d}");
        // what remains is said on purpose: the servers' variables, a CPU build, few prompts
        let unexpected: Vec<&str> =
            d.lines().filter(|l| l.starts_with("warning") && !l.contains("is not set") && !l.contains("training prompts about")).collect();
        assert!(unexpected.is_empty(), "{path}: {unexpected:#?}");
        assert!(loaded.is_sweep && loaded.runs.len() == 9, "{path}: 3 arms x 3 seeds");
        let plans: Vec<plan::Plan> = loaded.runs.iter().map(plan::compile).collect();
        let m = plans[0].estimates.memory.as_ref().expect("the folder's config gives a memory estimate");
        let stated = plans[0].spec.runtime.device_memory_gib.expect("each paper spec states its device");
        assert!((m.at_spec.peak() as f64) < stated * (1u64 << 30) as f64, "{path}: {}", mpo::model::memory::gib(m.at_spec.peak()));
        let arms: std::collections::BTreeSet<String> = plans.iter().map(|p| p.arm()).collect();
        assert_eq!(arms.len(), 3, "{path}: {arms:?}");
        let out = std::env::temp_dir().join(format!("mpo-paper-emit-{}-{}", snapshot_name(path), std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let o = Command::new(env!("CARGO_BIN_EXE_mpo"))
            .args(["sweep", path, "--emit", "slurm", "--serve", "vllm", "--server-gpus", "2,4", "--out", out.to_str().unwrap()])
            .env("MPO_QWEN2_5_1_5B_INSTRUCT", &qwen)
            .output()
            .unwrap();
        assert!(o.status.success(), "{path}: {}", String::from_utf8_lossy(&o.stderr));
        if plans[0].spec.eval.instrument.is_some() {
            // essays and summaries are measured by the 72B instrument in every arm: one array,
            // the 72B's server read through both the meta and the instrument variables
            let all = std::fs::read_to_string(out.join("sweep.sbatch")).unwrap();
            assert!(all.contains("#SBATCH --gres=gpu:7") && all.contains("CELLS=(0 1 2 3 4 5 6 7 8)"), "{all}");
            assert!(all.contains("MPO_INSTRUMENT_URL") && all.contains("MPO_META_URL"), "{all}");
            assert!(!out.join("sweep-1.sbatch").exists());
        } else {
            // the fixed-rubric arms need the reward judge only; MPO's cells both servers
            let fixed = std::fs::read_to_string(out.join("sweep-1.sbatch")).unwrap();
            assert!(fixed.contains("#SBATCH --gres=gpu:3") && fixed.contains("CELLS=(0 1 2 3 4 5)") && !fixed.contains("72B"), "{fixed}");
            let mpo_arm = std::fs::read_to_string(out.join("sweep-2.sbatch")).unwrap();
            assert!(
                mpo_arm.contains("#SBATCH --gres=gpu:7") && mpo_arm.contains("--served-model-name Qwen/Qwen2.5-72B-Instruct"),
                "{mpo_arm}"
            );
        }
        std::fs::remove_dir_all(&out).unwrap();
    }
}
