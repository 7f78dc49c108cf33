//! mpo: a research harness for Meta Policy Optimization (arXiv 2504.20157).
//!
//! Data flows one way: a YAML [`spec`] is loaded and checked, compiled into a [`plan`], and
//! (later stages) run and written as versioned results. See ARCHITECTURE.md for the map.

pub mod bench;
pub mod cases;
pub mod cli;
pub mod diag;
pub mod engine;
pub mod eval;
pub mod export;
pub mod fsx;
mod generate_cmd;
pub mod grammar;
pub mod hash;
pub mod judge;
pub mod meta;
pub mod model;
pub mod plan;
pub mod policy;
pub mod ppo;
pub mod report;
pub mod resolve;
pub mod results;
pub mod reward;
pub mod rng;
pub mod round;
pub mod rubric;
pub mod rubric_test;
pub mod run;
pub mod snapshot;
pub mod spec;
pub mod stats;
pub mod sweep;
pub mod task;
pub mod template;
