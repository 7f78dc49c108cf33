//! `mpo sweep SPEC --emit slurm`: an sbatch job-array script plus the compiled cell plans.
//!
//! Array task i runs `mpo run --plan plans.json --cell i`. The plans are frozen at emission
//! (templates are re-checked against their hashes when a task starts), so editing the spec
//! after submitting cannot silently change a queued cell. A requeued or re-submitted task
//! lands in the same run directory (the run id) and resumes from its last checkpoint.

use std::path::{Path, PathBuf};

use crate::plan::Plan;

/// Resources and placement of the array's tasks.
#[derive(Debug, Clone, Default)]
pub struct SlurmOptions {
    pub partition: Option<String>,
    pub account: Option<String>,
    /// Wall-time limit per task (`HH:MM:SS`).
    pub time: String,
    pub cpus_per_task: u32,
    pub gpus_per_task: u32,
    pub mem: Option<String>,
    /// At most this many tasks at once (`--array=0-N%M`).
    pub max_parallel: Option<usize>,
}

/// What `emit` wrote.
#[derive(Debug, Clone)]
pub struct Emitted {
    pub script: PathBuf,
    pub plans: PathBuf,
    pub cells: usize,
}

/// Quote for POSIX sh: single quotes, with embedded single quotes closed and escaped.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The environment variables the cells' OpenAI-compatible judges read their URLs and keys from.
fn judge_envs(plans: &[Plan]) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = Vec::new();
    for p in plans {
        let mut roles = vec![("reward", &p.spec.reward.judge)];
        if let Some(m) = &p.spec.meta.judge {
            roles.push(("meta", m));
        }
        for (role, j) in roles {
            if j.backend == crate::spec::JudgeBackend::Openai {
                let row = (role.to_string(), j.base_url_env.clone(), j.model.clone().unwrap_or_default());
                if !out.contains(&row) {
                    out.push(row);
                }
            }
        }
    }
    out
}

/// Render the sbatch script.
pub fn script(name: &str, plans: &[Plan], plans_file: &Path, workdir: &Path, exe: &Path, opts: &SlurmOptions) -> String {
    let n = plans.len();
    let logs = plans_file.parent().unwrap_or(Path::new(".")).join("logs");
    let mut s = String::new();
    s.push_str("#!/usr/bin/env bash\n");
    s.push_str(&format!("# mpo sweep `{name}`: {n} cells as a Slurm job array. Written by `mpo sweep --emit slurm`.\n"));
    s.push_str("# Submit: sbatch THIS_FILE. Task i runs cell i of plans.json; a requeued task resumes its\n");
    s.push_str("# run from the last checkpoint (results are keyed by run id). Cells:\n");
    for (i, p) in plans.iter().enumerate() {
        let label = p.cell.as_ref().map(|c| c.label.as_str()).unwrap_or("");
        s.push_str(&format!("#   {i:>3}  {}  {label}\n", p.run_id));
    }
    s.push_str(&format!("#SBATCH --job-name={}\n", sh_quote(&format!("mpo-{name}"))));
    let throttle = opts.max_parallel.map(|m| format!("%{m}")).unwrap_or_default();
    s.push_str(&format!("#SBATCH --array=0-{}{throttle}\n", n.saturating_sub(1)));
    s.push_str(&format!("#SBATCH --output={}\n", logs.join("%A_%a.out").display()));
    s.push_str(&format!("#SBATCH --time={}\n", opts.time));
    s.push_str(&format!("#SBATCH --cpus-per-task={}\n", opts.cpus_per_task.max(1)));
    if opts.gpus_per_task > 0 {
        s.push_str(&format!("#SBATCH --gres=gpu:{}\n", opts.gpus_per_task));
    }
    if let Some(m) = &opts.mem {
        s.push_str(&format!("#SBATCH --mem={m}\n"));
    }
    if let Some(p) = &opts.partition {
        s.push_str(&format!("#SBATCH --partition={p}\n"));
    }
    if let Some(a) = &opts.account {
        s.push_str(&format!("#SBATCH --account={a}\n"));
    }
    s.push_str("#SBATCH --requeue\n");
    // SIGINT to the batch shell 5 minutes before the time limit; the shell forwards it to mpo,
    // which finishes its update, checkpoints and exits (a re-submitted task resumes).
    s.push_str("#SBATCH --signal=B:INT@300\n\n");
    s.push_str("set -euo pipefail\n");
    s.push_str(&format!("MPO=\"${{MPO:-{}}}\"\n", exe.display()));
    s.push_str(&format!("PLANS={}\n", sh_quote(&plans_file.display().to_string())));
    s.push_str("# Relative paths in the plans (data, templates, results) resolve against this directory.\n");
    s.push_str(&format!("cd {}\n", sh_quote(&workdir.display().to_string())));
    s.push_str(": \"${SLURM_ARRAY_TASK_ID:?submit with sbatch, or set SLURM_ARRAY_TASK_ID to a cell index to run one cell here}\"\n");
    s.push_str(&format!("export RAYON_NUM_THREADS=\"${{SLURM_CPUS_PER_TASK:-{}}}\"\n\n", opts.cpus_per_task.max(1)));

    s.push_str("# --- Judge servers ------------------------------------------------------------------------\n");
    let envs = judge_envs(plans);
    if envs.is_empty() {
        s.push_str("# These cells judge with the in-process model: no server needed. To judge with a large model\n");
        s.push_str("# instead, set `reward.judge.backend: openai` in the spec and start a server as below.\n");
    } else {
        s.push_str("# These cells' judges are OpenAI-compatible servers; mpo reads their URLs from:\n");
        for (role, env, model) in &envs {
            s.push_str(&format!("#   {role:<6} ${env}  (model {})\n", if model.is_empty() { "as served" } else { model }));
        }
        s.push_str("# Export them before `sbatch` (a shared server; Slurm passes the environment on), or start\n");
        s.push_str("# a server inside each task by uncommenting one of the templates below.\n");
    }
    s.push_str("# vLLM (one node, 4 GPUs: add --gres=gpu:4 above):\n");
    s.push_str("#   vllm serve Qwen/Qwen2.5-72B-Instruct --port 8000 --tensor-parallel-size 4 &\n");
    s.push_str("# SGLang:\n");
    s.push_str("#   python -m sglang.launch_server --model-path Qwen/Qwen2.5-72B-Instruct --port 8000 --tp 4 &\n");
    s.push_str("# then wait for it and point the judges at it (several URLs, comma-separated, are load-balanced):\n");
    s.push_str("#   JUDGE_PID=$!; trap 'kill $JUDGE_PID' EXIT\n");
    s.push_str("#   until curl -sf http://localhost:8000/v1/models >/dev/null; do sleep 10; done\n");
    let env_names: Vec<&str> = envs.iter().map(|(_, e, _)| e.as_str()).collect();
    let first = env_names.first().copied().unwrap_or("OPENAI_BASE_URL");
    s.push_str(&format!("#   export {first}=http://localhost:8000/v1\n"));
    s.push_str("# ------------------------------------------------------------------------------------------\n\n");
    s.push_str("# mpo runs in the background so this shell can forward Slurm's INT (sent before the time\n");
    s.push_str("# limit): mpo then checkpoints and stops; re-submitting resumes from that checkpoint.\n");
    s.push_str("# A signal that lands before MPO_PID is set (a loaded node can run mpo's first update before\n");
    s.push_str("# this shell gets back to its next line) is held and forwarded once it is.\n");
    s.push_str("MPO_PID=; pending=\n");
    s.push_str("trap 'if [ -n \"$MPO_PID\" ]; then kill -INT \"$MPO_PID\" 2>/dev/null; else pending=1; fi' INT TERM\n");
    s.push_str("\"$MPO\" run --plan \"$PLANS\" --cell \"$SLURM_ARRAY_TASK_ID\" --quiet &\n");
    s.push_str("MPO_PID=$!\n");
    s.push_str("if [ -n \"$pending\" ]; then kill -INT \"$MPO_PID\" 2>/dev/null; fi\n");
    s.push_str("status=0; wait \"$MPO_PID\" || status=$?\n");
    s.push_str("# a trapped signal ends the first wait early: wait again for mpo's own exit status\n");
    s.push_str("if kill -0 \"$MPO_PID\" 2>/dev/null; then status=0; wait \"$MPO_PID\" || status=$?; fi\n");
    s.push_str("exit \"$status\"\n");
    s
}

/// Write `plans.json`, `sweep.sbatch` and `logs/` under `out`.
pub fn emit(name: &str, plans: &[Plan], out: &Path, exe: &Path, opts: &SlurmOptions) -> std::io::Result<Emitted> {
    std::fs::create_dir_all(out.join("logs"))?;
    let out = std::path::absolute(out)?;
    let workdir = std::env::current_dir()?;
    let plans_file = out.join("plans.json");
    let v = serde_json::json!({ "sweep": name, "runs": plans });
    crate::fsx::write_atomic(&plans_file, (serde_json::to_string_pretty(&v).map_err(std::io::Error::other)? + "\n").as_bytes())?;
    let script_path = out.join("sweep.sbatch");
    crate::fsx::write_atomic(&script_path, script(name, plans, &plans_file, &workdir, exe, opts).as_bytes())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script_path, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(Emitted { script: script_path, plans: plans_file, cells: plans.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_spaces_and_quotes() {
        assert_eq!(sh_quote("/a/b.json"), "/a/b.json");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
    }
}
