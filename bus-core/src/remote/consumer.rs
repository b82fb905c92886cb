//! One distributed listener's consumer: subscribes (again, after a failure), runs the listener
//! on each delivery through the engine's attempt ([`attempt::run`]: the same layers, panic
//! isolation, timeout and dead-letter hook as an in-process delivery), and settles it: ack
//! after `Ok`, nack with the listener's backoff after an error, a panic or a timeout (the
//! broker dead-letters the last), reject when the event's time is not RFC 3339, its content
//! type is not the codec's or its payload does not decode. A delivery cut short by shutdown is
//! never acked: it is released (handed back), so the broker delivers it again.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::metrics::{Consumed, DeadLetter};
use super::{Plan, RESUBSCRIBE_DELAY, Readiness, meta_of};
use crate::delivery::attempt::{self, Attempt, Handled, Outcome, Scope};
use crate::delivery::{Engine, EngineRef, Entry};
use crate::event::ErasedEvent;
use crate::trace::{Continued, TraceContext};
use crate::transport::{Delivery, Transport, TransportError, TransportSubscription, WireEvent};

/// How many deliveries of one listener run at once when its policy sets no concurrency.
pub(crate) const DEFAULT_CONCURRENCY: usize = 64;

pub(super) struct Consumer {
    pub(super) transport: Arc<dyn Transport>,
    /// The labels of its deliveries' metrics.
    pub(super) consumed: Consumed,
    pub(super) entry: Arc<Entry>,
    pub(super) plan: Plan,
    pub(super) engine: EngineRef,
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
        let Some(bus) = self.engine.upgrade() else {
            // The bus was dropped: the delivery goes back unsettled, and the consumer stops.
            self.stop.cancel();
            return;
        };
        let engine: &Engine = (*bus).as_ref();
        let tasks = &engine.tasks;
        // Counted in flight, so shutdown waits for it; once the bus is closed it is left
        // unsettled, for the broker to deliver again.
        let Some(_tracked) = tasks.track() else {
            return;
        };
        let received = tokio::time::Instant::now();
        let wire = delivery.event();
        let number = delivery.attempt();
        self.consumed.received(number);
        let trace = TraceContext::of(wire);
        let span = self.deliver_span(wire, number);
        #[cfg(feature = "opentelemetry")]
        crate::trace::otel::continue_in(&span, trace.as_ref(), self.entry.info.policy().tracing());
        let decoded = meta_of(wire).and_then(|meta| Ok((meta, self.decode(wire)?)));
        let (meta, event) = match decoded {
            Ok(event) => event,
            Err(reason) => {
                tracing::warn!(parent: &span, %reason, "event rejected: dead-lettered");
                self.consumed.dead_lettered(DeadLetter::Rejected);
                settle(delivery.reject(reason), &span).await;
                self.consumed.settled(received.elapsed());
                return;
            }
        };
        let name: Arc<str> = Arc::from(wire.ty.as_str());
        // The layers of now: a layer added after the listener sees its later deliveries.
        let snapshot = engine.snapshot.load_full();
        let scope = Scope {
            event: &name,
            entry: &self.entry,
            meta: &meta,
            layers: &snapshot.layers,
        };
        let policy = self.entry.info.policy();
        let last = number >= self.plan.options.max_deliveries;
        let attempt = Attempt {
            number,
            last,
            timeout: policy.timeout_after(),
            dead_letter: engine.dead_letter.as_ref(),
        };
        let running = Continued::new(
            trace,
            Handled::new(meta.id.clone(), attempt::run(&scope, &event, attempt)),
        );
        let outcome = tokio::select! {
            biased;
            () = tasks.cancelled() => None,
            outcome = running.instrument(span.clone()) => Some(outcome),
        };
        let Some(outcome) = outcome else {
            tasks.count_aborted();
            tracing::info!(parent: &span, "aborted by shutdown: handed back unsettled, the broker delivers it again");
            // Still tracked: shutdown waits for the hand-back, so an exit right after it does
            // not leave the event waiting for the ack wait.
            settle(delivery.release(), &span).await;
            self.consumed.settled(received.elapsed());
            return;
        };
        match outcome {
            Outcome::Delivered => settle(delivery.ack(), &span).await,
            failure => {
                // The layers have logged the failure, and the dead letter if it was the last.
                let reason = failure.reason(self.entry.info.name());
                tracing::debug!(parent: &span, %reason, "nacked: the broker delivers it again or dead-letters it");
                if last {
                    self.consumed.dead_lettered(DeadLetter::Exhausted);
                }
                settle(delivery.nack(policy.delay_after(number), reason), &span).await;
            }
        }
        self.consumed.settled(received.elapsed());
    }

    /// The span of one delivery, named and described as the OpenTelemetry messaging
    /// conventions say when the `opentelemetry` feature is on (`process <event>`, kind
    /// consumer; `attempt` is the delivery count, 1 the first time).
    fn deliver_span(&self, wire: &WireEvent, number: u32) -> tracing::Span {
        let listener = self.entry.info.name();
        let listener_id = self.entry.info.id().get();
        #[cfg(feature = "opentelemetry")]
        let span = tracing::info_span!(
            "bus.deliver",
            event = %wire.ty,
            event_id = %wire.id,
            listener = %listener,
            listener_id,
            attempt = number,
            source = %wire.source,
            otel.name = %format_args!("process {}", wire.ty),
            otel.kind = "consumer",
            messaging.system = self.transport.name(),
            messaging.destination.name = %wire.ty,
            messaging.message.id = %wire.id,
            messaging.consumer.group.name = self.plan.options.group.as_deref(),
            messaging.operation.name = "process",
            messaging.operation.type = "process",
        );
        #[cfg(not(feature = "opentelemetry"))]
        let span = tracing::info_span!(
            "bus.deliver",
            event = %wire.ty,
            event_id = %wire.id,
            listener = %listener,
            listener_id,
            attempt = number,
            source = %wire.source,
        );
        span
    }

    /// The event of `wire`, decoded as the listener's type; the reason when it cannot be: its
    /// `datacontenttype` is not what the listener's codec reads (it is not decoded at all), or
    /// its payload does not decode.
    fn decode(&self, wire: &WireEvent) -> Result<ErasedEvent, String> {
        let codec = &self.plan.codec;
        if let Some(content_type) = wire.datacontenttype.as_deref()
            && !codec.accepts(Some(content_type))
        {
            return Err(format!(
                "the payload of `{}` is `{content_type}` (its `datacontenttype`), but listener \
                 `{}` decodes `{}` from {}",
                wire.ty,
                self.entry.info.name(),
                codec.type_name(),
                codec.media_type(),
            ));
        }
        codec.decode(&wire.data).map_err(|error| {
            format!(
                "the payload of `{}` does not decode as `{}`: {error}",
                wire.ty,
                codec.type_name()
            )
        })
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
