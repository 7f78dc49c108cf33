//! Integration tests: one binary (each test binary relinks burn), one module per area.

mod model;
mod spec;
