//! `mpo bench`: performance targets, measured against a baseline taken in the same run.
//!
//! Benchmarks are not tests: they print figures (and ratios) for BENCHMARKS.md and never
//! fail on timing.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::plan;
use crate::spec;

/// The shipped specs the spec benchmark loads.
pub const SHIPPED_SPECS: &[&str] = &[
    "specs/math.yaml",
    "specs/essay_writing.yaml",
    "specs/summarization.yaml",
    "specs/ethical_reasoning.yaml",
    "specs/ablations/meta_every.yaml",
];

/// A 64-cell sweep over the demo spec, resolved as if it lived in `specs/ablations/`.
const SWEEP64: &str = "extends: ../math.yaml\nname: bench-64\nppo: {batch_size: 4, num_mini_batches: 1, total_episodes: 96}\nmeta: {samples: 2}\nsweep:\n  grid:\n    meta.every: [never, 5, 10, 20]\n    runtime.seed: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]\n";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// check + plan of every shipped spec and a 64-cell sweep, cold (caches cleared) each
/// iteration. Baseline: parsing the same YAML texts into node trees, nothing else.
pub fn spec_bench(iterations: usize) -> anyhow::Result<String> {
    let texts: Vec<(String, String)> =
        SHIPPED_SPECS.iter().map(|p| Ok((p.to_string(), std::fs::read_to_string(p)?))).collect::<std::io::Result<_>>()?;
    let sweep_path = Path::new("specs/ablations/bench-64.yaml");
    let mut full = Vec::new();
    let mut base = Vec::new();
    let mut cells = 0;
    for _ in 0..iterations.max(1) {
        crate::task::clear_cache();
        let t = Instant::now();
        let mut n = 0;
        for (p, _) in &texts {
            let l = spec::load(Path::new(p), &[]);
            anyhow::ensure!(!l.has_errors(), "{p} has errors:\n{}", l.render_diagnostics());
            n += l.runs.iter().map(plan::compile).count();
        }
        let l = spec::load_str(sweep_path, SWEEP64, &[]);
        anyhow::ensure!(!l.has_errors(), "sweep has errors:\n{}", l.render_diagnostics());
        let plans: Vec<plan::Plan> = l.runs.iter().map(plan::compile).collect();
        n += plans.len();
        full.push(t.elapsed());
        cells = n;

        let t = Instant::now();
        for (i, (_, text)) in texts.iter().enumerate() {
            let _ = spec::node::parse_yaml(text, i as u32);
        }
        let _ = spec::node::parse_yaml(SWEEP64, 99);
        base.push(t.elapsed());
    }
    let (f, b) = (median(full), median(base));
    Ok(format!(
        "spec bench: check + plan of {} specs and a 64-cell sweep ({cells} plans), {} iterations, cold caches\n  \
         full      median {:.2} ms  (target < 50 ms: {:.0}% of budget)\n  \
         baseline  median {:.3} ms  (YAML parse of the same texts)\n  \
         ratio     {:.1}x the bare parse\n",
        SHIPPED_SPECS.len(),
        iterations,
        ms(f),
        ms(f) / 50.0 * 100.0,
        ms(b),
        f.as_secs_f64() / b.as_secs_f64().max(1e-9)
    ))
}
