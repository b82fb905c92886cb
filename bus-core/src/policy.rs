//! Per-listener delivery policies: how many deliveries of one listener may run at once, how long
//! one may take, and how often a failed one is tried again.

use std::num::NonZeroUsize;
use std::time::Duration;

/// How a listener's deliveries run: concurrency limit, timeout, retries with backoff.
///
/// The default policy is no limit, no timeout and no retry: exactly how a plain
/// [`add_listener`](crate::EventBus::add_listener) listener runs. Set it with
/// [`EventBus::on`](crate::EventBus::on) and
/// [`policy`](crate::listener::ListenerBuilder::policy), or the options of
/// `#[bus::listener(.., concurrency = 1, timeout = "5s", retry = 3, backoff = "100ms")]`.
///
/// A listener with a policy other than the default is never polled on the emitter's thread (it
/// may have to wait for its turn, a timer or a retry): its deliveries wait in its lane, as
/// queue entries, and start there as its concurrency limit allows (see
/// [`Dispatch`](crate::Dispatch)).
///
/// ```
/// use std::time::Duration;
///
/// let policy = bus::Policy::new()
///     .concurrency(1)
///     .timeout(Duration::from_secs(5))
///     .retry(3)
///     .backoff(Duration::from_millis(100));
/// assert_eq!(policy.max_attempts(), 4);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[must_use = "a policy does nothing until a listener is added with it (`on(..).policy(..)`)"]
pub struct Policy {
    concurrency: Option<NonZeroUsize>,
    timeout: Option<Duration>,
    retries: u32,
    backoff: Duration,
    group: Group,
    trace: Trace,
}

/// Which instances of a service share a distributed listener's events.
///
/// Only matters on a bus with a [transport](crate::EventBusBuilder::transport).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Group {
    /// The instances of one service compete for the events: each event is handled once per
    /// service, by one of them. The group is `<service>.<listener name>`.
    #[default]
    Service,
    /// Every instance gets every event published while it runs (no durable position: events
    /// published while no instance runs are not kept for it).
    Ungrouped,
    /// The group of this name, shared with whoever else names it (across services, too).
    Named(&'static str),
}

/// How the span of a delivery from a broker joins the trace of its publish (the
/// `traceparent` it came with), with the `opentelemetry` feature.
///
/// Only matters on a bus with a [transport](crate::EventBusBuilder::transport).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Trace {
    /// The delivery's `process <event>` span is a child of the `publish <event>` span: one
    /// trace from the emit to the last listener. What most listeners want.
    #[default]
    Child,
    /// The delivery's span starts a trace of its own, with a link to the publish span: for a
    /// listener whose work should not lengthen the publisher's trace (a batch job, a report
    /// built from many events).
    Link,
}

/// An exponential backoff: `first` after the first failure, twice as long after each further
/// one, never more than `max`. A [`Policy`]'s retries wait this way (with jitter), and so do
/// transports between reconnections
/// ([`transport::support`](crate::transport::support)).
///
/// ```
/// use std::time::Duration;
/// use bus::policy::Backoff;
///
/// let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
/// assert_eq!(backoff.after(1), Duration::from_millis(100));
/// assert_eq!(backoff.after(3), Duration::from_millis(400));
/// assert_eq!(backoff.after(1_000), Duration::from_secs(2));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
}

impl Backoff {
    /// A backoff starting at `first` and capped at `max`.
    pub const fn new(first: Duration, max: Duration) -> Self {
        Backoff { first, max }
    }

    /// The delay after `failures` failures in a row (1 for the first; 0 counts as 1).
    pub fn after(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.first.saturating_mul(1_u32 << doublings).min(self.max)
    }
}

/// The first retry's delay when a policy retries without naming a backoff.
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(100);

/// Retry delays stop growing here, however many attempts are made.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

impl Policy {
    /// The default policy: no concurrency limit, no timeout, no retry.
    pub const fn new() -> Self {
        Policy {
            concurrency: None,
            timeout: None,
            retries: 0,
            backoff: DEFAULT_BACKOFF,
            group: Group::Service,
            trace: Trace::Child,
        }
    }

    /// At most `limit` deliveries of this listener run at once; the others wait in emit order
    /// (queued, never dropped; they count towards the bus's
    /// [`max_in_flight`](crate::EventBusBuilder::max_in_flight)). With `1`, deliveries run one at
    /// a time, in the order of the emits. `0` means no limit.
    pub const fn concurrency(mut self, limit: usize) -> Self {
        self.concurrency = NonZeroUsize::new(limit);
        self
    }

    /// A delivery (one attempt) that runs longer than `timeout` is cancelled at its next
    /// `.await` and counts as failed ([`DeliveryError::TimedOut`](crate::error::DeliveryError::TimedOut)),
    /// so it is retried if retries are left.
    pub const fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// A delivery that fails (error, panic or timeout) is tried again up to `retries` times.
    /// After the last attempt the event goes to the bus's
    /// [dead-letter hook](crate::EventBusBuilder::dead_letter).
    pub const fn retry(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// The delay before the first retry; each further retry waits twice as long as the one
    /// before (up to [`MAX_BACKOFF`]), with random jitter of up to half the delay so that
    /// failing listeners do not retry in lockstep. [`DEFAULT_BACKOFF`] when not set.
    pub const fn backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// On a distributed bus, which instances share this listener's events (see [`Group`]);
    /// [`Group::Service`] by default. `#[bus::listener(group = false)]` is
    /// [`Group::Ungrouped`], `group = "name"` is [`Group::Named`].
    pub const fn group(mut self, group: Group) -> Self {
        self.group = group;
        self
    }

    /// On a distributed bus with the `opentelemetry` feature, how this listener's delivery spans
    /// join the trace of the publish (see [`Trace`]); [`Trace::Child`] by default.
    pub const fn trace(mut self, trace: Trace) -> Self {
        self.trace = trace;
        self
    }

    /// The [`trace`](Policy::trace) choice.
    pub const fn tracing(&self) -> Trace {
        self.trace
    }

    /// The [`group`](Policy::group) choice.
    pub const fn grouping(&self) -> Group {
        self.group
    }

    /// The concurrency limit, if any.
    pub const fn concurrency_limit(&self) -> Option<NonZeroUsize> {
        self.concurrency
    }

    /// The timeout of one attempt, if any.
    pub const fn timeout_after(&self) -> Option<Duration> {
        self.timeout
    }

    /// How many times a failed delivery is tried again.
    pub const fn retries(&self) -> u32 {
        self.retries
    }

    /// How many attempts a delivery gets in all: the first one and the retries.
    pub const fn max_attempts(&self) -> u32 {
        self.retries.saturating_add(1)
    }

    /// The delay before the first retry.
    pub const fn initial_backoff(&self) -> Duration {
        self.backoff
    }

    /// `true` for the default policy, which costs nothing on the dispatch path.
    pub(crate) fn is_default(&self) -> bool {
        self.concurrency.is_none() && self.timeout.is_none() && self.retries == 0
    }

    /// How long to wait after failed attempt number `attempt` (1 for the first attempt):
    /// `backoff * 2^(attempt - 1)`, capped at [`MAX_BACKOFF`], minus a random part of up to
    /// half of it.
    pub(crate) fn delay_after(&self, attempt: u32) -> Duration {
        let full = self.full_delay_after(attempt);
        let jitter = full.mul_f64(fastrand::f64() * 0.5);
        full.saturating_sub(jitter)
    }

    /// The delay after `attempt` before jitter.
    fn full_delay_after(&self, attempt: u32) -> Duration {
        Backoff::new(self.backoff, MAX_BACKOFF).after(attempt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_default_policy_is_default() {
        assert!(Policy::new().is_default());
        assert!(Policy::default().is_default());
        assert!(Policy::new().concurrency(0).is_default(), "0 is no limit");
        assert!(!Policy::new().concurrency(1).is_default());
        assert!(!Policy::new().retry(1).is_default());
        assert!(!Policy::new().timeout(Duration::from_secs(1)).is_default());
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        let delays: Vec<u128> = (0..9).map(|n| backoff.after(n).as_millis()).collect();
        assert_eq!(delays, [50, 50, 100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(backoff.after(u32::MAX), Duration::from_secs(2));
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let policy = Policy::new().backoff(Duration::from_millis(100));
        assert_eq!(policy.full_delay_after(1), Duration::from_millis(100));
        assert_eq!(policy.full_delay_after(2), Duration::from_millis(200));
        assert_eq!(policy.full_delay_after(3), Duration::from_millis(400));
        assert_eq!(policy.full_delay_after(40), MAX_BACKOFF);
        assert_eq!(policy.full_delay_after(u32::MAX), MAX_BACKOFF);
    }

    proptest! {
        #[test]
        fn jittered_delays_stay_between_half_and_full(backoff_ms in 0_u64..10_000, attempt in 1_u32..64) {
            let policy = Policy::new().backoff(Duration::from_millis(backoff_ms));
            let full = policy.full_delay_after(attempt);
            let delay = policy.delay_after(attempt);
            prop_assert!(delay <= full);
            prop_assert!(delay >= full / 2);
        }
    }
}
