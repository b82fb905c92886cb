//! What the tests of every transport check with, besides the suite's cases: bounded waits,
//! skips that show, and "nothing more arrives" checks that fail on a subscription that died.
//! Not cases themselves: for the tests a transport's crate writes of its own.

use std::io::Write as _;
use std::time::Duration;

use bus_core::transport::{Delivery, Transport, TransportSubscription, WireEvent};
use futures_util::StreamExt;

use crate::QUIET_PERIOD;

/// How long a test waits for something that should happen (not a timing assertion: a bound
/// on a hang).
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Awaits `future`, failing the test when it has no answer within [`PATIENCE`].
pub async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {PATIENCE:?}"))
}

/// Whether this is CI (`CI=true`), where a missing broker fails a test instead of skipping it.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true" || value == "1")
}

/// Says that `test` is skipped, and why, on the process's standard error: past libtest's
/// output capture, which takes `eprintln!` and shows it only for a failed test. A skipped test
/// passes, so its skip must show in a plain `cargo test` run.
pub fn skip(test: &str, why: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// A random lower-case suffix, for unique prefixes, stream names, groups and ids.
pub fn unique() -> String {
    (0..10).map(|_| fastrand::lowercase()).collect()
}

/// The next delivery, within [`PATIENCE`]; panics with `what` otherwise.
pub async fn next(subscription: &mut TransportSubscription, what: &str) -> Box<dyn Delivery> {
    match tokio::time::timeout(PATIENCE, subscription.next()).await {
        Ok(Some(Ok(delivery))) => delivery,
        Ok(Some(Err(error))) => panic!("{what}: the subscription yielded an error: {error}"),
        Ok(None) => panic!("{what}: the subscription ended"),
        Err(_) => panic!("{what}: nothing delivered within {PATIENCE:?}"),
    }
}

/// Checks that `subscription` yields nothing for [`QUIET_PERIOD`]: no delivery, no error, and no end
/// (a subscription that ended would yield nothing either). Follow it with [`assert_next_is`]
/// on a probe, or [`assert_nothing_more`], to show that the subscription was alive.
pub async fn assert_quiet(subscription: &mut TransportSubscription, what: &str) {
    match tokio::time::timeout(QUIET_PERIOD, subscription.next()).await {
        Err(_) => {}
        Ok(Some(Ok(delivery))) => panic!(
            "{what}: expected nothing more, got `{}` id {} (attempt {})",
            delivery.event().ty,
            delivery.event().id,
            delivery.attempt()
        ),
        Ok(Some(Err(error))) => panic!("{what}: the subscription yielded an error: {error}"),
        Ok(None) => panic!("{what}: the subscription ended"),
    }
}

/// Publishes a probe: a new event named `name`.
pub async fn publish_probe(publisher: &dyn Transport, name: &str) -> WireEvent {
    let probe = WireEvent::new(format!("probe-{}", unique()), "probe", name, "{}");
    publisher
        .publish(probe.clone())
        .await
        .unwrap_or_else(|error| panic!("publishing the probe `{name}`: {error}"));
    probe
}

/// Checks that the next delivery of `subscription` is `probe`, and acks it: the subscription
/// is alive, and nothing came before the probe.
pub async fn assert_next_is(
    subscription: &mut TransportSubscription,
    probe: &WireEvent,
    what: &str,
) {
    let delivery = next(subscription, &format!("{what}: the probe")).await;
    assert_eq!(
        (&delivery.event().id, delivery.attempt()),
        (&probe.id, 1),
        "{what}: the next delivery is not the probe, but `{}`",
        delivery.event().ty
    );
    delivery
        .ack()
        .await
        .unwrap_or_else(|error| panic!("{what}: acking the probe: {error}"));
}

/// Checks that nothing more arrives on `subscription` ([`assert_quiet`]), and that it is alive:
/// a probe named `probe`, published by `publisher` after the quiet period, is its next
/// delivery. A subscription that died fails this instead of passing a bare wait.
pub async fn assert_nothing_more(
    subscription: &mut TransportSubscription,
    publisher: &dyn Transport,
    probe: &str,
    what: &str,
) {
    assert_quiet(subscription, what).await;
    let probe = publish_probe(publisher, probe).await;
    assert_next_is(subscription, &probe, what).await;
}
