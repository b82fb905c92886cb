//! PostgreSQL for the `bus` event bus (crate `bus-postgres`, facade feature `postgres`).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

/// The client library, re-exported so that users name the same `sqlx` as this crate.
pub use sqlx;
