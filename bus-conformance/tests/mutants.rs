//! The suite catches broken transports: each test runs a case against the memory transport
//! wrapped in a deliberate bug, and expects the case to fail naming the problem. One test runs
//! the broker-restart case, which the memory transport skips, on a memory broker that claims
//! to be restartable.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_conformance::{Harness, Size, cases};
use bus_core::transport::{
    BoxFuture, Capabilities, DEAD_LETTER_ATTEMPTS, DEAD_LETTER_GROUP, DEAD_LETTER_PREFIX,
    DEAD_LETTER_REASON, Delivery, MemoryTransport, SubscribeOptions, Transport, TransportError,
    TransportSubscription, WireEvent, dead_letter_name,
};
use futures_util::StreamExt;

/// The bug a [`Mutant`] has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    /// Every 7th publish resolves `Ok` and is never stored.
    LosesPublishes,
    /// Groups are ignored: every subscription gets every event.
    IgnoresGroups,
    /// A pattern's last token subscribes as `>`.
    WidensPatterns,
    /// A nack acknowledges.
    NackAcks,
    /// Extension attributes are lost on the way.
    DropsExtensions,
    /// The first delivery of a subscription is held back behind the next 20.
    Reorders,
    /// A delivery dropped unsettled is acknowledged, not returned.
    DropAcks,
    /// A second publish of an id is stored under another id, and delivered under the first:
    /// no deduplication.
    NoDedup,
    /// No bug, but declares `persistent` and `restartable`; restarts do nothing.
    FakeRestarts,
    /// Fixes what the memory transport gets wrong (see the report of issue 5's conformance
    /// suite): dead letters name the group as given, and an event delivered `max_deliveries`
    /// times without being settled is dead-lettered instead of delivered again.
    Fixed,
}

/// A connection to a shared memory broker, with a bug.
struct Mutant {
    broker: MemoryTransport,
    bug: Bug,
    publishes: Arc<AtomicUsize>,
    published_ids: Arc<Mutex<HashSet<String>>>,
}

impl Transport for Mutant {
    fn name(&self) -> &str {
        "mutant"
    }

    fn capabilities(&self) -> Capabilities {
        let mut capabilities = self.broker.capabilities();
        if self.bug == Bug::FakeRestarts {
            capabilities.persistent = true;
            capabilities.restartable = true;
        }
        capabilities
    }

    fn publish(&self, mut event: WireEvent) -> BoxFuture<'_, Result<(), TransportError>> {
        let count = self.publishes.fetch_add(1, Ordering::Relaxed) + 1;
        match self.bug {
            Bug::LosesPublishes if count.is_multiple_of(7) => {
                return Box::pin(std::future::ready(Ok(())));
            }
            Bug::NoDedup => {
                let mut ids = self.published_ids.lock().unwrap();
                if !ids.insert(event.id.clone()) {
                    event.id = format!("{}~{count}", event.id);
                }
            }
            _ => {}
        }
        self.broker.publish(event)
    }

    fn subscribe(
        &self,
        mut options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<TransportSubscription, TransportError>> {
        match self.bug {
            Bug::IgnoresGroups => options.group = None,
            Bug::WidensPatterns => {
                if let Some((head, last)) = options.pattern.rsplit_once('.')
                    && last != ">"
                {
                    options.pattern = format!("{head}.>");
                }
            }
            _ => {}
        }
        let bug = self.bug;
        Box::pin(async move {
            let inner = self.broker.subscribe(options.clone()).await?;
            let inner = match bug {
                Bug::Fixed => dead_letter_unsettled(self.broker.clone(), options, inner),
                _ => inner,
            };
            let wrapped = inner.map(move |item| {
                item.map(|delivery| Box::new(Wrapped::new(delivery, bug)) as Box<dyn Delivery>)
            });
            Ok(match bug {
                Bug::Reorders => reorder(Box::pin(wrapped)),
                _ => Box::pin(wrapped) as TransportSubscription,
            })
        })
    }
}

/// Dead-letters, instead of delivering, an event delivered `max_deliveries` times already.
fn dead_letter_unsettled(
    broker: MemoryTransport,
    options: SubscribeOptions,
    inner: TransportSubscription,
) -> TransportSubscription {
    Box::pin(inner.filter_map(move |item| {
        let (broker, options) = (broker.clone(), options.clone());
        async move {
            let delivery = match item {
                Ok(delivery) if delivery.attempt() > options.max_deliveries => delivery,
                item => return Some(item),
            };
            let mut letter = delivery.event().clone();
            letter.ty = dead_letter_name(&letter.ty);
            letter.id = format!("{}.dead", letter.id);
            let extensions = [
                (DEAD_LETTER_REASON, "never settled".to_owned()),
                (DEAD_LETTER_GROUP, options.group.clone().unwrap_or_default()),
                (DEAD_LETTER_ATTEMPTS, options.max_deliveries.to_string()),
            ];
            for (name, value) in extensions {
                letter.extensions.insert(name.to_owned(), value);
            }
            if let Err(error) = broker.publish(letter).await {
                return Some(Err(error));
            }
            delivery.ack().await.err().map(Err)
        }
    }))
}

/// Holds a subscription's first delivery back until 20 more have passed.
fn reorder(inner: TransportSubscription) -> TransportSubscription {
    let state = (inner, None::<Box<dyn Delivery>>, 0_usize);
    Box::pin(futures_util::stream::unfold(
        state,
        |(mut inner, mut held, mut passed)| async move {
            if passed == 20
                && let Some(first) = held.take()
            {
                return Some((Ok(first), (inner, held, passed)));
            }
            loop {
                match inner.next().await? {
                    Ok(delivery) if passed == 0 && held.is_none() => held = Some(delivery),
                    item => {
                        passed += 1;
                        return Some((item, (inner, held, passed)));
                    }
                }
            }
        },
    ))
}

/// A delivery with the mutant's bug.
struct Wrapped {
    /// `None` once settled.
    delivery: Option<Box<dyn Delivery>>,
    /// The event as the mutant shows it.
    event: WireEvent,
    attempt: u32,
    bug: Bug,
}

impl Wrapped {
    fn new(delivery: Box<dyn Delivery>, bug: Bug) -> Self {
        let mut event = delivery.event().clone();
        match bug {
            Bug::DropsExtensions => event.extensions.clear(),
            Bug::Fixed if event.ty.starts_with(DEAD_LETTER_PREFIX) => {
                if let Some(group) = event.extensions.get_mut(DEAD_LETTER_GROUP)
                    && let Some(name) = group.strip_prefix("group:")
                {
                    *group = name.to_owned();
                }
            }
            Bug::NoDedup => {
                if let Some((id, _)) = event.id.split_once('~') {
                    event.id = id.to_owned();
                }
            }
            _ => {}
        }
        Wrapped {
            attempt: delivery.attempt(),
            delivery: Some(delivery),
            event,
            bug,
        }
    }

    fn take(&mut self) -> Box<dyn Delivery> {
        self.delivery.take().expect("settled once")
    }
}

impl Delivery for Wrapped {
    fn event(&self) -> &WireEvent {
        &self.event
    }

    fn attempt(&self) -> u32 {
        self.attempt
    }

    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        self.take().ack()
    }

    fn nack(
        mut self: Box<Self>,
        delay: Duration,
        reason: String,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        let delivery = self.take();
        match self.bug {
            Bug::NackAcks => delivery.ack(),
            _ => delivery.nack(delay, reason),
        }
    }

    fn reject(
        mut self: Box<Self>,
        reason: String,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        self.take().reject(reason)
    }
}

impl Drop for Wrapped {
    fn drop(&mut self) {
        // Dropped unsettled: the memory delivery returns itself when dropped, unless acked.
        if let (Some(delivery), Bug::DropAcks) = (self.delivery.take(), self.bug) {
            drop(delivery.ack());
        }
    }
}

/// Connections to one memory broker, all with the same bug; a short guard, so that a case
/// waiting for an event that never comes fails quickly.
struct MutantHarness {
    name: String,
    broker: MemoryTransport,
    bug: Bug,
    publishes: Arc<AtomicUsize>,
    published_ids: Arc<Mutex<HashSet<String>>>,
    restarts: AtomicUsize,
}

impl MutantHarness {
    fn new(bug: Bug) -> Self {
        MutantHarness {
            name: format!("memory with {bug:?}"),
            broker: MemoryTransport::new(),
            bug,
            publishes: Arc::default(),
            published_ids: Arc::default(),
            restarts: AtomicUsize::new(0),
        }
    }
}

impl Harness for MutantHarness {
    fn name(&self) -> &str {
        &self.name
    }

    fn connect(&self) -> BoxFuture<'_, Arc<dyn Transport>> {
        let connection: Arc<dyn Transport> = Arc::new(Mutant {
            broker: self.broker.clone(),
            bug: self.bug,
            publishes: Arc::clone(&self.publishes),
            published_ids: Arc::clone(&self.published_ids),
        });
        Box::pin(std::future::ready(connection))
    }

    fn restart_broker(&self) -> BoxFuture<'_, ()> {
        self.restarts.fetch_add(1, Ordering::SeqCst);
        Box::pin(std::future::ready(()))
    }

    fn guard_timeout(&self) -> Duration {
        Duration::from_secs(3)
    }
}

/// Runs `case` against a broker with `bug`, at the short size.
fn run<F>(bug: Bug, case: impl FnOnce(&'static MutantHarness) -> F)
where
    F: Future<Output = ()>,
{
    let harness: &'static MutantHarness = Box::leak(Box::new(MutantHarness::new(bug)));
    bus_conformance::__private::run(case(harness));
}

#[test]
#[should_panic(expected = "missing")]
fn a_lost_publish_fails_many_publishers() {
    run(Bug::LosesPublishes, |h| {
        cases::many_publishers(h, Size::Short)
    });
}

#[test]
#[should_panic(expected = "times as a first attempt")]
fn ignored_groups_fail_concurrent_subscribe() {
    run(Bug::IgnoresGroups, |h| {
        cases::concurrent_subscribe(h, Size::Short)
    });
}

#[test]
#[should_panic(expected = "not once")]
fn ignored_groups_fail_fan_out() {
    run(Bug::IgnoresGroups, |h| cases::fan_out(h, Size::Short));
}

#[test]
#[should_panic(expected = "missing")]
fn ignored_groups_fail_consumer_groups() {
    run(Bug::IgnoresGroups, |h| {
        cases::consumer_groups(h, Size::Short)
    });
}

#[test]
#[should_panic(expected = "the subscription to")]
fn widened_patterns_fail_topic_isolation() {
    run(Bug::WidensPatterns, |h| {
        cases::topic_isolation(h, Size::Short)
    });
}

#[test]
#[should_panic(expected = "should not")]
fn widened_patterns_fail_wildcard_parity() {
    run(Bug::WidensPatterns, |h| {
        cases::wildcard_parity(h, Size::Short)
    });
}

#[test]
#[should_panic(expected = "should not")]
fn widened_patterns_fail_multiple_topics() {
    // `t1` widened to `<prefix>.>` gets every topic's events.
    run(Bug::WidensPatterns, |h| {
        cases::concurrent_subscribe_multiple_topics(h, Size::Short)
    });
}

#[test]
#[should_panic(expected = "nothing within")]
fn a_nack_that_acks_fails_resend_on_error() {
    run(Bug::NackAcks, |h| cases::resend_on_error(h, Size::Short));
}

#[test]
#[should_panic(expected = "nothing within")]
fn a_nack_that_acks_fails_continue_after_errors() {
    run(Bug::NackAcks, |h| {
        cases::continue_after_errors(h, Size::Short)
    });
}

#[test]
#[should_panic(expected = "`extensions` was")]
fn lost_extensions_fail_publish_subscribe() {
    run(Bug::DropsExtensions, |h| {
        cases::publish_subscribe(h, Size::Short)
    });
}

#[test]
#[should_panic(expected = "arrived after")]
fn reordering_fails_publish_subscribe_in_order() {
    run(Bug::Reorders, |h| {
        cases::publish_subscribe_in_order(h, Size::Short)
    });
}

#[test]
#[should_panic(expected = "nothing within")]
fn a_drop_that_acks_fails_killed_consumer() {
    run(Bug::DropAcks, |h| cases::killed_consumer(h, Size::Short));
}

#[test]
#[should_panic(expected = "nothing within")]
fn a_drop_that_acks_fails_subscription_cancel() {
    run(Bug::DropAcks, |h| {
        cases::subscription_cancel(h, Size::Short)
    });
}

#[test]
#[should_panic(expected = "arrived twice")]
fn no_dedup_fails_dedup() {
    run(Bug::NoDedup, |h| cases::dedup(h, Size::Short));
}

#[test]
fn broker_restart_runs_where_restarts_are_possible() {
    run(Bug::FakeRestarts, |h| async move {
        cases::broker_restart(h, Size::Short).await;
        assert_eq!(h.restarts.load(Ordering::SeqCst), 2, "two restarts");
    });
}

#[test]
fn poison_dead_letter_passes_once_dead_letters_name_the_group() {
    run(Bug::Fixed, |h| cases::poison_dead_letter(h, Size::Short));
}

#[test]
fn crashed_poison_dead_letter_passes_once_unsettled_events_are_dead_lettered() {
    run(Bug::Fixed, |h| {
        cases::crashed_poison_dead_letter(h, Size::Short)
    });
}

/// The whole suite, stamped by the macro (on a harness behind an `Arc`, built by an `.await`),
/// passes on the memory transport once its two dead-letter bugs are worked around.
mod fixed_memory {
    use super::*;

    async fn start() -> Arc<MutantHarness> {
        Arc::new(MutantHarness::new(Bug::Fixed))
    }

    bus_conformance::conformance_tests!(start().await);
}
