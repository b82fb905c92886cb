//! What [`EventBus::health`](crate::EventBus::health) reports: enough for a readiness or
//! liveness probe to decide, and for an operator to see why.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let bus = bus::EventBus::new();
//! let health = bus.health().await;
//! assert!(health.is_healthy());
//! assert_eq!(health.transport(), None, "no transport: nothing to be connected to");
//! assert_eq!((health.in_flight(), health.shed()), (0, 0));
//! # }
//! ```

use std::fmt;

use crate::transport::GroupStats;

/// The state of one bus: its deliveries, its transport and its distributed listeners'
/// consumers, as [`EventBus::health`](crate::EventBus::health) found them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    closed: bool,
    in_flight: usize,
    shed: usize,
    transport: Option<TransportHealth>,
    consumers: Vec<ConsumerHealth>,
}

impl Health {
    pub(crate) fn new(
        closed: bool,
        in_flight: usize,
        shed: usize,
        transport: Option<TransportHealth>,
        consumers: Vec<ConsumerHealth>,
    ) -> Self {
        Health {
            closed,
            in_flight,
            shed,
            transport,
            consumers,
        }
    }

    /// `true` when the bus is open, its transport (if any) is not known to be disconnected,
    /// and every consumer is subscribed with its group's stats read: what a readiness probe
    /// asks. Lag and shed counts do not make a bus unhealthy; they are for alerts.
    pub fn is_healthy(&self) -> bool {
        !self.closed
            && self
                .transport
                .as_ref()
                .is_none_or(|transport| transport.connected != Some(false))
            && self.consumers.iter().all(ConsumerHealth::is_healthy)
    }

    /// `true` once [`shutdown`](crate::EventBus::shutdown) has begun.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Deliveries running now.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Deliveries shed since the bus was built: dropped because it held
    /// [`max_in_flight`](crate::EventBusBuilder::max_in_flight) deliveries.
    pub fn shed(&self) -> usize {
        self.shed
    }

    /// The transport, on a bus with one.
    pub fn transport(&self) -> Option<&TransportHealth> {
        self.transport.as_ref()
    }

    /// One entry per distributed listener.
    pub fn consumers(&self) -> &[ConsumerHealth] {
        &self.consumers
    }
}

/// A bus's transport: its name and whether it is connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportHealth {
    name: String,
    connected: Option<bool>,
}

impl TransportHealth {
    pub(crate) fn new(name: String, connected: Option<bool>) -> Self {
        TransportHealth { name, connected }
    }

    /// The transport's [name](crate::transport::Transport::name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether its connection is up, as it knows without asking the broker
    /// ([`Transport::is_connected`](crate::transport::Transport::is_connected)); `None` when
    /// it cannot tell: then the consumers' [`stats`](ConsumerHealth::stats), read from the
    /// broker, say whether it answers.
    pub fn connected(&self) -> Option<bool> {
        self.connected
    }
}

/// Where a consumer's subscription stands.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscriptionState {
    /// Subscribing, for the first time.
    Starting,
    /// In place at the broker.
    Subscribed,
    /// The last attempt failed, with this error; it is tried again every second.
    Failed(String),
}

/// One distributed listener's consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerHealth {
    listener: String,
    pattern: String,
    group: Option<String>,
    subscription: SubscriptionState,
    stats: Result<Option<GroupStats>, String>,
}

impl ConsumerHealth {
    pub(crate) fn new(
        listener: String,
        pattern: String,
        group: Option<String>,
        subscription: SubscriptionState,
        stats: Result<Option<GroupStats>, String>,
    ) -> Self {
        ConsumerHealth {
            listener,
            pattern,
            group,
            subscription,
            stats,
        }
    }

    /// `true` when subscribed and its group's stats could be read.
    pub fn is_healthy(&self) -> bool {
        self.subscription == SubscriptionState::Subscribed && self.stats.is_ok()
    }

    /// The listener's name.
    pub fn listener(&self) -> &str {
        &self.listener
    }

    /// The event name or pattern it receives.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Its consumer group; `None` outside any group.
    pub fn group(&self) -> Option<&str> {
        self.group.as_deref()
    }

    /// Its subscription's state.
    pub fn subscription(&self) -> &SubscriptionState {
        &self.subscription
    }

    /// Its group's lag and pending count, read from the broker
    /// ([`Transport::group_stats`](crate::transport::Transport::group_stats)): `Ok(None)`
    /// outside a group or when the transport cannot tell, `Err` with the error when the
    /// broker did not answer.
    pub fn stats(&self) -> Result<Option<GroupStats>, &str> {
        self.stats.as_ref().copied().map_err(String::as_str)
    }
}

impl fmt::Display for Health {
    /// One line for the bus, one per consumer: what a `/healthz` endpoint can return as is.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = if self.is_healthy() { "ok" } else { "unhealthy" };
        write!(
            f,
            "{status}: {} in flight, {} shed",
            self.in_flight, self.shed
        )?;
        if self.closed {
            f.write_str(", closed")?;
        }
        if let Some(transport) = &self.transport {
            let connected = match transport.connected {
                Some(true) => "connected",
                Some(false) => "disconnected",
                None => "connection state unknown",
            };
            write!(f, "; transport {}: {connected}", transport.name)?;
        }
        for consumer in &self.consumers {
            write!(
                f,
                "\nlistener {} ({}, group {}): ",
                consumer.listener,
                consumer.pattern,
                consumer.group.as_deref().unwrap_or("none")
            )?;
            match &consumer.subscription {
                SubscriptionState::Starting => f.write_str("starting")?,
                SubscriptionState::Subscribed => f.write_str("subscribed")?,
                SubscriptionState::Failed(error) => write!(f, "failing: {error}")?,
            }
            match &consumer.stats {
                Ok(Some(stats)) => write!(f, ", lag {}, pending {}", stats.lag, stats.pending)?,
                Ok(None) => {}
                Err(error) => write!(f, ", stats unavailable: {error}")?,
            }
        }
        Ok(())
    }
}
