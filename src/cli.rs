//! The `mpo` command line: the imperative shell around the library.
//!
//! Each subcommand parses its arguments, calls into the library and turns the outcome into
//! output and an exit code: 0 success, 1 the input is wrong (diagnostics printed), 2 usage.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::plan::{self, Plan};
use crate::spec;

#[derive(Parser, Debug)]
#[command(name = "mpo", version, about = "Meta Policy Optimization: spec -> plan -> run", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Validate a spec: every error with file:line:col, a snippet and a suggestion.
    Check {
        /// The spec file.
        spec: PathBuf,
        /// Overrides `section.key=value` (values are YAML).
        overrides: Vec<String>,
        /// Print every resolved value and where it came from.
        #[arg(long)]
        explain: bool,
    },
    /// Compile a spec into its execution plan and print it (a dry run).
    Plan {
        spec: PathBuf,
        overrides: Vec<String>,
        /// Print the machine-readable plan (a sweep prints `{"sweep": ..., "runs": [...]}`).
        #[arg(long)]
        json: bool,
    },
    /// Train: run a spec's plan (resumes an interrupted run, skips a finished one).
    Run {
        spec: PathBuf,
        overrides: Vec<String>,
        /// Run one cell of a sweep (0-based).
        #[arg(long)]
        cell: Option<usize>,
        /// No progress output.
        #[arg(long)]
        quiet: bool,
        /// Stop (with a checkpoint) after this many updates of this invocation.
        #[arg(long, hide = true)]
        stop_after: Option<u32>,
    },
    /// Print the JSON Schema of the spec language (for editors).
    Schema,
    /// Download a known model into the cache (`$MPO_CACHE_DIR` or ~/.cache/mpo).
    Fetch {
        /// Model name (see --list).
        name: Option<String>,
        /// List the known models.
        #[arg(long)]
        list: bool,
    },
    /// Generate text from a model (a quick check that a model loads and runs).
    Generate {
        /// Known model name, .gguf file or Hugging Face directory.
        #[arg(long, default_value = "smollm2-135m-instruct")]
        model: String,
        /// The prompt (sent as a user message unless --raw).
        #[arg(long)]
        prompt: Vec<String>,
        /// Send the prompt as-is, without the chat template.
        #[arg(long)]
        raw: bool,
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// 0 = greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// cpu, wgpu or cuda (if compiled in).
        #[arg(long, default_value = "cpu")]
        backend: String,
        /// Print each token with its log-probability.
        #[arg(long)]
        logprobs: bool,
    },
    /// Check a response with the task's programmatic verifier: exit 0 when correct, 1 when
    /// not, 2 on a usage error (like `cmp`).
    Grade {
        /// math or ethical_reasoning.
        task: String,
        #[arg(long)]
        response: String,
        /// math: the reference answer or solution (with \boxed{}); ethical_reasoning: RIGHT or WRONG.
        #[arg(long)]
        reference: String,
        /// Relative tolerance for numeric equality (math).
        #[arg(long, default_value_t = 1e-6)]
        tolerance: f64,
    },
    /// Rubric versions of a run.
    Rubric {
        #[command(subcommand)]
        which: RubricCommand,
    },
    /// Render every prompt the specs will send (on fixed samples) into a folder and fail when
    /// something changed; `--update` accepts the changes.
    Snapshot {
        specs: Vec<PathBuf>,
        /// Snapshot folder (one subfolder per spec).
        #[arg(long, default_value = "prompt_snapshots")]
        dir: PathBuf,
        #[arg(long)]
        update: bool,
        /// Training records rendered per spec.
        #[arg(long, default_value_t = 2)]
        samples: usize,
    },
    /// Run a benchmark and print its figures (see BENCHMARKS.md).
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum RubricCommand {
    /// Every meta step: versions, triggers, evidence, and why a rubric was kept.
    Log { run: PathBuf },
    /// A version's markdown (default: the latest).
    Show { run: PathBuf, version: Option<String> },
    /// Unified diff between two versions.
    Diff { run: PathBuf, a: String, b: String },
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Judge-call overhead: calls against a stub server with fixed latency (target: <= 1.1x ideal).
    Judge {
        #[arg(long, default_value_t = 512)]
        calls: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 50)]
        latency_ms: u64,
    },
    /// `check` + `plan` over every shipped spec and a 64-cell sweep (target: < 50 ms).
    Spec {
        #[arg(long, default_value_t = 20)]
        iterations: usize,
    },
    /// Generation tokens/s of the demo model at batch 1 and 8 (against llama-server with
    /// --server URL or --llama-server).
    Generate {
        #[arg(long, default_value_t = 64)]
        new_tokens: usize,
        /// A running llama-server serving the same GGUF.
        #[arg(long)]
        server: Option<String>,
        /// Start llama-server (built by scripts/setup_llama_server.sh) for the comparison.
        #[arg(long)]
        llama_server: bool,
        #[arg(long, default_value = "cpu")]
        backend: String,
    },
    /// Training-step tokens/s (forward + backward + AdamW on LoRA) against a forward pass.
    Train {
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long, default_value_t = 128)]
        seq: usize,
        #[arg(long, default_value_t = 3)]
        steps: usize,
        #[arg(long, default_value = "cpu")]
        backend: String,
    },
    /// Next-token log-probs of mpo against llama-server on the same GGUF.
    Parity {
        /// A running llama-server serving the demo GGUF (else one is started).
        #[arg(long)]
        server: Option<String>,
        /// Greedy steps compared per prompt.
        #[arg(long, default_value_t = 8)]
        steps: usize,
    },
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Check { spec, overrides, explain } => check(&spec, &overrides, explain),
        Command::Plan { spec, overrides, json } => plan_cmd(&spec, &overrides, json),
        Command::Run { spec, overrides, cell, quiet, stop_after } => run_cmd(&spec, &overrides, cell, quiet, stop_after),
        Command::Fetch { name, list } => fetch_cmd(name.as_deref(), list),
        Command::Grade { task, response, reference, tolerance } => grade_cmd(&task, &response, &reference, tolerance),
        Command::Rubric { which } => rubric_cmd(which),
        Command::Snapshot { specs, dir, update, samples } => snapshot_cmd(&specs, &dir, update, samples),
        Command::Generate { model, prompt, raw, max_new_tokens, temperature, top_p, top_k, seed, backend, logprobs } => {
            let args = crate::generate_cmd::Args { model, prompts: prompt, raw, max_new_tokens, temperature, top_p, top_k, seed, logprobs };
            match crate::generate_cmd::run(&backend, args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Bench { which } => {
            let r = match which {
                BenchCommand::Spec { iterations } => crate::bench::spec_bench(iterations),
                BenchCommand::Judge { calls, concurrency, latency_ms } => {
                    crate::bench::stub::judge_bench(calls, concurrency, std::time::Duration::from_millis(latency_ms))
                }
                BenchCommand::Generate { new_tokens, server, llama_server, backend } => {
                    crate::bench::with_server(server, llama_server, 8, |url| {
                        crate::bench::on_backend(&backend, crate::bench::generation::GenerateBench { new_tokens, server: url })
                    })
                }
                BenchCommand::Train { batch, seq, steps, backend } => {
                    crate::bench::on_backend(&backend, crate::bench::generation::TrainBench { batch, seq, steps })
                }
                BenchCommand::Parity { server, steps } => crate::bench::parity(server, steps),
            };
            match r {
                Ok(s) => {
                    print!("{s}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Schema => {
            let s = serde_json::to_string_pretty(&spec::json_schema()).expect("schema serializes");
            println!("{s}");
            ExitCode::SUCCESS
        }
    }
}

fn run_cmd(path: &std::path::Path, overrides: &[String], cell: Option<usize>, quiet: bool, stop_after: Option<u32>) -> ExitCode {
    let Some(loaded) = load(path, overrides) else { return ExitCode::from(1) };
    let run = match (loaded.is_sweep, cell) {
        (false, None) => &loaded.runs[0],
        (false, Some(_)) => {
            eprintln!("error: `--cell` is for sweeps; {} has no `sweep:` section", path.display());
            return ExitCode::from(2);
        }
        (true, None) => {
            eprintln!(
                "error: {} is a sweep of {} cells: run them with `mpo sweep {}`, or one with `--cell N`",
                path.display(),
                loaded.runs.len(),
                path.display()
            );
            return ExitCode::from(2);
        }
        (true, Some(c)) => match loaded.runs.get(c) {
            Some(r) => r,
            None => {
                eprintln!("error: the sweep has {} cells (0..{}), not {c}", loaded.runs.len(), loaded.runs.len());
                return ExitCode::from(2);
            }
        },
    };
    let plan = plan::compile(run);
    let spec_text = std::fs::read_to_string(path).unwrap_or_default();
    let opts = crate::run::RunOptions { spec_path: path.to_path_buf(), spec_text, quiet, stop_after };
    if !quiet {
        eprintln!(
            "mpo run {} (run id {}): {} updates x {} episodes on {}",
            plan.name,
            plan.run_id,
            plan.schedule.updates,
            plan.schedule.episodes_per_update,
            plan.spec.runtime.backend.as_str()
        );
    }
    match crate::run::run(&plan, &opts) {
        Ok(crate::run::RunOutcome::AlreadyFinished(d)) => {
            println!("already finished: {}/ (nothing to do; delete it to run again)", d.display());
            ExitCode::SUCCESS
        }
        Ok(crate::run::RunOutcome::Finished { dir, updates }) => {
            println!("finished {updates} updates: results in {}/", dir.display());
            println!(
                "  metrics.jsonl  samples/  rubrics/ (mpo rubric log {})  checkpoints/  events.out.tfevents.mpo (TensorBoard)",
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Ok(crate::run::RunOutcome::Stopped { dir, update }) => {
            println!("stopped after update {update} with a checkpoint: {}/ (run the same command again to resume)", dir.display());
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn grade_cmd(task: &str, response: &str, reference: &str, tolerance: f64) -> ExitCode {
    use crate::reward::{math_eq, verify};
    match task {
        "math" => {
            let want = crate::task::math::last_boxed(reference).unwrap_or_else(|| reference.trim().to_string());
            let Some(got) = crate::task::math::last_boxed(response) else {
                println!("incorrect: the response has no \\boxed{{}} answer (reference: {want})");
                return ExitCode::from(1);
            };
            let ok = math_eq::equivalent(&got, &want, tolerance);
            println!(
                "{}: response {got:?} -> {:?}, reference {want:?} -> {:?}",
                if ok { "correct" } else { "incorrect" },
                math_eq::normalize(&got),
                math_eq::normalize(&want)
            );
            ExitCode::from(if ok { 0 } else { 1 })
        }
        "ethical_reasoning" => {
            let want = reference.trim().to_uppercase();
            if want != "RIGHT" && want != "WRONG" {
                eprintln!("error: the reference must be RIGHT or WRONG, got {reference:?}");
                return ExitCode::from(2);
            }
            match verify::verdict_tag(response) {
                Some(got) => {
                    let ok = got == want;
                    println!("{}: response verdict {got}, reference {want}", if ok { "correct" } else { "incorrect" });
                    ExitCode::from(if ok { 0 } else { 1 })
                }
                None => {
                    println!("incorrect: no <verdict>RIGHT|WRONG</verdict> tag in the response (reference: {want})");
                    ExitCode::from(1)
                }
            }
        }
        "essay_writing" | "summarization" => {
            eprintln!("error: task `{task}` has no programmatic verifier (only its judge); `mpo grade` takes math or ethical_reasoning");
            ExitCode::from(2)
        }
        other => {
            eprintln!("error: unknown task `{other}` (math, ethical_reasoning)");
            ExitCode::from(2)
        }
    }
}

fn parse_version(v: &str) -> Option<u32> {
    v.trim_start_matches(['v', 'V']).parse().ok()
}

fn rubric_cmd(which: RubricCommand) -> ExitCode {
    use crate::meta::history::{History, diff, render_log};
    let fail = |m: String| {
        eprintln!("error: {m}");
        ExitCode::from(1)
    };
    let run = match &which {
        RubricCommand::Log { run } | RubricCommand::Show { run, .. } | RubricCommand::Diff { run, .. } => run.clone(),
    };
    let h = History::new(&run);
    let entries = match h.entries() {
        Ok(e) => e,
        Err(e) => {
            return fail(format!("{} has no rubric history ({e}); give a run directory such as results/math/<run-id>", run.display()));
        }
    };
    match which {
        RubricCommand::Log { .. } => {
            print!("{}", render_log(&entries));
            ExitCode::SUCCESS
        }
        RubricCommand::Show { version, .. } => {
            let v = match version.as_deref().map(parse_version) {
                Some(None) => return fail("versions are written v3 or 3".into()),
                Some(Some(v)) => v,
                None => entries.iter().filter_map(|e| e.version).max().unwrap_or(0),
            };
            match h.show(v) {
                Ok(t) => {
                    print!("{t}");
                    ExitCode::SUCCESS
                }
                Err(_) => fail(format!("no version v{v:03} in {}", run.display())),
            }
        }
        RubricCommand::Diff { a, b, .. } => {
            let (Some(va), Some(vb)) = (parse_version(&a), parse_version(&b)) else { return fail("versions are written v3 or 3".into()) };
            match (h.show(va), h.show(vb)) {
                (Ok(x), Ok(y)) => {
                    print!("{}", diff(&x, &y, &format!("v{va:03}.md"), &format!("v{vb:03}.md")));
                    ExitCode::SUCCESS
                }
                _ => fail(format!("no such versions in {}", run.display())),
            }
        }
    }
}

fn snapshot_cmd(specs: &[PathBuf], dir: &std::path::Path, update: bool, samples: usize) -> ExitCode {
    if specs.is_empty() {
        eprintln!("error: give at least one spec");
        return ExitCode::from(2);
    }
    let mut changed_any = false;
    for s in specs {
        let Some(loaded) = load(s, &[]) else { return ExitCode::from(2) };
        let Some(first) = loaded.runs.first() else { continue };
        let files = match crate::snapshot::render_all(first, samples) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("error: {}: {e}", s.display());
                return ExitCode::from(2);
            }
        };
        let sub = dir.join(&first.spec.name);
        match crate::snapshot::sync(&sub, &files, update) {
            Ok(changed) if changed.is_empty() => println!("{}: {} prompts unchanged", s.display(), files.len()),
            Ok(changed) => {
                changed_any = true;
                let verb = if update { "updated" } else { "changed" };
                println!("{}: {} {verb}: {}", s.display(), changed.len(), changed.join(", "));
            }
            Err(e) => {
                eprintln!("error: writing {}: {e}", sub.display());
                return ExitCode::from(2);
            }
        }
    }
    if changed_any && !update {
        eprintln!("prompts changed; review them and run with --update to accept");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

fn fetch_cmd(name: Option<&str>, list: bool) -> ExitCode {
    use crate::model::{fetch, registry};
    if list || name.is_none() {
        for k in registry::KNOWN {
            let p = fetch::model_path(k);
            let state = if p.exists() { format!("cached at {}", p.display()) } else { "not fetched".into() };
            println!("{:<24} {} ({state})", k.name, k.description);
        }
        return if name.is_none() && !list { ExitCode::from(2) } else { ExitCode::SUCCESS };
    }
    let name = name.unwrap_or_default();
    match fetch::fetch(name, &mut |m| eprintln!("{m}")) {
        Ok(p) => {
            println!("{}", p.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Load and print diagnostics; `None` when the spec has errors.
fn load(path: &std::path::Path, overrides: &[String]) -> Option<spec::Loaded> {
    let loaded = spec::load(path, overrides);
    if !loaded.diags.is_empty() {
        eprint!("{}", loaded.render_diagnostics());
    }
    if loaded.has_errors() { None } else { Some(loaded) }
}

fn check(path: &std::path::Path, overrides: &[String], explain: bool) -> ExitCode {
    let Some(loaded) = load(path, overrides) else { return ExitCode::from(1) };
    let plans: Vec<Plan> = loaded.runs.iter().map(plan::compile).collect();
    if explain && let Some(first) = loaded.runs.first() {
        let rows = spec::explain(first, &loaded.sources);
        let w = rows.iter().map(|r| r.path.len()).max().unwrap_or(0);
        let vals: Vec<String> = rows.iter().map(|r| r.value.to_string()).collect();
        let vw = vals.iter().map(|v| v.chars().count().min(48)).max().unwrap_or(0);
        let mut out = std::io::stdout().lock();
        if loaded.is_sweep {
            let _ = writeln!(out, "# resolved values of sweep cell 0 ({})", first.cell.as_ref().map(|c| c.label.as_str()).unwrap_or(""));
        }
        for (r, v) in rows.iter().zip(vals) {
            let v: String = if v.chars().count() > 48 { v.chars().take(47).chain(['…']).collect() } else { v };
            let _ = writeln!(out, "{:<w$}  {:<vw$}  {}", r.path, v, r.origin);
        }
    }
    if loaded.is_sweep {
        println!("{}: ok ({} sweep cells)", path.display(), plans.len());
    } else if let Some(p) = plans.first() {
        println!("{}: ok (run id {})", path.display(), p.run_id);
    }
    ExitCode::SUCCESS
}

fn plan_cmd(path: &std::path::Path, overrides: &[String], json: bool) -> ExitCode {
    let Some(loaded) = load(path, overrides) else { return ExitCode::from(1) };
    let plans: Vec<Plan> = loaded.runs.iter().map(plan::compile).collect();
    let out = if json {
        let v = if loaded.is_sweep {
            serde_json::json!({ "sweep": plans.first().map(|p| p.name.clone()), "runs": plans })
        } else {
            serde_json::to_value(&plans[0]).expect("plan serializes")
        };
        serde_json::to_string_pretty(&v).expect("json") + "\n"
    } else if loaded.is_sweep {
        plan::render_sweep_table(&plans)
    } else {
        plan::render_summary(&plans[0])
    };
    print!("{out}");
    ExitCode::SUCCESS
}
