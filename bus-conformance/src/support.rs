//! The machinery the cases share: a case's context (names, guards, failures that name the
//! transport and the case), publishing with many publishers, reading with many subscribers,
//! and the tally of what arrived.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Display;
use std::future::Future;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bus_core::transport::{
    Capabilities, Delivery, GroupStats, SubscribeOptions, Transport, TransportSubscription,
    WireEvent,
};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::Harness;

/// How long a check that "nothing more arrives" waits. Such a check can only ever pass by
/// waiting; it is kept to the few cases whose point it is (isolation, exactly-once, dead
/// letters), and a transport that delivers an unwanted event later than this passes it.
pub const QUIET_PERIOD: Duration = Duration::from_millis(300);

/// The ack wait of the cases where a consumer dies holding a delivery. A transport may return
/// a dead consumer's deliveries as soon as its subscription closes (the memory transport does)
/// or only once their ack wait has passed (a broker that never hears from a crashed process),
/// so those cases set a short one: either way the event comes back well within the guard.
pub const CRASH_ACK_WAIT: Duration = Duration::from_secs(2);

/// The first token of every event name the suite publishes.
const ROOT: &str = "conformance";

/// The nack delay of the cases that nack: redeliver at once.
pub(crate) const NOW: Duration = Duration::ZERO;

/// A capability a case needs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Need {
    Persistent,
    Ordered,
    Groups,
    Deduplicates,
    Restartable,
    GroupStats,
    ListGroups,
    StoredDeadLetters,
}

impl Need {
    fn name(self) -> &'static str {
        match self {
            Need::Persistent => "persistent",
            Need::Ordered => "ordered",
            Need::Groups => "groups",
            Need::Deduplicates => "deduplicates",
            Need::Restartable => "restartable",
            Need::GroupStats => "group_stats",
            Need::ListGroups => "list_groups",
            Need::StoredDeadLetters => "stored_dead_letters",
        }
    }

    fn met_by(self, capabilities: Capabilities) -> bool {
        match self {
            Need::Persistent => capabilities.persistent,
            Need::Ordered => capabilities.ordered,
            Need::Groups => capabilities.groups,
            Need::Deduplicates => capabilities.deduplicates,
            Need::Restartable => capabilities.restartable,
            Need::GroupStats => capabilities.group_stats,
            Need::ListGroups => capabilities.list_groups,
            Need::StoredDeadLetters => capabilities.stored_dead_letters,
        }
    }
}

/// One run of one case: its harness, its unique names, its guard.
pub(crate) struct Case<'h> {
    harness: &'h dyn Harness,
    case: &'static str,
    /// `<case>-<random>`: the token that isolates this run's names and groups.
    id: String,
    guard: Duration,
    capabilities: Capabilities,
    /// The number of the next event [`Case::event`] makes.
    next_seq: AtomicUsize,
}

impl<'h> Case<'h> {
    /// Starts case `case`: opens a first connection and reads the transport's capabilities.
    pub(crate) async fn start(
        harness: &'h dyn Harness,
        case: &'static str,
    ) -> (Case<'h>, Arc<dyn Transport>) {
        let guard = harness.guard_timeout();
        let transport = match tokio::time::timeout(guard, harness.connect()).await {
            Ok(transport) => transport,
            Err(_) => panic!(
                "conformance case `{case}` failed on the {} transport: connecting: nothing \
                 within {guard:?}",
                harness.name()
            ),
        };
        let this = Case {
            harness,
            case,
            id: format!("{case}-{:016x}", fastrand::u64(..)),
            guard,
            capabilities: transport.capabilities(),
            next_seq: AtomicUsize::new(0),
        };
        (this, transport)
    }

    /// The harness, for the cases that restart the broker.
    pub(crate) fn harness(&self) -> &'h dyn Harness {
        self.harness
    }

    /// The guard of one wait.
    pub(crate) fn guard(&self) -> Duration {
        self.guard
    }

    /// Whether the transport can run this case; if not, says so (past the output capture)
    /// and the case returns, passing.
    pub(crate) fn requires(&self, needs: &[Need]) -> bool {
        let lacking: Vec<&str> = needs
            .iter()
            .filter(|need| !need.met_by(self.capabilities))
            .map(|need| need.name())
            .collect();
        if lacking.is_empty() {
            return true;
        }
        // Straight to the process's standard error: `eprintln!` would be captured by the test
        // harness and shown only on failure, and a skip must never be silent.
        let _ = writeln!(
            std::io::stderr(),
            "SKIP {}: {} lacks {}",
            self.case,
            self.harness.name(),
            lacking.join(", ")
        );
        false
    }

    /// Fails the case, naming the transport and the case.
    #[track_caller]
    pub(crate) fn fail(&self, message: impl Display) -> ! {
        panic!(
            "conformance case `{}` failed on the {} transport: {message}",
            self.case,
            self.harness.name()
        )
    }

    /// Checks `condition`, failing the case with `message` when it does not hold.
    #[track_caller]
    pub(crate) fn check(&self, condition: bool, message: impl FnOnce() -> String) {
        if !condition {
            self.fail(message());
        }
    }

    /// Awaits `future` within the guard, failing the case with `what` when it does not finish.
    pub(crate) async fn guarded<F: Future>(&self, what: impl Display, future: F) -> F::Output {
        match tokio::time::timeout(self.guard, future).await {
            Ok(output) => output,
            Err(_) => self.fail(format!("{what}: nothing within {:?}", self.guard)),
        }
    }

    /// `conformance.<case>-<random>`: the prefix of every name this case uses.
    pub(crate) fn prefix(&self) -> String {
        format!("{ROOT}.{}", self.id)
    }

    /// `<case>-<random>`: the token of [`Case::prefix`] that makes it unique.
    pub(crate) fn token(&self) -> &str {
        &self.id
    }

    /// The event name `conformance.<case>-<random>.<suffix>`.
    pub(crate) fn name(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.prefix())
    }

    /// The group name `<case>-<random>-<suffix>`.
    pub(crate) fn group(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.id)
    }

    /// A new event named `ty`, with a unique id, a time, a JSON payload naming it and two
    /// extension attributes (`conformance`: the case's token, `seq`: its number in the case).
    pub(crate) fn event(&self, ty: &str) -> WireEvent {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let data = format!("{{\"case\":\"{}\",\"seq\":{seq}}}", self.id);
        WireEvent::new(format!("{}-{seq}", self.id), "conformance", ty, data)
            .at(SystemTime::now())
            .content_type("application/json")
            .extension("conformance", self.id.clone())
            .extension("seq", seq.to_string())
    }

    /// `count` new events named `ty`.
    pub(crate) fn events(&self, ty: &str, count: usize) -> Vec<WireEvent> {
        (0..count).map(|_| self.event(ty)).collect()
    }

    /// A new connection.
    pub(crate) async fn connect(&self) -> Arc<dyn Transport> {
        self.guarded("connecting", self.harness.connect()).await
    }

    /// Opens a subscription, failing the case when the transport refuses it.
    pub(crate) async fn subscribe(
        &self,
        transport: &dyn Transport,
        options: SubscribeOptions,
    ) -> TransportSubscription {
        let what = format!("subscribing with {options:?}");
        match self
            .guarded(&what, transport.subscribe(options.clone()))
            .await
        {
            Ok(subscription) => subscription,
            Err(error) => self.fail(format!("{what}: {error}")),
        }
    }

    /// Publishes one event, failing the case when the transport refuses it.
    pub(crate) async fn publish(&self, transport: &dyn Transport, event: WireEvent) {
        let what = format!("publishing `{}` (id {})", event.ty, event.id);
        if let Err(error) = self.guarded(&what, transport.publish(event)).await {
            self.fail(format!("{what}: {error}"));
        }
    }

    /// Publishes `events` from `publishers` concurrent tasks, publisher `k` on connection
    /// `k % transports.len()` publishing events `k`, `k + publishers`, ... in that order;
    /// returns once every publish resolved `Ok`.
    pub(crate) async fn publish_all(
        &self,
        transports: &[Arc<dyn Transport>],
        events: &[WireEvent],
        publishers: usize,
    ) {
        assert!(!transports.is_empty() && publishers > 0);
        let mut tasks = JoinSet::new();
        for publisher in 0..publishers {
            let transport = Arc::clone(&transports[publisher % transports.len()]);
            let mine: Vec<WireEvent> = events
                .iter()
                .skip(publisher)
                .step_by(publishers)
                .cloned()
                .collect();
            let guard = self.guard;
            tasks.spawn(async move {
                for event in mine {
                    let what = format!(
                        "publisher {publisher}: publishing `{}` (id {})",
                        event.ty, event.id
                    );
                    match tokio::time::timeout(guard, transport.publish(event)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => return Err(format!("{what}: {error}")),
                        Err(_) => return Err(format!("{what}: no ack within {guard:?}")),
                    }
                }
                Ok(())
            });
        }
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(error)) => self.fail(error),
                Err(error) => self.fail(format!("a publisher task failed: {error}")),
            }
        }
    }

    /// The next delivery of `subscription`, failing the case when the stream errs, ends, or
    /// yields nothing within the guard.
    pub(crate) async fn next(
        &self,
        subscription: &mut TransportSubscription,
        what: impl Display,
    ) -> Box<dyn Delivery> {
        let what = format!("waiting for {what}");
        match self.guarded(&what, subscription.next()).await {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => self.fail(format!("{what}: the subscription failed: {error}")),
            None => self.fail(format!("{what}: the subscription ended")),
        }
    }

    /// Acknowledges `delivery`, failing the case when the transport refuses.
    pub(crate) async fn ack(&self, delivery: Box<dyn Delivery>) {
        let what = format!("acking `{}`", delivery.event().id);
        if let Err(error) = self.guarded(&what, delivery.ack()).await {
            self.fail(format!("{what}: {error}"));
        }
    }

    /// Nacks `delivery` for a redelivery at once, failing the case when the transport refuses.
    pub(crate) async fn nack(&self, delivery: Box<dyn Delivery>, reason: &str) {
        let what = format!("nacking `{}`", delivery.event().id);
        if let Err(error) = self
            .guarded(&what, delivery.nack(NOW, reason.to_owned()))
            .await
        {
            self.fail(format!("{what}: {error}"));
        }
    }

    /// Releases `delivery` (hands it back unhandled), failing the case when the transport
    /// refuses.
    pub(crate) async fn release(&self, delivery: Box<dyn Delivery>) {
        let what = format!("releasing `{}`", delivery.event().id);
        if let Err(error) = self.guarded(&what, delivery.release()).await {
            self.fail(format!("{what}: {error}"));
        }
    }

    /// Rejects `delivery`, failing the case when the transport refuses.
    pub(crate) async fn reject(&self, delivery: Box<dyn Delivery>, reason: &str) {
        let what = format!("rejecting `{}`", delivery.event().id);
        if let Err(error) = self
            .guarded(&what, delivery.reject(reason.to_owned()))
            .await
        {
            self.fail(format!("{what}: {error}"));
        }
    }

    /// The group's stats as `transport` reports them, failing the case when it errs.
    pub(crate) async fn group_stats(
        &self,
        transport: &dyn Transport,
        options: &SubscribeOptions,
    ) -> Option<GroupStats> {
        let what = format!("group_stats of {options:?}");
        match self.guarded(&what, transport.group_stats(options)).await {
            Ok(stats) => stats,
            Err(error) => self.fail(format!("{what}: {error}")),
        }
    }

    /// Asks for the stats of the group of `options` until `expected` holds of them, and
    /// returns them; fails the case when the transport does not know the group, or when the
    /// stats do not come to that within the guard (naming what `what` expects, and the last
    /// stats seen). Stats move behind the deliveries and acks on some brokers: asked again
    /// every 20 ms.
    pub(crate) async fn group_stats_until(
        &self,
        transport: &dyn Transport,
        options: &SubscribeOptions,
        what: &str,
        expected: impl Fn(GroupStats) -> bool,
    ) -> GroupStats {
        let deadline = tokio::time::Instant::now() + self.guard;
        loop {
            let Some(stats) = self.group_stats(transport, options).await else {
                self.fail(format!(
                    "group_stats of group {:?}, created by a subscription: None, expected {what}",
                    options.group
                ));
            };
            if expected(stats) {
                return stats;
            }
            if tokio::time::Instant::now() >= deadline {
                self.fail(format!(
                    "group_stats of group {:?}: expected {what}, still {stats:?} after {:?}",
                    options.group, self.guard
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Checks that `subscription` yields nothing for [`QUIET_PERIOD`]: no delivery, no error,
    /// and no end (a subscription that ended would yield nothing either).
    pub(crate) async fn assert_quiet(&self, subscription: &mut TransportSubscription, what: &str) {
        match tokio::time::timeout(QUIET_PERIOD, subscription.next()).await {
            Err(_) => {}
            Ok(Some(Ok(delivery))) => self.fail(format!(
                "{what}: expected nothing more, got {}",
                describe(delivery.event(), delivery.attempt())
            )),
            Ok(Some(Err(error))) => self.fail(format!("{what}: the subscription failed: {error}")),
            Ok(None) => self.fail(format!("{what}: the subscription ended")),
        }
    }
}

/// One line about an event, for failure messages.
pub(crate) fn describe(event: &WireEvent, attempt: u32) -> String {
    format!("`{}` id {} (attempt {attempt})", event.ty, event.id)
}

/// The ids of `events`.
pub(crate) fn ids(events: &[WireEvent]) -> HashSet<String> {
    events.iter().map(|event| event.id.clone()).collect()
}

/// What one subscriber task reports.
enum Report {
    Got(Received),
    Failed(String),
}

/// One delivery, as a subscriber task saw it before settling it.
#[derive(Debug)]
pub(crate) struct Received {
    /// Which subscription got it (the label it was spawned with).
    pub(crate) from: usize,
    pub(crate) event: WireEvent,
    pub(crate) attempt: u32,
}

/// Many subscriptions read concurrently, each by its own task that acks every delivery and
/// reports it (Watermill's "multiplied subscriber"). Dropping it stops the tasks, which drops
/// their subscriptions.
pub(crate) struct Consumers {
    tasks: JoinSet<()>,
    sender: mpsc::UnboundedSender<Report>,
    receiver: mpsc::UnboundedReceiver<Report>,
}

impl Consumers {
    pub(crate) fn new() -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        Consumers {
            tasks: JoinSet::new(),
            sender,
            receiver,
        }
    }

    /// Reads `subscription` in a task of its own, acking each delivery before reporting it
    /// as coming from `label`.
    pub(crate) fn spawn(&mut self, label: usize, mut subscription: TransportSubscription) {
        let sender = self.sender.clone();
        self.tasks.spawn(async move {
            loop {
                let report = match subscription.next().await {
                    Some(Ok(delivery)) => {
                        let event = delivery.event().clone();
                        let attempt = delivery.attempt();
                        match delivery.ack().await {
                            Ok(()) => Report::Got(Received {
                                from: label,
                                event,
                                attempt,
                            }),
                            Err(error) => Report::Failed(format!(
                                "subscription {label}: acking {}: {error}",
                                describe(&event, attempt)
                            )),
                        }
                    }
                    Some(Err(error)) => {
                        Report::Failed(format!("subscription {label} failed: {error}"))
                    }
                    None => Report::Failed(format!("subscription {label} ended")),
                };
                let failed = matches!(report, Report::Failed(_));
                if sender.send(report).is_err() || failed {
                    return;
                }
            }
        });
    }

    /// The next delivery any subscription reported, failing the case when a subscription
    /// failed or nothing came within the guard.
    async fn recv(&mut self, case: &Case<'_>, what: &(dyn Fn() -> String + Sync)) -> Received {
        match tokio::time::timeout(case.guard(), self.receiver.recv()).await {
            Ok(Some(Report::Got(received))) => received,
            Ok(Some(Report::Failed(error))) => case.fail(format!("{}: {error}", what())),
            Ok(None) => unreachable!("`Consumers` holds a sender"),
            Err(_) => case.fail(format!("{}: nothing within {:?}", what(), case.guard())),
        }
    }

    /// Reads until every id of `expected` has arrived, failing the case on an event that is
    /// not expected, or when nothing arrives within the guard (naming what is missing).
    /// Returns the tally of every delivery, duplicates included.
    pub(crate) async fn collect(
        &mut self,
        case: &Case<'_>,
        what: &str,
        expected: &HashSet<String>,
    ) -> Tally {
        let mut tally = Tally::default();
        while !tally.covers(expected) {
            let received = self
                .recv(case, &|| {
                    format!(
                        "{what}: {} of {} events received; missing {}",
                        tally.unique_of(expected),
                        expected.len(),
                        tally.missing(expected)
                    )
                })
                .await;
            if !expected.contains(&received.event.id) {
                case.fail(format!(
                    "{what}: subscription {} got an event it should not: {}",
                    received.from,
                    describe(&received.event, received.attempt)
                ));
            }
            tally.record(received);
        }
        tally
    }

    /// Like [`collect`](Consumers::collect), then goes on recording what comes within
    /// [`QUIET_PERIOD`] after the last event expected: for a check of how many times each event
    /// came. Without it, a subscription that ran ahead could cover every event before the
    /// duplicates of another were read, and the check would pass on a transport that
    /// duplicates.
    pub(crate) async fn collect_settled(
        &mut self,
        case: &Case<'_>,
        what: &str,
        expected: &HashSet<String>,
    ) -> Tally {
        let mut tally = self.collect(case, what, expected).await;
        loop {
            match tokio::time::timeout(QUIET_PERIOD, self.receiver.recv()).await {
                Err(_) => return tally,
                Ok(Some(Report::Got(received))) => tally.record(received),
                Ok(Some(Report::Failed(error))) => case.fail(format!("{what}: {error}")),
                Ok(None) => unreachable!("`Consumers` holds a sender"),
            }
        }
    }

    /// Checks that no subscription reports anything for [`QUIET_PERIOD`].
    pub(crate) async fn assert_quiet(&mut self, case: &Case<'_>, what: &str) {
        match tokio::time::timeout(QUIET_PERIOD, self.receiver.recv()).await {
            Err(_) => {}
            Ok(Some(Report::Got(received))) => case.fail(format!(
                "{what}: expected nothing more, subscription {} got {}",
                received.from,
                describe(&received.event, received.attempt)
            )),
            Ok(Some(Report::Failed(error))) => case.fail(format!("{what}: {error}")),
            Ok(None) => unreachable!("`Consumers` holds a sender"),
        }
    }
}

/// What arrived: every delivery of every event, by id.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    deliveries: HashMap<String, Vec<Received>>,
}

impl Tally {
    pub(crate) fn record(&mut self, received: Received) {
        self.deliveries
            .entry(received.event.id.clone())
            .or_default()
            .push(received);
    }

    /// Whether every id of `expected` arrived.
    pub(crate) fn covers(&self, expected: &HashSet<String>) -> bool {
        self.deliveries.len() >= expected.len()
            && expected.iter().all(|id| self.deliveries.contains_key(id))
    }

    fn unique_of(&self, expected: &HashSet<String>) -> usize {
        expected
            .iter()
            .filter(|id| self.deliveries.contains_key(*id))
            .count()
    }

    /// The ids of `expected` not arrived, sorted, the first ten of them.
    pub(crate) fn missing(&self, expected: &HashSet<String>) -> String {
        let missing: BTreeSet<&String> = expected
            .iter()
            .filter(|id| !self.deliveries.contains_key(*id))
            .collect();
        let shown: Vec<&String> = missing.iter().copied().take(10).collect();
        if missing.len() > shown.len() {
            format!("{shown:?} and {} more", missing.len() - shown.len())
        } else {
            format!("{shown:?}")
        }
    }

    /// The deliveries of `id`, in arrival order.
    pub(crate) fn of(&self, id: &str) -> &[Received] {
        self.deliveries.get(id).map_or(&[], Vec::as_slice)
    }

    /// Checks that each event arrived once, or again only as a redelivery: a second delivery
    /// counted as a first attempt means the events were not shared by the group (or were
    /// published twice).
    pub(crate) fn assert_once_unless_redelivered(&self, case: &Case<'_>, what: &str) {
        for (id, deliveries) in &self.deliveries {
            let first: Vec<usize> = deliveries
                .iter()
                .filter(|received| received.attempt <= 1)
                .map(|received| received.from)
                .collect();
            case.check(first.len() <= 1, || {
                format!(
                    "{what}: event {id} was delivered {} times as a first attempt (to \
                     subscriptions {first:?}); a group hands each event to one member, and a \
                     second delivery is a redelivery (attempt > 1)",
                    first.len()
                )
            });
        }
    }
}
