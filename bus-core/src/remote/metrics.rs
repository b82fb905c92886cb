//! What the distributed path records through the [`metrics`](https://docs.rs/metrics) facade
//! when this crate's feature `metrics` is on, whether or not a
//! [`MetricsLayer`](crate::layer::MetricsLayer) is added: the layer sees every attempt of a
//! listener, in process or from a broker; these see the broker's side, publishes and the
//! deliveries of a consumer. Without the feature every function here does nothing.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `bus_published_total` | counter | `transport`, `event` |
//! | `bus_publish_failures_total` | counter | `transport`, `event` |
//! | `bus_publish_duration_seconds` | histogram | `transport`, `event` |
//! | `bus_consumer_received_total` | counter | `transport`, `group`, `listener` |
//! | `bus_consumer_redelivered_total` | counter | `transport`, `group`, `listener` |
//! | `bus_consumer_dead_lettered_total` | counter | `transport`, `group`, `listener`, `reason` |
//! | `bus_consumer_processing_seconds` | histogram | `transport`, `group`, `listener` |
//! | `bus_consumer_lag` | gauge | `transport`, `group` |
//! | `bus_consumer_pending` | gauge | `transport`, `group` |
//!
//! The two gauges are [`Transport::group_stats`](crate::transport::Transport::group_stats),
//! sampled by each consumer of a group on the bus's
//! [`group_stats_interval`](crate::EventBusBuilder::group_stats_interval) while it runs.
//!
//! `group` is empty for a listener outside any group. `reason` is `rejected` (the event could
//! not be read: its time, content type or payload) or `exhausted` (its last allowed delivery
//! failed).

use std::time::Duration;

/// Publishes the broker stored: [`published`].
#[cfg(feature = "metrics")]
const PUBLISHED: &str = "bus_published_total";
/// Publishes that failed: [`published`].
#[cfg(feature = "metrics")]
const PUBLISH_FAILURES: &str = "bus_publish_failures_total";
/// From the publish to the broker's answer, stored or not: [`published`].
#[cfg(feature = "metrics")]
const PUBLISH_DURATION: &str = "bus_publish_duration_seconds";
/// Deliveries a consumer took from the broker: [`Consumed::received`].
#[cfg(feature = "metrics")]
const RECEIVED: &str = "bus_consumer_received_total";
/// Deliveries whose attempt is past the first: [`Consumed::received`].
#[cfg(feature = "metrics")]
const REDELIVERED: &str = "bus_consumer_redelivered_total";
/// Deliveries that end as dead letters: [`Consumed::dead_lettered`].
#[cfg(feature = "metrics")]
const DEAD_LETTERED: &str = "bus_consumer_dead_lettered_total";
/// From a delivery's receipt to its settlement: [`Consumed::settled`].
#[cfg(feature = "metrics")]
const PROCESSING: &str = "bus_consumer_processing_seconds";

/// Events of a group's pattern no member was handed yet: [`sample_groups`].
#[cfg(feature = "metrics")]
const LAG: &str = "bus_consumer_lag";
/// Events handed to a group's members and not settled yet: [`sample_groups`].
#[cfg(feature = "metrics")]
const PENDING: &str = "bus_consumer_pending";

/// Why a delivery ends as a dead letter.
#[derive(Debug, Clone, Copy)]
pub(crate) enum DeadLetter {
    /// The event could not be read (its time, content type or payload).
    Rejected,
    /// Its last allowed delivery failed.
    Exhausted,
}

/// Records a publish of `event` through `transport` that took `elapsed`.
#[cfg_attr(
    not(feature = "metrics"),
    allow(unused_variables, reason = "read only with the feature `metrics`")
)]
pub(crate) fn published(transport: &str, event: &str, elapsed: Duration, stored: bool) {
    #[cfg(feature = "metrics")]
    {
        let labels = [
            ("transport", transport.to_owned()),
            ("event", event.to_owned()),
        ];
        let name = if stored { PUBLISHED } else { PUBLISH_FAILURES };
        metrics::counter!(name, &labels).increment(1);
        metrics::histogram!(PUBLISH_DURATION, &labels).record(elapsed.as_secs_f64());
    }
}

/// The labels of one consumer's deliveries, made once per consumer.
#[derive(Debug, Clone)]
pub(crate) struct Consumed {
    #[cfg(feature = "metrics")]
    labels: [(&'static str, String); 3],
}

impl Consumed {
    /// The deliveries of `listener` in `group` (`None`: outside any group) on `transport`.
    #[cfg_attr(
        not(feature = "metrics"),
        allow(unused_variables, reason = "read only with the feature `metrics`")
    )]
    pub(crate) fn new(transport: &str, group: Option<&str>, listener: &str) -> Consumed {
        Consumed {
            #[cfg(feature = "metrics")]
            labels: [
                ("transport", transport.to_owned()),
                ("group", group.unwrap_or_default().to_owned()),
                ("listener", listener.to_owned()),
            ],
        }
    }

    /// A delivery was received; `attempt` is its number (1 the first time).
    #[cfg_attr(
        not(feature = "metrics"),
        allow(unused_variables, reason = "read only with the feature `metrics`")
    )]
    pub(crate) fn received(&self, attempt: u32) {
        #[cfg(feature = "metrics")]
        {
            metrics::counter!(RECEIVED, &self.labels).increment(1);
            if attempt > 1 {
                metrics::counter!(REDELIVERED, &self.labels).increment(1);
            }
        }
    }

    /// A delivery ends as a dead letter, for `why`.
    #[cfg_attr(
        not(feature = "metrics"),
        allow(unused_variables, reason = "read only with the feature `metrics`")
    )]
    pub(crate) fn dead_lettered(&self, why: DeadLetter) {
        #[cfg(feature = "metrics")]
        {
            let reason = match why {
                DeadLetter::Rejected => "rejected",
                DeadLetter::Exhausted => "exhausted",
            };
            let [transport, group, listener] = self.labels.clone();
            metrics::counter!(
                DEAD_LETTERED,
                &[transport, group, listener, ("reason", reason.to_owned())]
            )
            .increment(1);
        }
    }

    /// A delivery was settled (acked, nacked, rejected or handed back) `elapsed` after it was
    /// received.
    #[cfg_attr(
        not(feature = "metrics"),
        allow(unused_variables, reason = "read only with the feature `metrics`")
    )]
    pub(crate) fn settled(&self, elapsed: Duration) {
        #[cfg(feature = "metrics")]
        metrics::histogram!(PROCESSING, &self.labels).record(elapsed.as_secs_f64());
    }
}

/// Samples the lag and pending count of the group of `options` every `interval` into the
/// gauges, until `stop`. A sample that fails is logged and skipped (the gauges keep their last
/// value); a group the broker does not know yet is not recorded.
#[cfg(feature = "metrics")]
pub(crate) async fn sample_groups(
    transport: std::sync::Arc<dyn crate::transport::Transport>,
    options: crate::transport::SubscribeOptions,
    interval: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let Some(group) = options.group.clone() else {
        return;
    };
    let labels = [("transport", transport.name().to_owned()), ("group", group)];
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match transport.group_stats(&options).await {
            Ok(Some(stats)) => {
                metrics::gauge!(LAG, &labels).set(stats.lag as f64);
                metrics::gauge!(PENDING, &labels).set(stats.pending as f64);
            }
            Ok(None) => {}
            Err(error) => {
                tracing::debug!(%error, group = %labels[1].1, "group stats not sampled");
            }
        }
    }
}

/// Describes the metrics to the recorder current when a bus with a transport is built, once:
/// not on every publish and delivery, which would take the recorder's lock seven times each.
pub(crate) fn describe() {
    #[cfg(feature = "metrics")]
    {
        use metrics::Unit;
        metrics::describe_counter!(PUBLISHED, "Publishes the broker stored, per event name.");
        metrics::describe_counter!(PUBLISH_FAILURES, "Publishes that failed, per event name.");
        metrics::describe_histogram!(
            PUBLISH_DURATION,
            Unit::Seconds,
            "From a publish to the broker's answer, per event name."
        );
        metrics::describe_counter!(RECEIVED, "Deliveries a consumer took from the broker.");
        metrics::describe_counter!(REDELIVERED, "Deliveries past their first attempt.");
        metrics::describe_counter!(
            DEAD_LETTERED,
            "Deliveries that ended as dead letters: rejected (unreadable) or exhausted."
        );
        metrics::describe_histogram!(
            PROCESSING,
            Unit::Seconds,
            "From a delivery's receipt to its settlement."
        );
        metrics::describe_gauge!(LAG, "Events of a group's pattern no member was handed yet.");
        metrics::describe_gauge!(
            PENDING,
            "Events handed to a group's members and not settled yet."
        );
    }
}
