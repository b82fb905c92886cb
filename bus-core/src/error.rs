//! Typed errors. Each names the event and, where one is involved, the listener, and says what
//! to do about it.
//!
//! A leaf beside the ids: every module may name an error, and this one names only ids and the
//! name rules.

use std::sync::Arc;
use std::time::Duration;

use bus_names::{NameProblem, PatternProblem};

use crate::id::{EventId, ListenerId};

/// The error type a listener may return, once converted: anything that is
/// `Into<Box<dyn std::error::Error + Send + Sync>>` (which includes `String` and `&str`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The text of a panic, when its payload is a string (as `panic!` with a message makes it): what
/// [`DeliveryError::Panicked`] and the logs say of a caught panic.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&'static str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "<panic payload is not a string>".to_owned()
    }
}

/// A string is not a valid event name, or not a valid listener pattern.
///
/// Event names are dot-separated tokens of ASCII letters, digits, `_` and `-`
/// (`orders.eu.created`), at most 256 bytes long. A listener may also be added under a pattern,
/// where a whole token may be `*` (exactly one token: `orders.*.created`) and the last token may
/// be `>` (one or more tokens: `orders.>`); an emitted name never has wildcards.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid {} {:?}: {}",
    if *pattern { "listener pattern" } else { "event name" },
    name,
    problem.message()
)]
pub struct NameError {
    name: String,
    problem: PatternProblem,
    pattern: bool,
}

impl NameError {
    pub(crate) fn new(name: &str, problem: NameProblem) -> Self {
        NameError {
            name: name.to_owned(),
            problem: PatternProblem::Name(problem),
            pattern: false,
        }
    }

    /// A listener pattern that breaks the pattern rules.
    pub(crate) fn pattern(pattern: &str, problem: PatternProblem) -> Self {
        NameError {
            name: pattern.to_owned(),
            problem,
            pattern: true,
        }
    }

    /// The rejected name or pattern.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What is wrong with it.
    #[cfg(test)]
    pub(crate) fn problem(&self) -> PatternProblem {
        self.problem
    }
}

/// Why an event could not be emitted.
///
/// [`EventBus::try_emit`](crate::EventBus::try_emit) returns these before anything is delivered,
/// in a [`TryEmitError`] that gives the event back: when it returns `Err`, no listener saw the
/// event. [`EventBus::emit`](crate::EventBus::emit)
/// never fails; it logs the same errors and counts the listeners that could not take the event as
/// failed in the [`DeliveryReport`](crate::DeliveryReport).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EmitError {
    /// There is no Tokio runtime on the emitting thread, so no listener task can be started.
    #[error(
        "cannot emit `{event}`: no Tokio runtime is running on this thread; emit from inside a \
         runtime (`#[tokio::main]`, `Runtime::block_on`) or from a task it spawned"
    )]
    NoRuntime {
        /// The event name.
        event: String,
    },
    /// The event name breaks the naming rules.
    #[error("cannot emit: {0}")]
    InvalidName(#[from] NameError),
    /// The event's type is not the type a listener of that name takes.
    #[error(
        "cannot emit `{event}` as `{actual}`: listener `{listener}` takes `{expected}`; emit a \
         `{expected}` under this name, or give `{actual}` events a name of their own"
    )]
    TypeMismatch {
        /// The event name.
        event: String,
        /// The listener whose argument type differs.
        listener: String,
        /// The type the listener takes.
        expected: &'static str,
        /// The type that was emitted.
        actual: &'static str,
    },
    /// The bus was shut down with [`EventBus::shutdown`](crate::EventBus::shutdown).
    #[error("cannot emit `{event}`: the bus has been shut down")]
    Closed {
        /// The event name.
        event: String,
    },
    /// The bus holds as many deliveries as its
    /// [`max_in_flight`](crate::EventBusBuilder::max_in_flight) allows, so this emit's
    /// `listeners` deliveries do not fit.
    #[error(
        "cannot emit `{event}`: the bus is full ({limit} deliveries queued or running, the \
         max_in_flight limit) and this event has {listeners} listener(s); wait for room with \
         `emit_async`, raise the limit, or slow the emitter down"
    )]
    Full {
        /// The event name.
        event: String,
        /// The bus's `max_in_flight` limit.
        limit: usize,
        /// How many deliveries the emit needed.
        listeners: usize,
    },
    /// The bus has a transport and the event's type has a codec, but serde could not encode
    /// this value (a map with non-string keys, a `Serialize` impl that failed).
    #[error(
        "cannot emit `{event}`: its `{type_name}` payload does not encode as JSON: {reason}; \
         fix its `Serialize` impl, or emit a type without one to keep it in process"
    )]
    Unencodable {
        /// The event name.
        event: String,
        /// The payload's type.
        type_name: &'static str,
        /// What serde said.
        reason: String,
    },
    /// [`EventBus::try_emit_received`](crate::EventBus::try_emit_received) was given a
    /// [`WireEvent`](crate::transport::WireEvent) whose attributes do not read back (a `time`
    /// that is not RFC 3339).
    #[error("cannot emit `{event}`: {reason}")]
    Malformed {
        /// The event name.
        event: String,
        /// What is wrong.
        reason: String,
    },
}

/// Why an event emitted on a bus with a transport did not reach the broker. Listeners in
/// other processes did not get it; listeners that stay in this process did, as the report
/// says.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The broker did not store the event (unreachable past the transport's publish
    /// deadline, refused, closed).
    #[error(
        "event `{event}` ({event_id}) was not published: {source}; no other process got it, \
         emit it again once the broker is back"
    )]
    Transport {
        /// The event name.
        event: String,
        /// The event's id (emitting it again with the same id is deduplicated by brokers
        /// that deduplicate).
        event_id: EventId,
        /// What the transport said.
        source: Arc<TransportError>,
    },
    /// The event was not handed to the broker at all, for `reason`: the bus was closed, no
    /// runtime was running, or a listener of this process that receives the name from the
    /// broker takes another type (the broker would hand it the event as that type).
    #[error("event `{event}` was not published: {reason}")]
    Refused {
        /// The event name.
        event: String,
        /// Why.
        reason: EmitError,
    },
    /// The publish task was dropped before the broker answered: its runtime shut down.
    #[error(
        "event `{event}` may not have been published: the runtime shut down before the broker \
         confirmed it"
    )]
    Aborted {
        /// The event name.
        event: String,
    },
}

/// Why a listener could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddListenerError {
    /// The event name breaks the naming rules.
    #[error("cannot add listener `{listener}`: {source}")]
    InvalidName {
        /// The listener that was being added.
        listener: String,
        /// What is wrong with the name.
        source: NameError,
    },
    /// An event stream's capacity is 0 or larger than
    /// [`MAX_CAPACITY`](crate::stream::MAX_CAPACITY).
    #[error(
        "cannot stream `{pattern}` with capacity {capacity}: the capacity must be between 1 and \
         {max}; it is how many unread events the stream holds before it drops the oldest"
    )]
    InvalidCapacity {
        /// The pattern of the stream.
        pattern: String,
        /// The capacity asked for.
        capacity: usize,
        /// The largest capacity allowed.
        max: usize,
    },
}

/// How one delivery of an event to one listener failed. Collected in a
/// [`DeliveryReport`](crate::DeliveryReport) and logged through `tracing` as it happens.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// The listener returned `Err`.
    #[error("listener `{listener}` failed on event `{event}`: {source}")]
    Failed {
        /// The event name.
        event: Arc<str>,
        /// The listener's name.
        listener: Arc<str>,
        /// The listener's id.
        listener_id: ListenerId,
        /// The error the listener returned.
        source: BoxError,
    },
    /// The listener panicked. The panic was caught; other listeners, the emitter and the bus
    /// were not affected.
    #[error("listener `{listener}` panicked on event `{event}`: {message}")]
    Panicked {
        /// The event name.
        event: Arc<str>,
        /// The listener's name.
        listener: Arc<str>,
        /// The listener's id.
        listener_id: ListenerId,
        /// The panic message, when the payload was a string.
        message: String,
    },
    /// The listener ran longer than its [`Policy::timeout`](crate::Policy::timeout) and was
    /// cancelled.
    #[error(
        "listener `{listener}` timed out after {timeout:?} on event `{event}`; raise its \
         timeout or make it faster"
    )]
    TimedOut {
        /// The event name.
        event: Arc<str>,
        /// The listener's name.
        listener: Arc<str>,
        /// The listener's id.
        listener_id: ListenerId,
        /// The timeout it ran past.
        timeout: Duration,
    },
    /// [`EventBus::shutdown`](crate::EventBus::shutdown) aborted the listener after its deadline.
    #[error("listener `{listener}` was aborted by shutdown before it finished handling `{event}`")]
    Aborted {
        /// The event name.
        event: Arc<str>,
        /// The listener's name.
        listener: Arc<str>,
        /// The listener's id.
        listener_id: ListenerId,
    },
    /// The listener never received the event.
    #[error("event `{event}` was not delivered to listener `{listener}`: {reason}")]
    NotDelivered {
        /// The event name.
        event: Arc<str>,
        /// The listener's name.
        listener: Arc<str>,
        /// The listener's id.
        listener_id: ListenerId,
        /// Why it could not be delivered.
        reason: EmitError,
    },
}

impl DeliveryError {
    /// The name of the event whose delivery failed.
    pub fn event(&self) -> &str {
        match self {
            DeliveryError::Failed { event, .. }
            | DeliveryError::Panicked { event, .. }
            | DeliveryError::TimedOut { event, .. }
            | DeliveryError::Aborted { event, .. }
            | DeliveryError::NotDelivered { event, .. } => event,
        }
    }

    /// The name of the listener that failed (its fn path, or its type for closures).
    pub fn listener(&self) -> &str {
        match self {
            DeliveryError::Failed { listener, .. }
            | DeliveryError::Panicked { listener, .. }
            | DeliveryError::TimedOut { listener, .. }
            | DeliveryError::Aborted { listener, .. }
            | DeliveryError::NotDelivered { listener, .. } => listener,
        }
    }

    /// The id of the listener that failed.
    pub fn listener_id(&self) -> ListenerId {
        match self {
            DeliveryError::Failed { listener_id, .. }
            | DeliveryError::Panicked { listener_id, .. }
            | DeliveryError::TimedOut { listener_id, .. }
            | DeliveryError::Aborted { listener_id, .. }
            | DeliveryError::NotDelivered { listener_id, .. } => *listener_id,
        }
    }
}

/// Why [`try_emit`](crate::EventBus::try_emit) delivered nothing, with the event given back
/// (as Tokio's `TrySendError<T>` gives back its value): emit it again later, or elsewhere.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let bus = bus::EventBus::new();
/// let refused = bus.try_emit("orders..created", 7_u32).unwrap_err();
/// assert!(matches!(refused.error(), bus::error::EmitError::InvalidName(_)));
/// assert_eq!(refused.into_event(), 7);
/// # }
/// ```
#[derive(thiserror::Error)]
#[error("{error}")]
pub struct TryEmitError<E> {
    error: EmitError,
    event: E,
}

impl<E> TryEmitError<E> {
    pub(crate) fn new(error: EmitError, event: E) -> Self {
        TryEmitError { error, event }
    }

    /// Why the event was refused.
    pub fn error(&self) -> &EmitError {
        &self.error
    }

    /// The event, given back.
    pub fn into_event(self) -> E {
        self.event
    }

    /// The reason and the event.
    pub fn into_parts(self) -> (EmitError, E) {
        (self.error, self.event)
    }
}

impl<E> std::fmt::Debug for TryEmitError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TryEmitError")
            .field("error", &self.error)
            .field("event", &std::any::type_name::<E>())
            .finish()
    }
}

impl<E> From<TryEmitError<E>> for EmitError {
    fn from(refused: TryEmitError<E>) -> Self {
        refused.error
    }
}

/// Why a [`WaitFor`](crate::stream::WaitFor) ended without an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// The pattern breaks the naming rules, so nothing could ever match it.
    #[error("cannot wait: {0}")]
    InvalidPattern(#[from] NameError),
    /// The bus was dropped (or the waiting listener removed) before a matching event came.
    #[error("stopped waiting for `{pattern}`: the bus was dropped before a matching event came")]
    Closed {
        /// The pattern that was waited for.
        pattern: String,
    },
}

/// The reader of an [`EventStream`](crate::stream::EventStream) fell behind: its buffer was
/// full, and the `n` oldest events it had not read yet were dropped to make room. The stream
/// goes on with the oldest event it still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "event stream fell behind: {0} events were dropped; read faster or open the stream with a \
     larger capacity"
)]
pub struct Lagged(pub u64);

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The broker could not be reached, or the connection broke.
    #[error("{transport}: broker unreachable: {source}")]
    Unreachable {
        /// The transport's name.
        transport: String,
        /// What the client said.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The broker did not confirm a publish before the deadline.
    #[error("{transport}: publish of `{event}` not confirmed within {deadline:?}")]
    PublishTimedOut {
        /// The transport's name.
        transport: String,
        /// The event name.
        event: String,
        /// The deadline that passed.
        deadline: Duration,
    },
    /// The pattern, the group or an event name is not valid for this transport.
    #[error("{transport}: invalid {what} `{value}`: {reason}")]
    Invalid {
        /// The transport's name.
        transport: String,
        /// What was invalid (`pattern`, `group`, `event name`).
        what: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: String,
    },
    /// The transport is closed.
    #[error("{transport}: closed")]
    Closed {
        /// The transport's name.
        transport: String,
    },
    /// Anything else the broker or its client reported.
    #[error("{transport}: {source}")]
    Broker {
        /// The transport's name.
        transport: String,
        /// What the client said.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_messages_are_extracted() {
        assert_eq!(panic_message(&"static"), "static");
        assert_eq!(panic_message(&String::from("owned")), "owned");
        assert_eq!(panic_message(&42_u8), "<panic payload is not a string>");
    }
}
