//! Wake-ups: one `LISTEN` connection per transport, opened with its first subscription, which
//! wakes the subscriptions whose pattern matches the event name a `NOTIFY` carries. Polling
//! stays the fallback (a subscription polls every `poll_interval` whatever happens), so a
//! notification lost while the connection was down, or one sent before the `LISTEN` was in
//! place, delays an event by one poll interval at most. The same task keeps the subscriptions
//! outside any group of this transport alive (`expires_at`), and removes those of any
//! transport that stopped renewing theirs (a crashed process).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::Notify;

use super::Inner;
use super::pattern::Matcher;
use super::sql::statement;

/// How long a subscription outside any group stays registered without renewal.
pub(crate) const PLAIN_TTL: Duration = Duration::from_secs(60);

/// How often the registrations are renewed, and the expired ones removed.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// One subscription waiting for events.
#[derive(Debug)]
struct Waiter {
    id: u64,
    matcher: Matcher,
    /// Its registration, when it is a subscription outside any group.
    plain: Option<String>,
    notify: Arc<Notify>,
}

/// The subscriptions of one transport that want to be woken.
#[derive(Debug, Default)]
pub(crate) struct Wakers {
    waiters: Mutex<Vec<Waiter>>,
    next: AtomicU64,
    started: Mutex<bool>,
}

impl Wakers {
    /// Registers a subscription to `matcher`; the returned id unregisters it.
    pub(crate) fn register(
        &self,
        matcher: Matcher,
        plain: Option<String>,
        notify: Arc<Notify>,
    ) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().push(Waiter {
            id,
            matcher,
            plain,
            notify,
        });
        id
    }

    /// Unregisters subscription `id`.
    pub(crate) fn unregister(&self, id: u64) {
        self.lock().retain(|waiter| waiter.id != id);
    }

    /// Wakes the subscriptions whose pattern matches `name`; all of them for an empty name
    /// (a hand-back, whose name the sender did not say, or a lost connection).
    fn wake(&self, name: &str) {
        for waiter in self.lock().iter() {
            if name.is_empty() || waiter.matcher.matches(name) {
                waiter.notify.notify_one();
            }
        }
    }

    fn plain_names(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter_map(|waiter| waiter.plain.clone())
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Waiter>> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the listener task is to be started now (the first call says yes).
    fn first_start(&self) -> bool {
        let mut started = self.started.lock().unwrap_or_else(PoisonError::into_inner);
        !std::mem::replace(&mut *started, true)
    }
}

/// Starts the listener and heartbeat tasks of `inner` unless they run already. They stop when
/// the last clone of the transport is dropped (`inner.cancel`).
pub(crate) fn ensure_listener(inner: &Arc<Inner>) {
    if !inner.wakers.first_start() {
        return;
    }
    let weak = Arc::downgrade(inner);
    let cancel = inner.cancel.clone();
    let channel = inner.channel.clone();
    // The listener's own pool of one connection, with the options of the transport's pool:
    // `PgListener` holds its connection for good, and must not take one from the pool.
    let options = (*inner.pool.connect_options()).clone();
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_lazy_with(options);
    let listening = cancel.clone();
    let renewing = Arc::downgrade(inner);
    tokio::spawn(async move {
        tokio::select! {
            () = listening.cancelled() => {}
            () = listen(weak, pool.clone(), channel) => {}
        }
        pool.close().await;
    });
    tokio::spawn(async move {
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = heartbeat.tick() => {}
            }
            let Some(inner) = renewing.upgrade() else {
                return;
            };
            renew(&inner).await;
        }
    });
}

async fn listen(inner: std::sync::Weak<Inner>, pool: sqlx::PgPool, channel: String) {
    let mut listener: Option<PgListener> = None;
    loop {
        let Some(connected) = listener.as_mut() else {
            match connect(&pool, &channel).await {
                Ok(connected) => {
                    listener = Some(connected);
                    // What was sent before the LISTEN was in place is found by a poll.
                    let Some(strong) = inner.upgrade() else {
                        return;
                    };
                    strong.wakers.wake("");
                }
                Err(error) => {
                    tracing::debug!(%error, channel, "LISTEN failed; polling meanwhile");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            continue;
        };
        let received = connected.try_recv().await;
        let Some(strong) = inner.upgrade() else {
            return;
        };
        match received {
            Ok(Some(notification)) => strong.wakers.wake(notification.payload()),
            // The connection broke and was made again: what was sent meanwhile is lost.
            Ok(None) => strong.wakers.wake(""),
            Err(error) => {
                tracing::debug!(%error, channel, "LISTEN connection lost");
                strong.wakers.wake("");
                listener = None;
                drop(strong);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn connect(pool: &sqlx::PgPool, channel: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.ignore_pool_close_event(true);
    listener.listen(channel).await?;
    Ok(listener)
}

/// Renews this transport's subscriptions outside any group, and removes the expired ones of
/// every transport. Failures are logged: the next heartbeat tries again.
async fn renew(inner: &Inner) {
    let names = inner.wakers.plain_names();
    if !names.is_empty() {
        let renewed = sqlx::query(statement(&inner.sql.heartbeat))
            .bind(&names)
            .bind(PLAIN_TTL.as_secs_f64())
            .execute(&inner.pool)
            .await;
        if let Err(error) = renewed {
            tracing::warn!(%error, "renewing the subscriptions outside any group failed");
        }
    }
    if let Err(error) = sqlx::query(statement(&inner.sql.expire))
        .execute(&inner.pool)
        .await
    {
        tracing::debug!(%error, "removing expired subscriptions failed");
    }
}
