//! Integration tests: one binary (each test binary relinks burn), one module per area.

mod judge;
mod model;
mod run;
mod spec;
mod sweep;
mod templates;
