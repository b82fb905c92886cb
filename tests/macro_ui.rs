//! Compile-time behaviour of `#[bus::listener]`: every mistake gets one error, on the token at
//! fault, saying what to write instead; and correct listeners compile without a warning.
//!
//! Regenerate the snapshots with `TRYBUILD=overwrite cargo test --test macro_ui`, then read
//! every changed `.stderr` before committing it.

// trybuild builds the pass cases with rustc only; compiled here as well, they are also linted
// by `cargo clippy --all-targets`.
#[path = "ui/pass/strict_lints.rs"]
pub mod strict_lints;

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
    cases.pass("tests/ui/pass/*.rs");
}
