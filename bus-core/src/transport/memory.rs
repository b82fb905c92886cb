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
    BoxFuture, Capabilities, Delivery, GroupStats, SubscribeOptions, Transport, TransportError,
    TransportSubscription, WireEvent,
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
        let State { log, groups, .. } = &mut *state;
        let Some(group) = groups.get_mut(group_name) else {
            return Err(TransportError::Closed {
                transport: "memory".to_owned(),
            });
        };
        let due = group.redeliver.iter().position(|(_, _, at)| *at <= now);
        let next = match due {
            Some(position) => group
                .redeliver
                .remove(position)
                .map(|(index, attempt, _)| (index, attempt)),
            None => {
                let found = log[group.cursor..]
                    .iter()
                    .position(|event| group.pattern.matches(&event.ty));
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
            let lag = state.log[group.cursor.min(state.log.len())..]
                .iter()
                .filter(|event| group.pattern.matches(&event.ty))
                .count();
            let pending = group.in_flight.len() + group.redeliver.len();
            Some(GroupStats::new(count(lag), count(pending)))
        });
        Box::pin(std::future::ready(Ok(stats)))
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
}
