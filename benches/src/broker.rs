//! What the broker scenarios (n) and (r) share: the event they publish, the guard on each
//! phase, the measure of one run, and the driver's loop over the rows with its table.

use std::time::{Duration, Instant, SystemTime};

use bus_core::transport::WireEvent;

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
