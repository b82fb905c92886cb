//! Every accepted form of `#[bus::listener]` and `#[derive(bus::Event)]`, under strict lints:
//! the expansion must not add a single warning to the user's crate.
//!
//! `tests/macro_ui.rs` also includes this file as a module, so that `cargo clippy --all-targets`
//! checks it with clippy's lints too.
#![forbid(unsafe_code)]
#![deny(
    warnings,
    unused,
    unused_qualifications,
    unused_results,
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    clippy::all,
    clippy::pedantic
)]

use std::sync::Arc;

/// An event.
#[derive(Debug, Clone)]
pub struct UserCreated {
    /// Its payload.
    pub name: String,
}

/// An error of a listener.
#[derive(Debug)]
pub struct WelcomeError;

impl std::fmt::Display for WelcomeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("welcome failed")
    }
}

impl std::error::Error for WelcomeError {}

// Private and never called: the registration uses them, so `dead_code` stays quiet.

#[bus::listener("user.created")]
async fn by_ref(event: &UserCreated) {
    println!("{}", event.name);
}

#[bus::listener("user.created")]
#[allow(clippy::unused_unit, reason = "`-> ()` is accepted, and tested here")]
async fn by_arc(event: Arc<UserCreated>) -> () {
    println!("{}", event.name);
}

#[bus::listener("user.created")]
async fn by_value(UserCreated { name }: UserCreated) -> Result<(), String> {
    if name.is_empty() {
        return Err(name);
    }
    Ok(())
}

/// Public, named as the shim's argument, with a raw string for a name.
#[bus::listener(r"user.created")]
pub async fn event(event: &UserCreated) {
    println!("{}", event.name);
}

// Named as the shim.
#[bus::listener("user.created")]
async fn __listener(_: &UserCreated) {}

// A raw identifier.
#[bus::listener("user.created")]
async fn r#try(_: &UserCreated) {}

/// Listeners in a module.
pub mod nested {
    use super::{UserCreated, WelcomeError};

    // By `std::sync::Arc`, returning a `Result`, with another attribute.
    #[bus::listener("user.created")]
    #[inline]
    async fn by_std_arc(event: std::sync::Arc<UserCreated>) -> Result<(), WelcomeError> {
        if event.name.is_empty() {
            return Err(WelcomeError);
        }
        Ok(())
    }

    // Returning a boxed error.
    #[bus::listener("user.created")]
    async fn boxed(event: &UserCreated) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if event.name.is_empty() {
            return Err("no name".into());
        }
        Ok(())
    }
}

/// Listeners on patterns.
pub mod patterns {
    use super::UserCreated;

    // `*`: exactly one token.
    #[bus::listener("user.*.created")]
    async fn one_token(event: &UserCreated) {
        println!("{}", event.name);
    }

    // `>`: one or more trailing tokens.
    #[bus::listener("user.>")]
    async fn trailing_tokens(event: &UserCreated) {
        println!("{}", event.name);
    }
}

/// Typed events, derived, and listeners that take their name from the event type, with
/// options.
pub mod typed {
    use std::sync::Arc;

    /// An event with its name.
    #[derive(Debug, Clone, bus::Event)]
    #[event(name = "order.placed")]
    pub struct OrderPlaced {
        /// Its payload.
        pub total: u64,
    }

    /// A generic event: an event for every `T` that makes it `Send + Sync + 'static`.
    #[derive(Debug, bus::Event)]
    #[event(name = "cache.filled", crate = "bus")]
    pub struct Filled<T> {
        /// Its payload.
        pub value: T,
    }

    /// An enum event, its attributes split.
    #[derive(Debug, bus::Event)]
    #[event(crate = "::bus")]
    #[event(name = r"order.changed")]
    pub enum OrderChanged {
        /// One variant.
        Added,
        /// Another.
        Removed,
    }

    #[bus::listener]
    async fn by_ref(order: &OrderPlaced) {
        println!("{}", order.total);
    }

    #[bus::listener(once)]
    async fn by_arc(order: Arc<OrderPlaced>) {
        println!("{}", order.total);
    }

    #[bus::listener(concurrency = 1, timeout = "5s", retry = 3, backoff = "100ms")]
    async fn by_value(order: OrderPlaced) -> Result<(), String> {
        if order.total == 0 {
            return Err("empty order".to_owned());
        }
        Ok(())
    }

    #[bus::listener("order.placed", once, timeout = "1m 30s", crate = "bus")]
    async fn named(order: &OrderPlaced) {
        println!("{}", order.total);
    }

    #[bus::listener(retry = 0)]
    async fn generic(filled: &Filled<u32>) {
        println!("{}", filled.value);
    }

    #[bus::listener(timeout = "1.5s")]
    async fn changed(change: &OrderChanged) {
        println!("{change:?}");
    }
}

/// Entry point.
pub fn main() {}
