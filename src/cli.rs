//! The `mpo` command line: the imperative shell around the library.
//!
//! Each subcommand parses its arguments, calls into the library and turns the outcome into
//! output. Exit codes, set in [`exit`] only: 0 success; 1 the input is wrong or the operation
//! failed (or the answer is "no": an incorrect grade, changed snapshots); 2 usage; 130 a run
//! that stopped early with a checkpoint (Ctrl-C), resumed by running the same command again.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::plan::{self, Plan};
use crate::resolve;
use crate::spec;

/// The overrides of every command that takes a spec, documented once.
const OVERRIDES_HELP: &str = "`key.path=value` pairs (no dashes) applied after the spec's own values, e.g. \
    `ppo.kl_coef=0.05 meta.every=never`; values are YAML: `meta.judge={model: x}`";

#[derive(Parser, Debug)]
#[command(name = "mpo", version, about = "Meta Policy Optimization: spec -> plan -> run", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// `mpo eval compare`.
#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// Two policies on the same held-out prompts: each side's headline metric (and the fixed
    /// instrument's score, `eval.instrument`, where both were scored by one) with its 95%
    /// interval, the paired change with its interval, the better / worse prompt counts and the
    /// exact test (McNemar for 0/1 outcomes, sign-flip permutation otherwise). Prompts pair by
    /// question text; evaluations of different questions are refused. A side is a run
    /// directory (its newest evaluation of each split) or an evaluation file
    /// (RUN/eval/LABEL.jsonl). Seeds of one arm: `mpo eval compare A1 A2 --vs B1 B2`, paired
    /// seed with seed; the test takes each prompt's change averaged over the seeds.
    Compare {
        /// A and B; or, with --vs, every run of side A.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// The runs of side B (one per seed, the seeds of side A).
        #[arg(long, num_args = 1..)]
        vs: Vec<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Validate a spec: every error with file:line:col, a snippet and a suggestion.
    Check {
        /// The spec file.
        spec: PathBuf,
        #[arg(help = OVERRIDES_HELP)]
        overrides: Vec<String>,
        /// Print every resolved value and where it came from.
        #[arg(long)]
        explain: bool,
    },
    /// Compile a spec into its execution plan and print it (a dry run).
    Plan {
        spec: PathBuf,
        #[arg(help = OVERRIDES_HELP)]
        overrides: Vec<String>,
        /// Print the machine-readable plan (a sweep prints `{"sweep": ..., "runs": [...]}`).
        #[arg(long)]
        json: bool,
        /// Where to take measured throughput from for the wall-time estimate (repeatable: a
        /// results root, a results/NAME folder or a run folder; default: the spec's
        /// `output.root`). Only runs whose work has the same shape count (`mpo plan` says which).
        #[arg(long, value_name = "DIR")]
        measured: Vec<PathBuf>,
    },
    /// Train: run a spec's plan (resumes an interrupted run, skips a finished one).
    Run {
        /// The spec file (or `--plan FILE` instead).
        #[arg(required_unless_present = "plan")]
        spec: Option<PathBuf>,
        #[arg(help = OVERRIDES_HELP)]
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
        /// Start over instead of resuming (or instead of skipping a finished run): the run's
        /// earlier files are moved into its `superseded/` folder, never deleted.
        #[arg(long)]
        restart: bool,
    },
    /// Run every cell of a sweep here (`--jobs` at a time; finished cells are skipped,
    /// interrupted ones resume), or write a Slurm job array for them (`--emit slurm`).
    Sweep {
        spec: PathBuf,
        #[arg(help = OVERRIDES_HELP)]
        overrides: Vec<String>,
        /// Cells run at once (each gets an equal share of the cores).
        #[arg(long, default_value_t = 1, value_parser = positive)]
        jobs: usize,
        /// Instead of running: write a job-array script and the cell plans.
        #[arg(long, value_parser = ["slurm"])]
        emit: Option<String>,
        /// Where `--emit` writes (default: RESULTS_ROOT/NAME/slurm). An existing plans.json there is
        /// never replaced by a different plan set (a queued array reads it).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Where to take measured throughput from for the wall-time estimate (repeatable: a
        /// results root, a results/NAME folder or a run folder; default: the spec's
        /// `output.root`). Only runs whose work has the same shape count (`mpo plan` says which).
        #[arg(long, value_name = "DIR")]
        measured: Vec<PathBuf>,
        #[command(flatten)]
        slurm: crate::sweep::slurm::SlurmOptions,
    },
    /// Aggregate the runs under results/NAME by sweep factor: report.md, report.csv, SVG plots.
    Report {
        /// A results directory holding run directories (results/NAME).
        dir: PathBuf,
        /// Write the report here instead of into DIR.
        #[arg(long)]
        out: Option<PathBuf>,
        /// The arm every other arm is compared with, as the report names arms (`meta.every=never`);
        /// default: the one fixed-rubric arm, else the first.
        #[arg(long)]
        baseline: Option<String>,
    },
    /// Evaluate a run's checkpoint on its test split, rank runs in an Elo tournament, or compare
    /// two runs on the same prompts (`mpo eval compare A B`).
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Eval {
        #[command(subcommand)]
        sub: Option<EvalCommand>,
        /// Run directories (results/NAME/RUN_ID); with --elo also RUN/eval/FILE.jsonl files.
        /// A spec file (then overrides) evaluates its base model before any training.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Which weights: an update number, `latest` or `base` (the policy without adapters).
        #[arg(long, default_value = "latest")]
        checkpoint: String,
        /// Pairwise tournament: a judge compares the runs' newest evaluation responses to the
        /// same test questions (matched by question text), each match in both presentation
        /// orders, and the players are rated. The seeds of one sweep arm are pooled into one
        /// player (`--per-run` keeps one per run). Arguments that are not runs (`slurm/`,
        /// `elo/`, `report.md`) are skipped with a note, so `results/NAME/*` works. The judge
        /// must be named: `--judge FILE`, `eval.elo.judge` in the spec, or `--training-judge`.
        #[arg(long)]
        elo: bool,
        /// The tournament's judge: a YAML file with the keys of a judge spec (as under
        /// `reward.judge`: backend, model, base_url_env, api_key_env, ...), e.g. `backend:
        /// openai` + `model: gpt-4o` + `base_url_env: JUDGE_URL`. Overrides `eval.elo.judge`.
        #[arg(long, requires = "elo", value_name = "FILE")]
        judge: Option<PathBuf>,
        /// Judge with the runs' own reward judge: the model the policies were optimised
        /// against, which favours them (recorded as such in elo.json).
        #[arg(long, requires = "elo")]
        training_judge: bool,
        /// One player per run instead of one per arm (the runs of a sweep cell that differ only
        /// in `runtime.seed`).
        #[arg(long, requires = "elo")]
        per_run: bool,
        /// `bt`: Bradley–Terry maximum likelihood (order-free; mean 1000 on the Elo scale).
        /// `elo`: sequential Elo, the paper's method (order-dependent; K and repeats apply).
        #[arg(long, default_value = "bt", requires = "elo")]
        rating: crate::eval::elo::Rating,
        /// Bradley–Terry: virtual tied games per player against the mean, which keep an
        /// undefeated player finite (default 1); 0 is the plain maximum likelihood.
        #[arg(long, requires = "elo", value_name = "GAMES")]
        bt_prior: Option<f64>,
        /// Sequential Elo: the K-factor (default: the first run's `eval.elo.k`).
        #[arg(long, requires = "elo")]
        k: Option<f64>,
        /// Matches per pair of players, each judged in both orders (default: `eval.elo.matches`).
        #[arg(long, value_parser = positive, requires = "elo")]
        matches: Option<usize>,
        /// Sequential Elo: match orders replayed, mean +- std over them (default:
        /// `eval.elo.repeats`).
        #[arg(long, value_parser = positive, requires = "elo")]
        repeats: Option<usize>,
        /// Bootstrap resamples of the prompts for the 95% interval.
        #[arg(long, default_value_t = 1000, value_parser = positive, requires = "elo")]
        bootstrap: usize,
        /// Seed of the matches drawn and of the bootstrap.
        #[arg(long, default_value_t = 0, requires = "elo")]
        seed: u64,
        /// Pairwise prompt template (default: `eval.elo.prompt`, else the built-in
        /// prompt_templates/elo/pairwise.j2).
        #[arg(long, requires = "elo")]
        template: Option<PathBuf>,
        /// Where the tournament is written (default: the first run's results/NAME/elo).
        #[arg(long, requires = "elo")]
        out: Option<PathBuf>,
    },
    /// Write a run's trained policy in a format other tools load: `peft` (adapter_config.json +
    /// adapter_model.safetensors for `peft.PeftModel.from_pretrained` on the base model, or
    /// vLLM's `--lora-modules`); `merged` (a Hugging Face folder, the adapter added into the
    /// base weights, for transformers, vLLM, lm-eval-harness); `gguf-lora` (adapter.gguf for
    /// `llama-server -m BASE.gguf --lora adapter.gguf`). The value head stays in the
    /// checkpoint (it is the critic's).
    /// Written whole or not at all; an existing destination is never replaced.
    Export {
        /// The run directory (results/NAME/RUN_ID).
        run: PathBuf,
        /// Which checkpoint: an update number or `latest`.
        #[arg(long, default_value = "latest")]
        checkpoint: String,
        #[arg(long, value_enum)]
        format: crate::export::Format,
        /// Destination folder (default: RUN/export/FORMAT-update-N).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also write `mpo_logprobs.jsonl`: mpo's per-token log-probs of this many of the run's
        /// rollouts under the exported weights, as token ids (what `scripts/peft_parity.py`
        /// reproduces with PyTorch).
        #[arg(long, default_value_t = 0)]
        logprobs: usize,
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
        #[arg(long, default_value = "cpu", value_parser = backend_arg)]
        backend: spec::BackendKind,
        /// Print each token with its log-probability.
        #[arg(long)]
        logprobs: bool,
    },
    /// Check a response with the task's programmatic verifier: exit 0 when correct, 1 when
    /// not, 2 on a usage error (like `cmp`).
    Grade {
        /// math or ethical_reasoning.
        #[arg(value_parser = task_arg)]
        task: spec::TaskKind,
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
        #[arg(long, default_value_t = 2, value_parser = positive)]
        samples: usize,
    },
    /// Check every matmul kernel a GPU backend's autotune can pick, each forced in turn, against
    /// the host at the shapes that broke them (k an odd multiple of the stage size, mat-vec);
    /// exit 1 when any kernel computes a wrong product.
    Kernels {
        /// wgpu or cuda (if compiled in).
        #[arg(long, default_value = "wgpu", value_parser = backend_arg)]
        backend: spec::BackendKind,
        /// Device index.
        #[arg(long, default_value_t = 0)]
        device: usize,
    },
    /// Run a benchmark and print its figures (see BENCHMARKS.md).
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum RubricCommand {
    /// Every meta step: versions, triggers, evidence, and why a rubric was kept. A run with
    /// rubric families (`meta.partition_by`) logs every family, or the one `--family` names.
    Log {
        run: PathBuf,
        /// A rubric family: its key (`'Algebra / 1'`) or folder name (`algebra-1`).
        #[arg(long)]
        family: Option<String>,
    },
    /// A version's markdown (default: the latest).
    Show {
        run: PathBuf,
        version: Option<String>,
        /// The rubric family, for a run that keeps one rubric per family.
        #[arg(long)]
        family: Option<String>,
    },
    /// Unified diff between two versions.
    Diff {
        run: PathBuf,
        a: String,
        b: String,
        /// The rubric family, for a run that keeps one rubric per family.
        #[arg(long)]
        family: Option<String>,
    },
    /// Score the spec's rubric test cases and hack probes (`reward.cases`) with its judge and
    /// rubric; compare with the snapshot in `<dir>/<spec name>/rubric/`. Exit 0 when nothing
    /// changed and every expectation holds (or is a listed known failure), 1 otherwise.
    /// Given a run directory instead, score the cases under every rubric version of the run
    /// and write a case x version table to `<run>/rubric_tests/`.
    Test {
        /// Spec files, or run directories (results/NAME/RUN_ID).
        specs: Vec<PathBuf>,
        /// Run directories: score this case file instead of the one the run's spec names.
        #[arg(long)]
        cases: Option<PathBuf>,
        /// Snapshot folder, shared with `mpo snapshot` (one subfolder per spec).
        #[arg(long, default_value = "prompt_snapshots")]
        dir: PathBuf,
        /// Accept the outcomes as the new snapshot.
        #[arg(long)]
        update: bool,
        /// Ask the real judge (local model or server) for answers not recorded yet, and record
        /// them; without it answers are replayed and nothing is loaded or contacted (spec files
        /// and run directories alike).
        #[arg(long)]
        record: bool,
        /// `text`, or `junit` (XML on stdout, for CI systems that show test results).
        #[arg(long, default_value = "text", value_parser = ["text", "junit"])]
        format: String,
        /// Run directories with rubric families: the family whose versions are scored (its key
        /// or folder name); the table goes to `<run>/rubric_tests/families/<slug>/`.
        #[arg(long)]
        family: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Judge-call overhead: calls against a stub server with fixed latency (target: <= 1.1x ideal).
    Judge {
        #[arg(long, default_value_t = 512, value_parser = positive)]
        calls: usize,
        #[arg(long, default_value_t = 64, value_parser = positive)]
        concurrency: usize,
        #[arg(long, default_value_t = 50)]
        latency_ms: u64,
    },
    /// `check` + `plan` over every shipped spec and a 64-cell sweep (target: < 50 ms).
    Spec {
        #[arg(long, default_value_t = 20, value_parser = positive)]
        iterations: usize,
    },
    /// Generation tokens/s of the demo model at batch 1 and 8 (against llama-server with
    /// --server URL or --llama-server).
    Generate {
        #[arg(long, default_value_t = 64, value_parser = positive)]
        new_tokens: usize,
        /// Batch sizes to measure, comma-separated (the eight bench prompts repeat to fill a
        /// batch above eight).
        #[arg(long, value_delimiter = ',', default_values_t = [1, 8], value_parser = positive)]
        batch: Vec<usize>,
        /// A running llama-server serving the same GGUF.
        #[arg(long)]
        server: Option<String>,
        /// Start llama-server (built by scripts/setup_llama_server.sh) for the comparison.
        #[arg(long)]
        llama_server: bool,
        /// cpu, wgpu or cuda (if compiled in).
        #[arg(long, default_value = "cpu", value_parser = backend_arg)]
        backend: spec::BackendKind,
    },
    /// Training-step tokens/s (forward + backward + AdamW on LoRA) against a forward pass;
    /// with --torch, against PyTorch eager on the same weights and tokens, generation included.
    Train {
        #[arg(long, default_value_t = 8, value_parser = positive)]
        batch: usize,
        #[arg(long, default_value_t = 128, value_parser = positive)]
        seq: usize,
        #[arg(long, default_value_t = 3, value_parser = positive)]
        steps: usize,
        /// cpu, wgpu or cuda (if compiled in).
        #[arg(long, default_value = "cpu", value_parser = backend_arg)]
        backend: spec::BackendKind,
        /// Also measure PyTorch + transformers + peft (installed into a venv under
        /// ~/.cache/mpo by scripts/setup_torch.sh on first use, ~3 GB) and print the ratios.
        #[arg(long)]
        torch: bool,
        /// With --torch: generation against llama-server too (built by
        /// scripts/setup_llama_server.sh, or the one at --server).
        #[arg(long, requires = "torch")]
        llama_server: bool,
        #[arg(long, requires = "torch")]
        server: Option<String>,
        /// With --torch: new tokens per prompt in the generation rows.
        #[arg(long, default_value_t = 32, value_parser = positive)]
        new_tokens: usize,
        /// A model built from a Hugging Face config.json alone instead of the demo model: a
        /// shipped name (qwen2.5-1.5b-instruct, qwen2.5-7b-instruct: configs/), a folder or a
        /// file; trained with the paper's adapters (r=64 on every projection and lm_head).
        #[arg(long, requires = "random_weights", conflicts_with = "llama_server")]
        config: Option<String>,
        /// With --config: seeded random weights (no weights are read).
        #[arg(long, requires = "config")]
        random_weights: bool,
        /// mpo's arithmetic (`runtime.precision`): f32, or bf16 (the frozen base stored and
        /// multiplied in bf16; for cuda, and on the CPU for its numbers, not its speed).
        #[arg(long, default_value = "f32", value_parser = precision_arg)]
        precision: crate::spec::Precision,
        /// With --torch: PyTorch's arithmetic, f32, tf32 (f32 weights, TensorFloat-32 products
        /// on a GPU) or bf16 (weights in bf16, adapters in f32); default: the one of --precision.
        #[arg(long, requires = "torch", value_parser = ["f32", "tf32", "bf16"])]
        torch_dtype: Option<String>,
        /// With --config: time one PPO update instead of a LoRA step: --batch rollouts of --seq
        /// tokens (a quarter prompt), the reference, old log-prob and value passes, then one
        /// optimizer step of the policy and of a separate critic (its own adapters and value
        /// head); with --torch the same update in transformers + peft.
        #[arg(long, requires = "config")]
        ppo: bool,
    },
    /// One PPO update at the demo's shapes with the rollout-time passes shared (as a run does
    /// them) against separate no-grad passes, alternating in one process.
    Ppo {
        #[arg(long, default_value_t = 3, value_parser = positive)]
        reps: usize,
        /// cpu, wgpu or cuda (if compiled in).
        #[arg(long, default_value = "cpu", value_parser = backend_arg)]
        backend: spec::BackendKind,
    },
    /// Next-token log-probs of mpo against llama-server on the same GGUF.
    Parity {
        /// A running llama-server serving the demo GGUF (else one is started).
        #[arg(long)]
        server: Option<String>,
        /// Greedy steps compared per prompt.
        #[arg(long, default_value_t = 8, value_parser = positive)]
        steps: usize,
    },
}

/// A command-line value clap's parsers refuse (clap prints it after the argument's name).
#[derive(Debug, thiserror::Error)]
enum ArgError {
    #[error(transparent)]
    Count(#[from] std::num::ParseIntError),
    #[error("must be at least 1")]
    Zero,
    #[error("`{0}`: expected f32 or bf16")]
    Precision(String),
    #[error("`{0}`: expected cpu, wgpu or cuda")]
    Backend(String),
    #[error("`{0}`: expected math, ethical_reasoning, essay_writing or summarization")]
    Task(String),
}

/// A count that must be at least 1 (`--jobs 0` would run nothing, `--concurrency 0` deadlock).
fn positive(s: &str) -> Result<usize, ArgError> {
    match s.parse::<usize>()? {
        0 => Err(ArgError::Zero),
        n => Ok(n),
    }
}

/// `--precision`: the names `runtime.precision` takes.
fn precision_arg(s: &str) -> Result<crate::spec::Precision, ArgError> {
    serde_json::from_value(serde_json::Value::String(s.into())).map_err(|_| ArgError::Precision(s.into()))
}

/// `--backend`: the names `runtime.backend` takes.
fn backend_arg(s: &str) -> Result<spec::BackendKind, ArgError> {
    serde_json::from_value(serde_json::Value::String(s.into())).map_err(|_| ArgError::Backend(s.into()))
}

/// A task's name (`task.kind`).
fn task_arg(s: &str) -> Result<spec::TaskKind, ArgError> {
    serde_json::from_value(serde_json::Value::String(s.into())).map_err(|_| ArgError::Task(s.into()))
}

/// How a command failed. [`exit`] reports every failure in one place with the documented codes.
#[derive(Debug)]
pub enum Failure {
    /// The command line asks for something that cannot be (exit 2).
    Usage(String),
    /// The input is wrong or the operation failed (exit 1), with what to do about it.
    Error { message: String, help: Option<String> },
    /// Diagnostics were printed already (exit 1).
    Reported,
}

impl Failure {
    fn error(message: impl std::fmt::Display) -> Self {
        Failure::Error { message: message.to_string(), help: None }
    }
}

impl From<crate::run::RunError> for Failure {
    fn from(e: crate::run::RunError) -> Self {
        Failure::Error { help: e.help(), message: e.to_string() }
    }
}

impl From<crate::eval::EvalError> for Failure {
    fn from(e: crate::eval::EvalError) -> Self {
        match e {
            crate::eval::EvalError::Usage(m) => Failure::Usage(m),
            e => Failure::Error { help: e.help(), message: e.to_string() },
        }
    }
}

/// How a command that ran ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// Exit 0.
    Ok,
    /// Exit 1 without an error: the answer is "no" (an incorrect grade, changed snapshots,
    /// sweep cells that did not finish).
    No,
    /// Exit 130: a run stopped early with a checkpoint (Ctrl-C, `--stop-after`); rerun to resume.
    Stopped,
}

type Outcome = Result<Done, Failure>;

/// The exit code of an outcome; failures are printed here and nowhere else.
pub fn exit(o: Outcome) -> ExitCode {
    match o {
        Ok(Done::Ok) => ExitCode::SUCCESS,
        Ok(Done::No) => ExitCode::from(1),
        Ok(Done::Stopped) => ExitCode::from(130),
        Err(Failure::Usage(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Error { message, help }) => {
            eprintln!("error: {message}");
            if let Some(h) = help {
                eprintln!("  = help: {h}");
            }
            ExitCode::from(1)
        }
        Err(Failure::Reported) => ExitCode::from(1),
    }
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(mut e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            hint_dashed_override(&mut e);
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    exit(dispatch(cli.command))
}

/// clap meets an override written as a flag (`--meta.every=5`) before the spec loader does, and
/// its tip (`-- --meta.every`) would pass it on unchanged: say how to write it instead.
fn hint_dashed_override(e: &mut clap::Error) {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let Some(ContextValue::String(flag)) = e.get(ContextKind::InvalidArg).filter(|_| e.kind() == ErrorKind::UnknownArgument) else {
        return;
    };
    let args: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    let Some(at) = args.iter().position(|a| a == flag || a.strip_prefix(flag.as_str()).is_some_and(|r| r.starts_with('='))) else {
        return;
    };
    if let Some(help) = spec::compose::dashed_override_help(&args[at], args.get(at + 1).map(String::as_str)) {
        e.remove(ContextKind::SuggestedArg);
        e.insert(ContextKind::Suggested, ContextValue::StyledStrs(vec![help.into()]));
    }
}

fn dispatch(command: Command) -> Outcome {
    match command {
        Command::Check { spec, overrides, explain } => check(&spec, &overrides, explain),
        Command::Plan { spec, overrides, json, measured } => plan_cmd(&spec, &overrides, json, &measured),
        Command::Run { spec, overrides, plan, cell, quiet, stop_after, restart } => {
            let how = crate::run::RunOptions { quiet, stop_after, restart, ..Default::default() };
            match (spec, plan) {
                (Some(spec), None) => run_cmd(&spec, &overrides, cell, how),
                (None, Some(plan)) if overrides.is_empty() => run_plan_cmd(&plan, cell, how),
                _ => {
                    Err(Failure::Usage("`--plan` runs a compiled plan as it is: drop the overrides (or re-plan the spec with them)".into()))
                }
            }
        }
        Command::Sweep { spec, overrides, jobs, emit, out, measured, slurm } => {
            sweep_cmd(&spec, &overrides, jobs, emit.is_some(), out.as_deref(), &measured, &slurm)
        }
        Command::Report { dir, out, baseline } => {
            let w = crate::report::report(&dir, out.as_deref(), baseline.as_deref()).map_err(Failure::error)?;
            print!("{}", w.table);
            let plots: Vec<String> = w.plots.iter().map(|p| p.display().to_string()).collect();
            println!("wrote {}, {}, {}", w.markdown.display(), w.csv.display(), plots.join(", "));
            Ok(Done::Ok)
        }
        Command::Eval { sub: Some(EvalCommand::Compare { runs, vs }), .. } => {
            let (a, b) = if vs.is_empty() {
                match runs.as_slice() {
                    [a, b] => (vec![a.clone()], vec![b.clone()]),
                    _ => {
                        return Err(Failure::Usage(format!(
                            "compare takes two sides: `mpo eval compare A B`, or `mpo eval compare A1 A2 --vs B1 B2` (got {} paths and no --vs)",
                            runs.len()
                        )));
                    }
                }
            } else {
                (runs, vs)
            };
            print!("{}", crate::eval::compare::compare(&a, &b)?);
            Ok(Done::Ok)
        }
        Command::Eval {
            sub: None,
            runs,
            checkpoint,
            elo,
            judge,
            training_judge,
            per_run,
            rating,
            bt_prior,
            k,
            matches,
            repeats,
            bootstrap,
            seed,
            template,
            out,
        } => {
            if elo {
                let flags = crate::eval::EloFlags {
                    rating,
                    k,
                    matches_per_pair: matches,
                    repeats,
                    bootstrap,
                    seed,
                    prior: bt_prior,
                    template,
                    judge,
                    training_judge,
                    per_run,
                };
                return elo_cmd(&runs, &flags, out.as_deref());
            }
            eval_cmd(&runs, &checkpoint)
        }
        Command::Fetch { name, list } => fetch_cmd(name.as_deref(), list),
        Command::Grade { task, response, reference, tolerance } => grade_cmd(task, &response, &reference, tolerance),
        Command::Rubric { which } => rubric_cmd(which),
        Command::Snapshot { specs, dir, update, samples } => snapshot_cmd(&specs, &dir, update, samples),
        Command::Generate { model, prompt, raw, max_new_tokens, temperature, top_p, top_k, seed, backend, logprobs } => {
            let args = crate::generate_cmd::Args { model, prompts: prompt, raw, max_new_tokens, temperature, top_p, top_k, seed, logprobs };
            crate::generate_cmd::run(backend, args).map_err(|e| Failure::error(format!("{e:#}")))?;
            Ok(Done::Ok)
        }
        Command::Kernels { backend, device } => kernels_cmd(backend, device),
        Command::Bench { which } => {
            let r = match which {
                BenchCommand::Spec { iterations } => crate::bench::spec_bench(iterations),
                BenchCommand::Judge { calls, concurrency, latency_ms } => {
                    crate::bench::stub::judge_bench(calls, concurrency, std::time::Duration::from_millis(latency_ms))
                }
                BenchCommand::Generate { new_tokens, batch, server, llama_server, backend } => {
                    let slots = batch.iter().copied().max().unwrap_or(8);
                    crate::bench::with_server(server, llama_server, slots, |url| {
                        crate::bench::on_backend(
                            backend,
                            crate::bench::generation::GenerateBench { new_tokens, batches: batch, server: url },
                        )
                    })
                }
                BenchCommand::Train {
                    batch,
                    seq,
                    steps,
                    backend,
                    torch,
                    llama_server,
                    server,
                    new_tokens,
                    config,
                    random_weights: _,
                    precision,
                    torch_dtype,
                    ppo,
                } => {
                    let torch_dtype = torch_dtype.unwrap_or_else(|| precision.as_str().to_string());
                    crate::bench::with_server(server, llama_server, 8, |server| {
                        crate::bench::on_backend(
                            backend,
                            crate::bench::train::TrainBench {
                                batch,
                                seq,
                                steps,
                                torch,
                                server,
                                new_tokens,
                                config,
                                precision,
                                torch_dtype,
                                torch_device: if backend == spec::BackendKind::Cuda { "cuda" } else { "cpu" },
                                ppo,
                            },
                        )
                    })
                }
                BenchCommand::Ppo { reps, backend } => crate::bench::on_backend(backend, crate::bench::ppo::PpoBench { reps }),
                BenchCommand::Parity { server, steps } => crate::bench::parity(server, steps),
            };
            print!("{}", r.map_err(|e| Failure::error(format!("{e:#}")))?);
            Ok(Done::Ok)
        }
        Command::Export { run, checkpoint, format, out, logprobs } => {
            let update = match checkpoint.as_str() {
                "latest" => None,
                n => Some(
                    n.parse::<u32>().map_err(|_| Failure::Usage(format!("--checkpoint `{n}`: expected an update number or `latest`")))?,
                ),
            };
            let e = crate::export::export(&run, update, format, out.as_deref(), logprobs)
                .map_err(|e| Failure::Error { help: e.help(), message: e.to_string() })?;
            println!(
                "exported update {} of {} as {}: {} ({} tensors{})",
                e.update,
                run.display(),
                clap::ValueEnum::to_possible_value(&format).map(|v| v.get_name().to_string()).unwrap_or_default(),
                e.dir.display(),
                e.tensors,
                if e.fixture_rows > 0 {
                    format!(", mpo's log-probs of {} rollouts in mpo_logprobs.jsonl", e.fixture_rows)
                } else {
                    String::new()
                }
            );
            Ok(Done::Ok)
        }
        Command::Schema => {
            let s = serde_json::to_string_pretty(&spec::json_schema()).map_err(Failure::error)?;
            println!("{s}");
            Ok(Done::Ok)
        }
    }
}

/// `mpo kernels`: one line per candidate kernel as it finishes, then the summary.
fn kernels_cmd(b: spec::BackendKind, device: usize) -> Outcome {
    if b == spec::BackendKind::Cpu {
        return Err(Failure::Usage("the kernel check runs on a GPU backend (`--backend wgpu` or `cuda`), not cpu".into()));
    }
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    {
        use crate::model::kernels::{self, Verdict};
        let mut last = String::new();
        let outcomes = kernels::check_backend(b, device, |o| {
            if o.candidate != last {
                eprintln!("checking {}", o.candidate);
                last = o.candidate.clone();
            }
            if let Verdict::Wrong { rel_err, .. } = o.verdict {
                eprintln!("  WRONG at {}: rel. error {rel_err:.2e}", o.problem);
            }
        })
        .map_err(Failure::error)?;
        print!("{}", kernels::summarize(&outcomes));
        let wrong = outcomes.iter().filter(|o| matches!(o.verdict, Verdict::Wrong { .. })).count();
        let ran = outcomes.iter().filter(|o| !matches!(o.verdict, Verdict::Unavailable(_))).count();
        println!("{ran} of {} (candidate, problem) pairs ran on {}: {wrong} wrong", outcomes.len(), b.as_str());
        Ok(if wrong == 0 { Done::Ok } else { Done::No })
    }
    #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
    {
        let _ = device;
        Err(Failure::error(format!("backend `{}` is not compiled into this mpo; {}", b.as_str(), b.build_hint())))
    }
}

/// `mpo eval RUN...` or `mpo eval SPEC [OVERRIDES]`: every subject in turn; a failure of one
/// does not stop the others.
fn eval_cmd(runs: &[PathBuf], checkpoint: &str) -> Outcome {
    let which: crate::eval::Which = checkpoint.parse().map_err(|e| Failure::Usage(format!("--checkpoint {e}")))?;
    let is_spec = runs[0].is_file() && runs[0].extension().is_some_and(|e| e == "yaml" || e == "yml");
    let subjects = if is_spec {
        let overrides: Vec<String> = runs[1..].iter().map(|p| p.display().to_string()).collect();
        let loaded = load(&runs[0], &overrides)?;
        crate::eval::spec_subjects(loaded.runs.iter().map(plan::compile).collect(), which)?
    } else {
        runs.iter().map(|r| crate::eval::Subject::Run { dir: r.clone(), which }).collect()
    };
    let mut failed = None;
    for s in &subjects {
        match s.evaluate() {
            Ok(res) => print!("{}", crate::eval::summary(s, &res)),
            Err(e) => {
                let f = Failure::from(e);
                if subjects.len() == 1 {
                    return Err(f);
                }
                if let Failure::Error { message, help } = &f {
                    eprintln!("error: {}: {message}", s.dir().display());
                    if let Some(h) = help {
                        eprintln!("  = help: {h}");
                    }
                }
                failed = Some(f);
            }
        }
    }
    match failed {
        Some(_) => Err(Failure::Reported),
        None => Ok(Done::Ok),
    }
}

/// The cell `cell` asks for among `cells` (a single plan is its own only cell).
fn pick_cell<T>(mut cells: Vec<T>, is_sweep: bool, cell: Option<usize>, what: &str, sweep_cmd: Option<&str>) -> Result<T, Failure> {
    match (is_sweep, cell) {
        (false, None) => Ok(cells.swap_remove(0)),
        (false, Some(_)) => Err(Failure::Usage(format!("`--cell` is for sweeps; {what} is a single run"))),
        (true, None) => Err(Failure::Usage(format!(
            "{what} is a sweep of {} cells: {}pick one with `--cell N`",
            cells.len(),
            sweep_cmd.map(|s| format!("run them all with `{s}`, or ")).unwrap_or_default()
        ))),
        (true, Some(c)) if c < cells.len() => Ok(cells.swap_remove(c)),
        (true, Some(c)) => Err(Failure::Usage(format!("{what} has {} cells (0..{}), not {c}", cells.len(), cells.len()))),
    }
}

/// `mpo run --plan FILE [--cell N]`: a plan (or a sweep's list of plans) as `mpo plan --json`
/// and `mpo sweep --emit` write it. Templates are checked against the plan's hashes at start.
fn run_plan_cmd(path: &std::path::Path, cell: Option<usize>, how: crate::run::RunOptions) -> Outcome {
    let text = std::fs::read_to_string(path).map_err(|e| Failure::error(format!("{}: {e}", path.display())))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Failure::Error {
        message: format!("{}: not JSON ({e})", path.display()),
        help: Some("write plans with `mpo plan SPEC --json > FILE`".into()),
    })?;
    let (plans, is_sweep) = match v.get("runs") {
        Some(runs) => (serde_json::from_value::<Vec<Plan>>(runs.clone()), true),
        None => (serde_json::from_value::<Plan>(v).map(|p| vec![p]), false),
    };
    let plans = match plans {
        Ok(p) if !p.is_empty() => p,
        Ok(_) => return Err(Failure::error(format!("{} holds no plans", path.display()))),
        Err(e) => {
            return Err(Failure::Error {
                message: format!("{}: not a plan of this mpo version ({e})", path.display()),
                help: Some("re-plan the spec with this mpo: `mpo plan SPEC --json`".into()),
            });
        }
    };
    let plan = pick_cell(plans, is_sweep, cell, &path.display().to_string(), None)?;
    execute_run(&plan, &crate::run::RunOptions { spec_path: path.to_path_buf(), spec_text: text, ..how })
}

fn sweep_cmd(
    path: &std::path::Path,
    overrides: &[String],
    jobs: usize,
    emit: bool,
    out: Option<&std::path::Path>,
    measured: &[PathBuf],
    slurm: &crate::sweep::slurm::SlurmOptions,
) -> Outcome {
    let loaded = load(path, overrides)?;
    let plans = with_wall_time(loaded.runs.iter().map(plan::compile).collect(), measured)?;
    if !loaded.is_sweep {
        eprintln!("note: {} has no `sweep:` section; running it as a sweep of one cell", path.display());
    }
    let exe = std::env::current_exe().map_err(|e| Failure::error(format!("cannot find the mpo executable: {e}")))?;
    let name = plans[0].name.clone();
    if emit {
        let out = out.map(std::path::Path::to_path_buf).unwrap_or_else(|| plans[0].spec.output.root.join(&name).join("slurm"));
        let e = crate::sweep::slurm::emit(&name, &plans, &out, &exe, slurm)
            .map_err(|e| Failure::Error { help: e.help(), message: format!("emitting into {}: {e}", out.display()) })?;
        let plans_note = if e.unchanged { " (unchanged: the same plans were already there)" } else { "" };
        let scripts: Vec<String> = e.scripts.iter().map(|p| p.display().to_string()).collect();
        println!("wrote {} ({} cells) and {}{plans_note}", scripts.join(", "), e.cells, e.plans.display());
        if scripts.len() > 1 {
            println!("one job array per set of servers its cells need (a fixed-rubric arm starts no meta judge)");
        }
        for n in crate::sweep::slurm::time_notes(&plans, slurm) {
            eprintln!("{n}");
        }
        println!("submit with: {}", scripts.iter().map(|s| format!("sbatch {s}")).collect::<Vec<_>>().join(" && "));
        return Ok(Done::Ok);
    }
    if !loaded.is_sweep {
        // a plain spec is one cell: `mpo run` semantics
        return run_cmd(path, overrides, None, crate::run::RunOptions::default());
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
        Ok(Done::Ok)
    } else {
        println!("{bad} of {} cells did not finish; run the same command again to resume them", outcomes.len());
        Ok(Done::No)
    }
}

fn elo_cmd(args: &[PathBuf], flags: &crate::eval::EloFlags, out: Option<&std::path::Path>) -> Outcome {
    use crate::eval::elo;
    let (setup, t, file) = crate::eval::elo_cmd(args, flags, out)?;
    if !setup.skipped.is_empty() {
        eprintln!("note: skipped {} argument(s) that are not runs: {}", setup.skipped.len(), setup.skipped.join("; "));
    }
    for n in &setup.notes {
        eprintln!("note: {n}");
    }
    let j = &file.judge;
    println!(
        "judge: {} ({}){}",
        crate::plan::describe_judge(&setup.judge.spec, setup.judge.model.as_ref()),
        j.source,
        if j.training_judge { " -- the runs' own training judge: the policies were optimised against it, so it favours them" } else { "" }
    );
    for n in elo::notes(&t.summary) {
        println!("{n}");
    }
    print!("{}", elo::table(&t));
    match t.summary.players.len() {
        3..=8 => print!("{}", elo::head_to_head_table(&t.summary)),
        n if n > 8 => println!("head-to-head records of the {} pairs: `head_to_head` in elo.json", n * (n - 1) / 2),
        _ => {}
    }
    println!("wrote {}/elo.json and matches.jsonl", setup.out.display());
    Ok(Done::Ok)
}

fn run_cmd(path: &std::path::Path, overrides: &[String], cell: Option<usize>, how: crate::run::RunOptions) -> Outcome {
    let loaded = load(path, overrides)?;
    let sweep = format!("mpo sweep {}", path.display());
    let run = pick_cell(loaded.runs, loaded.is_sweep, cell, &path.display().to_string(), Some(&sweep))?;
    let plan = plan::compile(&run);
    let spec_text = std::fs::read_to_string(path).unwrap_or_default();
    execute_run(&plan, &crate::run::RunOptions { spec_path: path.to_path_buf(), spec_text, ..how })
}

fn execute_run(plan: &Plan, opts: &crate::run::RunOptions) -> Outcome {
    if !opts.quiet {
        eprintln!(
            "mpo run {} (run id {}): {} updates x {} episodes on {}",
            plan.name,
            plan.run_id,
            plan.schedule.updates,
            plan.schedule.episodes_per_update,
            plan.spec.runtime.backend.as_str()
        );
    }
    match crate::run::run(plan, opts)? {
        crate::run::RunOutcome::AlreadyFinished(d) => {
            println!(
                "already finished: {}/ (nothing to do; `--restart` runs it again, keeping these results in its superseded/)",
                d.display()
            );
            Ok(Done::Ok)
        }
        crate::run::RunOutcome::Finished { dir, updates, summary } => {
            println!("finished {updates} updates: results in {}/", dir.display());
            for line in summary {
                println!("  {line}");
            }
            let families = crate::meta::history::History::families(&dir);
            if let Some(line) = crate::meta::history::families_summary_line(&families, &dir) {
                println!("  {line}");
            } else if let Ok(entries) = crate::meta::history::History::new(&dir).entries() {
                println!("  {}", crate::meta::history::summary_line(&entries, &dir));
            }
            println!("  metrics.jsonl  samples/  rubrics/  checkpoints/  events.out.tfevents.mpo (TensorBoard)");
            Ok(Done::Ok)
        }
        crate::run::RunOutcome::Stopped { dir, update } => {
            println!("stopped after update {update} with a checkpoint: {}/ (run the same command again to resume)", dir.display());
            Ok(Done::Stopped)
        }
    }
}

fn grade_cmd(task: spec::TaskKind, response: &str, reference: &str, tolerance: f64) -> Outcome {
    let g = crate::reward::verify::grade(task, response, reference, tolerance).map_err(|e| Failure::Usage(e.to_string()))?;
    println!("{}", g.reading);
    Ok(if g.correct { Done::Ok } else { Done::No })
}

fn parse_version(v: &str) -> Result<u32, Failure> {
    v.trim_start_matches(['v', 'V']).parse().map_err(|_| Failure::Usage(format!("`{v}`: versions are written v3 or 3")))
}

fn rubric_test_cmd(specs: &[PathBuf], cases: Option<&Path>, opts: &crate::rubric_test::Options, junit: bool) -> Outcome {
    if specs.is_empty() {
        return Err(Failure::Usage("give at least one spec file or run directory".into()));
    }
    let mut all = true;
    let mut suites = Vec::new();
    for s in specs {
        if s.is_dir() {
            if !s.join("plan.json").is_file() {
                return Err(Failure::Usage(format!(
                    "`{}` is a directory but not a run (no plan.json); give a spec file or a run directory (results/NAME/RUN_ID)",
                    s.display()
                )));
            }
            if opts.update || junit {
                return Err(Failure::Usage(
                    "--update and --format junit are for spec files; a run directory's table has no snapshot".into(),
                ));
            }
            let family = opts.family.as_deref();
            let table = crate::rubric_test::versions::run(s, cases, opts.record, family)
                .map_err(|e| Failure::error(format!("{}: {e}", s.display())))?;
            let md = table.write(s, family).map_err(Failure::error)?;
            print!("{}", table.markdown());
            let asked =
                if table.asked > 0 { format!(" ({} answer(s) asked of the judge and recorded)", table.asked) } else { String::new() };
            println!("\nwritten to {} and heatmap.svg{asked}", md.display());
            if !table.unrecorded.is_empty() {
                let more = if table.unrecorded.len() > 8 { format!(" and {} more", table.unrecorded.len() - 8) } else { String::new() };
                println!(
                    "no recorded judge answer for {} (version, case) pair(s): {}{more} (shown as `?`, not checked)\n  = help: ask the run's judge for them and record them: `mpo rubric test {} --record` (loads the judge's model or contacts its server); replaying never does",
                    table.unrecorded.len(),
                    table.unrecorded.iter().take(8).cloned().collect::<Vec<_>>().join(", "),
                    s.display()
                );
                all = false;
            }
            continue;
        }
        if cases.is_some() {
            return Err(Failure::Usage("--cases is for run directories; a spec names its case file in `reward.cases`".into()));
        }
        let loaded = load(s, &[])?;
        let Some(first) = loaded.runs.first() else { continue };
        let report = crate::rubric_test::run(first, opts).map_err(|e| Failure::error(format!("{}: {e}", s.display())))?;
        if junit {
            let changed = report.changed.clone().unwrap_or_default();
            suites.push(crate::rubric_test::junit(&report.spec_name, &report.snapshot.cases, &report.checks, &changed, &report.unrecorded));
        } else {
            print!("{}", report.render(s));
        }
        all &= report.passed();
    }
    if junit {
        print!("{}", crate::rubric_test::junit_document(&suites));
    }
    Ok(if all { Done::Ok } else { Done::No })
}

fn rubric_cmd(which: RubricCommand) -> Outcome {
    use crate::meta::history::{History, diff, render_log};
    let run = match &which {
        RubricCommand::Test { specs, cases, dir, update, record, format, family } => {
            let opts = crate::rubric_test::Options { dir: dir.clone(), update: *update, record: *record, family: family.clone() };
            return rubric_test_cmd(specs, cases.as_deref(), &opts, format == "junit");
        }
        RubricCommand::Log { run, family } | RubricCommand::Show { run, family, .. } | RubricCommand::Diff { run, family, .. } => {
            (run.clone(), family.clone())
        }
    };
    let (run, family) = run;
    if let (RubricCommand::Log { .. }, None) = (&which, &family) {
        let families = History::families(&run);
        if !families.is_empty() {
            for h in families {
                let entries = h.entries().map_err(|e| Failure::error(format!("{}: {e}", h.folder().display())))?;
                println!("== {} ({})", h.family_key().unwrap_or_default(), h.folder().display());
                print!("{}", render_log(&entries));
            }
            return Ok(Done::Ok);
        }
    }
    let h = History::open(&run, family.as_deref()).map_err(Failure::error)?;
    let entries = h.entries().map_err(|e| Failure::Error {
        message: format!("{} has no rubric history ({e})", run.display()),
        help: Some("give a run directory such as results/math/<run-id>".into()),
    })?;
    let show = |v: u32| h.show(v).map_err(|_| Failure::error(format!("no version v{v:03} in {}", h.folder().display())));
    match which {
        RubricCommand::Log { .. } => print!("{}", render_log(&entries)),
        RubricCommand::Show { version, .. } => {
            let v = match version.as_deref() {
                Some(v) => parse_version(v)?,
                None => entries.iter().filter_map(|e| e.version).max().unwrap_or(0),
            };
            print!("{}", show(v)?);
        }
        RubricCommand::Diff { a, b, .. } => {
            let (va, vb) = (parse_version(&a)?, parse_version(&b)?);
            print!("{}", diff(&show(va)?, &show(vb)?, &format!("v{va:03}.md"), &format!("v{vb:03}.md")));
        }
        // Answered before the run directory is read.
        RubricCommand::Test { .. } => {}
    }
    Ok(Done::Ok)
}

fn snapshot_cmd(specs: &[PathBuf], dir: &std::path::Path, update: bool, samples: usize) -> Outcome {
    if specs.is_empty() {
        return Err(Failure::Usage("give at least one spec".into()));
    }
    let mut changed_any = false;
    for s in specs {
        let loaded = load(s, &[])?;
        let Some(first) = loaded.runs.first() else { continue };
        let files = crate::snapshot::render_all(first, samples).map_err(|e| Failure::error(format!("{}: {e}", s.display())))?;
        let sub = dir.join(&first.spec.name);
        let changed = crate::snapshot::sync(&sub, &files, update).map_err(|e| Failure::error(format!("writing {}: {e}", sub.display())))?;
        if changed.is_empty() {
            println!("{}: {} prompts unchanged", s.display(), files.len());
        } else {
            changed_any = true;
            let verb = if update { "updated" } else { "changed" };
            println!("{}: {} {verb}: {}", s.display(), changed.len(), changed.join(", "));
        }
    }
    if changed_any && !update {
        eprintln!("prompts changed; review them and run with --update to accept");
        return Ok(Done::No);
    }
    Ok(Done::Ok)
}

fn fetch_cmd(name: Option<&str>, list: bool) -> Outcome {
    use crate::model::{fetch, registry};
    let Some(name) = name.filter(|_| !list) else {
        for k in registry::KNOWN {
            let p = fetch::model_path(k);
            let state = if p.exists() { format!("cached at {}", p.display()) } else { "not fetched".into() };
            println!("{:<24} {} ({state})", k.name, k.description);
        }
        return if list { Ok(Done::Ok) } else { Err(Failure::Usage("name a model to fetch (the known ones are listed above)".into())) };
    };
    let p = fetch::fetch(name, &mut |m| eprintln!("{m}")).map_err(Failure::error)?;
    println!("{}", p.display());
    Ok(Done::Ok)
}

/// Load a spec and print its diagnostics; `Reported` when it has errors.
fn load(path: &std::path::Path, overrides: &[String]) -> Result<resolve::Loaded, Failure> {
    let loaded = resolve::load(path, overrides);
    if !loaded.diags.is_empty() {
        eprint!("{}", loaded.render_diagnostics());
    }
    if loaded.has_errors() { Err(Failure::Reported) } else { Ok(loaded) }
}

fn check(path: &std::path::Path, overrides: &[String], explain: bool) -> Outcome {
    let loaded = load(path, overrides)?;
    let plans: Vec<Plan> = loaded.runs.iter().map(plan::compile).collect();
    if explain && let Some(first) = loaded.runs.first() {
        let rows = spec::explain(&first.spec, &first.tree, &loaded.sources);
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
    Ok(Done::Ok)
}

/// The plans with their wall-time estimates, from the runs under `measured` (default: each
/// plan's output root).
fn with_wall_time(mut plans: Vec<Plan>, measured: &[PathBuf]) -> Result<Vec<Plan>, Failure> {
    if let Some(d) = measured.iter().find(|d| !d.is_dir()) {
        return Err(Failure::Usage(format!(
            "--measured {}: no such directory (name a results root, a results/NAME folder or a run folder)",
            d.display()
        )));
    }
    let mut roots: Vec<PathBuf> = measured.to_vec();
    if roots.is_empty() {
        for p in &plans {
            if !roots.contains(&p.spec.output.root) {
                roots.push(p.spec.output.root.clone());
            }
        }
    }
    let runs = crate::results::throughput::scan(&roots);
    for p in &mut plans {
        p.estimates.wall_time = Some(crate::results::throughput::estimate(p, &runs));
    }
    Ok(plans)
}

fn plan_cmd(path: &std::path::Path, overrides: &[String], json: bool, measured: &[PathBuf]) -> Outcome {
    let loaded = load(path, overrides)?;
    let plans = with_wall_time(loaded.runs.iter().map(plan::compile).collect(), measured)?;
    let out = if json {
        let v = if loaded.is_sweep {
            serde_json::json!({ "sweep": plans.first().map(|p| p.name.clone()), "runs": plans })
        } else {
            serde_json::to_value(&plans[0]).map_err(Failure::error)?
        };
        serde_json::to_string_pretty(&v).map_err(Failure::error)? + "\n"
    } else if loaded.is_sweep {
        plan::render_sweep_table(&plans)
    } else {
        plan::render_summary(&plans[0])
    };
    print!("{out}");
    Ok(Done::Ok)
}
