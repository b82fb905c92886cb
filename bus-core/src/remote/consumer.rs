//! One distributed listener's consumer: subscribes (again, after a failure), runs the listener
//! on each delivery, and settles it: ack after `Ok`, nack with the listener's backoff after an
//! error, a panic or a timeout, reject when the payload does not decode. A delivery cut short
//! by shutdown is never acked: it is released (handed back), so the broker delivers it again.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Plan, RESUBSCRIBE_DELAY, Readiness, meta_of};
use crate::dispatch::{Tasks, panic_message};
use crate::event::{EventId, Handling};
use crate::listener::BoxedDelivery;
use crate::registry::Entry;
use crate::transport::{Delivery, Transport, TransportError, TransportSubscription};

/// How many deliveries of one listener run at once when its policy sets no concurrency.
pub(crate) const DEFAULT_CONCURRENCY: usize = 64;

pub(super) struct Consumer {
    pub(super) transport: Arc<dyn Transport>,
    pub(super) entry: Arc<Entry>,
    pub(super) plan: Plan,
    pub(super) tasks: Arc<Tasks>,
    pub(super) stop: CancellationToken,
    pub(super) ready: watch::Sender<Readiness>,
}

impl Consumer {
    pub(super) async fn run(self) {
        let span = tracing::info_span!(
            "bus.consumer",
            listener = %self.entry.info.name(),
            pattern = %self.plan.options.pattern,
            group = self.plan.options.group.as_deref().unwrap_or("(none)"),
        );
        async move {
            let Some(subscription) = self.subscribe().await else {
                return;
            };
            let limit = self
                .entry
                .info
                .policy()
                .concurrency_limit()
                .map_or(DEFAULT_CONCURRENCY, usize::from);
            subscription
                .take_until(self.stop.cancelled())
                .for_each_concurrent(limit, |delivery| async {
                    match delivery {
                        Ok(delivery) => self.handle(delivery).await,
                        Err(error) => {
                            tracing::warn!(%error, "subscription error; the transport goes on");
                        }
                    }
                })
                .await;
            tracing::debug!("consumer stopped");
        }
        .instrument(span)
        .await;
    }

    /// Subscribes, trying again every [`RESUBSCRIBE_DELAY`] until it works or the consumer is
    /// stopped (`None`).
    async fn subscribe(&self) -> Option<TransportSubscription> {
        loop {
            let attempt = tokio::select! {
                () = self.stop.cancelled() => return None,
                attempt = self.transport.subscribe(self.plan.options.clone()) => attempt,
            };
            match attempt {
                Ok(subscription) => {
                    tracing::debug!("subscribed");
                    let _ = self.ready.send(Readiness::Ready);
                    return Some(subscription);
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?RESUBSCRIBE_DELAY, "cannot subscribe");
                    let _ = self.ready.send(Readiness::Failed(Arc::new(error)));
                }
            }
            tokio::select! {
                () = self.stop.cancelled() => return None,
                () = tokio::time::sleep(RESUBSCRIBE_DELAY) => {}
            }
        }
    }

    async fn handle(&self, delivery: Box<dyn Delivery>) {
        // Counted in flight, so shutdown waits for it; once the bus is closed it is left
        // unsettled, for the broker to deliver again.
        let Some(_tracked) = self.tasks.track() else {
            return;
        };
        let wire = delivery.event();
        let attempt = delivery.attempt();
        let meta = meta_of(wire);
        let span = tracing::info_span!(
            "bus.deliver",
            event = %wire.ty,
            event_id = %meta.id,
            listener = %self.entry.info.name(),
            listener_id = self.entry.info.id().get(),
            attempt,
            source = %wire.source,
        );
        let started = match self.codec_and_call(wire) {
            Ok(future) => future,
            Err(reason) => {
                tracing::warn!(parent: &span, %reason, "event rejected: dead-lettered");
                settle(delivery.reject(reason), &span).await;
                return;
            }
        };
        let running = AssertUnwindSafe(Handled {
            id: meta.id,
            future: started,
        })
        .catch_unwind();
        let policy = self.entry.info.policy();
        // `None` when the listener returned `Ok`, else what went wrong.
        let failure = async {
            let finished = match policy.timeout_after() {
                Some(timeout) => tokio::time::timeout(timeout, running)
                    .await
                    .map_err(|_| timeout),
                None => Ok(running.await),
            };
            match finished {
                Ok(Ok(Ok(()))) => None,
                Ok(Ok(Err(error))) => Some(format!("failed: {error}")),
                Ok(Err(panic)) => Some(format!("panicked: {}", panic_message(panic.as_ref()))),
                Err(timeout) => Some(format!("failed: timed out after {timeout:?}")),
            }
        };
        let failure = tokio::select! {
            biased;
            () = self.tasks.cancelled() => {
                self.tasks.count_aborted();
                tracing::info!(parent: &span, "aborted by shutdown: handed back unsettled, the broker delivers it again");
                // Still tracked: shutdown waits for the hand-back, so an exit right after it
                // does not leave the event waiting for the ack wait.
                settle(delivery.release(), &span).await;
                return;
            }
            failure = failure.instrument(span.clone()) => failure,
        };
        match failure {
            None => settle(delivery.ack(), &span).await,
            Some(failure) => {
                let reason = format!("listener `{}` {failure}", self.entry.info.name());
                let last = attempt >= self.plan.options.max_deliveries;
                if last {
                    tracing::error!(parent: &span, %reason, attempts = attempt, "delivery failed for the last time: dead-lettered");
                } else {
                    tracing::warn!(parent: &span, %reason, "delivery failed: the broker delivers it again");
                }
                settle(delivery.nack(policy.delay_after(attempt), reason), &span).await;
            }
        }
    }

    /// Decodes the payload and calls the listener; the reason when the event cannot be
    /// handled at all.
    fn codec_and_call(&self, wire: &crate::transport::WireEvent) -> Result<BoxedDelivery, String> {
        let codec = &self.plan.codec;
        let event = codec.decode(&wire.data).map_err(|error| {
            format!(
                "the payload of `{}` does not decode as `{}`: {error}",
                wire.ty,
                codec.type_name()
            )
        })?;
        self.entry
            .erased
            .listener
            .call_boxed(&event)
            .ok_or_else(|| format!("listener `{}` takes another type", self.entry.info.name()))
    }
}

/// Awaits an ack, nack or reject; a failure is logged (the broker delivers the event again
/// when its settlement did not reach it).
async fn settle(
    settlement: Pin<Box<dyn Future<Output = Result<(), TransportError>> + Send>>,
    span: &tracing::Span,
) {
    if let Err(error) = settlement.await {
        tracing::warn!(parent: span, %error, "settling the delivery failed: it may be delivered again");
    }
}

pin_project_lite::pin_project! {
    /// A listener's future, polled with its event marked as the one being handled, so events
    /// it emits record it as their causation.
    struct Handled<F> {
        id: EventId,
        #[pin]
        future: F,
    }
}

impl<F: Future> Future for Handled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _handling = Handling::enter(*this.id);
        this.future.poll(cx)
    }
}
