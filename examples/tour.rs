//! The README's short tour, kept here so that it compiles (`tests/readme.rs` checks the
//! README shows exactly this file below the marker line).
//!
//! ```text
//! cargo run --example tour
//! ```

// README tour starts here.
use std::{sync::Arc, time::Duration};

#[derive(Debug, Clone)]
struct UserCreated(String);

#[bus::listener("user.created")] // registered at link time, no wiring
async fn send_welcome(user: &UserCreated) {
    println!("welcome, {}", user.0);
}

#[bus::listener("user.created")] // an `Err` is logged and reported
async fn open_account(user: UserCreated) -> Result<(), String> {
    Err(format!("billing is down, {} must wait", user.0))
}

async fn audit(user: Arc<UserCreated>) {
    println!("audit: {}", user.0);
}

#[tokio::main]
async fn main() {
    let bus = bus::global(); // every #[bus::listener] fn, plus runtime ones
    assert_eq!(
        bus.add_listener("user.created", audit),
        bus.add_listener("user.created", audit)
    );
    bus::emit("user.created", UserCreated("Ada".into())); // fire and forget
    let report = bus::emit("user.created", UserCreated("Grace".into())).await;
    assert_eq!((report.delivered(), report.failed()), (2, 1));
    assert!(bus::try_emit("user.created", 42_u32).is_err()); // wrong type: an error
    assert!(bus.remove_listener("user.created", audit));
    bus.shutdown(Duration::from_secs(5)).await; // waits, then aborts what is left
}
