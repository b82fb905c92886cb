//! The public API holds what the transports' test files rely on.

use std::collections::HashSet;
use std::sync::Arc;

use bus_conformance::{CASES, Harness, Size, cases};
use bus_core::transport::{BoxFuture, MemoryTransport, Transport};

struct Memory(MemoryTransport);

impl Harness for Memory {
    fn name(&self) -> &str {
        "memory"
    }

    fn connect(&self) -> BoxFuture<'_, Arc<dyn Transport>> {
        Box::pin(std::future::ready(
            Arc::new(self.0.clone()) as Arc<dyn Transport>
        ))
    }
}

fn assert_send<F: Future<Output = ()> + Send>(_: F) {}

/// A transport's test may spawn a case: every case's future is `Send`.
#[test]
fn every_case_is_send() {
    let harness = Memory(MemoryTransport::new());
    let h: &dyn Harness = &harness;
    let size = Size::Short;
    assert_send(cases::publish_subscribe(h, size));
    assert_send(cases::concurrent_subscribe(h, size));
    assert_send(cases::concurrent_subscribe_multiple_topics(h, size));
    assert_send(cases::resend_on_error(h, size));
    assert_send(cases::publish_subscribe_in_order(h, size));
    assert_send(cases::continue_after_subscribe_close(h, size));
    assert_send(cases::concurrent_close(h, size));
    assert_send(cases::continue_after_errors(h, size));
    assert_send(cases::many_publishers(h, size));
    assert_send(cases::topic_isolation(h, size));
    assert_send(cases::subscription_cancel(h, size));
    assert_send(cases::consumer_groups(h, size));
    assert_send(cases::broker_restart(h, size));
    assert_send(cases::killed_consumer(h, size));
    assert_send(cases::poison_dead_letter(h, size));
    assert_send(cases::crashed_poison_dead_letter(h, size));
    assert_send(cases::fan_out(h, size));
    assert_send(cases::wildcard_parity(h, size));
    assert_send(cases::dedup(h, size));
    assert_send(cases::group_stats(h, size));
    assert_send(cases::list_groups(h, size));
    assert_send(cases::stored_dead_letters(h, size));
}

#[test]
fn the_cases_are_listed_once_each() {
    let unique: HashSet<&str> = CASES.iter().copied().collect();
    assert_eq!(unique.len(), CASES.len());
    assert_eq!(CASES.len(), 22);
    assert_eq!(CASES[0], "publish_subscribe");
}

/// The default `restart_broker` refuses: only a `restartable` transport is ever restarted.
#[test]
#[should_panic(expected = "cannot restart its broker")]
fn a_harness_restarts_nothing_by_default() {
    let harness = Memory(MemoryTransport::new());
    bus_conformance::__private::run(harness.restart_broker());
}
