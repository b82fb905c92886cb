//! The error of the outbox, the relay, the inbox and the schema: [`OutboxError`].

/// What went wrong in the outbox, the relay, the inbox or the schema, naming the event, the
/// table or the group involved and saying what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// A statement failed: the database is unreachable, the table is missing, the
    /// transaction was aborted by an earlier statement, ...
    #[error(
        "{action} on table `{table}` failed: {source}; check that PostgreSQL is reachable and \
         that `Schema::create` ran for this table prefix (or the migration, for the default one)"
    )]
    Database {
        /// What was being done (`"emitting `order.placed`"`, `"claiming an event"`).
        action: String,
        /// The table (with its prefix).
        table: String,
        /// What sqlx said.
        #[source]
        source: sqlx::Error,
    },
    /// The event's payload does not serialize to JSON.
    #[error("event `{event}` does not serialize to JSON: {source}; check its `Serialize` impl")]
    Encode {
        /// The event name.
        event: String,
        /// What serde_json said.
        #[source]
        source: serde_json::Error,
    },
    /// The event would not be readable by a subscriber (a bad name, an empty attribute, an
    /// extension name that is not lower-case letters and digits, ...): it is refused before it
    /// is written, so that the relay never holds a row it cannot publish.
    #[error("event `{event}` is not a valid CloudEvent: {reason}")]
    Invalid {
        /// The event name.
        event: String,
        /// Why.
        reason: String,
    },
    /// The table prefix is not usable in a PostgreSQL identifier.
    #[error(
        "table prefix `{prefix}` is invalid: use at most {max} lower-case ASCII letters, digits \
         and `_`, starting with a letter or `_`",
        max = crate::schema::MAX_PREFIX_LEN
    )]
    Prefix {
        /// The prefix as given.
        prefix: String,
    },
    /// [`RelayBuilder::start`](crate::RelayBuilder::start) was called outside a Tokio runtime.
    #[error("the relay of table `{table}` must be started inside a Tokio runtime")]
    NoRuntime {
        /// The outbox table.
        table: String,
    },
}

impl OutboxError {
    /// A [`Database`](OutboxError::Database) error.
    pub(crate) fn database(
        action: impl Into<String>,
        table: &str,
    ) -> impl FnOnce(sqlx::Error) -> OutboxError {
        let action = action.into();
        let table = table.to_owned();
        move |source| OutboxError::Database {
            action,
            table,
            source,
        }
    }
}
