//! The wall time a plan is expected to take, as `results::throughput` measures it from earlier
//! runs of the same shape: a range per phase, and a total only when every phase with work in
//! it was measured.

use serde::{Deserialize, Serialize};

/// A phase of a run, as `metrics.jsonl`'s `time_s` splits it (and the start-up before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Loading the models and the first forward pass (`manifest.json`'s `warmup_s`).
    Startup,
    Generate,
    Judge,
    Ppo,
    Meta,
    Eval,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Startup => "start-up",
            Phase::Generate => "generate",
            Phase::Judge => "judge",
            Phase::Ppo => "ppo",
            Phase::Meta => "meta",
            Phase::Eval => "eval",
        }
    }

    /// What one unit of the phase is.
    pub fn unit(self) -> &'static str {
        match self {
            Phase::Startup => "start",
            Phase::Generate | Phase::Ppo => "update",
            Phase::Judge => "judge call",
            Phase::Meta => "meta step",
            Phase::Eval => "evaluation",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseTime {
    pub phase: Phase,
    /// How many units the plan has (at most).
    pub units: u64,
    /// Seconds at the fastest and at the slowest measured unit; `None` when no matching run
    /// measured one.
    pub seconds: Option<(f64, f64)>,
    /// Measured units the range comes from.
    pub samples: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WallTime {
    pub phases: Vec<PhaseTime>,
    /// The run directories whose measurements were used.
    pub measured_by: Vec<String>,
    /// Where those runs ran (backend and CPU or GPU).
    pub machines: Vec<String>,
}

impl WallTime {
    /// The phases with work in them that no matching run measured.
    pub fn unknown(&self) -> Vec<Phase> {
        self.phases.iter().filter(|p| p.units > 0 && p.seconds.is_none()).map(|p| p.phase).collect()
    }

    /// The whole run's seconds, fastest to slowest, when every phase with work is known.
    pub fn total(&self) -> Option<(f64, f64)> {
        if !self.unknown().is_empty() {
            return None;
        }
        Some(self.phases.iter().filter_map(|p| p.seconds).fold((0.0, 0.0), |(a, b), (lo, hi)| (a + lo, b + hi)))
    }

    /// The plan summary's line(s), indented to sit under `estimates`.
    pub fn render(&self) -> String {
        let known: Vec<String> = self
            .phases
            .iter()
            .filter(|p| p.units > 0)
            .filter_map(|p| p.seconds.map(|s| format!("{} {}", p.phase.as_str(), range(s))))
            .collect();
        let unknown = self.unknown();
        let mut o = match self.total() {
            Some(t) => format!("  wall time {} (from {} measured:", range(t), runs(self.measured_by.len())),
            None => format!(
                "  wall time unknown: no run of the same shape measured {} (searched: the spec's output.root, or --measured DIRS)",
                unknown.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")
            ),
        };
        if self.total().is_some() {
            o.push_str(&format!(" {})\n", known.join(", ")));
            o.push_str(&format!("            measured on {}; by {}\n", self.machines.join("; "), self.measured_by.join(", ")));
        } else {
            o.push('\n');
            if !known.is_empty() {
                o.push_str(&format!(
                    "            known: {} (measured on {}; by {})\n",
                    known.join(", "),
                    self.machines.join("; "),
                    self.measured_by.join(", ")
                ));
            }
            o.push_str(
                "            a run of two updates on the target machine measures them (the same spec, ppo.total_episodes lowered); \
                 then plan again with --measured ITS_RESULTS_ROOT\n",
            );
        }
        o
    }
}

fn runs(n: usize) -> String {
    if n == 1 { "1 run".into() } else { format!("{n} runs") }
}

/// `4m10s-6m02s`, or one figure when both ends round alike.
pub fn range((lo, hi): (f64, f64)) -> String {
    let (a, b) = (duration(lo), duration(hi));
    if a == b { a } else { format!("{a}-{b}") }
}

/// Seconds as `45s`, `6m02s`, `3h05m` or `2d04h`.
pub fn duration(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(44.6), "45s");
        assert_eq!(duration(362.0), "6m02s");
        assert_eq!(duration(3600.0 * 3.0 + 300.0), "3h05m");
        assert_eq!(duration(86400.0 * 2.0 + 3600.0 * 4.0), "2d04h");
        assert_eq!(range((59.6, 60.4)), "1m00s");
        assert_eq!(range((250.0, 362.0)), "4m10s-6m02s");
    }
}
