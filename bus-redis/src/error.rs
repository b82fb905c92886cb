//! What went wrong on the Redis side, in words that say what to do. Travels as the `source` of
//! a [`TransportError`], so callers can downcast to it.

use std::time::Duration;

use bus_core::transport::TransportError;

/// The transport's name in errors and logs.
pub(crate) const NAME: &str = "redis";

/// Why an operation of [`RedisTransport`](crate::RedisTransport) failed: the `source` of the
/// [`TransportError`] it returned (`Unreachable` or `Broker`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisError {
    /// The URL does not parse as a Redis connection URL.
    #[error("`{url}` is not a Redis URL ({source}); write it as `redis://host:port/db`")]
    Url {
        /// The URL given.
        url: String,
        /// What the client said.
        #[source]
        source: redis::RedisError,
    },
    /// The first connection failed.
    #[error(
        "cannot connect to Redis at `{url}`: {source}; check that redis-server runs there and \
         that the URL is right"
    )]
    Connect {
        /// The URL given.
        url: String,
        /// What the client said.
        #[source]
        source: redis::RedisError,
    },
    /// The server refused the credentials of the URL (or asked for credentials and the URL had
    /// none, or the user may not run the transport's commands).
    #[error(
        "Redis at `{url}` refused the connection's credentials: {source}; check the user and \
         password in the URL (`redis://user:password@host:port` for an ACL user, \
         `redis://:password@host:port` for `requirepass`) and that the user is enabled and \
         allowed the stream commands on the keys of the prefix"
    )]
    Auth {
        /// The URL given, credentials masked.
        url: String,
        /// What the client said.
        #[source]
        source: redis::RedisError,
    },
    /// The TLS handshake with the server failed: its certificate is not trusted (signed by a
    /// CA that is not among the trusted roots, or not for the host of the URL), or the server
    /// does not speak TLS on that port.
    #[error(
        "TLS with Redis at `{url}` failed: {source}; if the server's certificate is signed by a \
         CA of your own, trust that CA with `tls_root_certificates`, check that the certificate \
         names the host of the URL, and that the port is the server's `tls-port`"
    )]
    Tls {
        /// The URL given, credentials masked.
        url: String,
        /// What the client said.
        #[source]
        source: redis::RedisError,
    },
    /// A command failed for a reason that retrying does not fix.
    #[error("`{command}` on `{key}` failed: {source}")]
    Command {
        /// The command (`XADD`, `XACK`, `XREADGROUP`, ...).
        command: &'static str,
        /// The key it worked on.
        key: String,
        /// What the client or the server said.
        #[source]
        source: redis::RedisError,
    },
    /// The server answered something this transport does not understand.
    #[error("`{command}` on `{key}`: unexpected reply: {detail}")]
    Reply {
        /// The command.
        command: &'static str,
        /// The key it worked on.
        key: String,
        /// What was wrong with the reply.
        detail: String,
    },
    /// An ack could not be sent before the deadline.
    #[error(
        "cannot acknowledge entry `{entry}` of `{key}` within {deadline:?}: {detail}; the \
         group delivers it again after the ack wait"
    )]
    Ack {
        /// The stream key.
        key: String,
        /// The entry id.
        entry: String,
        /// The publish deadline, which bounds the retries of an ack too.
        deadline: Duration,
        /// What went wrong last.
        detail: String,
    },
    /// A dead letter could not be stored; the event was not settled.
    #[error(
        "cannot dead-letter `{event}` to `{dead_letter}`: {detail}; the event stays with the \
         broker and is delivered again"
    )]
    DeadLetter {
        /// The event name.
        event: String,
        /// The dead-letter name.
        dead_letter: String,
        /// What went wrong.
        detail: String,
    },
}

impl RedisError {
    /// As a broker error.
    pub(crate) fn broker(self) -> TransportError {
        TransportError::broker(NAME, self)
    }

    /// As an unreachable-broker error.
    pub(crate) fn unreachable(self) -> TransportError {
        TransportError::unreachable(NAME, self)
    }

    /// A failed command, as an unreachable-broker error when the connection is the cause and
    /// as a broker error otherwise.
    pub(crate) fn command(
        command: &'static str,
        key: &str,
        source: redis::RedisError,
    ) -> TransportError {
        let connection = is_transient(&source);
        let error = RedisError::Command {
            command,
            key: key.to_owned(),
            source,
        };
        if connection {
            error.unreachable()
        } else {
            error.broker()
        }
    }
}

/// Whether retrying may cure `error`: the connection broke or timed out, or the server is
/// loading its data set, busy, or not a writable primary yet.
pub(crate) fn is_transient(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || matches!(
            error.code(),
            Some("LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "READONLY" | "CLUSTERDOWN")
        )
}

/// Whether `error` is the server refusing the connection's credentials or permissions.
pub(crate) fn is_auth(error: &redis::RedisError) -> bool {
    error.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(error.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
}

/// Whether `error` comes from TLS: rustls failed the handshake (a certificate not trusted, an
/// alert from the server) or could not be set up.
pub(crate) fn is_tls(error: &redis::RedisError) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if is_rustls(current) {
            return true;
        }
        cause = current.source();
    }
    false
}

/// Whether `error` is a rustls error, or wraps one where `source` does not lead.
fn is_rustls(error: &(dyn std::error::Error + 'static)) -> bool {
    if error.is::<rustls::Error>() {
        return true;
    }
    // redis keeps an I/O error behind an `Arc`, and an I/O error's `source` skips the error
    // it wraps: look behind both.
    if let Some(shared) =
        error.downcast_ref::<std::sync::Arc<dyn std::error::Error + Send + Sync>>()
    {
        return is_rustls(&**shared);
    }
    if let Some(io) = error.downcast_ref::<std::io::Error>()
        && let Some(inner) = io.get_ref()
    {
        return is_rustls(inner);
    }
    false
}

/// Whether `error` says that the consumer group (or its stream) is gone.
pub(crate) fn is_no_group(error: &redis::RedisError) -> bool {
    error.code() == Some("NOGROUP")
}

/// A [`TransportError::Invalid`] of this transport.
pub(crate) fn invalid(
    what: &'static str,
    value: &str,
    reason: impl Into<String>,
) -> TransportError {
    TransportError::invalid(NAME, what, value, reason)
}
