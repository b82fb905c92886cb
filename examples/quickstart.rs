//! A tour of `bus` in one process: annotated listeners, runtime listeners, emit, reports, a
//! panicking listener, and drain.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Set `RUST_LOG=bus_core=debug` to see the bus's own log lines and spans.

use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
struct UserCreated {
    name: String,
}

/// Registered at link time: nothing else wires it.
#[bus::listener("user.created")]
async fn send_welcome_email(user: &UserCreated) {
    tokio::time::sleep(Duration::from_millis(20)).await;
    println!("  [email]   welcome mail sent to {}", user.name);
}

/// Takes the event by value (it is `Clone`) and fails for one user.
#[bus::listener("user.created")]
async fn create_billing_account(user: UserCreated) -> Result<(), String> {
    if user.name.is_empty() {
        return Err("cannot bill a user without a name".to_owned());
    }
    println!("  [billing] account opened for {}", user.name);
    Ok(())
}

/// A listener with a bug: the bus catches the panic and reports it.
#[bus::listener("user.created")]
async fn buggy_recommendations(user: Arc<UserCreated>) {
    if user.name == "Mallory" {
        panic!("recommendation engine choked on {}", user.name);
    }
    println!("  [recs]    recommendations computed for {}", user.name);
}

/// Added and removed at run time.
async fn audit(user: Arc<UserCreated>) {
    println!("  [audit]   user.created: {}", user.name);
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "bus_core=warn".into()),
        )
        .with_target(false)
        .init();
    // Keep the panic hook's own message out of the tour; the bus logs and reports the panic.
    std::panic::set_hook(Box::new(|_| {}));

    let bus = bus::global();
    println!("listeners of `user.created`, registered by #[bus::listener]:");
    for listener in bus.listeners("user.created") {
        println!(
            "  {} ({}) at {}",
            listener.name(),
            listener.event_type(),
            listener.location()
        );
    }

    println!("\n1. add a listener at run time; adding it twice is still one listener");
    let id = bus.add_listener("user.created", audit);
    assert_eq!(bus.add_listener("user.created", audit), id);
    println!(
        "  audit is listener {id}; {} listeners now",
        bus.listeners("user.created").len()
    );

    println!("\n2. emit and await the report");
    let report = bus::emit("user.created", UserCreated { name: "Ada".into() }).await;
    println!(
        "  => delivered {}, failed {}",
        report.delivered(),
        report.failed()
    );

    println!("\n3. emit never waits: listeners that have to wait continue as their own tasks");
    let emission = bus::emit(
        "user.created",
        UserCreated {
            name: "Grace".into(),
        },
    );
    println!(
        "  emit returned with {} deliveries in flight",
        bus.in_flight()
    );
    let report = emission.await;
    println!(
        "  => delivered {}, failed {}",
        report.delivered(),
        report.failed()
    );

    println!("\n4. a panicking and a failing listener are caught, logged and reported");
    let report = bus::emit(
        "user.created",
        UserCreated {
            name: "Mallory".into(),
        },
    )
    .await;
    println!(
        "  => delivered {}, failed {}",
        report.delivered(),
        report.failed()
    );
    for failure in report.failures() {
        println!("  failure: {failure}");
    }
    let report = bus::emit(
        "user.created",
        UserCreated {
            name: String::new(),
        },
    )
    .await;
    for failure in report.failures() {
        println!("  failure: {failure}");
    }

    println!("\n5. mistakes are errors, not panics");
    match bus::try_emit("user.created", "just a string") {
        Ok(_) => println!("  unexpected: emitted"),
        Err(error) => println!("  try_emit: {error}"),
    }
    match bus::try_emit("user created", UserCreated { name: "Eve".into() }) {
        Ok(_) => println!("  unexpected: emitted"),
        Err(error) => println!("  try_emit: {error}"),
    }

    println!("\n6. remove the runtime listener; fire and forget; drain");
    println!(
        "  removed audit: {}",
        bus.remove_listener("user.created", audit)
    );
    for name in ["Linus", "Barbara", "Ken"] {
        bus::emit("user.created", UserCreated { name: name.into() });
    }
    bus.drain().await;
    println!("  drained: {} deliveries in flight", bus.in_flight());
}
