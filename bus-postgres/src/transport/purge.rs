//! Retention: a task per transport with a [`Retention`] other than `Unbounded` that deletes,
//! at connect and every [`PURGE_INTERVAL`](super::PURGE_INTERVAL), the events past it (their
//! delivery records go with them: `ON DELETE CASCADE`).

use std::sync::Arc;

use bus_core::transport::Retention;

use super::sql::statement;
use super::{Inner, PURGE_INTERVAL};

/// The most rows one statement deletes: a long delete would hold back the horizon of every
/// group (it has a transaction id) for as long as it runs.
const BATCH: i64 = 10_000;

/// Starts the purge task of `inner` for `retention`; nothing for `Unbounded`. It stops with
/// the last clone of the transport.
pub(crate) fn start(inner: &Arc<Inner>, retention: Retention) {
    // The age in seconds (f64) or the count kept (i64): each statement takes one of its type.
    let (sql, age, count) = match retention {
        Retention::MaxAge(age) => (Arc::clone(&inner.sql.purge_age), age.as_secs_f64(), 0),
        Retention::MaxLen(count) => (
            Arc::clone(&inner.sql.purge_len),
            0.0,
            i64::try_from(count).unwrap_or(i64::MAX),
        ),
        _ => return,
    };
    let by_age = matches!(retention, Retention::MaxAge(_));
    let (weak, cancel) = (Arc::downgrade(inner), inner.cancel.clone());
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(PURGE_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = interval.tick() => {}
            }
            let Some(inner) = weak.upgrade() else {
                return;
            };
            loop {
                let query = sqlx::query(statement(&sql));
                let query = if by_age {
                    query.bind(age)
                } else {
                    query.bind(count)
                };
                match query.bind(BATCH).execute(&inner.pool).await {
                    Ok(done) if done.rows_affected() > 0 => {
                        tracing::debug!(
                            deleted = done.rows_affected(),
                            "events past the retention deleted"
                        );
                        if done.rows_affected() < BATCH as u64 {
                            break;
                        }
                    }
                    Ok(_) => break,
                    Err(error) => {
                        tracing::warn!(%error, "deleting the events past the retention failed; trying again later");
                        break;
                    }
                }
            }
        }
    });
}
