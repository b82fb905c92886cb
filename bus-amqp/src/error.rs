//! What went wrong on the RabbitMQ side, in words that say what to do. Travels as the `source`
//! of a [`TransportError`], so callers can downcast to it.

use std::time::Duration;

use bus_core::transport::TransportError;

/// The transport's name in errors and logs.
pub(crate) const NAME: &str = "amqp";

/// Why an operation of [`AmqpTransport`](crate::AmqpTransport) failed: the `source` of the
/// [`TransportError`] it returned (`Unreachable` or `Broker`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AmqpError {
    /// Connecting failed.
    #[error(
        "cannot connect to RabbitMQ at `{url}`: {source}; check that rabbitmq-server runs \
         there, that the URL is right (`amqp://user:password@host:5672/%2f`) and that the \
         user may use the virtual host"
    )]
    Connect {
        /// The URL given, credentials masked.
        url: String,
        /// What the client said.
        #[source]
        source: lapin::Error,
    },
    /// Connecting took longer than the connect timeout.
    #[error("no connection to RabbitMQ at `{url}` within {after:?}")]
    ConnectTimedOut {
        /// The URL given, credentials masked.
        url: String,
        /// The timeout.
        after: Duration,
    },
    /// The broker refused a publish (a negative publisher confirm).
    #[error("RabbitMQ refused to store `{event}` (a negative publisher confirm)")]
    Refused {
        /// The event name.
        event: String,
    },
    /// A channel operation failed.
    #[error("{operation}: {source}")]
    Channel {
        /// What was being done.
        operation: &'static str,
        /// What the client said.
        #[source]
        source: lapin::Error,
    },
    /// A delivery was settled after the transport had handed it back already (its ack wait
    /// passed, or its subscription closed): the event comes again.
    #[error(
        "the delivery of `{event}` was handed back before it was settled (ack wait of \
         {ack_wait:?} passed, or its subscription closed): it is delivered again"
    )]
    HandedBack {
        /// The event name.
        event: String,
        /// The subscription's ack wait.
        ack_wait: Duration,
    },
    /// A delivery was settled after the channel that delivered it closed (its connection was
    /// lost, or the broker closed the channel): it can no longer be acknowledged, and the
    /// broker delivers it again.
    #[error(
        "the channel that delivered `{event}` closed before it was settled (connection or \
         channel lost): it can no longer be acknowledged, and RabbitMQ delivers it again"
    )]
    DeliveryLost {
        /// The event name.
        event: String,
    },
    /// An ack was pending when its channel was lost, or was not sent within the publish
    /// timeout: whether it reached the broker is unknown. If it did not, the broker delivers
    /// the event again.
    #[error(
        "the ack of `{event}` is uncertain: its channel was lost as it was sent, or it was not \
         sent within {after:?}; RabbitMQ delivers the event again if the ack did not reach it"
    )]
    AckUncertain {
        /// The event name.
        event: String,
        /// The timeout ([`publish_timeout`](crate::AmqpTransportBuilder::publish_timeout)).
        after: Duration,
    },
    /// The broker cancelled a subscription's consumer (its queue was deleted, or the node
    /// holding it went away): the subscription declares its queue and consumes again.
    #[error(
        "RabbitMQ cancelled the consumer of queue `{queue}` (was the queue deleted?): \
         subscribing again"
    )]
    ConsumerCancelled {
        /// The queue consumed.
        queue: String,
    },
}

/// A failed channel operation as a [`TransportError`]: `Unreachable` when the connection is
/// gone, `Broker` otherwise.
pub(crate) fn channel(operation: &'static str, source: lapin::Error) -> TransportError {
    let connection_lost = matches!(
        source.kind(),
        lapin::ErrorKind::IOError(_)
            | lapin::ErrorKind::InvalidConnectionState(_)
            | lapin::ErrorKind::InvalidChannelState(..)
    );
    let error = AmqpError::Channel { operation, source };
    if connection_lost {
        TransportError::unreachable(NAME, error)
    } else {
        TransportError::broker(NAME, error)
    }
}
