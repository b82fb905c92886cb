//! The suite catches broken transports: each test runs a case against the memory transport
//! wrapped in a deliberate bug, and expects the case to fail naming the problem. The control,
//! the whole suite through the same wrapping with no bug, passes. The broker-restart case,
//! which the memory transport skips, runs on a memory broker that claims to be restartable:
//! its restarts either keep everything (it passes) or lose everything (it fails).

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bus_conformance::{Harness, Size, cases};
use bus_core::transport::{
    BoxFuture, Capabilities, Delivery, GroupInfo, GroupStats, MemoryTransport, StoredDeadLetter,
    SubscribeOptions, Transport, TransportError, TransportSubscription, WireEvent,
};
use futures_util::{Stream, StreamExt};
use tokio::sync::watch;

/// The bug a [`Mutant`] has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    /// No bug: the control. Every case passes through the mutant's wrapping (see
    /// [`control`]), so a case that fails on a mutant fails because of its bug.
    None,
    /// Every 7th publish resolves `Ok` and is never stored.
    LosesPublishes,
    /// Groups are ignored: every subscription gets every event.
    IgnoresGroups,
    /// A pattern's last token subscribes as `>`.
    WidensPatterns,
    /// A nack acknowledges.
    NackAcks,
    /// A reject nacks: the event is delivered again instead of dead-lettered.
    RejectNacks,
    /// `max_deliveries` is ignored: an event that keeps failing is delivered again and again,
    /// never dead-lettered.
    IgnoresMaxDeliveries,
    /// Extension attributes are lost on the way.
    DropsExtensions,
    /// The first delivery of a subscription is held back behind the next 20.
    Reorders,
    /// A delivery dropped unsettled is acknowledged, not returned.
    DropAcks,
    /// A subscription reads one delivery ahead of its instance and, closed, acknowledges the
    /// one it read ahead instead of returning it: that event reaches no instance.
    CloseAcksReadAhead,
    /// A closed subscription goes on consuming: its consumer keeps taking the group's events
    /// (and never settles them).
    CloseLeaks,
    /// A second publish of an id is stored under another id, and delivered under the first:
    /// no deduplication.
    NoDedup,
    /// Deduplicates on the id alone, as if ids were unique across sources: an event whose id
    /// was published before, from any source, is dropped.
    DedupsIdOnly,
    /// No bug, but declares `persistent` and `restartable`; restarts lose nothing (see
    /// [`World`]).
    FakeRestarts,
    /// Declares `persistent` and `restartable`, but a restart loses everything the broker
    /// stored: it comes back empty, and the subscriptions opened before end (see [`World`]).
    RestartLoses,
    /// `group_stats` answers zeros for every group it knows.
    ZeroStats,
    /// `group_stats` counts what is held unsettled as lag: `pending` is always 0.
    NoPending,
    /// `group_stats` answers stats for a group no subscription created.
    StatsOfUnknownGroups,
    /// `groups` forgets the groups whose subscriptions all closed.
    ListsOpenGroupsOnly,
    /// `delete_dead_letters` counts the letters as deleted and keeps them.
    DeleteKeepsLetters,
}

/// The memory broker the connections of a harness reach, which a lossy restart replaces with
/// an empty one.
///
/// On a restartable mutant ([`Bug::FakeRestarts`], [`Bug::RestartLoses`]) a subscription
/// opened before the broker's first restart delivers nothing until it, as a consumer lagging
/// behind its publishers would: the first restart then finds events not delivered yet. (The
/// memory broker hands out an event the moment it is stored, so otherwise the reader could
/// have everything before a lossy restart, which would then have nothing to lose.)
struct World {
    /// The broker now, and its generation (how many lossy restarts came before it).
    current: Mutex<(MemoryTransport, u64)>,
    /// How many restarts, lossy or not, there were.
    restarts: watch::Sender<usize>,
    /// The generation whose restart ended the subscriptions opened before it.
    ended: watch::Sender<u64>,
}

impl World {
    fn new() -> Self {
        World {
            current: Mutex::new((MemoryTransport::new(), 0)),
            restarts: watch::Sender::new(0),
            ended: watch::Sender::new(0),
        }
    }

    fn current(&self) -> (MemoryTransport, u64) {
        self.current.lock().unwrap().clone()
    }

    /// A restart. Lossy (`keep` false), it loses everything: an empty broker from now on, and
    /// the subscriptions to the old one end.
    fn restart(&self, keep: bool) {
        if !keep {
            let generation = {
                let mut current = self.current.lock().unwrap();
                *current = (MemoryTransport::new(), current.1 + 1);
                current.1
            };
            self.ended.send_replace(generation);
        }
        self.restarts.send_modify(|restarts| *restarts += 1);
    }

    /// `inner`, a subscription to the broker of `generation`, delivering nothing before the
    /// broker's first restart, and ending when a lossy restart ends it.
    fn restartable(&self, inner: TransportSubscription, generation: u64) -> TransportSubscription {
        let mut restarts = self.restarts.subscribe();
        let mut ended = self.ended.subscribe();
        let after_first_restart = futures_util::stream::once(async move {
            let _ = restarts.wait_for(|&restarts| restarts > 0).await;
            inner
        })
        .flatten();
        Box::pin(after_first_restart.take_until(async move {
            let _ = ended.wait_for(|&ended| ended > generation).await;
        }))
    }
}

/// A connection to a shared memory broker, with a bug.
struct Mutant {
    world: Arc<World>,
    bug: Bug,
    publishes: Arc<AtomicUsize>,
    published_ids: Arc<Mutex<HashSet<String>>>,
}

impl Transport for Mutant {
    fn name(&self) -> &str {
        "mutant"
    }

    fn capabilities(&self) -> Capabilities {
        let mut capabilities = self.world.current().0.capabilities();
        if matches!(self.bug, Bug::FakeRestarts | Bug::RestartLoses) {
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
            Bug::DedupsIdOnly if !self.published_ids.lock().unwrap().insert(event.id.clone()) => {
                return Box::pin(std::future::ready(Ok(())));
            }
            _ => {}
        }
        Box::pin(async move { self.world.current().0.publish(event).await })
    }

    fn group_stats<'a>(
        &'a self,
        options: &'a SubscribeOptions,
    ) -> BoxFuture<'a, Result<Option<GroupStats>, TransportError>> {
        let bug = self.bug;
        Box::pin(async move {
            let (broker, _) = self.world.current();
            let stats = broker.group_stats(options).await?;
            Ok(match (bug, stats) {
                (Bug::ZeroStats, Some(_)) => Some(GroupStats::default()),
                (Bug::NoPending, Some(stats)) => {
                    Some(GroupStats::new(stats.lag + stats.pending, 0))
                }
                (Bug::StatsOfUnknownGroups, None) if options.group.is_some() => {
                    Some(GroupStats::default())
                }
                (_, stats) => stats,
            })
        })
    }

    fn groups(&self) -> BoxFuture<'_, Result<Option<Vec<GroupInfo>>, TransportError>> {
        let bug = self.bug;
        Box::pin(async move {
            let groups = self.world.current().0.groups().await?;
            Ok(match bug {
                Bug::ListsOpenGroupsOnly => groups.map(|groups| {
                    groups
                        .into_iter()
                        .filter(|group| group.consumers != Some(0))
                        .collect()
                }),
                _ => groups,
            })
        })
    }

    fn dead_letters<'a>(
        &'a self,
        events: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<StoredDeadLetter>>, TransportError>> {
        Box::pin(async move { self.world.current().0.dead_letters(events).await })
    }

    fn delete_dead_letters<'a>(
        &'a self,
        letters: &'a [StoredDeadLetter],
    ) -> BoxFuture<'a, Result<Option<u64>, TransportError>> {
        let bug = self.bug;
        Box::pin(async move {
            match bug {
                Bug::DeleteKeepsLetters => Ok(Some(letters.len() as u64)),
                _ => self.world.current().0.delete_dead_letters(letters).await,
            }
        })
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
            Bug::IgnoresMaxDeliveries => options.max_deliveries = u32::MAX,
            _ => {}
        }
        let bug = self.bug;
        Box::pin(async move {
            let (broker, generation) = self.world.current();
            let inner = broker.subscribe(options).await?;
            let inner: TransportSubscription = match bug {
                Bug::FakeRestarts | Bug::RestartLoses => self.world.restartable(inner, generation),
                Bug::CloseLeaks => Box::pin(Leaky(Some(inner))),
                Bug::CloseAcksReadAhead => Box::pin(ReadAhead { inner, ahead: None }),
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

/// A subscription one delivery ahead of its instance ([`Bug::CloseAcksReadAhead`]): it takes
/// the next delivery from the broker, when there is one, before it hands out the current one,
/// and acknowledges the one it holds when it is closed.
struct ReadAhead {
    inner: TransportSubscription,
    ahead: Option<Box<dyn Delivery>>,
}

impl Stream for ReadAhead {
    type Item = Result<Box<dyn Delivery>, TransportError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let current = match this.ahead.take() {
            Some(delivery) => delivery,
            None => match this.inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(delivery))) => delivery,
                other => return other,
            },
        };
        // Otherwise the broker has nothing more now (the memory broker never ends nor fails a
        // subscription the cases keep open).
        if let Poll::Ready(Some(Ok(next))) = this.inner.as_mut().poll_next(cx) {
            this.ahead = Some(next);
        }
        Poll::Ready(Some(Ok(current)))
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        // Acknowledged before `inner` closes (the memory delivery's ack takes effect at once):
        // the broker never hands it out again.
        if let Some(ahead) = self.ahead.take() {
            drop(ahead.ack());
        }
    }
}

/// A subscription that, once dropped, goes on consuming in a task of its own, holding every
/// delivery it takes ([`Bug::CloseLeaks`]).
struct Leaky(Option<TransportSubscription>);

impl Stream for Leaky {
    type Item = Result<Box<dyn Delivery>, TransportError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match &mut self.0 {
            Some(inner) => inner.as_mut().poll_next(cx),
            None => Poll::Ready(None),
        }
    }
}

impl Drop for Leaky {
    fn drop(&mut self) {
        if let Some(mut inner) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let mut held = Vec::new();
                while let Some(item) = inner.next().await {
                    held.push(item);
                }
            });
        }
    }
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
        let delivery = self.take();
        match self.bug {
            Bug::RejectNacks => delivery.nack(Duration::ZERO, reason),
            _ => delivery.reject(reason),
        }
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
    world: Arc<World>,
    bug: Bug,
    publishes: Arc<AtomicUsize>,
    published_ids: Arc<Mutex<HashSet<String>>>,
    restarts: AtomicUsize,
}

impl MutantHarness {
    fn new(bug: Bug) -> Self {
        MutantHarness {
            name: format!("memory with {bug:?}"),
            world: Arc::new(World::new()),
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
            world: Arc::clone(&self.world),
            bug: self.bug,
            publishes: Arc::clone(&self.publishes),
            published_ids: Arc::clone(&self.published_ids),
        });
        Box::pin(std::future::ready(connection))
    }

    fn restart_broker(&self) -> BoxFuture<'_, ()> {
        self.restarts.fetch_add(1, Ordering::SeqCst);
        self.world.restart(self.bug != Bug::RestartLoses);
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
#[should_panic(expected = "the second publish of its source and id was not dropped")]
fn no_dedup_fails_dedup() {
    run(Bug::NoDedup, |h| cases::dedup(h, Size::Short));
}

#[test]
#[should_panic(expected = "the three events")]
fn dedup_on_the_id_alone_fails_dedup() {
    run(Bug::DedupsIdOnly, |h| cases::dedup(h, Size::Short));
}

#[test]
#[should_panic(expected = "delivered again after it was rejected")]
fn a_reject_that_nacks_fails_poison_dead_letter() {
    run(Bug::RejectNacks, |h| {
        cases::poison_dead_letter(h, Size::Short)
    });
}

#[test]
#[should_panic(expected = "delivered 4 times with max_deliveries 3")]
fn ignored_max_deliveries_fail_poison_dead_letter() {
    run(Bug::IgnoresMaxDeliveries, |h| {
        cases::poison_dead_letter(h, Size::Short)
    });
}

#[test]
#[should_panic(expected = "never settled must still be dead-lettered")]
fn ignored_max_deliveries_fail_crashed_poison_dead_letter() {
    run(Bug::IgnoresMaxDeliveries, |h| {
        cases::crashed_poison_dead_letter(h, Size::Short)
    });
}

#[test]
#[should_panic(expected = "the rest of the events; missing")]
fn a_close_that_acks_what_it_read_ahead_fails_continue_after_subscribe_close() {
    run(Bug::CloseAcksReadAhead, |h| {
        cases::continue_after_subscribe_close(h, Size::Short)
    });
}

#[test]
#[should_panic(expected = "of 50 events received; missing")]
fn a_close_that_leaks_fails_concurrent_close() {
    run(Bug::CloseLeaks, |h| cases::concurrent_close(h, Size::Short));
}

#[test]
#[should_panic(expected = "reading through the restarts: missing")]
fn a_restart_that_loses_data_fails_broker_restart() {
    run(Bug::RestartLoses, |h| cases::broker_restart(h, Size::Short));
}

#[test]
#[should_panic(expected = "expected lag + pending == 3")]
fn zero_stats_fail_group_stats() {
    run(Bug::ZeroStats, |h| cases::group_stats(h, Size::Short));
}

#[test]
#[should_panic(expected = "expected pending >= 1")]
fn stats_without_pending_fail_group_stats() {
    run(Bug::NoPending, |h| cases::group_stats(h, Size::Short));
}

#[test]
#[should_panic(expected = "a group no subscription created")]
fn stats_of_unknown_groups_fail_group_stats() {
    run(Bug::StatsOfUnknownGroups, |h| {
        cases::group_stats(h, Size::Short)
    });
}

#[test]
#[should_panic(expected = "expected groups")]
fn groups_forgotten_fail_list_groups() {
    run(Bug::ListsOpenGroupsOnly, |h| {
        cases::list_groups(h, Size::Short)
    });
}

#[test]
#[should_panic(expected = "dead letters left after deleting them all")]
fn letters_kept_fail_stored_dead_letters() {
    run(Bug::DeleteKeepsLetters, |h| {
        cases::stored_dead_letters(h, Size::Short)
    });
}

/// The control of `broker_restart`: a broker whose restarts lose nothing passes, and the case
/// did restart it twice.
#[test]
fn broker_restart_runs_where_restarts_are_possible() {
    run(Bug::FakeRestarts, |h| async move {
        cases::broker_restart(h, Size::Short).await;
        assert_eq!(h.restarts.load(Ordering::SeqCst), 2, "two restarts");
    });
}

/// The control of every mutant: the whole suite, stamped by the macro (on a harness behind an
/// `Arc`, built by an `.await`), passes through the mutants' wrapping with no bug in it.
mod control {
    use super::*;

    async fn start() -> Arc<MutantHarness> {
        Arc::new(MutantHarness::new(Bug::None))
    }

    bus_conformance::conformance_tests!(start().await);
}
