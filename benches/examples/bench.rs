//! The benchmark driver: runs every scenario x system x runtime several times and prints the
//! markdown tables of `BENCHMARKS.md` (medians, ratios, latency percentiles, memory).
//!
//! ```text
//! cargo run --release -p bus-benches --example bench -- [--quick] [--runs N]
//!     [--only a,b,c,d,d1,e,f,g,h,n,r,p,q,o] [--runtime mt|ct] [--system NAME,...]
//! ```
//!
//! Scenario `n` (issue 5) is the NATS JetStream transport beside a raw `async-nats` loop, on
//! the server at `NATS_URL` (default `127.0.0.1:4222`); `--runtime` and `--system` do not
//! apply to it, and it is skipped, with the reason, when the server or JetStream is not there.
//! Scenario `r` (issue 6) is the same for the Redis Streams transport beside a raw `redis`
//! XADD / XREADGROUP loop, on the server at `REDIS_URL` (default `redis://127.0.0.1:6379`),
//! skipped likewise when Redis (7 or later) is not there. Scenario `p` (issue 17) is the same
//! for the PostgreSQL transport beside a raw `FOR UPDATE SKIP LOCKED` queue loop, on the server
//! at `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`), skipped likewise.
//! Scenario `q` (issue 20) is the same for the RabbitMQ transport beside a raw `lapin` loop
//! (publisher confirms, quorum queues, manual acks), on the broker at `AMQP_URL` (default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`), skipped likewise.
//! Scenario `o` (issue 17) is the transactional outbox: what `Outbox::emit` adds to a
//! transaction, and how fast a `Relay` moves committed events to NATS (both servers above).
//!
//! Progress goes to stderr, the tables to stdout. Scenario (g) runs each system in a fresh
//! process (this program, re-executed with `--memory-child`), so peaks do not mix.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::{Command, ExitCode};
use std::time::Instant;

use bus_benches::broker::{RowLabel, Runs};
use bus_benches::{
    Contender, Flavor, Header, Job, NotApplicable, Output, Plan, Results, Scenario, Value, amqp,
    contenders, load_average, machine, nats, outbox, postgres, redis,
};

const USAGE: &str = "usage: bench [--quick] [--runs N] [--only a,b,c,d,d1,e,f,g,h,n,r,p,q,o] \
                     [--runtime mt|ct] [--system NAME,...]";

struct Options {
    quick: bool,
    runs: usize,
    scenarios: Vec<Scenario>,
    flavors: Vec<Flavor>,
    systems: Option<Vec<String>>,
    /// Scenario (n): the NATS JetStream transport.
    nats: bool,
    /// Scenario (r): the Redis Streams transport.
    redis: bool,
    /// Scenario (p): the PostgreSQL transport.
    postgres: bool,
    /// Scenario (q): the RabbitMQ transport.
    amqp: bool,
    /// Scenario (o): the transactional outbox.
    outbox: bool,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--memory-child") {
        return memory_child(&args[1..]);
    }
    let options = match parse(&args) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let machine = machine();
    let contenders: Vec<Contender> = contenders()
        .into_iter()
        .filter(|c| {
            options
                .systems
                .as_ref()
                .is_none_or(|names| names.iter().any(|n| n == c.name()))
        })
        .collect();
    let mut results = Results::new(&contenders);
    let divisor = if options.quick { 10 } else { 1 };
    let started = Instant::now();

    // The transport scenarios, each a markdown section of its own, in this order.
    let transports: Vec<String> = [
        options.nats.then(|| nats_scenario(options.runs, divisor)),
        options.redis.then(|| redis_scenario(options.runs, divisor)),
        options
            .postgres
            .then(|| postgres_scenario(options.runs, divisor)),
        options.amqp.then(|| amqp_scenario(options.runs, divisor)),
        options
            .outbox
            .then(|| outbox_scenario(options.runs, divisor)),
    ]
    .into_iter()
    .flatten()
    .collect();

    for &scenario in &options.scenarios {
        for &flavor in &options.flavors {
            for contender in &contenders {
                let job = contender.job(scenario, divisor);
                // One untimed run first, so the first timed run does not pay for cold caches
                // and the allocator's first growth ((e) also warms up inside its job). (g) runs in
                // fresh processes on purpose.
                if scenario != Scenario::G && contender.supports(&job).is_ok() {
                    let warmup = warmup_job(job);
                    let _ = catch_unwind(AssertUnwindSafe(|| {
                        contender.run(warmup, &flavor.runtime())
                    }));
                }
                for run in 1..=options.runs {
                    eprint!(
                        "{} {} {} run {run}/{}: ",
                        scenario.id(),
                        flavor.id(),
                        contender.name(),
                        options.runs
                    );
                    let outcome = if scenario == Scenario::G {
                        memory_in_child(contender, flavor, job)
                    } else {
                        catch_unwind(AssertUnwindSafe(|| {
                            contender
                                .run(job, &flavor.runtime())
                                .map(|output| Value::of(job, output))
                        }))
                        .map_err(|panic| panic_message(&*panic))
                    };
                    match outcome {
                        Ok(Ok(value)) => {
                            eprintln!("{}", describe(value));
                            results.record(scenario, flavor, contender.name(), Ok(value));
                        }
                        Ok(Err(not_applicable)) => {
                            eprintln!("{not_applicable}");
                            results.record(scenario, flavor, contender.name(), Err(not_applicable));
                            break;
                        }
                        Err(why) => {
                            eprintln!("FAILED: {why}");
                            results.fail(scenario, flavor, contender.name(), why);
                            break;
                        }
                    }
                }
            }
        }
    }

    let header = Header {
        command: format!(
            "cargo run --release -p bus-benches --example bench --{}",
            args.iter().map(|a| format!(" {a}")).collect::<String>()
        ),
        machine,
        runs: options.runs,
        quick: options.quick,
        scenarios: options.scenarios,
        flavors: options.flavors,
    };
    if !header.scenarios.is_empty() || transports.is_empty() {
        print!("{}", results.render(&header));
    } else {
        println!("- command: `{}`", header.command);
        for line in &header.machine {
            println!("- {line}");
        }
    }
    for section in &transports {
        print!("{section}");
    }
    println!(
        "\nTotal driver time: {:.0} s; load average at the end (1, 5, 15 min): {}.",
        started.elapsed().as_secs_f64(),
        load_average()
    );
    ExitCode::SUCCESS
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        quick: false,
        runs: 5,
        scenarios: Scenario::ALL.to_vec(),
        flavors: Flavor::ALL.to_vec(),
        systems: None,
        nats: true,
        redis: true,
        postgres: true,
        amqp: true,
        outbox: true,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("`{arg}` needs a value"));
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--runs" => {
                let runs = value()?;
                options.runs = runs
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("`--runs {runs}`: expected a positive number"))?;
            }
            "--only" => {
                let ids = value()?;
                options.nats = ids.split(',').any(|id| id == "n");
                options.redis = ids.split(',').any(|id| id == "r");
                options.postgres = ids.split(',').any(|id| id == "p");
                options.amqp = ids.split(',').any(|id| id == "q");
                options.outbox = ids.split(',').any(|id| id == "o");
                options.scenarios = ids
                    .split(',')
                    .filter(|&id| !["n", "r", "p", "q", "o"].contains(&id))
                    .map(|id| {
                        Scenario::from_id(id).ok_or_else(|| {
                            format!("unknown scenario `{id}`, expected one of: a, b, c, d, d1, e, f, g, h, n, r, p, q, o")
                        })
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--runtime" => {
                let id = value()?;
                let flavor = Flavor::from_id(id)
                    .ok_or_else(|| format!("unknown runtime `{id}`, expected `mt` or `ct`"))?;
                options.flavors = vec![flavor];
            }
            "--system" => {
                let names: Vec<String> = value()?.split(',').map(str::to_owned).collect();
                let known: Vec<&str> = contenders().iter().map(Contender::name).collect();
                if let Some(unknown) = names.iter().find(|n| !known.contains(&n.as_str())) {
                    return Err(format!(
                        "unknown system `{unknown}`, expected one of: {}",
                        known.join(", ")
                    ));
                }
                options.systems = Some(names);
            }
            // `cargo bench` style flags that may be forwarded by habit.
            "--bench" => {}
            other => return Err(format!("unknown option `{other}`")),
        }
    }
    Ok(options)
}

/// Scenario (n): every row of [`nats::Row::ALL`] `runs` times, and its markdown section.
/// Skipped, with the reason on stderr and in the section, when the server cannot be reached.
fn nats_scenario(runs: usize, divisor: u64) -> String {
    let url = nats::url();
    let runtime = Flavor::MultiThread.runtime();
    let version = match nats::probe(&url, &runtime) {
        Ok(version) => version,
        Err(why) => {
            eprintln!("n: skipped: {why}");
            return format!("\n### (n) NATS JetStream transport\n\nSkipped: {why}.\n");
        }
    };
    let counts = nats::Counts::new(divisor);
    let rows = nats::Row::ALL;
    let labels = rows
        .iter()
        .map(|row| RowLabel {
            label: row.label(),
            against: (row.client != nats::Client::Raw)
                .then(|| rows.iter().position(|r| *r == row.raw()))
                .flatten()
                .map(|raw| (raw, format!("raw (batch {})", row.fetch_batch))),
        })
        .collect();
    let measured = Runs::measure("n", labels, runs, |index, run| {
        nats::run(
            rows[index],
            counts,
            &url,
            &format!("r{run}_{index}"),
            &runtime,
        )
    });
    format!(
        "\n### (n) NATS JetStream transport: `NatsTransport` beside a raw `async-nats` loop\n\n\
         {} event(s) published with {} PubAcks awaited in flight; end to end = the same count \
         published while one durable pull consumer receives and acks them all; latency = \
         publish call to receipt, {} samples after {} warm-up. Server {url}, nats-server {version}; \
         {runs} run(s) per row, medians; NATS part {:.0} s.\n\n{}",
        counts.events,
        counts.window,
        counts.samples,
        counts.warmup,
        measured.elapsed_secs(),
        measured.table()
    )
}

/// Scenario (r): every row of [`redis::Row::ALL`] `runs` times, and its markdown section.
/// Skipped, with the reason on stderr and in the section, when the server cannot be reached
/// or is older than Redis 7.
fn redis_scenario(runs: usize, divisor: u64) -> String {
    let url = redis::url();
    let runtime = Flavor::MultiThread.runtime();
    let version = match redis::probe(&url, &runtime) {
        Ok(version) => version,
        Err(why) => {
            eprintln!("r: skipped: {why}");
            return format!("\n### (r) Redis Streams transport\n\nSkipped: {why}.\n");
        }
    };
    let counts = redis::Counts::new(divisor);
    let rows = redis::Row::ALL;
    let labels = rows
        .iter()
        .map(|row| RowLabel {
            label: row.label(),
            against: (row.client != redis::Client::Raw)
                .then(|| rows.iter().position(|r| *r == row.raw()))
                .flatten()
                .map(|raw| (raw, format!("raw (COUNT {})", row.read_batch))),
        })
        .collect();
    let measured = Runs::measure("r", labels, runs, |index, run| {
        redis::run(
            rows[index],
            counts,
            &url,
            &format!("r{run}_{index}"),
            &runtime,
        )
    });
    format!(
        "\n### (r) Redis Streams transport: `RedisTransport` beside a raw `redis` loop\n\n\
         {} event(s) published with {} XADD replies awaited in flight; end to end = {} \
         events published while one consumer of a group reads (XREADGROUP on a connection of \
         its own) and acks them all; latency = publish call to receipt, {} samples after {} \
         warm-up. Server {url}, Redis {version}; {runs} run(s) per row, medians; Redis part \
         {:.0} s.\n\n{}",
        counts.published,
        counts.window,
        counts.events,
        counts.samples,
        counts.warmup,
        measured.elapsed_secs(),
        measured.table()
    )
}

/// Scenario (p): every row of [`postgres::Row::ALL`] `runs` times, and its markdown section.
/// Skipped, with the reason on stderr and in the section, when the server cannot be reached.
fn postgres_scenario(runs: usize, divisor: u64) -> String {
    let url = postgres::url();
    let runtime = Flavor::MultiThread.runtime();
    let version = match postgres::probe(&url, &runtime) {
        Ok(version) => version,
        Err(why) => {
            eprintln!("p: skipped: {why}");
            return format!("\n### (p) PostgreSQL transport\n\nSkipped: {why}.\n");
        }
    };
    let counts = postgres::Counts::new(divisor);
    let rows = postgres::Row::ALL;
    let labels = rows
        .iter()
        .map(|row| RowLabel {
            label: row.label(),
            against: (row.client != postgres::Client::Raw)
                .then(|| rows.iter().position(|r| *r == row.raw()))
                .flatten()
                .map(|raw| (raw, format!("raw (LIMIT {})", row.batch))),
        })
        .collect();
    let measured = Runs::measure("p", labels, runs, |index, run| {
        postgres::run(
            rows[index],
            counts,
            &url,
            &format!("r{run}_{index}"),
            &runtime,
        )
    });
    format!(
        "\n### (p) PostgreSQL transport: `PostgresTransport` beside a raw `SKIP LOCKED` loop\n\n\
         {} event(s) published with {} publishes in flight; end to end = {} events published \
         while one consumer of a group receives and acks them all; latency = publish call to \
         receipt, {} samples after {} warm-up. Server {url}, PostgreSQL {version}; {runs} run(s) \
         per row, medians; PostgreSQL part {:.0} s.\n\n{}",
        counts.published,
        counts.window,
        counts.events,
        counts.samples,
        counts.warmup,
        measured.elapsed_secs(),
        measured.table()
    )
}

/// Scenario (q): every row of [`amqp::Row::ALL`] `runs` times, and its markdown section.
/// Skipped, with the reason on stderr and in the section, when the broker cannot be reached.
fn amqp_scenario(runs: usize, divisor: u64) -> String {
    let url = amqp::url();
    let runtime = Flavor::MultiThread.runtime();
    if let Err(why) = amqp::probe(&url, &runtime) {
        eprintln!("q: skipped: {why}");
        return format!("\n### (q) RabbitMQ transport\n\nSkipped: {why}.\n");
    }
    let phases = amqp::phases(divisor);
    let rows = amqp::Row::ALL;
    let labels = rows
        .iter()
        .map(|row| RowLabel {
            label: row.label(),
            against: (row.client != amqp::Client::Raw)
                .then(|| rows.iter().position(|r| *r == row.raw()))
                .flatten()
                .map(|raw| (raw, format!("raw (prefetch {})", row.prefetch))),
        })
        .collect();
    let measured = Runs::measure("q", labels, runs, |index, run| {
        amqp::run(
            rows[index],
            phases,
            &url,
            &format!("r{run}_{index}"),
            &runtime,
        )
    });
    // The password is not shown.
    let shown = url.split_once('@').map_or(url.as_str(), |(_, host)| host);
    format!(
        "\n### (q) RabbitMQ transport: `AmqpTransport` beside a raw `lapin` loop\n\n\
         {} persistent event(s) published with {} publisher confirms awaited in flight, routed \
         to one quorum queue; end to end = {} events published while one consumer of a group \
         (a quorum queue, the same prefetch) receives and acks them all; latency = publish \
         call to receipt, {} samples after {} warm-up. Broker {shown}; {runs} run(s) \
         per row, medians; RabbitMQ part {:.0} s.\n\n{}",
        phases.published,
        phases.window,
        phases.events,
        phases.samples,
        phases.warmup,
        measured.elapsed_secs(),
        measured.table()
    )
}

/// Scenario (o): the outbox `runs` times, and its markdown section. Skipped, with the reason,
/// when PostgreSQL or NATS cannot be reached.
fn outbox_scenario(runs: usize, divisor: u64) -> String {
    let database = postgres::url();
    let nats_url = nats::url();
    let runtime = Flavor::MultiThread.runtime();
    if let Err(why) = postgres::probe(&database, &runtime) {
        eprintln!("o: skipped: {why}");
        return format!("\n### (o) Transactional outbox\n\nSkipped: {why}.\n");
    }
    let counts = outbox::Counts::new(divisor);
    let started = Instant::now();
    let mut measures = Vec::new();
    let mut failure = None;
    for run in 1..=runs {
        eprint!("o run {run}/{runs}: ");
        match outbox::run(counts, &database, &nats_url, &format!("r{run}"), &runtime) {
            Ok(m) => {
                eprintln!(
                    "{:.0} tx/s without, {:.0} tx/s with the outbox, relay {:.0} events/s",
                    m.plain, m.with_outbox, m.relay
                );
                measures.push(m);
            }
            Err(why) => {
                eprintln!("FAILED: {why}");
                failure = Some(why);
                break;
            }
        }
    }
    let failed = failure.map_or_else(String::new, |why| format!("\nA run failed: {why}\n"));
    format!(
        "\n### (o) Transactional outbox: a transaction with and without `Outbox::emit`, and the relay to NATS\n\n\
         {} transactions per row, {} at a time on a pool of as many connections, each inserting \
         an order (and emitting `order.placed` through the outbox) then committing; the relay \
         row starts one `Relay` on an outbox holding {} events (those of the row above and {} \
         more) and times it until every one is published to NATS ({nats_url}) and marked. PostgreSQL at {database}; {} run(s), \
         medians; outbox part {:.0} s.\n\n{}{failed}",
        counts.transactions,
        counts.workers,
        counts.transactions + counts.relayed,
        counts.relayed,
        measures.len(),
        started.elapsed().as_secs_f64(),
        outbox::table(&measures, counts),
    )
}

/// A shorter job of the same shape, to warm up with.
fn warmup_job(job: Job) -> Job {
    match job {
        Job::Throughput(plan) => Job::Throughput(Plan {
            emits: (plan.emits / 4).max(1),
            ..plan
        }),
        Job::Latency { warmup, samples } => Job::Latency {
            warmup: 0,
            samples: ((warmup + samples) / 10).max(1),
        },
        other => other,
    }
}

/// Scenario (g) for one system in a fresh process: this program with `--memory-child`.
fn memory_in_child(
    contender: &Contender,
    flavor: Flavor,
    job: Job,
) -> Result<Result<Value, NotApplicable>, String> {
    if let Err(not_applicable) = contender.supports(&job) {
        return Ok(Err(not_applicable));
    }
    let Job::Memory { deliveries } = job else {
        return Err(format!("{job:?} is not a memory job"));
    };
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let output = Command::new(exe)
        .args([
            "--memory-child",
            contender.name(),
            flavor.id(),
            &deliveries.to_string(),
        ])
        .output()
        .map_err(|e| format!("cannot start the memory child: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let bytes = stdout
        .lines()
        .find_map(|line| line.strip_prefix("bytes_per_delivery="))
        .and_then(|v| v.trim().parse::<f64>().ok());
    match (output.status.success(), bytes) {
        (true, Some(bytes)) => Ok(Ok(Value::Bytes(bytes))),
        _ => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
            Err(format!(
                "memory child {}: {}",
                output.status,
                last.unwrap_or("no output")
            ))
        }
    }
}

/// The child side of [`memory_in_child`]: `--memory-child SYSTEM RUNTIME DELIVERIES`.
fn memory_child(args: &[String]) -> ExitCode {
    let [system, flavor, deliveries] = args else {
        eprintln!("usage: bench --memory-child SYSTEM mt|ct DELIVERIES");
        return ExitCode::from(2);
    };
    let (Some(contender), Some(flavor), Ok(deliveries)) = (
        contenders().into_iter().find(|c| c.name() == system),
        Flavor::from_id(flavor),
        deliveries.parse::<u64>(),
    ) else {
        eprintln!("bad --memory-child arguments: {args:?}");
        return ExitCode::from(2);
    };
    let runtime = flavor.runtime();
    match contender.run(Job::Memory { deliveries }, &runtime) {
        Ok(Output::BytesPerDelivery(bytes)) => {
            println!("bytes_per_delivery={bytes}");
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("unexpected outcome: {other:?}");
            ExitCode::FAILURE
        }
    }
}

fn describe(value: Value) -> String {
    match value {
        Value::Rate(rate) => format!("{:.2} M handler calls/s", rate / 1e6),
        Value::Latency { median, p99 } => format!("median {median:.0} ns, p99 {p99:.0} ns"),
        Value::Bytes(bytes) => format!("{bytes:.0} bytes per pending delivery"),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panicked".to_owned())
}
