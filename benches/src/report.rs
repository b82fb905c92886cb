//! Results of the driver's runs, and the markdown tables of `BENCHMARKS.md`.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::contender::{Contender, Role};
use crate::scenario::{Flavor, Job, Output, Scenario};
use crate::system::NotApplicable;

/// One run's number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// Throughput, handler calls per second.
    Rate(f64),
    /// Latency of one run's samples, nanoseconds.
    Latency {
        /// Median sample.
        median: f64,
        /// 99th percentile sample.
        p99: f64,
    },
    /// Bytes per pending delivery.
    Bytes(f64),
}

impl Value {
    /// The number `output` of `job` stands for.
    ///
    /// # Panics
    ///
    /// When `output` is not what `job` produces, or a latency run has no samples.
    pub fn of(job: Job, output: Output) -> Value {
        match (job, output) {
            (Job::Throughput(plan), Output::Elapsed(elapsed)) => {
                Value::Rate(plan.calls() as f64 / elapsed.as_secs_f64())
            }
            (Job::Latency { .. }, Output::Samples(mut samples)) => {
                assert!(!samples.is_empty(), "a latency run without samples");
                samples.sort_unstable();
                Value::Latency {
                    median: percentile(&samples, 50.0),
                    p99: percentile(&samples, 99.0),
                }
            }
            (Job::Memory { .. }, Output::BytesPerDelivery(bytes)) => Value::Bytes(bytes),
            (job, output) => panic!("{job:?} does not produce {output:?}"),
        }
    }
}

/// The nearest-rank `p`th percentile of sorted `samples`.
fn percentile(sorted: &[u64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64
}

/// Throughput runs of one cell further apart than this (fastest / slowest) get a footnote.
const NOISY: f64 = 1.3;

/// Fastest over slowest run of a throughput cell.
fn spread(runs: &[Value]) -> Option<f64> {
    let rates: Vec<f64> = runs
        .iter()
        .filter_map(|value| match *value {
            Value::Rate(rate) => Some(rate),
            _ => None,
        })
        .collect();
    let min = rates.iter().copied().reduce(f64::min)?;
    let max = rates.iter().copied().reduce(f64::max)?;
    (min > 0.0).then(|| max / min)
}

/// A rate in millions a second, two decimals; a rate under 0.01 M/s (the one-at-a-time peers
/// of (h)) with two significant digits instead of a bare `0.00`.
fn millions(rate: f64) -> String {
    let millions = rate / 1e6;
    if millions >= 0.01 || millions <= 0.0 {
        format!("{millions:.2}")
    } else {
        let decimals = (-millions.log10().floor()) as usize + 1;
        format!("{millions:.decimals$}")
    }
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

/// What one system did in one scenario on one runtime.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// One value per run.
    Runs(Vec<Value>),
    /// The system cannot express the scenario.
    NotApplicable(&'static str),
    /// A run panicked (lost events, hung, lagged): no number.
    Failed(String),
}

/// Everything the driver measured.
#[derive(Debug)]
pub struct Results {
    systems: Vec<(&'static str, Role)>,
    cells: HashMap<(Scenario, Flavor, &'static str), Cell>,
}

impl Results {
    /// No result yet, for these systems in this order.
    pub fn new(contenders: &[Contender]) -> Self {
        Results {
            systems: contenders.iter().map(|c| (c.name(), c.role())).collect(),
            cells: HashMap::new(),
        }
    }

    /// Adds one run's outcome. After a failure the cell stays failed.
    pub fn record(
        &mut self,
        scenario: Scenario,
        flavor: Flavor,
        system: &'static str,
        outcome: Result<Value, NotApplicable>,
    ) {
        let cell = self
            .cells
            .entry((scenario, flavor, system))
            .or_insert(Cell::Runs(Vec::new()));
        match (cell, outcome) {
            (Cell::Runs(runs), Ok(value)) => runs.push(value),
            (cell @ Cell::Runs(_), Err(NotApplicable(reason))) => {
                *cell = Cell::NotApplicable(reason);
            }
            _ => {}
        }
    }

    /// Marks a cell failed: it shows no number.
    pub fn fail(&mut self, scenario: Scenario, flavor: Flavor, system: &'static str, why: String) {
        self.cells
            .insert((scenario, flavor, system), Cell::Failed(why));
    }

    /// The cell, if anything was recorded.
    pub fn cell(&self, scenario: Scenario, flavor: Flavor, system: &str) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|((s, f, n), _)| *s == scenario && *f == flavor && *n == system)
            .map(|(_, cell)| cell)
    }

    fn medians(&self, scenario: Scenario, flavor: Flavor, system: &str) -> Option<(f64, f64)> {
        let Some(Cell::Runs(runs)) = self.cell(scenario, flavor, system) else {
            return None;
        };
        if runs.is_empty() {
            return None;
        }
        let (first, second): (Vec<f64>, Vec<f64>) = runs
            .iter()
            .map(|value| match *value {
                Value::Rate(v) | Value::Bytes(v) => (v, v),
                Value::Latency { median, p99 } => (median, p99),
            })
            .unzip();
        Some((median(&first), median(&second)))
    }

    fn show(&self, scenario: Scenario, flavor: Flavor, system: &str, notes: &mut Notes) -> String {
        match self.cell(scenario, flavor, system) {
            None => "-".to_owned(),
            Some(Cell::NotApplicable(reason)) => {
                let mark = notes.mark(format!("{system}: {reason}"));
                format!("n/a{mark}")
            }
            Some(Cell::Failed(why)) => {
                let mark = notes.mark(format!(
                    "{system}, {}, {}: failed: {why}",
                    scenario.title(),
                    flavor.id()
                ));
                format!("**failed**{mark}")
            }
            Some(Cell::Runs(runs)) => match self.medians(scenario, flavor, system) {
                None => "-".to_owned(),
                Some((a, b)) => match scenario {
                    Scenario::E => format!("{} / {}", thousands(a), thousands(b)),
                    Scenario::G => thousands(a),
                    _ => {
                        let noisy = spread(runs).is_some_and(|spread| spread > NOISY);
                        notes.noisy |= noisy;
                        format!("{}{}", millions(a), if noisy { " †" } else { "" })
                    }
                },
            },
        }
    }

    fn names(&self, role: Role) -> impl Iterator<Item = &'static str> + '_ {
        self.systems
            .iter()
            .filter(move |(_, r)| *r == role)
            .map(|(name, _)| *name)
    }

    /// The fastest peer in a throughput cell: (name, calls/s).
    fn best_peer(&self, scenario: Scenario, flavor: Flavor) -> Option<(&'static str, f64)> {
        self.names(Role::Peer)
            .filter_map(|peer| Some((peer, self.medians(scenario, flavor, peer)?.0)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// The markdown of every table, with the machine and the command on top.
    pub fn render(&self, header: &Header) -> String {
        let mut out = String::new();
        let mut notes = Notes::default();
        let label = if header.quick {
            "**Smoke run** (`--quick`: emits, samples and deliveries divided by 10)"
        } else {
            "Full run"
        };
        let _ = writeln!(out, "{label}, {} run(s) per cell, medians.\n", header.runs);
        let _ = writeln!(out, "- command: `{}`", header.command);
        for line in &header.machine {
            let _ = writeln!(out, "- {line}");
        }
        let scenarios: Vec<Scenario> = Scenario::ALL
            .into_iter()
            .filter(|s| header.scenarios.contains(s))
            .collect();
        let throughput: Vec<Scenario> = scenarios
            .iter()
            .copied()
            .filter(|s| Scenario::THROUGHPUT.contains(s))
            .collect();
        let systems: Vec<&'static str> = self.systems.iter().map(|(n, _)| *n).collect();
        let ours: Vec<&'static str> = self.names(Role::Ours).collect();

        for &flavor in &header.flavors {
            if throughput.is_empty() {
                break;
            }
            let _ = writeln!(
                out,
                "\n### Throughput, {}: handler calls per second (M/s)\n",
                flavor.title()
            );
            let columns: Vec<String> = systems.iter().map(|s| (*s).to_owned()).collect();
            table_head(&mut out, "scenario", &columns);
            for &scenario in &throughput {
                let row: Vec<String> = systems
                    .iter()
                    .map(|s| self.show(scenario, flavor, s, &mut notes))
                    .collect();
                table_row(&mut out, scenario.title(), &row);
            }
            for (label, numerator, denominator) in RATIO_ROWS {
                if throughput.contains(&numerator) && throughput.contains(&denominator) {
                    let row: Vec<String> = systems
                        .iter()
                        .map(|s| {
                            let of = |scenario| self.medians(scenario, flavor, s).map(|m| m.0);
                            ratio(of(numerator), of(denominator))
                        })
                        .collect();
                    table_row(&mut out, label, &row);
                }
            }

            let _ = writeln!(
                out,
                "\nRatios of medians, {}; the best peer is the fastest of the crates.io \
                 peers in that row.\n",
                flavor.title()
            );
            let mut columns = Vec::new();
            for our in &ours {
                columns.push(format!("{our} ÷ direct"));
                columns.push(format!("{our} ÷ seed"));
                columns.push(format!("{our} ÷ best peer"));
            }
            table_head(&mut out, "scenario", &columns);
            for &scenario in &throughput {
                let mut row = Vec::new();
                for our in &ours {
                    let mine = self.medians(scenario, flavor, our).map(|m| m.0);
                    let of = |other: &str| self.medians(scenario, flavor, other).map(|m| m.0);
                    row.push(ratio(mine, of("direct")));
                    row.push(ratio(mine, of("seed")));
                    row.push(match self.best_peer(scenario, flavor) {
                        Some((peer, best)) => format!("{} ({peer})", ratio(mine, Some(best))),
                        None => "-".to_owned(),
                    });
                }
                table_row(&mut out, scenario.title(), &row);
            }
        }

        if scenarios.contains(&Scenario::E) {
            let _ = writeln!(
                out,
                "\n### (e) Latency: emit to completion of its 1 listener, median / p99 (ns)\n"
            );
            let mut columns: Vec<String> = systems.iter().map(|s| (*s).to_owned()).collect();
            for our in &ours {
                columns.push(format!("{our} ÷ direct (median / p99)"));
            }
            table_head(&mut out, "runtime", &columns);
            for &flavor in &header.flavors {
                let mut row: Vec<String> = systems
                    .iter()
                    .map(|s| self.show(Scenario::E, flavor, s, &mut notes))
                    .collect();
                for our in &ours {
                    let mine = self.medians(Scenario::E, flavor, our);
                    let direct = self.medians(Scenario::E, flavor, "direct");
                    row.push(format!(
                        "{} / {}",
                        ratio(mine.map(|m| m.0), direct.map(|m| m.0)),
                        ratio(mine.map(|m| m.1), direct.map(|m| m.1))
                    ));
                }
                table_row(&mut out, flavor.id(), &row);
            }
        }

        if scenarios.contains(&Scenario::G) {
            let _ = writeln!(
                out,
                "\n### (g) Memory: peak RSS growth per pending delivery, beyond the 8-byte \
                 event (bytes)\n"
            );
            let columns: Vec<String> = systems.iter().map(|s| (*s).to_owned()).collect();
            table_head(&mut out, "runtime", &columns);
            for &flavor in &header.flavors {
                let row: Vec<String> = systems
                    .iter()
                    .map(|s| self.show(Scenario::G, flavor, s, &mut notes))
                    .collect();
                table_row(&mut out, flavor.id(), &row);
            }
        }

        if notes.noisy || !notes.numbered.is_empty() {
            out.push('\n');
        }
        if notes.noisy {
            let _ = writeln!(
                out,
                "†: the runs of this cell spread more than {NOISY}x from the slowest to the \
                 fastest (a busy machine, or a system whose speed varies from run to run).\n"
            );
        }
        for (i, note) in notes.numbered.iter().enumerate() {
            let _ = writeln!(out, "{}. {note}", i + 1);
        }
        out
    }
}

/// What the tables say about how they were made.
#[derive(Debug, Clone)]
pub struct Header {
    /// The command line that produced them.
    pub command: String,
    /// Lines describing the machine (see [`machine`]).
    pub machine: Vec<String>,
    /// Runs per cell.
    pub runs: usize,
    /// Whether counts were divided by 10.
    pub quick: bool,
    /// The scenarios that ran.
    pub scenarios: Vec<Scenario>,
    /// The runtimes they ran on.
    pub flavors: Vec<Flavor>,
}

/// Footnotes, numbered in order of first use, each text once; and whether a cell was noisy.
#[derive(Default)]
struct Notes {
    numbered: Vec<String>,
    noisy: bool,
}

impl Notes {
    fn mark(&mut self, note: String) -> String {
        let index = match self.numbered.iter().position(|n| *n == note) {
            Some(index) => index,
            None => {
                self.numbered.push(note);
                self.numbered.len() - 1
            }
        };
        format!(" [{}]", index + 1)
    }
}

/// The scale targets of issue 3, each a row of ratios under a throughput table:
/// (label, the scenario at scale, the same scenario small).
const RATIO_ROWS: [(&str, Scenario, Scenario); 3] = [
    (
        "(d) ratio: 10,000 names ÷ 1 name",
        Scenario::D,
        Scenario::D1,
    ),
    (
        "(f) ratio: 100,000 patterns ÷ 10",
        Scenario::F,
        Scenario::F10,
    ),
    (
        "(f) ratio: spread over 100,000 ÷ 10 patterns",
        Scenario::FSpread,
        Scenario::F10,
    ),
];

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".to_owned(),
    }
}

fn thousands(value: f64) -> String {
    let rounded = value.round();
    let digits = format!("{}", rounded.abs() as u64);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if rounded < 0.0 {
        out.insert(0, '-');
    }
    out
}

fn table_head(out: &mut String, first: &str, columns: &[String]) {
    let _ = writeln!(out, "| {first} | {} |", columns.join(" | "));
    let _ = writeln!(out, "|---|{}", "---:|".repeat(columns.len()));
}

fn table_row(out: &mut String, first: &str, cells: &[String]) {
    let _ = writeln!(out, "| {first} | {} |", cells.join(" | "));
}

/// The machine, for the tables' header: CPU model and count, load, rustc and tokio versions.
pub fn machine() -> Vec<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map_or("unknown", |(_, model)| model.trim())
        .to_owned();
    let nproc = std::thread::available_parallelism().map_or(0, usize::from);
    let rustc = std::process::Command::new(std::env::var("RUSTC").unwrap_or("rustc".into()))
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map_or_else(|| "unknown".to_owned(), |v| v.trim().to_owned());
    vec![
        format!("CPU: {model}, nproc {nproc}"),
        format!("load average at start (1, 5, 15 min): {}", load_average()),
        format!("{rustc}, tokio {}", tokio_version()),
    ]
}

/// The 1, 5 and 15 minute load averages, from `/proc/loadavg`.
pub fn load_average() -> String {
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = loadavg.split_whitespace().take(3).collect();
    load.join(", ")
}

/// The tokio version in the workspace's `Cargo.lock`.
fn tokio_version() -> String {
    let lock = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock");
    let text = std::fs::read_to_string(lock).unwrap_or_default();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line == "name = \"tokio\""
            && let Some(version) = lines
                .next()
                .and_then(|l| l.strip_prefix("version = \""))
                .and_then(|l| l.strip_suffix('"'))
        {
            return version.to_owned();
        }
    }
    "unknown".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&samples, 50.0), 50.0);
        assert_eq!(percentile(&samples, 99.0), 99.0);
        assert_eq!(percentile(&[7], 99.0), 7.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(8300.2), "8,300");
        assert_eq!(thousands(101.0), "101");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(thousands(-1234.0), "-1,234");
    }

    #[test]
    fn small_rates_keep_two_significant_digits() {
        assert_eq!(millions(3_284_000.0), "3.28");
        assert_eq!(millions(10_000.0), "0.01");
        assert_eq!(millions(1_534.0), "0.0015");
        assert_eq!(millions(990.0), "0.00099");
        assert_eq!(millions(0.0), "0.00");
    }
}
