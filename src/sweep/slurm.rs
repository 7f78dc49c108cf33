//! `mpo sweep SPEC --emit slurm`: sbatch job-array scripts plus the compiled cell plans.
//!
//! Array task i runs `mpo run --plan plans.json --cell CELLS[i]`; cells that need different
//! servers (judges, and the policy's base for rollouts on vLLM or SGLang) go into separate arrays (see [`emit`]). The plans are frozen at emission
//! (templates are re-checked against their hashes when a task starts), so editing the spec
//! after submitting cannot silently change a queued cell. A requeued or re-submitted task
//! lands in the same run directory (the run id) and resumes from its last checkpoint.

use std::path::{Path, PathBuf};

use crate::model::registry::ModelRef;
use crate::plan::Plan;

/// Resources and placement of the array's tasks: the `mpo sweep --emit slurm` options.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SlurmOptions {
    /// Slurm partition (`#SBATCH --partition`).
    #[arg(long)]
    pub partition: Option<String>,
    /// Slurm account to charge (`#SBATCH --account`).
    #[arg(long)]
    pub account: Option<String>,
    /// Quality of service (`#SBATCH --qos`).
    #[arg(long)]
    pub qos: Option<String>,
    /// Node features the task needs, e.g. `h100` (`#SBATCH --constraint`).
    #[arg(long)]
    pub constraint: Option<String>,
    /// Wall-time limit per cell, in Slurm's forms (`HH:MM:SS`, `D-HH:MM:SS`, `D-HH`, `MM`);
    /// `mpo sweep` warns when a cell's measured wall-time estimate (`mpo plan`) exceeds it.
    #[arg(long, default_value = "24:00:00", value_parser = slurm_time)]
    pub time: String,
    /// CPU cores per cell (mpo's thread pool takes them all).
    #[arg(long, default_value_t = 8)]
    pub cpus_per_task: u32,
    /// GPUs mpo itself uses per cell (default: 1 when the backend is a GPU, else 0); the judge
    /// servers' GPUs (`--serve`) are added to the request.
    #[arg(long)]
    pub gpus_per_task: Option<u32>,
    /// Memory per cell (`#SBATCH --mem`, e.g. `200G`).
    #[arg(long)]
    pub mem: Option<String>,
    /// At most this many cells at once on the cluster (`--array=0-N%M`).
    #[arg(long)]
    pub max_parallel: Option<usize>,
    /// A further `#SBATCH` option, written as given (repeatable), e.g. `--sbatch=--exclusive`.
    #[arg(long = "sbatch", value_name = "OPTION", allow_hyphen_values = true)]
    pub sbatch: Vec<String>,
    /// A file of shell lines every task runs first (`module load cuda`, `source env/bin/activate`);
    /// read when the script is written.
    #[arg(long, value_name = "FILE", value_parser = read_file)]
    pub setup: Option<String>,
    /// Start the servers inside each task: one per distinct judge model, each variable
    /// (`base_url_env`) pointed at the server of its model, and for rollouts on vLLM or SGLang
    /// (`runtime.rollouts`) one on the policy's base model with run-time LoRA loading (that
    /// server is the engine the spec names). Without it the script expects the variables
    /// exported before `sbatch`.
    #[arg(long, value_enum)]
    pub serve: Option<Engine>,
    /// GPUs per server (tensor parallel size): one value for all, or one per model in the order
    /// the sweep first uses them (reward judge, meta judge, instrument judge, rollouts), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub server_gpus: Vec<u32>,
    /// `NAME=PATH`: serve judge model NAME from PATH (a local folder); repeatable. Default: the
    /// engine fetches NAME itself.
    #[arg(long = "server-model", value_name = "NAME=PATH", value_parser = name_eq_path)]
    pub server_models: Vec<(String, String)>,
    /// Minutes a task waits for its servers to answer.
    #[arg(long = "server-wait", default_value_t = 30)]
    pub server_wait_min: u32,
}

/// `NAME=PATH` (the name may hold `/`, as Hub ids do).
fn name_eq_path(s: &str) -> Result<(String, String), EmitError> {
    match s.split_once('=') {
        Some((n, p)) if !n.is_empty() && !p.is_empty() => Ok((n.to_string(), p.to_string())),
        _ => Err(EmitError::NameEqPath(s.into())),
    }
}

/// A Slurm time limit (`--time`) as given, once it reads as one.
fn slurm_time(s: &str) -> Result<String, EmitError> {
    time_seconds(s).map(|_| s.to_string()).ok_or_else(|| EmitError::Time(s.into()))
}

/// Seconds in a Slurm time limit: `MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM` or
/// `D-HH:MM:SS` (`sbatch(1)`).
pub fn time_seconds(s: &str) -> Option<u64> {
    let num = |x: &str| (!x.is_empty() && x.chars().all(|c| c.is_ascii_digit())).then(|| x.parse::<u64>().ok()).flatten();
    let (days, rest) = match s.split_once('-') {
        Some((d, r)) => (Some(num(d)?), r),
        None => (None, s),
    };
    let parts: Vec<u64> = rest.split(':').map(num).collect::<Option<_>>()?;
    let secs = match (days, parts.as_slice()) {
        (None, [m]) => m * 60,
        (None, [m, s]) => m * 60 + s,
        (None, [h, m, s]) => h * 3600 + m * 60 + s,
        (Some(d), [h]) => d * 86400 + h * 3600,
        (Some(d), [h, m]) => d * 86400 + h * 3600 + m * 60,
        (Some(d), [h, m, s]) => d * 86400 + h * 3600 + m * 60 + s,
        _ => return None,
    };
    Some(secs)
}

fn read_file(p: &str) -> Result<String, EmitError> {
    std::fs::read_to_string(p).map_err(|source| EmitError::ReadArg { path: p.into(), source })
}

/// An inference engine that serves a judge model over the OpenAI API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    Vllm,
    Sglang,
}

#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(
        "`{}` holds a different plan set, which a queued array may be reading (plans are frozen at emission)",
        path.display()
    )]
    Frozen { path: PathBuf },
    #[error("{0}")]
    Judges(String),
    /// A `--server-model` that is not `NAME=PATH`.
    #[error("expected NAME=PATH, e.g. Qwen/Qwen2.5-32B-Instruct=/models/qwen32b, found `{0}`")]
    NameEqPath(String),
    /// A `--time` Slurm would not read.
    #[error("`{0}` is not a Slurm time limit: write HH:MM:SS, D-HH:MM:SS, D-HH or minutes (e.g. 24:00:00, 2-00:00:00, 90)")]
    Time(String),
    /// A file named on the command line that cannot be read.
    #[error("cannot read {path}: {source}")]
    ReadArg { path: String, source: std::io::Error },
}

impl EmitError {
    pub fn help(&self) -> Option<String> {
        match self {
            EmitError::Frozen { .. } => {
                Some("emit into a new folder (`--out DIR`), or delete that folder once no queued task reads it".into())
            }
            _ => None,
        }
    }
}

/// What `emit` wrote.
#[derive(Debug, Clone)]
pub struct Emitted {
    /// One job array per set of servers its cells need.
    pub scripts: Vec<PathBuf>,
    pub plans: PathBuf,
    pub cells: usize,
    /// True when an identical `plans.json` was already there (an emission repeated).
    pub unchanged: bool,
}

/// What the cells' wall-time estimates (`Estimates::wall_time`) say of `--time`: a warning per
/// cell whose slowest estimate exceeds it, or a note that the limit is a guess where no run of
/// the same shape was measured.
pub fn time_notes(plans: &[Plan], opts: &SlurmOptions) -> Vec<String> {
    let limit = time_seconds(&opts.time).unwrap_or(u64::MAX) as f64;
    let label = |p: &Plan| p.cell.as_ref().map_or("the run".to_string(), |c| format!("cell {} ({})", c.index, c.label));
    let mut notes = Vec::new();
    let mut unknown = Vec::new();
    for p in plans {
        match p.estimates.wall_time.as_ref().and_then(|w| w.total()) {
            Some((_, hi)) if hi > limit => notes.push(format!(
                "warning: {} may take up to {} (measured throughput, servers' start-up not included), beyond --time {}: \
                 raise --time, or resubmit after Slurm stops it (the run resumes from its last checkpoint)",
                label(p),
                crate::plan::duration(hi),
                opts.time
            )),
            Some(_) => {}
            None => unknown.push(p.cell.as_ref().map_or("the run".to_string(), |c| c.index.to_string())),
        }
    }
    if !unknown.is_empty() {
        notes.push(format!(
            "note: no run of the same shape was measured for {} of {} cells ({}): --time {} is a guess; \
             `mpo plan` says what to measure",
            unknown.len(),
            plans.len(),
            unknown.join(", "),
            opts.time
        ));
    }
    notes
}

/// Quote for POSIX sh: single quotes, with embedded single quotes closed and escaped.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// One model the cells talk to over HTTP (a judge, or the policy's base for rollouts), and the
/// variables that must point at it.
#[derive(Debug, Clone, PartialEq)]
struct Server {
    model: String,
    /// What the server loads unless `--server-model` says otherwise: a judge's model name, the
    /// policy's Hugging Face id or folder (`None`: nothing a server loads, e.g. a GGUF).
    source: Option<String>,
    /// (role, variable), e.g. ("reward", "MPO_JUDGE_URL").
    readers: Vec<(String, String)>,
    /// Rollouts on this server (`runtime.rollouts`): it loads each update's LoRA adapter.
    lora: Option<LoraServe>,
}

/// Which server a cell needs: its model, and for rollouts the engine whose API it speaks.
type ServerKey = (String, Option<crate::spec::RolloutEngine>);

/// What a rollout server needs to load the policy's adapters at run time.
#[derive(Debug, Clone, PartialEq)]
struct LoraServe {
    /// The spec's engine decides the server (its endpoints are the engine's), not `--serve`.
    engine: crate::spec::RolloutEngine,
    rank: usize,
    /// PEFT's module names of the LoRA targets.
    modules: Vec<&'static str>,
}

impl LoraServe {
    /// The server's flags for run-time adapters, after its model and port.
    fn flags(&self) -> String {
        match self.engine {
            // vLLM takes only these ranks; `processed_logprobs`: log-probs of the tempered
            // distribution, the trainer's (`rollouts.drift` compares them)
            crate::spec::RolloutEngine::Vllm => {
                let rank = [8, 16, 32, 64, 128, 256, 320, 512].into_iter().find(|&r| r >= self.rank).unwrap_or(512);
                format!(" --enable-lora --max-lora-rank {rank} --logprobs-mode processed_logprobs")
            }
            // seeds count only in deterministic mode
            _ => format!(
                " --enable-lora --max-lora-rank {} --lora-target-modules {} --enable-deterministic-inference",
                self.rank,
                self.modules.join(" ")
            ),
        }
    }
}

/// The servers the cells' OpenAI-compatible judges need: one per distinct model. A variable
/// may point at only one server, so two models read through one variable are an error when
/// mpo is to start the servers.
fn servers(plans: &[Plan], serving: bool) -> Result<Vec<Server>, EmitError> {
    let mut out: Vec<Server> = Vec::new();
    for p in plans {
        let mut roles = vec![("reward.judge", &p.spec.reward.judge)];
        if p.spec.meta.every != crate::spec::Every::Never
            && let Some(m) = &p.spec.meta.judge
        {
            roles.push(("meta.judge", m));
        }
        if let Some(i) = p.spec.eval.instrument.as_ref().filter(|_| p.spec.eval.every != crate::spec::Every::Never) {
            roles.push(("eval.instrument.judge", &i.judge));
        }
        for (role, j) in roles {
            if j.backend != crate::spec::JudgeBackend::Openai {
                continue;
            }
            let model = j.model.clone().unwrap_or_default();
            if serving && model.is_empty() {
                return Err(EmitError::Judges(format!(
                    "`{role}` names no model, so no server can be started for it: set `{role}.model` to the model the server should serve"
                )));
            }
            let reader = (role.to_string(), j.base_url_env.clone());
            if let Some(other) = out.iter().find(|s| s.model != model && s.readers.iter().any(|(_, v)| *v == j.base_url_env))
                && serving
            {
                return Err(EmitError::Judges(format!(
                    "`{role}` ({model}) and `{}` ({}) read their URL from the same variable `{}`, but a server serves one model: give `{role}.base_url_env` a variable of its own",
                    other.readers[0].0, other.model, j.base_url_env
                )));
            }
            match out.iter_mut().find(|s| s.model == model) {
                Some(s) if !s.readers.contains(&reader) => s.readers.push(reader),
                Some(_) => {}
                None => out.push(Server { source: Some(model.clone()), model, readers: vec![reader], lora: None }),
            }
        }
        let ro = &p.spec.runtime.rollouts;
        if let (crate::spec::RolloutEngine::Vllm | crate::spec::RolloutEngine::Sglang, Some(var)) = (ro.engine, &ro.base_url_env) {
            let lora = &p.spec.policy.lora;
            let mut modules: Vec<&'static str> = lora.targets.iter().map(|t| crate::export::peft_module_name(*t)).collect();
            modules.sort();
            modules.dedup();
            let serve = LoraServe { engine: ro.engine, rank: lora.rank, modules };
            let (model, reader) = (p.spec.policy.model.clone(), ("runtime.rollouts".to_string(), var.clone()));
            if let Some(other) = out.iter().find(|s| s.model != model && s.readers.iter().any(|(_, v)| v == var))
                && serving
            {
                return Err(EmitError::Judges(format!(
                    "`runtime.rollouts` ({model}) and `{}` ({}) read their URL from the same variable `{var}`, but a server serves one model: give `runtime.rollouts.base_url_env` a variable of its own",
                    other.readers[0].0, other.model
                )));
            }
            let source = match &p.inputs.models.policy {
                ModelRef::Known { name, .. } => crate::model::registry::known(name).map(|k| k.hf_id.to_string()),
                ModelRef::HfDir { path, .. } => Some(path.display().to_string()),
                ModelRef::Gguf { .. } | ModelRef::Random { .. } => None,
            };
            match out.iter_mut().find(|s| s.model == model) {
                Some(s) => {
                    if !s.readers.contains(&reader) {
                        s.readers.push(reader);
                    }
                    match &mut s.lora {
                        None => s.lora = Some(serve),
                        // one server for the cells of one array: room for the largest LoRA
                        Some(l) if l.engine == serve.engine => {
                            l.rank = l.rank.max(serve.rank);
                            l.modules.extend(serve.modules);
                            l.modules.sort();
                            l.modules.dedup();
                        }
                        // cells of another engine go into an array of their own (`emit` groups
                        // cells by their servers' settings)
                        Some(_) => {}
                    }
                }
                None => out.push(Server { model, source, readers: vec![reader], lora: Some(serve) }),
            }
        }
    }
    Ok(out)
}

/// Render the sbatch script.
/// GPUs per judge model (`--server-gpus` in the order of the whole sweep's servers), after
/// checking the options against the servers the sweep needs.
fn server_gpus(all: &[Server], opts: &SlurmOptions) -> Result<Vec<(String, u32)>, EmitError> {
    let models = || all.iter().map(|s| s.model.as_str()).collect::<Vec<_>>().join(", ");
    if opts.serve.is_some() && opts.server_gpus.len() > 1 && opts.server_gpus.len() != all.len() {
        return Err(EmitError::Judges(format!(
            "--server-gpus lists {} values for {} servers ({}): give one value, or one per server",
            opts.server_gpus.len(),
            all.len(),
            models()
        )));
    }
    if let Some((name, _)) = opts.server_models.iter().find(|(n, _)| !all.iter().any(|s| s.model == *n)) {
        return Err(EmitError::Judges(format!(
            "--server-model names `{name}`, which no judge of these cells uses (they use: {})",
            models()
        )));
    }
    Ok(all
        .iter()
        .enumerate()
        .map(|(i, sv)| (sv.model.clone(), opts.server_gpus.get(i).or(opts.server_gpus.last()).copied().unwrap_or(1).max(1)))
        .collect())
}

/// Render the sbatch script of `cells` (indices into `plans`, all needing the same servers):
/// array task i runs cell `cells[i]`.
#[allow(clippy::too_many_arguments)]
pub fn script(
    name: &str,
    plans: &[Plan],
    cells: &[usize],
    gpus_of: &[(String, u32)],
    plans_file: &Path,
    workdir: &Path,
    exe: &Path,
    opts: &SlurmOptions,
) -> Result<String, EmitError> {
    let n = cells.len();
    let logs = plans_file.parent().unwrap_or(Path::new(".")).join("logs");
    let mine: Vec<Plan> = cells.iter().map(|&i| plans[i].clone()).collect();
    let servers = servers(&mine, opts.serve.is_some())?;
    let on_gpu = mine.iter().any(|p| p.spec.runtime.backend != crate::spec::BackendKind::Cpu);
    let mpo_gpus = opts.gpus_per_task.unwrap_or(on_gpu as u32);
    let server_gpus: Vec<u32> = match opts.serve {
        None => Vec::new(),
        Some(_) => servers.iter().map(|sv| gpus_of.iter().find(|(m, _)| *m == sv.model).map_or(1, |(_, g)| *g)).collect(),
    };
    let total_gpus = mpo_gpus + server_gpus.iter().sum::<u32>();

    let mut s = String::new();
    s.push_str("#!/usr/bin/env bash\n");
    s.push_str(&format!("# mpo sweep `{name}`: {n} cells as a Slurm job array. Written by `mpo sweep --emit slurm`.\n"));
    s.push_str("# Submit: sbatch THIS_FILE. Array task i runs cell CELLS[i] of plans.json; a requeued task\n");
    s.push_str("# resumes its run from the last checkpoint (results are keyed by run id). Cells:\n");
    for (i, &c) in cells.iter().enumerate() {
        let p = &plans[c];
        let label = p.cell.as_ref().map(|c| c.label.as_str()).unwrap_or("");
        s.push_str(&format!("#   task {i:>3}: cell {c:>3}  {}  {label}\n", p.run_id));
    }
    s.push_str(&format!("#SBATCH --job-name={}\n", sh_quote(&format!("mpo-{name}"))));
    let throttle = opts.max_parallel.map(|m| format!("%{m}")).unwrap_or_default();
    s.push_str(&format!("#SBATCH --array=0-{}{throttle}\n", n.saturating_sub(1)));
    s.push_str(&format!("#SBATCH --output={}\n", logs.join("%A_%a.out").display()));
    s.push_str(&format!("#SBATCH --time={}\n", opts.time));
    s.push_str(&format!("#SBATCH --cpus-per-task={}\n", opts.cpus_per_task.max(1)));
    if total_gpus > 0 {
        s.push_str(&format!("#SBATCH --gres=gpu:{total_gpus}\n"));
    }
    for (flag, v) in [
        ("mem", &opts.mem),
        ("partition", &opts.partition),
        ("account", &opts.account),
        ("qos", &opts.qos),
        ("constraint", &opts.constraint),
    ] {
        if let Some(v) = v {
            s.push_str(&format!("#SBATCH --{flag}={v}\n"));
        }
    }
    for extra in &opts.sbatch {
        s.push_str(&format!("#SBATCH {extra}\n"));
    }
    s.push_str("#SBATCH --requeue\n");
    // SIGINT to the batch shell 5 minutes before the time limit; the shell forwards it to mpo,
    // which finishes its update, checkpoints and exits (a re-submitted task resumes).
    s.push_str("#SBATCH --signal=B:INT@300\n\n");
    s.push_str("set -euo pipefail\n");
    s.push_str(&format!("PLANS={}\n", sh_quote(&plans_file.display().to_string())));
    s.push_str(&format!("LOGS={}\n", sh_quote(&logs.display().to_string())));
    s.push_str("# Relative paths in the plans (data, templates, results) resolve against this directory.\n");
    s.push_str(&format!("cd {}\n", sh_quote(&workdir.display().to_string())));
    if let Some(setup) = &opts.setup {
        // site scripts (conda, modules) often read unset variables
        s.push_str("# --- site set-up (--setup) -----------------------------------------------------------------\n");
        s.push_str("set +u\n");
        s.push_str(setup.trim_end());
        s.push_str("\nset -u\n# ------------------------------------------------------------------------------------------\n");
    }
    s.push_str(": \"${SLURM_ARRAY_TASK_ID:?submit with sbatch, or set SLURM_ARRAY_TASK_ID to a task index to run one cell here}\"\n");
    s.push_str(&format!("CELLS=({})\n", cells.iter().map(usize::to_string).collect::<Vec<_>>().join(" ")));
    s.push_str("CELL=\"${CELLS[$SLURM_ARRAY_TASK_ID]:?no such task in this array}\"\n");
    s.push_str("# The binary: $MPO, else `mpo` on the node's PATH (after the set-up lines), else the one that\n");
    s.push_str("# emitted this script, if the node sees the same path.\n");
    s.push_str("if [ -z \"${MPO:-}\" ]; then\n");
    s.push_str("  if command -v mpo >/dev/null 2>&1; then MPO=\"$(command -v mpo)\"\n");
    s.push_str(&format!("  elif [ -x {q} ]; then MPO={q}\n", q = sh_quote(&exe.display().to_string())));
    s.push_str("  else echo \"no mpo on this node: put it on PATH (e.g. in --setup lines) or export MPO=/path/to/mpo before sbatch\" >&2; exit 1\n");
    s.push_str("  fi\nfi\n");
    s.push_str(&format!("export RAYON_NUM_THREADS=\"${{SLURM_CPUS_PER_TASK:-{}}}\"\n\n", opts.cpus_per_task.max(1)));

    s.push_str("# --- Judge and rollout servers ------------------------------------------------------------\n");
    match opts.serve {
        _ if servers.is_empty() => {
            s.push_str("# These cells judge with the in-process model and generate in process: no server needed.\n");
        }
        None => {
            s.push_str("# These cells' judges are OpenAI-compatible servers started elsewhere; export their URLs\n");
            s.push_str("# before `sbatch` (Slurm passes the environment on; several URLs, comma-separated, are\n");
            s.push_str("# load-balanced), or emit with `--serve vllm|sglang` to start them inside each task.\n");
            for sv in &servers {
                for (role, var) in &sv.readers {
                    let model = if sv.model.is_empty() { "as served" } else { sv.model.as_str() };
                    s.push_str(&format!(": \"${{{var}:?export {var}=http://HOST:PORT/v1, the server of {model} ({role})}}\"\n"));
                }
            }
        }
        Some(engine) => {
            s.push_str("# One server per judge model, started here. Slurm lists this task's GPUs in\n");
            s.push_str("# CUDA_VISIBLE_DEVICES: the servers take theirs first, mpo the rest.\n");
            s.push_str(&format!(
                "IFS=, read -r -a GPUS <<< \"${{CUDA_VISIBLE_DEVICES:-{}}}\"\n",
                (0..total_gpus).map(|g| g.to_string()).collect::<Vec<_>>().join(",")
            ));
            s.push_str(&format!(
                "if [ \"${{#GPUS[@]}}\" -lt {total_gpus} ]; then echo \"this task needs {total_gpus} GPUs (servers {}, mpo {mpo_gpus}) and has ${{#GPUS[@]}}\" >&2; exit 1; fi\n",
                server_gpus.iter().map(u32::to_string).collect::<Vec<_>>().join("+")
            ));
            s.push_str("gpus() { local IFS=,; echo \"${GPUS[*]:$1:$2}\"; }\n");
            s.push_str("# Ports from the job id: tasks sharing a node do not collide.\n");
            let spacing = servers.len().max(4);
            s.push_str(&format!(
                "PORT_BASE=\"${{MPO_PORT_BASE:-$((20000 + (${{SLURM_JOB_ID:-$$}} % {}) * {spacing}))}}\"\n",
                40000 / spacing
            ));
            s.push_str("SERVER_PIDS=()\n");
            s.push_str("stop_servers() { for p in ${SERVER_PIDS[@]+\"${SERVER_PIDS[@]}\"}; do kill \"$p\" 2>/dev/null || true; done; }\n");
            s.push_str("trap stop_servers EXIT\n");
            s.push_str(&format!(
                "command -v curl >/dev/null || {{ echo \"the servers' readiness check needs curl on this node\" >&2; exit 1; }}\n\
                 wait_ready() {{ # URL PID LOG MODEL: answers, and with the model (not another job's server on the port)\n  local deadline=$((SECONDS + {}))\n  until curl -sf \"$1/models\" 2>/dev/null | grep -qF \"\\\"$4\\\"\"; do\n    kill -0 \"$2\" 2>/dev/null || {{ echo \"server at $1 exited before it answered: see $3\" >&2; exit 1; }}\n    [ \"$SECONDS\" -lt \"$deadline\" ] || {{ echo \"server at $1 did not answer within {} minutes: see $3\" >&2; exit 1; }}\n    sleep 5\n  done\n}}\n",
                opts.server_wait_min.max(1) * 60,
                opts.server_wait_min.max(1)
            ));
            let mut offset = 0;
            for (i, (sv, g)) in servers.iter().zip(&server_gpus).enumerate() {
                let path = opts.server_models.iter().find(|(n, _)| *n == sv.model).map(|(_, p)| p.as_str()).or(sv.source.as_deref()).ok_or_else(|| {
                    EmitError::Judges(format!(
                        "the policy `{}` is not a model vLLM or SGLang loads (a GGUF or a test model): serve its Hugging Face weights with `--server-model {}=PATH`",
                        sv.model, sv.model
                    ))
                })?;
                let readers: Vec<String> = sv.readers.iter().map(|(r, v)| format!("{r} via ${v}")).collect();
                s.push_str(&format!("# server {i}: {} for {}\n", sv.model, readers.join(", ")));
                let log = format!("\"$LOGS/server{i}_${{SLURM_JOB_ID:-$$}}.log\"");
                let port = format!("\"$((PORT_BASE + {i}))\"");
                let engine = match sv.lora.as_ref().map(|l| l.engine) {
                    Some(crate::spec::RolloutEngine::Vllm) => Engine::Vllm,
                    Some(crate::spec::RolloutEngine::Sglang) => Engine::Sglang,
                    _ => engine,
                };
                let lora = sv.lora.as_ref().map(LoraServe::flags).unwrap_or_default();
                let cmd = match engine {
                    Engine::Vllm => format!(
                        "{}vllm serve {} --served-model-name {} --host 127.0.0.1 --port {port} --tensor-parallel-size {g}{lora}",
                        if sv.lora.is_some() { "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True " } else { "" },
                        sh_quote(path),
                        sh_quote(&sv.model)
                    ),
                    Engine::Sglang => format!(
                        "\"${{PYTHON:-python}}\" -m sglang.launch_server --model-path {} --served-model-name {} --host 127.0.0.1 --port {port} --tp {g}{lora}",
                        sh_quote(path),
                        sh_quote(&sv.model)
                    ),
                };
                s.push_str(&format!("CUDA_VISIBLE_DEVICES=\"$(gpus {offset} {g})\" {cmd} > {log} 2>&1 &\n"));
                s.push_str("SERVER_PIDS+=($!)\n");
                s.push_str(&format!("SERVER{i}=\"http://127.0.0.1:$((PORT_BASE + {i}))/v1\"\n"));
                for (_, var) in &sv.readers {
                    s.push_str(&format!("export {var}=\"$SERVER{i}\"\n"));
                }
                offset += g;
            }
            for (i, sv) in servers.iter().enumerate() {
                s.push_str(&format!(
                    "wait_ready \"$SERVER{i}\" \"${{SERVER_PIDS[{i}]}}\" \"$LOGS/server{i}_${{SLURM_JOB_ID:-$$}}.log\" {}\n",
                    sh_quote(&sv.model)
                ));
            }
            if mpo_gpus > 0 {
                s.push_str(&format!("export CUDA_VISIBLE_DEVICES=\"$(gpus {offset} {mpo_gpus})\"\n"));
            }
        }
    }
    s.push_str("# ------------------------------------------------------------------------------------------\n\n");
    s.push_str("# mpo runs in the background so this shell can forward Slurm's INT (sent before the time\n");
    s.push_str("# limit): mpo then checkpoints and stops; re-submitting resumes from that checkpoint.\n");
    s.push_str("# A signal that lands before MPO_PID is set (a loaded node can run mpo's first update before\n");
    s.push_str("# this shell gets back to its next line) is held and forwarded once it is.\n");
    s.push_str("MPO_PID=; pending=\n");
    s.push_str("trap 'if [ -n \"$MPO_PID\" ]; then kill -INT \"$MPO_PID\" 2>/dev/null; else pending=1; fi' INT TERM\n");
    s.push_str("\"$MPO\" run --plan \"$PLANS\" --cell \"$CELL\" --quiet &\n");
    s.push_str("MPO_PID=$!\n");
    s.push_str("if [ -n \"$pending\" ]; then kill -INT \"$MPO_PID\" 2>/dev/null; fi\n");
    s.push_str("status=0; wait \"$MPO_PID\" || status=$?\n");
    s.push_str("# a trapped signal ends the first wait early: wait again for mpo's own exit status\n");
    s.push_str("if kill -0 \"$MPO_PID\" 2>/dev/null; then status=0; wait \"$MPO_PID\" || status=$?; fi\n");
    s.push_str("exit \"$status\"\n");
    Ok(s)
}

/// Write `plans.json`, the job-array scripts and `logs/` under `out`: `sweep.sbatch`, or, when
/// cells need different judge servers (a fixed-rubric arm has no meta judge), one script per
/// set of servers (`sweep-1.sbatch`, ...), so no task holds GPUs for a server it never asks.
/// A `plans.json` already there is never replaced by a different one: a queued array reads it.
pub fn emit(name: &str, plans: &[Plan], out: &Path, exe: &Path, opts: &SlurmOptions) -> Result<Emitted, EmitError> {
    let out = std::path::absolute(out)?;
    let workdir = std::env::current_dir()?;
    let plans_file = out.join("plans.json");
    let v = serde_json::json!({ "sweep": name, "runs": plans });
    let text = serde_json::to_string_pretty(&v).map_err(std::io::Error::other)? + "\n";
    let serving = opts.serve.is_some();
    let gpus_of = server_gpus(&servers(plans, serving)?, opts)?;
    let mut groups: Vec<(Vec<ServerKey>, Vec<usize>)> = Vec::new();
    for (i, p) in plans.iter().enumerate() {
        // a rollout server speaks its engine's API: cells of another engine need another server
        let models: Vec<ServerKey> =
            servers(std::slice::from_ref(p), serving)?.into_iter().map(|s| (s.model, s.lora.map(|l| l.engine))).collect();
        match groups.iter_mut().find(|(m, _)| *m == models) {
            Some((_, cells)) => cells.push(i),
            None => groups.push((models, vec![i])),
        }
    }
    let mut scripts = Vec::new();
    for (k, (_, cells)) in groups.iter().enumerate() {
        let file = if groups.len() == 1 { "sweep.sbatch".to_string() } else { format!("sweep-{}.sbatch", k + 1) };
        scripts.push((out.join(file), script(name, plans, cells, &gpus_of, &plans_file, &workdir, exe, opts)?));
    }
    // the same run ids are the same runs (paths and plan fields a newer mpo adds aside): the
    // frozen file stays as it is
    let run_ids = |t: &str| -> Option<Vec<String>> {
        let v: serde_json::Value = serde_json::from_str(t).ok()?;
        v["runs"].as_array()?.iter().map(|r| r["run_id"].as_str().map(str::to_string)).collect()
    };
    let unchanged = match std::fs::read_to_string(&plans_file) {
        Ok(old) if run_ids(&old).is_some() && run_ids(&old) == run_ids(&text) => true,
        Ok(_) => return Err(EmitError::Frozen { path: plans_file }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e.into()),
    };
    std::fs::create_dir_all(out.join("logs"))?;
    if !unchanged {
        crate::fsx::write_atomic(&plans_file, text.as_bytes())?;
    }
    for (path, text) in &scripts {
        crate::fsx::write_atomic(path, text.as_bytes())?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    Ok(Emitted { scripts: scripts.into_iter().map(|(p, _)| p).collect(), plans: plans_file, cells: plans.len(), unchanged })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rollout_server_gets_room_for_the_policy_lora() {
        use crate::spec::RolloutEngine;
        let l = LoraServe { engine: RolloutEngine::Vllm, rank: 12, modules: vec!["q_proj", "v_proj"] };
        // vLLM takes only its listed ranks: the next one up
        assert_eq!(l.flags(), " --enable-lora --max-lora-rank 16 --logprobs-mode processed_logprobs");
        let l = LoraServe { engine: RolloutEngine::Sglang, ..l };
        assert_eq!(l.flags(), " --enable-lora --max-lora-rank 12 --lora-target-modules q_proj v_proj --enable-deterministic-inference");
    }

    #[test]
    fn slurm_time_limits_read_in_every_form_sbatch_takes() {
        assert_eq!(time_seconds("90"), Some(5400));
        assert_eq!(time_seconds("90:30"), Some(5430));
        assert_eq!(time_seconds("24:00:00"), Some(86400));
        assert_eq!(time_seconds("2-00"), Some(172800));
        assert_eq!(time_seconds("1-02:30"), Some(86400 + 9000));
        assert_eq!(time_seconds("1-00:00:10"), Some(86410));
        for bad in ["", "1h", "24:00:00:00", "-5", "1-", "a:b", "1-2-3"] {
            assert_eq!(time_seconds(bad), None, "{bad}");
        }
        assert!(slurm_time("2h").unwrap_err().to_string().contains("HH:MM:SS"));
    }

    #[test]
    fn a_cell_estimated_beyond_the_time_limit_is_warned_of_and_an_unmeasured_one_noted() {
        use crate::plan::{Phase, PhaseTime, WallTime};
        let timed = |hours: Option<f64>| {
            let mut p = crate::plan::test_plan(&[]);
            p.estimates.wall_time = Some(WallTime {
                phases: vec![PhaseTime { phase: Phase::Ppo, units: 2, seconds: hours.map(|h| (h * 1800.0, h * 3600.0)), samples: 3 }],
                measured_by: vec![],
                machines: vec![],
            });
            p
        };
        let opts = SlurmOptions { time: "10:00:00".into(), ..Default::default() };
        assert!(time_notes(&[timed(Some(9.0))], &opts).is_empty());
        let notes = time_notes(&[timed(Some(11.0)), timed(None)], &opts);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].starts_with("warning: the run may take up to 11h00m"), "{}", notes[0]);
        assert!(notes[0].contains("beyond --time 10:00:00"));
        assert!(notes[1].contains("1 of 2 cells (the run): --time 10:00:00 is a guess"), "{}", notes[1]);
    }

    #[test]
    fn quoting_survives_spaces_and_quotes() {
        assert_eq!(sh_quote("/a/b.json"), "/a/b.json");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
    }
}
