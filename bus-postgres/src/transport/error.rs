//! What went wrong on the PostgreSQL side of the transport, in words that say what to do.
//! Travels as the `source` of a [`TransportError`], so callers can downcast to it.

use bus_core::transport::TransportError;

/// The transport's name in errors, logs and the conformance report.
pub(crate) const NAME: &str = "postgres";

/// Why an operation of [`PostgresTransport`](super::PostgresTransport) failed: the `source`
/// of the [`TransportError`] it returned (`Unreachable` or `Broker`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresTransportError {
    /// The first connection failed.
    #[error(
        "cannot connect to PostgreSQL at `{url}`: {source}; check that the server runs there, \
         that the URL (`postgres://user:password@host:5432/database`) is right, and that the \
         user may log in"
    )]
    Connect {
        /// The URL given, credentials masked.
        url: String,
        /// What sqlx said.
        #[source]
        source: sqlx::Error,
    },
    /// Creating the tables failed.
    #[error(
        "cannot create the transport's tables `{prefix}events`, `{prefix}groups` and \
         `{prefix}deliveries`: {source}; the user needs the CREATE privilege on the schema, or \
         create them beforehand (migration `0002_transport.sql`) and set `create_schema(false)`"
    )]
    Schema {
        /// The table prefix.
        prefix: String,
        /// What sqlx said.
        #[source]
        source: sqlx::Error,
    },
    /// A statement failed for a reason that retrying does not fix.
    #[error("{operation} on `{table}` failed: {source}")]
    Statement {
        /// What the transport was doing (`publish of orders.created`, `claim for group billing`).
        operation: String,
        /// The table it worked on.
        table: String,
        /// What sqlx or the server said.
        #[source]
        source: sqlx::Error,
    },
}

/// Whether retrying may cure `error`: the connection broke or could not be had, the server is
/// shutting down or starting, or the transaction lost a serialization race.
pub(crate) fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(database) => database.code().is_some_and(|code| {
            // 08: connection exception; 57P01..03: admin shutdown, crash shutdown, cannot
            // connect now (starting up); 40001, 40P01: serialization failure, deadlock.
            code.starts_with("08")
                || matches!(&*code, "57P01" | "57P02" | "57P03" | "40001" | "40P01")
        }),
        _ => false,
    }
}

/// `error` of `operation` on `table`, as a [`TransportError`]: `Unreachable` when retrying
/// may cure it, `Broker` otherwise.
pub(crate) fn statement(operation: String, table: String, error: sqlx::Error) -> TransportError {
    let transient = is_transient(&error);
    let error = PostgresTransportError::Statement {
        operation,
        table,
        source: error,
    };
    if transient {
        TransportError::unreachable(NAME, error)
    } else {
        TransportError::broker(NAME, error)
    }
}
