//! Typed events: a type bound to its name with `#[derive(bus::Event)]`, published with
//! `bus::emit_event` and listened to with no name given; every event's envelope (id, source, emit
//! time, causation) followed through a chain, taken by a listener as its second argument; and an
//! `AnyEvent` audit listener on a pattern.
//!
//! ```text
//! cargo run --example typed_events
//! ```

use std::time::UNIX_EPOCH;

/// A user signed up. The derive binds the type to its name, checked at compile time.
#[derive(Debug, bus::Event)]
#[event(name = "user.created")]
struct UserCreated {
    name: String,
}

/// A welcome mail went out, because a user was created.
#[derive(Debug, bus::Event)]
#[event(name = "mail.sent")]
struct MailSent {
    to: String,
}

/// The event name comes from the argument's type: `user.created`.
#[bus::listener]
async fn send_welcome(user: &UserCreated) {
    println!("  send_welcome: mailing {}", user.name);
    // Emitted while `user.created` is handled: the new event records it as its cause.
    bus::emit_event(MailSent {
        to: user.name.clone(),
    });
}

/// `mail.sent`, from the type again; the envelope, as the optional second argument.
#[bus::listener]
async fn log_mail(mail: &MailSent, envelope: &bus::Envelope) {
    let cause = envelope
        .causation()
        .map_or_else(|| "-".to_owned(), |id| id.to_string());
    println!(
        "  log_mail: mail sent to {} (event {} from `{}`, caused by {cause})",
        mail.to,
        envelope.id(),
        envelope.source()
    );
}

/// Everything under `user.` and `mail.`, whatever its type: an audit trail with envelopes.
#[bus::listener("user.>")]
async fn audit_users(event: &bus::AnyEvent) {
    audit(event);
}

#[bus::listener("mail.>")]
async fn audit_mail(event: &bus::AnyEvent) {
    audit(event);
}

fn audit(event: &bus::AnyEvent) {
    let at = event
        .emitted_at()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_micros());
    let cause = event
        .causation()
        .map_or_else(|| "-".to_owned(), |id| id.to_string());
    println!(
        "  audit: {} ({}) id {} at {at} µs, caused by {cause}",
        event.name(),
        event.type_name(),
        event.id(),
    );
}

#[tokio::main]
async fn main() {
    println!(
        "publishing UserCreated (name from the type: {:?})",
        <UserCreated as bus::Event>::NAME
    );
    let emission = bus::emit_event(UserCreated { name: "Ada".into() });
    println!(
        "  event id: {}",
        emission.event_id().expect("a valid emit has an id")
    );
    let report = emission.await;
    println!(
        "  delivered to {} listener(s) of user.created",
        report.delivered()
    );
    // Waits for the chain: `mail.sent` and its listeners too.
    bus::global().drain().await;
}
