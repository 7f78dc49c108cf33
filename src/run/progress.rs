//! Progress of a run: an indicatif bar over updates on a terminal, plain timestamped lines
//! otherwise (CI logs, files).

use std::io::IsTerminal as _;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    start: Instant,
    quiet: bool,
}

impl Progress {
    pub fn new(total_updates: u64, done: u64, quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::new(total_updates);
            b.set_style(
                ProgressStyle::with_template("{spinner} update {pos}/{len} [{elapsed_precise} / eta {eta}] {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b.set_position(done);
            b.enable_steady_tick(std::time::Duration::from_millis(250));
            b
        });
        Progress { bar, start: Instant::now(), quiet }
    }

    /// What the run is doing now (`generating 8 rollouts`, `judging`, ...).
    pub fn stage(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.set_message(msg.to_string()),
            None if !self.quiet => eprintln!("[{:>7.1}s] {msg}", self.start.elapsed().as_secs_f64()),
            None => {}
        }
    }

    /// An update finished: one summary line.
    pub fn done(&self, update: u64, line: &str) {
        match &self.bar {
            Some(b) => {
                b.set_position(update);
                b.println(line);
            }
            None if !self.quiet => eprintln!("[{:>7.1}s] {line}", self.start.elapsed().as_secs_f64()),
            None => {}
        }
    }

    pub fn log(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None if !self.quiet => eprintln!("[{:>7.1}s] {line}", self.start.elapsed().as_secs_f64()),
            None => {}
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
