//! A bus with a transport: emits of the types that travel (marked `distributed`, or named by
//! the builder) are published to the broker, and every listener of such a type receives its
//! events from the broker, through a subscription of its
//! own (one durable consumer group per listener and service).
//!
//! Everything here is reached only through `Shared::remote`, which is `None` on a bus without
//! a transport: such a bus pays one branch per emit for this module.

pub(crate) mod codec;
mod consumer;
mod metrics;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::codec::{Codec, Codecs};
use crate::delivery::{EngineRef, Entry};
use crate::error::PublishError;
use crate::event::{Meta, Received};
use crate::health::{ConsumerHealth, SubscriptionState, TransportHealth};
use crate::id::{EventId, ListenerId};
use crate::policy::{Group, Policy};
use crate::tasks::Tasks;
use crate::transport::{
    CAUSATION, DEFAULT_ACK_WAIT, DEFAULT_MAX_DELIVERIES, SubscribeOptions, Transport,
    TransportError, WireEvent,
};

/// Whether a listener may receive its events from the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reach {
    /// A listener added by the user (`add_listener`, `#[bus::listener]`): distributed when
    /// its event type has a codec.
    Distributable,
    /// A listener of the bus's own making (`once`, `wait_for`, `stream`), which stays in
    /// process.
    Local,
}

/// Where a subscription stands, as [`EventBus::ready`](crate::EventBus::ready) waits for it.
#[derive(Debug, Clone)]
enum Readiness {
    Starting,
    Ready,
    Failed(Arc<TransportError>),
}

/// One listener's consumer.
struct Consumer {
    /// The listener's name, for [`Remote::health`].
    listener: String,
    options: SubscribeOptions,
    stop: CancellationToken,
    ready: watch::Receiver<Readiness>,
}

/// What a listener's subscription is, decided when it is added.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) options: SubscribeOptions,
    pub(crate) codec: Codec,
}

/// The transport side of one bus.
pub(crate) struct Remote {
    service: Arc<str>,
    transport: Arc<dyn Transport>,
    codecs: Codecs,
    consumers: Mutex<HashMap<ListenerId, Consumer>>,
    /// Cancelled by shutdown: every consumer stops taking deliveries.
    closed: CancellationToken,
    /// The consumers' tasks, which shutdown waits for: each ends by closing its subscription.
    running: TaskTracker,
    /// How often a consumer of a group samples its lag and pending count into the gauges.
    #[cfg_attr(
        not(feature = "metrics"),
        allow(dead_code, reason = "read only with the feature `metrics`")
    )]
    stats_interval: Duration,
}

impl Remote {
    /// The transport side of a bus; logs the event types that travel, so that which listeners
    /// go through the broker is never a surprise.
    pub(crate) fn new(
        service: Arc<str>,
        transport: Arc<dyn Transport>,
        extra: &[Codec],
        stats_interval: Duration,
    ) -> Self {
        let codecs = Codecs::linked_and(extra);
        tracing::info!(
            service = &*service,
            transport = transport.name(),
            types = ?codecs.type_names(),
            "distributed event types: their listeners receive them through the broker; every \
             other type stays in process"
        );
        metrics::describe();
        Remote {
            service,
            transport,
            codecs,
            consumers: Mutex::new(HashMap::new()),
            closed: CancellationToken::new(),
            running: TaskTracker::new(),
            stats_interval,
        }
    }

    /// The service name, the `source` of what this bus publishes.
    pub(crate) fn service(&self) -> &str {
        &self.service
    }

    /// The transport's name, for logs.
    pub(crate) fn transport_name(&self) -> &str {
        self.transport.name()
    }

    /// The codec of `type_id`, if that type crosses the wire.
    pub(crate) fn codec(&self, type_id: std::any::TypeId) -> Option<&Codec> {
        self.codecs.get(type_id)
    }

    /// The subscription a listener would get, or `None` when it stays in process: made by the
    /// bus, taking `AnyEvent`, or of a type without a codec.
    pub(crate) fn plan(
        &self,
        reach: Reach,
        pattern: &str,
        listener: &str,
        event_type: std::any::TypeId,
        policy: &Policy,
    ) -> Option<Plan> {
        if reach == Reach::Local {
            return None;
        }
        let codec = *self.codecs.get(event_type)?;
        let group = match policy.grouping() {
            Group::Service => Some(self.unique_group(format!("{}.{listener}", self.service))),
            Group::Named(name) => Some(name.to_owned()),
            Group::Ungrouped => None,
        };
        let max_deliveries = if policy.retries() > 0 {
            policy.max_attempts()
        } else {
            DEFAULT_MAX_DELIVERIES
        };
        // A delivery must not be handed to another instance while its listener may still run:
        // the ack wait outlasts the listener's timeout.
        let ack_wait = policy.timeout_after().map_or(DEFAULT_ACK_WAIT, |timeout| {
            DEFAULT_ACK_WAIT.max(timeout.saturating_mul(2))
        });
        let mut options = SubscribeOptions::new(pattern)
            .max_deliveries(max_deliveries)
            .ack_wait(ack_wait);
        options.group = group;
        Some(Plan { options, codec })
    }

    /// `group`, or `group-2`, `group-3`... when listeners of this bus use it already (two
    /// closures of one fn share a type name). Registration order decides, which is the same in
    /// every instance of a service that registers its listeners the same way.
    fn unique_group(&self, group: String) -> String {
        let consumers = self
            .consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let taken = |candidate: &str| {
            consumers
                .values()
                .any(|consumer| consumer.options.group.as_deref() == Some(candidate))
        };
        if !taken(&group) {
            return group;
        }
        (2..)
            .map(|n| format!("{group}-{n}"))
            .find(|candidate| !taken(candidate))
            .unwrap_or(group)
    }

    /// Starts the consumer of `entry` on this thread's runtime.
    pub(crate) fn start(&self, entry: Arc<Entry>, plan: Plan, engine: EngineRef) {
        let (ready_tx, ready) = watch::channel(Readiness::Starting);
        let stop = self.closed.child_token();
        let listener = entry.info.name().to_owned();
        let id = entry.info.id();
        match Handle::try_current() {
            Ok(runtime) => {
                let consumed = metrics::Consumed::new(
                    self.transport.name(),
                    plan.options.group.as_deref(),
                    entry.info.name(),
                );
                let consumer = consumer::Consumer {
                    transport: Arc::clone(&self.transport),
                    consumed,
                    entry,
                    plan: plan.clone(),
                    engine,
                    stop: stop.clone(),
                    ready: ready_tx,
                };
                self.running.spawn_on(consumer.run(), &runtime);
                #[cfg(feature = "metrics")]
                if plan.options.group.is_some() && self.transport.capabilities().group_stats {
                    let sampled = metrics::sample_groups(
                        Arc::clone(&self.transport),
                        plan.options.clone(),
                        self.stats_interval,
                        stop.clone(),
                    );
                    self.running.spawn_on(sampled, &runtime);
                }
            }
            Err(_) => {
                let error = TransportError::Closed {
                    transport: format!(
                        "{} (listener `{listener}` added outside a Tokio runtime: its consumer \
                         cannot start; build the bus and add listeners inside the runtime)",
                        self.transport.name()
                    ),
                };
                tracing::error!(listener, %error, "distributed listener not started");
                let _ = ready_tx.send(Readiness::Failed(Arc::new(error)));
            }
        }
        self.consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                id,
                Consumer {
                    listener,
                    options: plan.options,
                    stop,
                    ready,
                },
            );
    }

    /// Stops the consumers of the listeners that `keep` says are gone.
    pub(crate) fn stop_removed(&self, keep: impl Fn(ListenerId) -> bool) {
        let mut consumers = self
            .consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        consumers.retain(|id, consumer| {
            let kept = keep(*id);
            if !kept {
                consumer.stop.cancel();
            }
            kept
        });
    }

    /// Stops every consumer from taking more deliveries (shutdown).
    pub(crate) fn close(&self) {
        self.closed.cancel();
        self.running.close();
    }

    /// After [`close`](Remote::close) and once the deliveries have ended: waits for the
    /// consumers to close their subscriptions, then for the transport to hand back what they
    /// held (`Transport::flush`), for at most `grace`.
    pub(crate) async fn finish(&self, grace: Duration) {
        let finished = async {
            self.running.wait().await;
            self.transport.flush().await;
        };
        if tokio::time::timeout(grace, finished).await.is_err() {
            tracing::warn!(
                ?grace,
                "the transport did not finish handing back within the grace period: the \
                 events it held come back after their ack wait"
            );
        }
    }

    /// Resolves once every consumer's subscription is in place, or with the first error.
    pub(crate) async fn ready(&self) -> Result<(), Arc<TransportError>> {
        let receivers: Vec<watch::Receiver<Readiness>> = self
            .consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|consumer| consumer.ready.clone())
            .collect();
        for mut receiver in receivers {
            let state = receiver
                .wait_for(|state| !matches!(state, Readiness::Starting))
                .await
                .map(|state| state.clone());
            // A consumer whose task ended (its listener was removed) is no longer waited for.
            if let Ok(Readiness::Failed(error)) = state {
                return Err(error);
            }
        }
        Ok(())
    }

    /// The transport's and the consumers' side of [`EventBus::health`](crate::EventBus::health):
    /// each consumer's subscription state and its group's stats, asked of the broker now.
    pub(crate) async fn health(&self) -> (TransportHealth, Vec<ConsumerHealth>) {
        let consumers: Vec<(String, SubscribeOptions, Readiness)> = self
            .consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|consumer| {
                let state = consumer.ready.borrow().clone();
                (consumer.listener.clone(), consumer.options.clone(), state)
            })
            .collect();
        let mut healths = Vec::with_capacity(consumers.len());
        for (listener, options, state) in consumers {
            let subscription = match state {
                Readiness::Starting => SubscriptionState::Starting,
                Readiness::Ready => SubscriptionState::Subscribed,
                Readiness::Failed(error) => SubscriptionState::Failed(error.to_string()),
            };
            let asked = tokio::time::timeout(HEALTH_TIMEOUT, self.transport.group_stats(&options));
            let stats = match asked.await {
                Ok(stats) => stats.map_err(|error| error.to_string()),
                Err(_) => Err(format!(
                    "the broker did not answer within {HEALTH_TIMEOUT:?} ({})",
                    self.transport.name()
                )),
            };
            healths.push(ConsumerHealth::new(
                listener,
                options.pattern,
                options.group,
                subscription,
                stats,
            ));
        }
        healths.sort_by(|a, b| a.listener().cmp(b.listener()));
        let transport = TransportHealth::new(
            self.transport.name().to_owned(),
            self.transport.is_connected(),
        );
        (transport, healths)
    }

    /// Publishes `wire` on `runtime`, counted in flight by `tasks` until the broker has it.
    /// The handle resolves with the outcome; a failure is logged whether or not anybody
    /// awaits it.
    pub(crate) fn publish(
        &self,
        runtime: &Handle,
        tasks: &Arc<Tasks>,
        wire: WireEvent,
        id: EventId,
    ) -> tokio::task::JoinHandle<Result<(), PublishError>> {
        let transport = Arc::clone(&self.transport);
        let tracked = tasks.track();
        let span = publish_span(transport.name(), &wire);
        let mut wire = wire;
        crate::trace::write_publish(&mut wire, &span);
        runtime.spawn(tracing::Instrument::instrument(
            async move {
                let _tracked = tracked;
                let event = wire.ty.clone();
                let start = tokio::time::Instant::now();
                let published = transport.publish(wire).await;
                metrics::published(transport.name(), &event, start.elapsed(), published.is_ok());
                match published {
                    Ok(()) => Ok(()),
                    Err(error) => {
                        let error = PublishError::Transport {
                            event,
                            event_id: id,
                            source: Arc::new(error),
                        };
                        tracing::error!(%error, "event not published");
                        Err(error)
                    }
                }
            },
            span,
        ))
    }

    /// The wire form of an event emitted here: this service's, with its id, time and
    /// causation; an event emitted as received (a relayed one) keeps its other extensions
    /// too, its trace context among them.
    pub(crate) fn wire(&self, name: &str, meta: &Meta, data: Vec<u8>) -> WireEvent {
        let mut wire = WireEvent::new(meta.id.to_string(), self.service(), name, data)
            .at(meta.emitted_at())
            .content_type(codec::JSON);
        if let Some(received) = &meta.received {
            wire.extensions.clone_from(&received.extensions);
        }
        if let Some(causation) = &meta.causation {
            wire = wire.extension(CAUSATION, causation.to_string());
        }
        wire
    }
}

/// The span of one publish, named and described as the OpenTelemetry messaging conventions
/// say when the `opentelemetry` feature is on (`publish <event>`, kind producer).
fn publish_span(transport: &str, wire: &WireEvent) -> tracing::Span {
    #[cfg(feature = "opentelemetry")]
    let span = tracing::info_span!(
        "bus.publish",
        event = %wire.ty,
        event_id = %wire.id,
        otel.name = %format_args!("publish {}", wire.ty),
        otel.kind = "producer",
        messaging.system = transport,
        messaging.destination.name = %wire.ty,
        messaging.message.id = %wire.id,
        messaging.operation.name = "publish",
        messaging.operation.type = "send",
    );
    #[cfg(not(feature = "opentelemetry"))]
    let span = tracing::info_span!(
        "bus.publish",
        event = %wire.ty,
        event_id = %wire.id,
        transport,
    );
    span
}

/// The envelope of an event that came from the broker: its id and causation as they came
/// (ids this crate made read back as themselves), its time as the instant it names, whatever
/// its offset (a message without a time reads as received now), its source, content type and
/// other extensions.
///
/// # Errors
///
/// The dead letter's reason when `time` is not an RFC 3339 timestamp, as CloudEvents requires.
pub(crate) fn meta_of(wire: &WireEvent) -> Result<Meta, String> {
    let emitted_at = match wire.time.as_deref() {
        None => SystemTime::now(),
        Some(time) => parse_time(time).ok_or_else(|| {
            format!(
                "the `time` attribute (header `ce-time`) `{time}` of `{}` is not an RFC 3339 \
                 timestamp",
                wire.ty
            )
        })?,
    };
    let mut extensions = wire.extensions.clone();
    let causation = extensions
        .remove(CAUSATION)
        .map(|causation| EventId::from_wire(&causation));
    Ok(Meta {
        id: EventId::from_wire(&wire.id),
        emitted_at,
        causation,
        received: Some(Arc::new(Received {
            source: Arc::from(wire.source.as_str()),
            content_type: wire.datacontenttype.clone(),
            extensions,
        })),
    })
}

/// The instant an RFC 3339 timestamp names, in whatever offset it is written
/// (`2026-12-07T12:00:00+02:00` is 10:00 UTC).
fn parse_time(text: &str) -> Option<SystemTime> {
    let time =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some(SystemTime::from(time))
}

/// How long [`Remote::health`] waits for the stats of one group.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a consumer waits before subscribing again after a failure.
pub(crate) const RESUBSCRIBE_DELAY: Duration = Duration::from_secs(1);
