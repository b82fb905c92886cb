//! Compile-time behaviour of `#[bus::listener]`: every mistake gets one error, on the token at
//! fault, saying what to write instead; and correct listeners compile without a warning.
//!
//! Regenerate the snapshots with `TRYBUILD=overwrite cargo test --all-features --test macro_ui`,
//! then read every changed `.stderr` before committing it.
//!
//! The snapshots are taken with every feature on, as the README's test command builds: rustc
//! writes a trait as `Event` or `bus::Event` depending on whether another crate of the build
//! has an item of that name, and lists the implementors of a trait that the crates of the
//! build have (sqlx, behind `postgres`, brings serde_json's `RawValue`), so the messages change
//! with the crates that features bring in.
//! With fewer features the case is skipped, saying so.

// trybuild builds the pass cases with rustc only; compiled here as well, they are also linted
// by `cargo clippy --all-targets`.
#[path = "ui/pass/strict_lints.rs"]
pub mod strict_lints;

#[test]
fn ui() {
    if !cfg!(all(
        feature = "metrics",
        feature = "nats",
        feature = "redis",
        feature = "postgres"
    )) {
        eprintln!(
            "SKIP ui: the snapshots are taken with every feature on; run \
             `cargo test --all-features --test macro_ui`"
        );
        return;
    }
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
    cases.pass("tests/ui/pass/*.rs");
}
