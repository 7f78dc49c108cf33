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
        /// The spec file (or `--plan FILE` instead).
        #[arg(required_unless_present = "plan")]
        spec: Option<PathBuf>,
        overrides: Vec<String>,
        /// Run a plan written by `mpo plan --json` or `mpo sweep --emit slurm` instead of a spec.
        #[arg(long, conflicts_with = "spec")]
        plan: Option<PathBuf>,
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
    /// Run every cell of a sweep here (`--jobs` at a time; finished cells are skipped,
    /// interrupted ones resume), or write a Slurm job array for them (`--emit slurm`).
    Sweep {
        spec: PathBuf,
        overrides: Vec<String>,
        /// Cells run at once (each gets an equal share of the cores).
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Instead of running: write a job-array script and the cell plans.
        #[arg(long, value_parser = ["slurm"])]
        emit: Option<String>,
        /// Where `--emit` writes (default: RESULTS_ROOT/NAME/slurm).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        partition: Option<String>,
        #[arg(long)]
        account: Option<String>,
        /// Wall-time limit per cell.
        #[arg(long, default_value = "24:00:00")]
        time: String,
        #[arg(long, default_value_t = 8)]
        cpus_per_task: u32,
        /// GPUs per cell (0 for CPU cells).
        #[arg(long, default_value_t = 1)]
        gpus_per_task: u32,
        #[arg(long)]
        mem: Option<String>,
        /// At most this many cells at once on the cluster.
        #[arg(long)]
        max_parallel: Option<usize>,
    },
    /// Aggregate the runs under results/NAME by sweep factor: report.md, report.csv, SVG plots.
    Report {
        /// A results directory holding run directories (results/NAME).
        dir: PathBuf,
        /// Write the report here instead of into DIR.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Evaluate a run's checkpoint on its test split, or rank runs in an Elo tournament.
    Eval {
        /// Run directories (results/NAME/RUN_ID); with --elo also RUN/eval/FILE.jsonl files.
        /// A spec file (then overrides) evaluates its base model before any training.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Which weights: an update number, `latest` or `base` (the policy without adapters).
        #[arg(long, default_value = "latest")]
        checkpoint: String,
        /// Pairwise-judge the runs' newest evaluation responses and rate them.
        #[arg(long)]
        elo: bool,
        /// Elo K-factor (default: the first run's `eval.elo.k`).
        #[arg(long)]
        k: Option<f64>,
        /// Matches judged per pair of players (default: `eval.elo.matches`).
        #[arg(long)]
        matches: Option<usize>,
        /// Match orders replayed; ratings are mean +- std over them (default: `eval.elo.repeats`).
        #[arg(long)]
        repeats: Option<usize>,
        /// Bootstrap resamples of the matches for the 95% interval.
        #[arg(long, default_value_t = 1000)]
        bootstrap: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Pairwise prompt template (default: `eval.elo.prompt`, else the built-in
        /// prompt_templates/elo/pairwise.j2).
        #[arg(long)]
        template: Option<PathBuf>,
        /// Where the tournament is written (default: the first run's results/NAME/elo).
        #[arg(long)]
        out: Option<PathBuf>,
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
        /// The response (answers may start with `-`: `--response -2`).
        #[arg(long, allow_hyphen_values = true)]
        response: String,
        /// math: the reference answer or solution (with \boxed{}); ethical_reasoning: RIGHT or WRONG.
        #[arg(long, allow_hyphen_values = true)]
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
        Command::Run { spec, overrides, plan, cell, quiet, stop_after } => match (spec, plan) {
            (Some(spec), None) => run_cmd(&spec, &overrides, cell, quiet, stop_after),
            (None, Some(plan)) if overrides.is_empty() => run_plan_cmd(&plan, cell, quiet, stop_after),
            _ => {
                eprintln!("error: `--plan` runs a compiled plan as it is: drop the overrides (or re-plan the spec with them)");
                ExitCode::from(2)
            }
        },
        Command::Sweep { spec, overrides, jobs, emit, out, partition, account, time, cpus_per_task, gpus_per_task, mem, max_parallel } => {
            let opts = crate::sweep::slurm::SlurmOptions { partition, account, time, cpus_per_task, gpus_per_task, mem, max_parallel };
            sweep_cmd(&spec, &overrides, jobs, emit.is_some(), out.as_deref(), &opts)
        }
        Command::Report { dir, out } => match crate::report::report(&dir, out.as_deref()) {
            Ok(w) => {
                print!("{}", w.table);
                println!(
                    "wrote {}, {}, {}",
                    w.markdown.display(),
                    w.csv.display(),
                    w.plots.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        },
        Command::Eval { runs, checkpoint, elo, k, matches, repeats, bootstrap, seed, template, out } => {
            if elo {
                let flags = crate::eval::EloFlags { k, matches_per_pair: matches, repeats, bootstrap, seed, template };
                match crate::eval::elo_cmd(&runs, &flags, out.as_deref()) {
                    Ok((t, out)) => {
                        println!("{} matches on {} prompts ({} unreadable answers not rated)", t.matches.len(), t.prompts, t.unreadable);
                        print!("{}", crate::eval::elo::table(&t));
                        println!("wrote {}/elo.json and matches.jsonl", out.display());
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitCode::from(1)
                    }
                }
            } else {
                let which: crate::eval::Which = match checkpoint.parse() {
                    Ok(w) => w,
                    Err(e) => {
                        eprintln!("error: --checkpoint {e}");
                        return ExitCode::from(2);
                    }
                };
                let is_spec = runs[0].is_file() && runs[0].extension().is_some_and(|e| e == "yaml" || e == "yml");
                let mut targets: Vec<(PathBuf, Option<Plan>)> = runs.iter().map(|r| (r.clone(), None)).collect();
                if is_spec {
                    let overrides: Vec<String> = runs[1..].iter().map(|p| p.display().to_string()).collect();
                    let Some(loaded) = load(&runs[0], &overrides) else { return ExitCode::from(1) };
                    if which != crate::eval::Which::Base && checkpoint != "latest" {
                        eprintln!("error: a spec has no checkpoints yet: evaluate its base model (the default), or a run directory");
                        return ExitCode::from(2);
                    }
                    targets =
                        loaded.runs.iter().map(plan::compile).map(|p| (crate::run::results::RunDir::for_plan(&p).root, Some(p))).collect();
                }
                let mut code = ExitCode::SUCCESS;
                for (r, plan) in &targets {
                    let res = match plan {
                        Some(p) => crate::eval::eval_base_of_plan(p),
                        None => crate::eval::eval_run(r, which),
                    };
                    match res {
                        Ok(res) => {
                            println!("{} {} on {} test prompts:", r.display(), res.label, res.samples);
                            for (k, v) in &res.metrics {
                                println!("  {k:<24} {v:.4}");
                            }
                            println!("  responses: {}", res.responses.display());
                        }
                        Err(e) => {
                            eprintln!("error: {e}");
                            code = ExitCode::from(1);
                        }
                    }
                }
                code
            }
        }
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

/// `mpo run --plan FILE [--cell N]`: a plan (or a sweep's list of plans) as `mpo plan --json`
/// and `mpo sweep --emit` write it. Templates are checked against the plan's hashes at start.
fn run_plan_cmd(path: &std::path::Path, cell: Option<usize>, quiet: bool, stop_after: Option<u32>) -> ExitCode {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let v: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {}: not JSON ({e}); write plans with `mpo plan SPEC --json > FILE`", path.display());
            return ExitCode::from(1);
        }
    };
    let (plans, is_sweep) = match v.get("runs") {
        Some(runs) => (serde_json::from_value::<Vec<Plan>>(runs.clone()), true),
        None => (serde_json::from_value::<Plan>(v).map(|p| vec![p]), false),
    };
    let plans = match plans {
        Ok(p) if !p.is_empty() => p,
        Ok(_) => {
            eprintln!("error: {} holds no plans", path.display());
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("error: {}: not a plan of this mpo version ({e}); re-plan the spec", path.display());
            return ExitCode::from(1);
        }
    };
    let plan = match (is_sweep, cell) {
        (false, None) => plans[0].clone(),
        (false, Some(_)) => {
            eprintln!("error: `--cell` is for sweeps; {} holds a single plan", path.display());
            return ExitCode::from(2);
        }
        (true, None) => {
            eprintln!("error: {} holds {} cells: pick one with `--cell N`", path.display(), plans.len());
            return ExitCode::from(2);
        }
        (true, Some(c)) => match plans.get(c) {
            Some(p) => p.clone(),
            None => {
                eprintln!("error: {} has {} cells (0..{}), not {c}", path.display(), plans.len(), plans.len());
                return ExitCode::from(2);
            }
        },
    };
    let opts = crate::run::RunOptions { spec_path: path.to_path_buf(), spec_text: text, quiet, stop_after };
    execute_run(&plan, &opts)
}

fn sweep_cmd(
    path: &std::path::Path,
    overrides: &[String],
    jobs: usize,
    emit: bool,
    out: Option<&std::path::Path>,
    slurm: &crate::sweep::slurm::SlurmOptions,
) -> ExitCode {
    let Some(loaded) = load(path, overrides) else { return ExitCode::from(1) };
    let plans: Vec<Plan> = loaded.runs.iter().map(plan::compile).collect();
    if !loaded.is_sweep {
        eprintln!("note: {} has no `sweep:` section; running it as a sweep of one cell", path.display());
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot find the mpo executable: {e}");
            return ExitCode::from(1);
        }
    };
    let name = plans[0].name.clone();
    if emit {
        let out = out.map(std::path::Path::to_path_buf).unwrap_or_else(|| plans[0].spec.output.root.join(&name).join("slurm"));
        return match crate::sweep::slurm::emit(&name, &plans, &out, &exe, slurm) {
            Ok(e) => {
                println!("wrote {} ({} cells) and {}", e.script.display(), e.cells, e.plans.display());
                println!("submit with: sbatch {}", e.script.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: writing {}: {e}", out.display());
                ExitCode::from(1)
            }
        };
    }
    if !loaded.is_sweep {
        // a plain spec is one cell: `mpo run` semantics
        return run_cmd(path, overrides, None, false, None);
    }
    eprintln!(
        "mpo sweep {name}: {} cells, {} at a time (logs in {}/sweep-logs/)",
        plans.len(),
        jobs.max(1),
        plans[0].spec.output.root.join(&name).display()
    );
    let outcomes = crate::sweep::run_local(&exe, path, overrides, &plans, jobs.max(1), |o| {
        eprintln!(
            "cell {:>3} {} {}: {}{}",
            o.index,
            o.run_id,
            o.label,
            o.status,
            if o.wall_s > 0.0 { format!(" ({:.0}s)", o.wall_s) } else { String::new() }
        );
    });
    print!("{}", crate::sweep::summary_table(&outcomes));
    let bad = outcomes.iter().filter(|o| !o.status.starts_with("finished") && !o.status.starts_with("skipped")).count();
    if bad == 0 {
        println!("all {} cells finished: mpo report {}", outcomes.len(), plans[0].spec.output.root.join(&name).display());
        ExitCode::SUCCESS
    } else {
        println!("{bad} of {} cells did not finish; run the same command again to resume them", outcomes.len());
        ExitCode::from(1)
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
    execute_run(&plan, &opts)
}

fn execute_run(plan: &Plan, opts: &crate::run::RunOptions) -> ExitCode {
    let quiet = opts.quiet;
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
    match crate::run::run(plan, opts) {
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
