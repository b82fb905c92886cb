//! What went wrong on the NATS side, in words that say what to do. Travels as the `source` of a
//! [`TransportError`], so callers can downcast to it.

use std::time::Duration;

use bus_core::transport::TransportError;

/// The transport's name in errors and logs.
pub(crate) const NAME: &str = "nats";

/// Why an operation of [`NatsTransport`](crate::NatsTransport) failed: the `source` of the
/// [`TransportError`] it returned (`Unreachable` or `Broker`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsError {
    /// The first connection failed.
    #[error(
        "cannot connect to NATS at `{url}`: {source}; check that nats-server runs there \
         (with JetStream: `nats-server -js`) and that the URL is right"
    )]
    Connect {
        /// The URL given.
        url: String,
        /// What the client said.
        #[source]
        source: async_nats::ConnectError,
    },
    /// The server refused the credentials of the URL (or asked for credentials and the URL had
    /// none).
    #[error(
        "NATS at `{url}` refused the connection's credentials: {source}; check the user and \
         password (`nats://user:password@host:4222`) or the token (`nats://token@host:4222`) \
         in the URL against the server's authorization settings"
    )]
    Auth {
        /// The URL given, credentials masked.
        url: String,
        /// What the client said.
        #[source]
        source: async_nats::ConnectError,
    },
    /// The TLS handshake with the server failed: its certificate is not trusted (signed by a
    /// CA that is not among the trusted roots, or not for the host of the URL), or the server
    /// does not speak TLS.
    #[error(
        "TLS with NATS at `{url}` failed: {source}; if the server's certificate is signed by a \
         CA of your own, trust that CA with `tls_root_certificates`, check that the certificate \
         names the host of the URL, and that the server has TLS enabled"
    )]
    Tls {
        /// The URL given, credentials masked.
        url: String,
        /// What the client said.
        #[source]
        source: async_nats::ConnectError,
    },
    /// The server does not answer JetStream requests.
    #[error(
        "NATS at `{url}` does not answer JetStream requests ({detail}); start nats-server with \
         JetStream enabled (`nats-server -js`) or enable it in its configuration"
    )]
    JetStreamUnavailable {
        /// The URL given.
        url: String,
        /// What the client said.
        detail: String,
    },
    /// The stream could not be created or brought up to date.
    #[error(
        "cannot set up JetStream stream `{stream}` for subjects `{subjects}`: {detail}; if \
         another stream already captures these subjects, choose another subject_prefix (or \
         stream_name), or remove the other stream"
    )]
    Stream {
        /// The stream name.
        stream: String,
        /// The subjects it should capture.
        subjects: String,
        /// What the server said.
        detail: String,
    },
    /// A stream could not be created with the replicas asked for: the server is not part of a
    /// cluster, or the cluster has fewer JetStream servers than that.
    #[error(
        "cannot create JetStream stream `{stream}` with {replicas} replicas: {detail}; a single \
         nats-server keeps 1 replica and a cluster at most one per JetStream server: set \
         `replicas(1)`, or connect to a cluster with at least {replicas} JetStream servers"
    )]
    Replicas {
        /// The stream name.
        stream: String,
        /// The replicas asked for.
        replicas: usize,
        /// What the server said.
        detail: String,
    },
    /// A consumer could not be created, found or bound.
    #[error(
        "cannot set up JetStream consumer `{consumer}` on stream `{stream}` (filter \
         `{filter}`): {detail}; check the server's logs and limits (max consumers, max ack \
         pending)"
    )]
    Consumer {
        /// The stream name.
        stream: String,
        /// The consumer name (`ephemeral` for a subscription outside any group).
        consumer: String,
        /// The filter subject.
        filter: String,
        /// What the server said.
        detail: String,
    },
    /// A publish failed for a reason that retrying does not fix.
    #[error("publish to `{subject}` refused: {detail}")]
    Publish {
        /// The subject.
        subject: String,
        /// What the client or the server said.
        detail: String,
    },
    /// An ack, nak or term could not be sent.
    #[error(
        "cannot settle a delivery of `{subject}` ({what}): {detail}; the broker delivers it \
         again after the ack wait"
    )]
    Settle {
        /// The subject.
        subject: String,
        /// `ack`, `nak` or `term`.
        what: &'static str,
        /// What the client said.
        detail: String,
    },
    /// A dead letter could not be stored; the event was not settled.
    #[error(
        "cannot dead-letter `{subject}` to `{dead_letter}` within {deadline:?}: {detail}; the \
         event stays with the broker and is delivered again"
    )]
    DeadLetter {
        /// The subject of the event.
        subject: String,
        /// The dead-letter subject.
        dead_letter: String,
        /// The publish deadline that passed.
        deadline: Duration,
        /// What went wrong.
        detail: String,
    },
    /// A request of the operator's methods (listing the groups, reading or deleting dead
    /// letters) failed.
    #[error(
        "cannot {what} of JetStream stream `{stream}`: {detail}; check that the server runs \
         and that this user may use the JetStream API on the stream"
    )]
    Admin {
        /// What was asked (`list the consumers`, `delete a dead letter`).
        what: &'static str,
        /// The stream name.
        stream: String,
        /// What the client or the server said.
        detail: String,
    },
}

impl NatsError {
    /// As a broker error.
    pub(crate) fn broker(self) -> TransportError {
        TransportError::broker(NAME, self)
    }

    /// As an unreachable-broker error.
    pub(crate) fn unreachable(self) -> TransportError {
        TransportError::unreachable(NAME, self)
    }
}

/// A [`TransportError::Invalid`] of this transport.
pub(crate) fn invalid(
    what: &'static str,
    value: &str,
    reason: impl Into<String>,
) -> TransportError {
    TransportError::invalid(NAME, what, value, reason)
}
