//! [`MemoryTransport`]: the broker semantics of the transport traits, in process. For tests
//! (it runs the conformance suite with no broker) and for wiring a distributed setup before a
//! broker is at hand.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{
    BoxFuture, Capabilities, DEAD_LETTER_PREFIX, Delivery, GroupInfo, GroupStats, StoredDeadLetter,
    SubscribeOptions, Transport, TransportError, TransportSubscription, WireEvent,
    dead_letter_name,
};
use crate::name::pattern::Pattern;

/// A broker in process memory: published events are kept for the transport's life; groups are
/// durable for as long as the transport lives; nothing survives the process.
///
/// Clones share the same broker, as several connections to one server would.
///
/// ```
/// use bus::transport::{MemoryTransport, SubscribeOptions, Transport, WireEvent};
/// use tokio_stream::StreamExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let broker = MemoryTransport::new();
/// let mut orders = broker.subscribe(SubscribeOptions::new("orders.>").group("billing")).await.unwrap();
/// broker.publish(WireEvent::new("1", "shop", "orders.created", "{}")).await.unwrap();
/// let delivery = orders.next().await.unwrap().unwrap();
/// assert_eq!(delivery.event().ty, "orders.created");
/// delivery.ack().await.unwrap();
/// # }
/// ```
#[derive(Clone, Default)]
pub struct MemoryTransport {
    broker: Arc<Broker>,
}

impl std::fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.broker.lock();
        f.debug_struct("MemoryTransport")
            .field("events", &state.log.len())
            .field("groups", &state.groups.len())
            .finish()
    }
}

#[derive(Default)]
struct Broker {
    state: Mutex<State>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct State {
    /// Every event published, in order.
    log: Vec<Arc<WireEvent>>,
    /// The `(source, id)` of every event stored so far: a second publish of one is dropped
    /// (an id alone does not identify an event: another source may use it too).
    ids: HashSet<(String, String)>,
    /// The log indexes of the dead letters deleted ([`Transport::delete_dead_letters`]):
    /// skipped by every group from then on.
    deleted: HashSet<usize>,
    groups: HashMap<String, Group>,
}

/// A durable consumer: its position in the log, and what it has handed out.
struct Group {
    pattern: Pattern,
    options: SubscribeOptions,
    /// The next log index this group has not looked at.
    cursor: usize,
    /// Events to deliver again, with their next attempt number, once due.
    redeliver: VecDeque<(usize, u32, Instant)>,
    /// Deliveries handed out and not settled: by delivery id.
    in_flight: HashMap<u64, InFlight>,
    /// Wakes the group's subscriptions: a new event, a redelivery.
    wake: Arc<Notify>,
    /// `false` for the private group of a subscription outside any group: removed with it.
    durable: bool,
    /// The name dead letters give: the group's, or `subscription-<n>` for a private one.
    label: String,
    /// The subscriptions open on the group.
    members: usize,
}

struct InFlight {
    index: usize,
    attempt: u32,
    subscription: u64,
    deadline: Instant,
}

impl Group {
    /// Takes the deliveries in flight that `which` selects out of the group.
    fn take_in_flight(&mut self, which: impl Fn(&InFlight) -> bool) -> Vec<InFlight> {
        self.in_flight
            .extract_if(|_, flight| which(flight))
            .map(|(_, flight)| flight)
            .collect()
    }
}

impl State {
    /// Puts event `index` to the dead letter of group `key` with `reason`.
    fn dead_letter(&mut self, key: &str, index: usize, attempts: u32, reason: &str) {
        let label = self
            .groups
            .get(key)
            .map_or_else(|| key.to_owned(), |group| group.label.clone());
        let letter = self.log[index].dead_letter(&label, attempts, reason);
        self.append(letter);
    }

    /// Stores `event` unless its source and id are stored already, and wakes the groups it
    /// matches.
    fn append(&mut self, event: WireEvent) {
        if !self.ids.insert((event.source.clone(), event.id.clone())) {
            return;
        }
        for group in self.groups.values() {
            if group.pattern.matches(&event.ty) {
                group.wake.notify_waiters();
            }
        }
        self.log.push(Arc::new(event));
    }

    /// Puts an unsettled delivery of group `key` back in line, due at `due`; or, when it was
    /// the group's last allowed attempt, to the dead letter with `reason`.
    fn requeue(&mut self, key: &str, flight: &InFlight, due: Instant, reason: &str) {
        let Some(group) = self.groups.get_mut(key) else {
            return;
        };
        if self.deleted.contains(&flight.index) {
            // A dead letter deleted while in flight: settled for good.
            return;
        }
        if flight.attempt >= group.options.max_deliveries {
            let reason = format!("{reason} (after {} deliveries)", flight.attempt);
            self.dead_letter(key, flight.index, flight.attempt, &reason);
        } else {
            group
                .redeliver
                .push_back((flight.index, flight.attempt + 1, due));
            group.wake.notify_waiters();
        }
    }
}

impl MemoryTransport {
    /// A new, empty broker.
    pub fn new() -> Self {
        MemoryTransport::default()
    }
}

impl Broker {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The next delivery for `subscription` of `group`, if one is due now; otherwise when to
    /// look again (a pending redelivery or ack deadline), if ever.
    fn next_delivery(
        self: &Arc<Self>,
        group_name: &str,
        subscription: u64,
    ) -> Result<Result<MemoryDelivery, Option<Instant>>, TransportError> {
        let mut state = self.lock();
        let now = Instant::now();
        let Some(group) = state.groups.get_mut(group_name) else {
            return Err(TransportError::Closed {
                transport: "memory".to_owned(),
            });
        };
        // Deliveries past their ack wait go back in line (or to the dead letter).
        let expired = group.take_in_flight(|flight| flight.deadline <= now);
        for flight in &expired {
            state.requeue(group_name, flight, now, "not settled within the ack wait");
        }
        let State {
            log,
            groups,
            deleted,
            ..
        } = &mut *state;
        let Some(group) = groups.get_mut(group_name) else {
            return Err(TransportError::Closed {
                transport: "memory".to_owned(),
            });
        };
        group
            .redeliver
            .retain(|(index, _, _)| !deleted.contains(index));
        let due = group.redeliver.iter().position(|(_, _, at)| *at <= now);
        let next = match due {
            Some(position) => group
                .redeliver
                .remove(position)
                .map(|(index, attempt, _)| (index, attempt)),
            None => {
                let found = log[group.cursor..]
                    .iter()
                    .enumerate()
                    .position(|(offset, event)| {
                        !deleted.contains(&(group.cursor + offset))
                            && group.pattern.matches(&event.ty)
                    });
                match found {
                    Some(offset) => {
                        let index = group.cursor + offset;
                        group.cursor = index + 1;
                        Some((index, 1))
                    }
                    None => {
                        group.cursor = log.len();
                        None
                    }
                }
            }
        };
        let Some((index, attempt)) = next else {
            let soonest = group
                .redeliver
                .iter()
                .map(|(_, _, at)| *at)
                .chain(group.in_flight.values().map(|flight| flight.deadline))
                .min();
            return Ok(Err(soonest));
        };
        let id = self.next_id();
        group.in_flight.insert(
            id,
            InFlight {
                index,
                attempt,
                subscription,
                deadline: now + group.options.ack_wait,
            },
        );
        Ok(Ok(MemoryDelivery {
            broker: Arc::clone(self),
            group: group_name.to_owned(),
            id,
            event: Arc::clone(&log[index]),
            attempt,
            settled: false,
        }))
    }

    /// Settles delivery `id` of `group`. A delivery that is no longer in flight (its
    /// subscription closed and it went back in line) settles as a no-op.
    fn settle(&self, group_name: &str, id: u64, how: Settle) {
        let mut state = self.lock();
        let Some(group) = state.groups.get_mut(group_name) else {
            return;
        };
        let Some(flight) = group.in_flight.remove(&id) else {
            return;
        };
        match how {
            Settle::Ack => {}
            Settle::Nack { delay, reason } => {
                state.requeue(group_name, &flight, Instant::now() + delay, &reason);
            }
            Settle::Return => {
                state.requeue(group_name, &flight, Instant::now(), "dropped unsettled");
            }
            Settle::Reject { reason } => {
                state.dead_letter(group_name, flight.index, flight.attempt, &reason);
            }
        }
    }

    /// Ends subscription `subscription`: its unsettled deliveries go back in line; a private
    /// group goes away with it.
    fn close(&self, group_name: &str, subscription: u64) {
        let mut state = self.lock();
        let Some(group) = state.groups.get_mut(group_name) else {
            return;
        };
        if !group.durable {
            state.groups.remove(group_name);
            return;
        }
        group.members = group.members.saturating_sub(1);
        let returned = group.take_in_flight(|flight| flight.subscription == subscription);
        let now = Instant::now();
        for flight in &returned {
            state.requeue(group_name, flight, now, "its subscription closed");
        }
    }
}

enum Settle {
    Ack,
    Nack {
        delay: Duration,
        reason: String,
    },
    /// Dropped unsettled: back in line at once.
    Return,
    Reject {
        reason: String,
    },
}

impl Transport for MemoryTransport {
    fn name(&self) -> &str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            persistent: false,
            ordered: true,
            groups: true,
            deduplicates: true,
            restartable: false,
            group_stats: true,
            list_groups: true,
            stored_dead_letters: true,
        }
    }

    fn publish(&self, event: WireEvent) -> BoxFuture<'_, Result<(), TransportError>> {
        let stored = crate::name::validate(&event.ty)
            .map(|()| self.broker.lock().append(event.clone()))
            .map_err(|error| TransportError::Invalid {
                transport: "memory".to_owned(),
                what: "event name",
                value: event.ty.clone(),
                reason: error.to_string(),
            });
        Box::pin(std::future::ready(stored))
    }

    fn subscribe(
        &self,
        options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<TransportSubscription, TransportError>> {
        Box::pin(std::future::ready(self.open(options)))
    }

    /// Always connected: the broker is this process.
    fn is_connected(&self) -> Option<bool> {
        Some(true)
    }

    /// `lag`: the events of the log past the group's cursor that match its pattern. `pending`:
    /// its deliveries in flight (an expired one included, until a member takes it back) and
    /// those in line to be delivered again (nacked, released, returned by a closed
    /// subscription). `None` for a group no subscription created.
    fn group_stats<'a>(
        &'a self,
        options: &'a SubscribeOptions,
    ) -> BoxFuture<'a, Result<Option<GroupStats>, TransportError>> {
        let stats = options.group.as_ref().and_then(|group| {
            let state = self.broker.lock();
            let group = state.groups.get(&group_key(group))?;
            Some(state.stats(group))
        });
        Box::pin(std::future::ready(Ok(stats)))
    }

    /// The durable groups, by name: their pattern, stats (as [`group_stats`](Self::group_stats))
    /// and open subscriptions.
    fn groups(&self) -> BoxFuture<'_, Result<Option<Vec<GroupInfo>>, TransportError>> {
        let state = self.broker.lock();
        let mut groups: Vec<GroupInfo> = state
            .groups
            .values()
            .filter(|group| group.durable)
            .map(|group| {
                GroupInfo::new(group.label.clone(), group.pattern.as_str())
                    .with_stats(state.stats(group))
                    .with_consumers(count(group.members))
            })
            .collect();
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        Box::pin(std::future::ready(Ok(Some(groups))))
    }

    /// The dead letters of the log that match, not deleted; a letter's position is its index
    /// in the log.
    fn dead_letters<'a>(
        &'a self,
        events: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<StoredDeadLetter>>, TransportError>> {
        let letters = Pattern::parse(&dead_letter_name(events))
            .map_err(|error| TransportError::Invalid {
                transport: "memory".to_owned(),
                what: "pattern",
                value: events.to_owned(),
                reason: error.to_string(),
            })
            .map(|pattern| {
                let state = self.broker.lock();
                let letters = state
                    .log
                    .iter()
                    .enumerate()
                    .filter(|(index, letter)| {
                        !state.deleted.contains(index) && pattern.matches(&letter.ty)
                    })
                    .map(|(index, letter)| {
                        StoredDeadLetter::new(WireEvent::clone(letter), index.to_string())
                    })
                    .collect();
                Some(letters)
            });
        Box::pin(std::future::ready(letters))
    }

    /// Marks the letters deleted: every group skips them from then on, those in flight
    /// included (their settling does nothing more).
    fn delete_dead_letters<'a>(
        &'a self,
        letters: &'a [StoredDeadLetter],
    ) -> BoxFuture<'a, Result<Option<u64>, TransportError>> {
        let mut state = self.broker.lock();
        let mut deleted = 0_u64;
        for stored in letters {
            let Ok(index) = stored.position.parse::<usize>() else {
                continue;
            };
            let is_letter = state
                .log
                .get(index)
                .is_some_and(|letter| letter.id == stored.letter.id && is_dead_letter(&letter.ty));
            if is_letter && state.deleted.insert(index) {
                deleted += 1;
            }
        }
        Box::pin(std::future::ready(Ok(Some(deleted))))
    }
}

/// Whether `name` is a dead letter's: `dead-letter.<event>`.
fn is_dead_letter(name: &str) -> bool {
    name.strip_prefix(DEAD_LETTER_PREFIX)
        .is_some_and(|rest| rest.len() > 1 && rest.starts_with('.'))
}

impl State {
    /// Where `group` stands. `lag`: the events of the log past its cursor that match its
    /// pattern (deleted letters aside); `pending`: its deliveries in flight and those in line
    /// to be delivered again.
    fn stats(&self, group: &Group) -> GroupStats {
        let start = group.cursor.min(self.log.len());
        let lag = self.log[start..]
            .iter()
            .enumerate()
            .filter(|(offset, event)| {
                !self.deleted.contains(&(start + offset)) && group.pattern.matches(&event.ty)
            })
            .count();
        let pending = group.in_flight.len() + group.redeliver.len();
        GroupStats::new(count(lag), count(pending))
    }
}

/// The key of the durable group `group` in [`State::groups`] (apart from the private groups of
/// subscriptions outside any group).
fn group_key(group: &str) -> String {
    format!("group:{group}")
}

/// A count as the `u64` of [`GroupStats`].
fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

impl MemoryTransport {
    fn open(&self, options: SubscribeOptions) -> Result<TransportSubscription, TransportError> {
        let invalid = |what, value: &str, reason: String| TransportError::Invalid {
            transport: "memory".to_owned(),
            what,
            value: value.to_owned(),
            reason,
        };
        let pattern = Pattern::parse(&options.pattern)
            .map_err(|error| invalid("pattern", &options.pattern, error.to_string()))?;
        let subscription = self.broker.next_id();
        let (group_name, durable, label) = match &options.group {
            Some(group) => (group_key(group), true, group.clone()),
            None => (
                format!("private:{subscription}"),
                false,
                format!("subscription-{subscription}"),
            ),
        };
        let wake = {
            let mut state = self.broker.lock();
            let cursor = state.log.len();
            let group = state
                .groups
                .entry(group_name.clone())
                .or_insert_with(|| Group {
                    pattern: pattern.clone(),
                    options: options.clone(),
                    cursor,
                    redeliver: VecDeque::new(),
                    in_flight: HashMap::new(),
                    wake: Arc::new(Notify::new()),
                    durable,
                    label,
                    members: 0,
                });
            if group.pattern.as_str() != pattern.as_str() {
                return Err(invalid(
                    "group",
                    options.group.as_deref().unwrap_or_default(),
                    format!(
                        "the group subscribes to `{}`; one group has one pattern",
                        group.pattern.as_str()
                    ),
                ));
            }
            group.members += 1;
            Arc::clone(&group.wake)
        };
        let open = Open {
            broker: Arc::clone(&self.broker),
            group: group_name,
            subscription,
        };
        let stream = futures_util::stream::unfold((open, wake), |(open, wake)| async move {
            loop {
                let mut notified = std::pin::pin!(Arc::clone(&wake).notified_owned());
                notified.as_mut().enable();
                match open.broker.next_delivery(&open.group, open.subscription) {
                    Ok(Ok(delivery)) => {
                        let delivery: Box<dyn Delivery> = Box::new(delivery);
                        return Some((Ok(delivery), (open, wake)));
                    }
                    Ok(Err(Some(at))) => {
                        // Woken by news, or by the due redelivery or deadline, whichever first.
                        let _ = tokio::time::timeout_at(at, notified).await;
                    }
                    Ok(Err(None)) => notified.await,
                    Err(error) => return Some((Err(error), (open, wake))),
                }
            }
        });
        Ok(Box::pin(stream))
    }
}

/// An open subscription; closing it when dropped.
struct Open {
    broker: Arc<Broker>,
    group: String,
    subscription: u64,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.broker.close(&self.group, self.subscription);
    }
}

struct MemoryDelivery {
    broker: Arc<Broker>,
    group: String,
    id: u64,
    event: Arc<WireEvent>,
    attempt: u32,
    settled: bool,
}

impl MemoryDelivery {
    fn settle(mut self, how: Settle) -> BoxFuture<'static, Result<(), TransportError>> {
        self.settled = true;
        self.broker.settle(&self.group, self.id, how);
        Box::pin(std::future::ready(Ok(())))
    }
}

impl Drop for MemoryDelivery {
    fn drop(&mut self) {
        if !self.settled {
            self.broker.settle(&self.group, self.id, Settle::Return);
        }
    }
}

impl Delivery for MemoryDelivery {
    fn event(&self) -> &WireEvent {
        &self.event
    }

    fn attempt(&self) -> u32 {
        self.attempt
    }

    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        (*self).settle(Settle::Ack)
    }

    fn nack(
        self: Box<Self>,
        delay: Duration,
        reason: String,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        (*self).settle(Settle::Nack { delay, reason })
    }

    fn reject(self: Box<Self>, reason: String) -> BoxFuture<'static, Result<(), TransportError>> {
        (*self).settle(Settle::Reject { reason })
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    async fn stats(broker: &MemoryTransport, options: &SubscribeOptions) -> Option<GroupStats> {
        broker.group_stats(options).await.expect("stats")
    }

    /// Lag is what the group's cursor has not passed (other names aside); pending is what is
    /// in flight and what waits to be delivered again, a nack's delay included.
    #[tokio::test]
    async fn group_stats_follow_the_cursor_and_the_unsettled() {
        let broker = MemoryTransport::new();
        let options = SubscribeOptions::new("a.*").group("g");
        assert_eq!(stats(&broker, &options).await, None, "no group yet");
        let mut subscription = broker.subscribe(options.clone()).await.expect("subscribed");
        for (id, name) in [("1", "a.x"), ("2", "b.x"), ("3", "a.y"), ("4", "a.z")] {
            broker
                .publish(WireEvent::new(id, "s", name, "{}"))
                .await
                .expect("published");
        }
        assert_eq!(stats(&broker, &options).await, Some(GroupStats::new(3, 0)));
        let first = subscription.next().await.expect("open").expect("delivery");
        assert_eq!(stats(&broker, &options).await, Some(GroupStats::new(2, 1)));
        first
            .nack(Duration::from_secs(3600), "later".to_owned())
            .await
            .expect("nacked");
        assert_eq!(stats(&broker, &options).await, Some(GroupStats::new(2, 1)));
        for _ in 0..2 {
            let delivery = subscription.next().await.expect("open").expect("delivery");
            delivery.ack().await.expect("acked");
        }
        assert_eq!(stats(&broker, &options).await, Some(GroupStats::new(0, 1)));
        let plain = SubscribeOptions::new("a.*");
        assert_eq!(stats(&broker, &plain).await, None, "no group");
    }

    /// The durable groups are listed with their pattern, stats and open subscriptions; the
    /// private group of a subscription outside any group is not.
    #[tokio::test]
    async fn groups_are_listed_with_their_members() {
        let broker = MemoryTransport::new();
        let listed = |broker: MemoryTransport| async move {
            broker
                .groups()
                .await
                .expect("groups")
                .expect("memory lists its groups")
        };
        assert_eq!(listed(broker.clone()).await, Vec::new());
        let first = broker
            .subscribe(SubscribeOptions::new("a.*").group("g"))
            .await
            .expect("subscribed");
        let second = broker
            .subscribe(SubscribeOptions::new("a.*").group("g"))
            .await
            .expect("subscribed");
        let _plain = broker
            .subscribe(SubscribeOptions::new(">"))
            .await
            .expect("subscribed");
        broker
            .publish(WireEvent::new("1", "s", "a.x", "{}"))
            .await
            .expect("published");
        let groups = listed(broker.clone()).await;
        assert_eq!(
            groups,
            vec![
                GroupInfo::new("g", "a.*")
                    .with_stats(GroupStats::new(1, 0))
                    .with_consumers(2)
            ]
        );
        drop((first, second));
        let groups = listed(broker.clone()).await;
        assert_eq!(
            groups[0].consumers,
            Some(0),
            "the group outlives its members"
        );
    }

    /// Dead letters are read back from the log and deleted: a deleted letter is neither read
    /// again nor delivered to a group that had not reached it, and deleting it twice counts
    /// once.
    #[tokio::test]
    async fn dead_letters_are_read_and_deleted() {
        let broker = MemoryTransport::new();
        let mut work = broker
            .subscribe(SubscribeOptions::new("a.*").group("worker"))
            .await
            .expect("subscribed");
        let mut keeper = broker
            .subscribe(SubscribeOptions::new("dead-letter.>").group("keeper"))
            .await
            .expect("subscribed");
        for id in ["1", "2"] {
            broker
                .publish(WireEvent::new(id, "s", "a.x", "{}"))
                .await
                .expect("published");
            let delivery = work.next().await.expect("open").expect("delivery");
            delivery
                .reject("broken".to_owned())
                .await
                .expect("rejected");
        }
        let letters = broker
            .dead_letters(">")
            .await
            .expect("read")
            .expect("memory keeps them");
        let ids: Vec<&str> = letters.iter().map(|l| l.letter.id.as_str()).collect();
        assert_eq!(ids, ["1.dead.worker", "2.dead.worker"]);
        assert_eq!(letters[0].letter.ty, "dead-letter.a.x");
        let none = broker
            .dead_letters("b.>")
            .await
            .expect("read")
            .expect("kept");
        assert!(none.is_empty());
        // The keeper takes the first letter and holds it; the second is deleted before it
        // gets there.
        let held = keeper.next().await.expect("open").expect("delivery");
        assert_eq!(held.event().id, "1.dead.worker");
        let deleted = broker.delete_dead_letters(&letters).await.expect("deleted");
        assert_eq!(deleted, Some(2));
        assert_eq!(
            broker.delete_dead_letters(&letters).await.expect("again"),
            Some(0)
        );
        let left = broker.dead_letters(">").await.expect("read").expect("kept");
        assert!(left.is_empty(), "{left:?}");
        held.nack(Duration::ZERO, "later".to_owned())
            .await
            .expect("nacked");
        let options = SubscribeOptions::new("dead-letter.>").group("keeper");
        assert_eq!(stats(&broker, &options).await, Some(GroupStats::new(0, 0)));
        let quiet = tokio::time::timeout(Duration::from_millis(50), keeper.next()).await;
        assert!(quiet.is_err(), "a deleted letter was delivered");
        // An event that is not a dead letter is never deleted.
        let plain = StoredDeadLetter::new(WireEvent::new("1", "s", "a.x", "{}"), "0");
        assert_eq!(
            broker.delete_dead_letters(&[plain]).await.expect("ok"),
            Some(0)
        );
    }
}
