//! What the broker scenarios (n), (r), (p) and (q) share: the event they publish, the guard on
//! each phase, the measure of one run, and the driver's loop over the rows with its table.
//!
//! Scenario (q) (`crate::amqp`) also runs its rows through the trait-shaped part: a broker
//! client is a `Side` (publish, subscribe to `GROUP`) whose consumer is a `Consume`
//! yielding `Received` messages, and `measure_side` runs the three phases on any of them;
//! `TransportSide` is that for any `Transport`, and `measure_bus` the three phases
//! through an `EventBus` on any transport. (n), (r) and (p) predate it and keep their own
//! copies of those loops.

use std::collections::HashSet;
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bus::EventBus;
use bus_core::transport::{
    Delivery, SubscribeOptions, Transport, TransportSubscription, WireEvent,
};
use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

/// How long any phase of a row may take before the row fails.
pub(crate) const PHASE_GUARD: Duration = Duration::from_secs(60);

/// The event name every row publishes.
pub(crate) const EVENT: &str = "bench.e";

/// The group both sides of a row consume through.
pub(crate) const GROUP: &str = "bench";

/// What one run of one row measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measure {
    /// Events per second, every publish confirmed by the broker.
    pub publish: f64,
    /// Events per second, published, received and acked.
    pub end_to_end: f64,
    /// Publish to receipt, median, in nanoseconds.
    pub p50: f64,
    /// Publish to receipt, 99th percentile, in nanoseconds.
    pub p99: f64,
}

/// Events per second.
pub(crate) fn rate(events: u64, elapsed: Duration) -> f64 {
    events as f64 / elapsed.as_secs_f64()
}

/// The `q` quantile of sorted samples (`NaN` without samples).
pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// `future`, or the failure of `phase` after [`PHASE_GUARD`]: a stuck row fails, the run
/// goes on.
pub(crate) async fn guard<T>(phase: &str, future: impl Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(PHASE_GUARD, future)
        .await
        .map_err(|_| format!("{phase}: not done within {PHASE_GUARD:?}"))
}

/// Event `seq` of phase `tag`: the attributes a bus would send (id, source, type, time,
/// content type) and a small JSON payload.
pub(crate) fn event(prefix: &str, tag: &str, seq: u64) -> WireEvent {
    WireEvent::new(
        format!("{prefix}-{tag}-{seq}"),
        "bench",
        EVENT,
        format!("{{\"seq\":{seq}}}"),
    )
    .at(SystemTime::now())
    .content_type("application/json")
}

/// The sizes of the three phases of a run of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phases {
    /// Events published in the publish phase.
    pub published: u64,
    /// Events published and consumed in the end-to-end phase.
    pub events: u64,
    /// Publishes in flight at most (awaiting their confirm).
    pub window: usize,
    /// Untimed latency round trips first.
    pub warmup: u64,
    /// Timed latency samples.
    pub samples: u64,
}

/// A broker client of a row: publishes, and subscribes to [`EVENT`] in [`GROUP`].
pub(crate) trait Side: Clone + Send + Sync + 'static {
    /// What [`subscribe`](Side::subscribe) opens.
    type Consumer: Consume;

    /// Publishes one event and waits for the broker's confirm.
    fn publish(&self, event: WireEvent) -> impl Future<Output = Result<(), String>> + Send;

    /// Joins [`GROUP`] from now on.
    async fn subscribe(&self) -> Result<Self::Consumer, String>;
}

/// A subscription of a [`Side`].
pub(crate) trait Consume {
    /// One message received.
    type Received: Received;

    /// The next message.
    async fn receive(&mut self) -> Result<Self::Received, String>;
}

/// A message a [`Consume`] received.
pub(crate) trait Received {
    /// The event's id.
    fn id(&self) -> &str;

    /// Acknowledges it.
    async fn ack(self) -> Result<(), String>;
}

/// Publishes `count` events of phase `tag` with `window` in flight.
async fn publish_all<S: Side>(
    side: &S,
    prefix: &str,
    tag: &str,
    count: u64,
    window: usize,
) -> Result<(), String> {
    futures_util::stream::iter(0..count)
        .map(|seq| side.publish(event(prefix, tag, seq)))
        .buffered(window)
        .try_for_each(|()| std::future::ready(Ok(())))
        .await
}

/// The three phases through `side`: publish ([`Phases::published`] events, [`Phases::window`]
/// in flight, timed until the last confirm); `between` (untimed: what the row does between
/// the two, e.g. removing what stored the first phase's events); end to end (the group
/// subscribed first, then [`Phases::events`] published by another task while this one
/// receives and acks each, every id checked, timed until the last ack and the last confirm);
/// latency (one event at a time, publish call to receipt).
pub(crate) async fn measure_side<S: Side>(
    side: &S,
    phases: Phases,
    prefix: &str,
    between: impl Future<Output = Result<(), String>>,
) -> Result<Measure, String> {
    // 1. Publish.
    let start = Instant::now();
    guard(
        "publish",
        publish_all(side, prefix, "p", phases.published, phases.window),
    )
    .await??;
    let publish = rate(phases.published, start.elapsed());
    between.await?;

    // 2. End to end.
    let mut consumer = side.subscribe().await?;
    let start = Instant::now();
    let (publisher, prefix_owned) = (side.clone(), prefix.to_owned());
    let publishing = tokio::spawn(async move {
        publish_all(&publisher, &prefix_owned, "e", phases.events, phases.window).await
    });
    let expected = format!("{prefix}-e-");
    let mut seen = HashSet::with_capacity(usize::try_from(phases.events).unwrap_or(0));
    guard("end to end", async {
        while (seen.len() as u64) < phases.events {
            let received = consumer.receive().await?;
            let id = received.id();
            let seq = id
                .strip_prefix(&expected)
                .and_then(|seq| seq.parse::<u64>().ok())
                .filter(|&seq| seq < phases.events)
                .ok_or_else(|| format!("unexpected event {id}"))?;
            if !seen.insert(seq) {
                return Err(format!("event {id} delivered twice"));
            }
            received.ack().await?;
        }
        Ok::<_, String>(())
    })
    .await??;
    guard("end to end (publishes)", publishing)
        .await?
        .map_err(|e| format!("publishing task: {e}"))??;
    let end_to_end = rate(phases.events, start.elapsed());

    // 3. Latency.
    let mut times = Vec::with_capacity(usize::try_from(phases.samples).unwrap_or(0));
    guard("latency", async {
        for seq in 0..phases.warmup + phases.samples {
            let event = event(prefix, "l", seq);
            let id = event.id.clone();
            let start = Instant::now();
            let (published, received) = tokio::join!(side.publish(event), async {
                let received = consumer.receive().await;
                (start.elapsed(), received)
            });
            published?;
            let (elapsed, received) = received;
            let received = received?;
            if received.id() != id {
                return Err(format!("expected {id}, received {}", received.id()));
            }
            received.ack().await?;
            if seq >= phases.warmup {
                times.push(elapsed.as_nanos() as f64);
            }
        }
        Ok::<_, String>(())
    })
    .await??;
    times.sort_by(f64::total_cmp);
    drop(consumer);
    Ok(Measure {
        publish,
        end_to_end,
        p50: percentile(&times, 0.50),
        p99: percentile(&times, 0.99),
    })
}

/// Any [`Transport`] as a [`Side`], through the trait only.
#[derive(Clone)]
pub(crate) struct TransportSide<T>(pub(crate) T);

impl<T: Transport + Clone> Side for TransportSide<T> {
    type Consumer = TransportSubscription;

    fn publish(&self, event: WireEvent) -> impl Future<Output = Result<(), String>> + Send {
        let published = self.0.publish(event);
        async move { published.await.map_err(|e| e.to_string()) }
    }

    async fn subscribe(&self) -> Result<TransportSubscription, String> {
        self.0
            .subscribe(SubscribeOptions::new(EVENT).group(GROUP))
            .await
            .map_err(|e| e.to_string())
    }
}

impl Consume for TransportSubscription {
    type Received = Box<dyn Delivery>;

    async fn receive(&mut self) -> Result<Box<dyn Delivery>, String> {
        match self.next().await {
            Some(Ok(delivery)) => Ok(delivery),
            Some(Err(e)) => Err(e.to_string()),
            None => Err("the subscription ended".to_owned()),
        }
    }
}

impl Received for Box<dyn Delivery> {
    fn id(&self) -> &str {
        &self.event().id
    }

    async fn ack(self) -> Result<(), String> {
        Delivery::ack(self).await.map_err(|e| e.to_string())
    }
}

/// The event a bus row emits: serde, so the bus publishes it (JSON) and its listener is
/// distributed.
#[derive(Debug, Serialize, Deserialize)]
struct Order {
    seq: u64,
}

/// The three phases through an `EventBus` of service `bench` wired to `transport`: awaiting
/// an `Emission` waits for the broker's confirm; the listener (a distributed one, group
/// `bench.<listener>`, the default concurrency) gets each event from the broker, and the bus
/// acks it when the listener returns. End to end is timed until every event was handled and
/// every publish confirmed (the acks are sent as each listener returns, not awaited).
/// `between` as in [`measure_side`].
pub(crate) async fn measure_bus<T: Transport + Clone>(
    transport: T,
    phases: Phases,
    between: impl Future<Output = Result<(), String>>,
) -> Result<Measure, String> {
    let bus = EventBus::builder()
        .service("bench")
        .transport(transport)
        .distributed::<Order>()
        .build();
    let emit_all = |bus: EventBus, base: u64, count: u64| async move {
        futures_util::stream::iter(base..base + count)
            .map(|seq| bus.emit(EVENT, Order { seq }).into_future())
            .buffered(phases.window)
            .map(|report| match report.published() {
                Some(Ok(())) => Ok(()),
                Some(Err(error)) => Err(format!("publish failed: {error}")),
                None => Err("the emit was not published".to_owned()),
            })
            .try_for_each(|()| std::future::ready(Ok(())))
            .await
    };

    // 1. Publish (no listener yet).
    let start = Instant::now();
    guard("publish", emit_all(bus.clone(), 0, phases.published)).await??;
    let publish = rate(phases.published, start.elapsed());
    between.await?;

    // 2. End to end, through a listener whose consumer exists before the first emit.
    let (sender, mut received) = tokio::sync::mpsc::unbounded_channel::<u64>();
    bus.add_listener(EVENT, move |order: Arc<Order>| {
        let _ = sender.send(order.seq);
        async {}
    });
    bus.ready().await.map_err(|e| e.to_string())?;
    let base = phases.published;
    let start = Instant::now();
    let publishing = tokio::spawn(emit_all(bus.clone(), base, phases.events));
    let mut seen = HashSet::with_capacity(usize::try_from(phases.events).unwrap_or(0));
    guard("end to end", async {
        while (seen.len() as u64) < phases.events {
            let seq = received
                .recv()
                .await
                .ok_or("the listener is gone".to_owned())?;
            if !(base..base + phases.events).contains(&seq) || !seen.insert(seq) {
                return Err(format!("event {seq} delivered twice or out of phase"));
            }
        }
        Ok::<_, String>(())
    })
    .await??;
    guard("end to end (publishes)", publishing)
        .await?
        .map_err(|e| format!("publishing task: {e}"))??;
    let end_to_end = rate(phases.events, start.elapsed());

    // 3. Latency: emit to the listener's call.
    let mut times = Vec::with_capacity(usize::try_from(phases.samples).unwrap_or(0));
    let base = phases.published + phases.events;
    guard("latency", async {
        for seq in base..base + phases.warmup + phases.samples {
            let start = Instant::now();
            let (report, got) = tokio::join!(bus.emit(EVENT, Order { seq }), async {
                let got = received.recv().await;
                (start.elapsed(), got)
            });
            if !matches!(report.published(), Some(Ok(()))) {
                return Err(format!("event {seq} not published: {report:?}"));
            }
            let (elapsed, got) = got;
            if got != Some(seq) {
                return Err(format!("expected {seq}, received {got:?}"));
            }
            if seq >= base + phases.warmup {
                times.push(elapsed.as_nanos() as f64);
            }
        }
        Ok::<_, String>(())
    })
    .await??;
    times.sort_by(f64::total_cmp);
    bus.shutdown(Duration::from_secs(5)).await;
    Ok(Measure {
        publish,
        end_to_end,
        p50: percentile(&times, 0.50),
        p99: percentile(&times, 0.99),
    })
}

/// A row as the table shows it.
#[derive(Debug, Clone)]
pub struct RowLabel {
    /// The system's name in the table.
    pub label: String,
    /// For a row compared with a raw loop: that row's index, and how the ratio line names it
    /// (e.g. `raw (batch 1)`).
    pub against: Option<(usize, String)>,
}

/// The measures of every run of every row; a row that failed once is not run again.
#[derive(Debug)]
pub struct Runs {
    rows: Vec<RowLabel>,
    measures: Vec<Vec<Measure>>,
    failures: Vec<Option<String>>,
    started: Instant,
}

impl Runs {
    /// Runs every row `runs` times, interleaved (run 1 of every row, then run 2, ...), so that
    /// a slow spell of the machine touches every row alike. `run(row, run)` measures one;
    /// progress goes to stderr, each line starting with `id`.
    pub fn measure(
        id: &str,
        rows: Vec<RowLabel>,
        runs: usize,
        mut run: impl FnMut(usize, usize) -> Result<Measure, String>,
    ) -> Runs {
        let mut measures = vec![Vec::new(); rows.len()];
        let mut failures: Vec<Option<String>> = vec![None; rows.len()];
        let started = Instant::now();
        for round in 1..=runs {
            for (index, row) in rows.iter().enumerate() {
                if failures[index].is_some() {
                    continue;
                }
                eprint!("{id} {} run {round}/{runs}: ", row.label);
                match run(index, round) {
                    Ok(m) => {
                        eprintln!(
                            "publish {:.0}/s, end to end {:.0}/s, latency p50 {:.0} us, p99 {:.0} us",
                            m.publish,
                            m.end_to_end,
                            m.p50 / 1e3,
                            m.p99 / 1e3
                        );
                        measures[index].push(m);
                    }
                    Err(why) => {
                        eprintln!("FAILED: {why}");
                        failures[index] = Some(why);
                    }
                }
            }
        }
        Runs {
            rows,
            measures,
            failures,
            started,
        }
    }

    /// Seconds since the first run started.
    pub fn elapsed_secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// The median of `field` over the runs of row `index`; `None` when the row failed.
    fn median(&self, index: usize, field: fn(&Measure) -> f64) -> Option<f64> {
        let mut values: Vec<f64> = self.measures[index].iter().map(field).collect();
        values.sort_by(f64::total_cmp);
        (self.failures[index].is_none() && !values.is_empty()).then(|| values[values.len() / 2])
    }

    /// The markdown table: medians of every row, then each compared row ÷ its raw loop, then
    /// the failures.
    pub fn table(&self) -> String {
        let show = |value: Option<f64>, scale: f64| {
            value.map_or_else(|| "failed".to_owned(), |v| format!("{:.0}", v / scale))
        };
        let mut out = String::from(
            "| system | publish (events/s) | end to end (events/s) | latency p50 / p99 (µs) |\n\
             |---|---:|---:|---:|\n",
        );
        for (index, row) in self.rows.iter().enumerate() {
            out.push_str(&format!(
                "| {} | {} | {} | {} / {} |\n",
                row.label,
                show(self.median(index, |m| m.publish), 1.0),
                show(self.median(index, |m| m.end_to_end), 1.0),
                show(self.median(index, |m| m.p50), 1e3),
                show(self.median(index, |m| m.p99), 1e3),
            ));
        }
        for (index, row) in self.rows.iter().enumerate() {
            let Some((raw, raw_label)) = &row.against else {
                continue;
            };
            let ratio = |field: fn(&Measure) -> f64| match (
                self.median(index, field),
                self.median(*raw, field),
            ) {
                (Some(a), Some(b)) => format!("{:.2}x", a / b),
                _ => "-".to_owned(),
            };
            out.push_str(&format!(
                "| {} ÷ {raw_label} | {} | {} | {} / {} |\n",
                row.label,
                ratio(|m| m.publish),
                ratio(|m| m.end_to_end),
                ratio(|m| m.p50),
                ratio(|m| m.p99),
            ));
        }
        for (index, row) in self.rows.iter().enumerate() {
            if let Some(why) = &self.failures[index] {
                out.push_str(&format!("\n{} failed: {why}\n", row.label));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measure(publish: f64) -> Measure {
        Measure {
            publish,
            end_to_end: publish / 2.0,
            p50: 1e3,
            p99: 2e3,
        }
    }

    #[test]
    fn the_table_shows_medians_ratios_and_failures() {
        let rows = vec![
            RowLabel {
                label: "raw".to_owned(),
                against: None,
            },
            RowLabel {
                label: "ours".to_owned(),
                against: Some((0, "raw (batch 1)".to_owned())),
            },
            RowLabel {
                label: "broken".to_owned(),
                against: Some((0, "raw (batch 1)".to_owned())),
            },
        ];
        let values = [[100.0, 300.0, 200.0], [50.0, 90.0, 150.0]];
        let runs = Runs::measure("t", rows, 3, |row, round| match row {
            2 => Err("no server".to_owned()),
            _ => Ok(measure(values[row][round - 1])),
        });
        let table = runs.table();
        assert!(table.contains("| raw | 200 | 100 | 1 / 2 |"), "{table}");
        assert!(table.contains("| ours | 90 | 45 | 1 / 2 |"), "{table}");
        assert!(
            table.contains("| ours ÷ raw (batch 1) | 0.45x | 0.45x | 1.00x / 1.00x |"),
            "{table}"
        );
        assert!(
            table.contains("| broken | failed | failed | failed / failed |"),
            "{table}"
        );
        assert!(
            table.contains("| broken ÷ raw (batch 1) | - | - | - / - |"),
            "{table}"
        );
        assert!(table.contains("broken failed: no server"), "{table}");
    }
}
