//! A consumer process stopped with SIGTERM shuts its bus down gracefully, on NATS JetStream and
//! on Redis Streams (issue 7): it stops taking events, lets the deliveries in flight finish
//! within its deadline, aborts the rest without acknowledging them, and exits with 0; the
//! events it aborted are handed back to its group and handled by the next instance.
//!
//! The consumer is a separate OS process (this test binary run again, told by environment
//! variables that it is the consumer) with one distributed listener in a named group. The
//! listener appends `started <seq>` to a file as it begins an event and `finished <seq>` as it
//! ends it (one `write(2)` each), and takes about 100 ms per event, except for the slow ones
//! (`slow: true`, one in eight), which it never finishes in time: they sleep far longer than
//! the consumer's shutdown deadline ([`SHUTDOWN_DEADLINE`], 2 s). On SIGTERM the consumer calls
//! `EventBus::shutdown(SHUTDOWN_DEADLINE)`, appends `shutdown` once the bus is closed, prints
//! the `ShutdownReport` on a line the parent parses, and exits with 0.
//!
//! The parent publishes a steady stream of events (one every 25 ms) and sends SIGTERM once
//! the consumer runs at least three slow events and at least one fast one. It goes on
//! publishing while the consumer shuts down: the events published after the `shutdown` line
//! is in the file must never be started by that consumer. Then it checks the exit status (0),
//! the report (`in_flight` covers every event running at the `shutdown` line; `aborted` is the
//! number of events started and never finished, all of them slow), and starts a second
//! consumer in the same group, a new instance with another name, with slow handling off. Every
//! event must be finished at least once across the two, and every event the first one started
//! and did not finish must be finished by the second: it was handed back, not acknowledged.
//! The second instance is stopped with SIGTERM too.
//!
//! The aborted events must come back through the hand-back (`Delivery::release`: a nak on
//! NATS, `XCLAIM ... IDLE` on Redis), which `shutdown` waits for: the group's ack wait is set
//! far past the test's patience (40 min, from the listener's timeout), so an event left for the
//! ack wait would fail the test. The summary line gives the time they took.
//!
//! There is no assertion on elapsed times, only generous bounds that fail a stuck run instead
//! of hanging it. A broker that is down skips the test with a message, or fails it when
//! `CI=true`.
#![cfg(all(unix, feature = "nats", feature = "redis"))]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bus::transport::TransportError;
use bus::{EventBus, Policy, policy::Group};
use common::brokers::{Broker, Cleanup, unique_prefix};
use common::{ci, skip};
use serde::{Deserialize, Serialize};

mod common;

/// The consumer's shutdown deadline.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(2);
/// How long a fast event takes.
const FAST: Duration = Duration::from_millis(100);
/// How long a slow event takes: far past the shutdown deadline.
const SLOW: Duration = Duration::from_secs(600);
/// One event in `SLOW_EVERY` is slow (those whose seq is 3 modulo it).
const SLOW_EVERY: u32 = 8;
/// The pause between two publishes.
const CADENCE: Duration = Duration::from_millis(25);
/// How many slow events the consumer runs when it gets SIGTERM (at least).
const SLOW_AT_SIGNAL: usize = 3;
/// How many events are published once the `shutdown` line is in the consumer's file.
const AFTER_SHUTDOWN: u32 = 20;
/// A bound on the events published before SIGTERM.
const MAX_BEFORE_SIGNAL: u32 = 2_000;
/// A bound on a consumer's start and on its stop.
const PATIENCE: Duration = Duration::from_secs(60);
/// The listener's timeout, past the slow events: the group's ack wait is twice it (40 min),
/// so an aborted event that the first consumer did not hand back would not come back in time.
const LISTENER_TIMEOUT: Duration = Duration::from_secs(1_200);
/// A bound on the second instance finishing every event, far below the ack wait.
const REDELIVERY_PATIENCE: Duration = Duration::from_secs(120);

/// Set (to the broker's name) in a consumer process.
const ROLE_ENV: &str = "GRACEFUL_SHUTDOWN_CONSUMER";
const PREFIX_ENV: &str = "GRACEFUL_SHUTDOWN_PREFIX";
const FILE_ENV: &str = "GRACEFUL_SHUTDOWN_FILE";
/// `1`: slow events are slow; `0`: they take as long as the others.
const SLOW_ENV: &str = "GRACEFUL_SHUTDOWN_SLOW";

/// What a consumer prints once its subscription is in place.
const READY: &str = "graceful-consumer ready";
/// What a consumer prints after its shutdown, followed by `key=value` words.
const REPORT: &str = "graceful-consumer report";
/// The group every consumer instance joins.
const GROUP: &str = "graceful-shutdown.jobs";

#[derive(Debug, Serialize, Deserialize, bus::Event)]
#[event(name = "graceful.job", distributed)]
struct Job {
    seq: u32,
    slow: bool,
}

fn is_slow(seq: u32) -> bool {
    seq % SLOW_EVERY == 3
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_sigterm_finishes_or_hands_back_in_flight_events() {
    run(
        Broker::Nats,
        "nats_sigterm_finishes_or_hands_back_in_flight_events",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sigterm_finishes_or_hands_back_in_flight_events() {
    run(
        Broker::Redis,
        "redis_sigterm_finishes_or_hands_back_in_flight_events",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_distributed_examples_worker_stops_on_sigterm() {
    if std::env::var_os(ROLE_ENV).is_some() {
        return;
    }
    for broker in [Broker::Nats, Broker::Redis] {
        example_worker_stops_on_sigterm(broker).await;
    }
}

/// Runs a worker of `examples/distributed.rs` (built by `cargo test` beside this test's
/// binary) on `broker`, sends it SIGTERM once it is ready, and checks that it reports its
/// shutdown and exits with 0.
async fn example_worker_stops_on_sigterm(broker: Broker) {
    let test = "the_distributed_examples_worker_stops_on_sigterm";
    // Only to see that the broker is up; the guard deletes the stream this connect creates.
    let prefix = unique_prefix("graceful", broker);
    let _cleanup = Cleanup {
        broker,
        prefix: prefix.clone(),
    };
    if let Err(error) = broker.connect(&prefix, None).await {
        if matches!(error, TransportError::Unreachable { .. }) && !ci() {
            skip(
                test,
                format_args!("{} is not reachable: {error}", broker.name()),
            );
            return;
        }
        panic!("{test}: cannot connect to {}: {error}", broker.url());
    }
    // target/<profile>/deps/<this test> -> target/<profile>/examples/distributed
    let example = std::env::current_exe()
        .expect("the test binary's path")
        .parent()
        .and_then(Path::parent)
        .expect("the target directory")
        .join("examples")
        .join("distributed");
    assert!(
        example.exists(),
        "{test}: no {} (cargo test builds it; by hand: cargo build --example distributed \
         --features nats,redis)",
        example.display()
    );
    let mut worker = Command::new(&example)
        .args(["worker", broker.url(), "graceful-example", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the example starts");
    let stdout = BufReader::new(worker.stdout.take().expect("piped stdout"));
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if line == "ready" {
                let _ = ready_tx.send(());
            }
        }
    });
    if ready_rx.recv_timeout(PATIENCE).is_err() {
        let _ = worker.kill();
        let output = worker.wait_with_output().expect("the example's output");
        panic!(
            "{test}: the worker on {} never printed `ready`: {}",
            broker.name(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let status = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -TERM {}: {status}", worker.id());
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = worker.try_wait().expect("the worker's status") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = worker.kill();
            panic!("{test}: the worker on {} ignored SIGTERM", broker.name());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    worker
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut stderr)
        .expect("the worker's stderr");
    assert!(
        status.success(),
        "{test}: the worker on {} exited with {status}: {stderr}",
        broker.name()
    );
    // Other runs may publish orders on the default prefix meanwhile: the worker's group gets
    // them, so some may be in flight; each takes 20 ms, far within the 5 s deadline.
    let reported = stderr.lines().any(|line| {
        line.starts_with("graceful-example#1: SIGTERM: shut down with ")
            && line.ends_with(" deliveries in flight, 0 aborted")
    });
    assert!(
        reported,
        "{test}: the worker on {} did not report its shutdown: {stderr}",
        broker.name()
    );
    println!("{test} {}: {}", broker.name(), stderr.trim());
}

async fn run(broker: Broker, test: &str) {
    if std::env::var_os(ROLE_ENV).is_some() {
        consume(broker).await;
        return;
    }
    let name = broker.name();
    let prefix = unique_prefix("graceful", broker);
    let transport = match broker.connect(&prefix, None).await {
        Ok(transport) => transport,
        Err(error @ TransportError::Unreachable { .. }) if !ci() => {
            let url = broker.url();
            skip(
                test,
                format_args!("{name} is not reachable at {url}: {error}"),
            );
            return;
        }
        Err(error) => panic!("{test}: cannot connect to {}: {error}", broker.url()),
    };
    let _cleanup = Cleanup {
        broker,
        prefix: prefix.clone(),
    };
    println!("graceful_shutdown {name}: prefix {prefix}");
    let began = Instant::now();
    let paths = [1, 2].map(|life| std::env::temp_dir().join(format!("{prefix}.life{life}")));
    for path in &paths {
        File::create(path).expect("a consumer's file");
    }
    let publisher = EventBus::builder()
        .service("graceful-shutdown-publisher")
        .shared_transport(transport)
        .build();
    // The next seq: how many events were published so far.
    let mut seq = 0_u32;

    // The first instance, slow events slow.
    let mut first = Consumer::spawn(broker, test, &prefix, &paths[0], 1, true);
    first.wait_ready();
    let mut ledger1 = Ledger::open(&paths[0]);

    // A steady stream until slow events are running and fast ones are in flight.
    let (slow_at_signal, fast_at_signal) = loop {
        publish(&publisher, &mut seq, test).await;
        let published = seq;
        ledger1.catch_up();
        let running = ledger1.running();
        let slow = running.iter().filter(|&&seq| is_slow(seq)).count();
        let fast = running.len() - slow;
        if slow >= SLOW_AT_SIGNAL && fast >= 1 {
            break (slow, fast);
        }
        first.check_alive();
        assert!(
            published < MAX_BEFORE_SIGNAL,
            "{test}: {published} events published and the consumer runs {slow} slow and {fast} \
             fast ones; its file: {:?}",
            ledger1.lines
        );
        tokio::time::sleep(CADENCE).await;
    };
    let published_at_signal = seq;
    first.terminate();
    let signalled = Instant::now();

    // The stream goes on while the consumer shuts down. Once its `shutdown` line is in the
    // file, its bus is closed: the events published from then on are not for it.
    let mut after_line = BTreeSet::new();
    while after_line.len() < AFTER_SHUTDOWN as usize {
        ledger1.catch_up();
        let closed = ledger1.shutdown_at().is_some();
        if !closed && let Some(status) = first.exited() {
            panic!(
                "{test}: the first consumer exited with {status} without a `shutdown` line; its \
                 file: {:?}",
                ledger1.lines
            );
        }
        assert!(
            signalled.elapsed() < PATIENCE,
            "{test}: no `shutdown` line {PATIENCE:?} after SIGTERM; the file: {:?}",
            ledger1.lines
        );
        publish(&publisher, &mut seq, test).await;
        if closed {
            after_line.insert(seq - 1);
        }
        tokio::time::sleep(CADENCE).await;
    }
    let (status1, report1) = first.wait_exit();
    let exited_after = signalled.elapsed();
    ledger1.catch_up();

    // The first instance: exit status, report, what it took and left.
    assert_eq!(
        status1.code(),
        Some(0),
        "{test}: the first consumer exited with {status1}"
    );
    let line = ledger1.shutdown_at().expect("checked above");
    let started1 = ledger1.started();
    let finished1 = ledger1.finished();
    let unfinished1: BTreeSet<u32> = started1.difference(&finished1).copied().collect();
    let slow_started1: BTreeSet<u32> = started1.iter().copied().filter(|&s| is_slow(s)).collect();
    // Every event started and not finished before the `shutdown` line, whether it started
    // before the line or after: each was taken before the bus closed, so each is counted in
    // flight. (A literal "nothing started after the line" would be racy: a delivery taken just
    // before the close starts its listener a moment later, on another thread.)
    let running_at_line = ledger1.running_before(line);
    let started_after_line: Vec<u32> = ledger1.started_after(line);
    let taken_after_line: Vec<u32> = started1.intersection(&after_line).copied().collect();
    assert!(
        taken_after_line.is_empty(),
        "{test}: the first consumer started events published after its bus was closed: \
         {taken_after_line:?}; its file: {:?}",
        ledger1.lines
    );
    assert!(
        report1.in_flight >= slow_started1.len(),
        "{test}: {report1:?}, but {} slow events were started: {slow_started1:?}",
        slow_started1.len()
    );
    assert!(
        running_at_line.len() <= report1.in_flight,
        "{test}: {report1:?}, but {} events were running at the `shutdown` line or started \
         after it: {running_at_line:?}",
        running_at_line.len()
    );
    assert_eq!(
        unfinished1, slow_started1,
        "{test}: the events started and never finished are not the slow ones started \
         (a fast one was aborted, or a slow one finished)"
    );
    assert_eq!(
        report1.aborted,
        unfinished1.len(),
        "{test}: {report1:?}, but the events started and not finished are {unfinished1:?}"
    );

    // The second instance, slow events fast: it finishes what is left, the aborted events
    // first among them.
    let mut second = Consumer::spawn(broker, test, &prefix, &paths[1], 2, false);
    second.wait_ready();
    let second_ready = Instant::now();
    let mut ledger2 = Ledger::open(&paths[1]);
    let mut handed_back_in = None;
    loop {
        ledger2.catch_up();
        let finished2 = ledger2.finished();
        if handed_back_in.is_none() && unfinished1.is_subset(&finished2) {
            handed_back_in = Some(second_ready.elapsed());
        }
        let missing: Vec<u32> = (0..seq)
            .filter(|seq| !finished1.contains(seq) && !finished2.contains(seq))
            .collect();
        if missing.is_empty() {
            break;
        }
        second.check_alive();
        assert!(
            second_ready.elapsed() < REDELIVERY_PATIENCE,
            "{test}: {REDELIVERY_PATIENCE:?} after the second consumer started, {} of {seq} \
             events never finished: {missing:?}; aborted by the first: {unfinished1:?}",
            missing.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let handed_back_in = handed_back_in.unwrap_or_else(|| second_ready.elapsed());
    second.terminate();
    let (status2, report2) = second.wait_exit();
    assert!(
        status2.success(),
        "{test}: the second consumer exited with {status2}"
    );
    ledger2.catch_up();
    let finished2 = ledger2.finished();
    let not_handed_back: Vec<u32> = unfinished1.difference(&finished2).copied().collect();
    assert!(
        not_handed_back.is_empty(),
        "{test}: events the first consumer aborted and the second never finished: \
         {not_handed_back:?}"
    );
    let mut times: BTreeMap<u32, u32> = BTreeMap::new();
    for seq in ledger1.finishes().into_iter().chain(ledger2.finishes()) {
        *times.entry(seq).or_default() += 1;
    }
    assert_eq!(
        times.len(),
        seq as usize,
        "{test}: events finished: {times:?}"
    );
    let duplicates: u32 = times.values().map(|count| count - 1).sum();

    let slow_in_flight = running_at_line.iter().filter(|&&seq| is_slow(seq)).count();
    println!(
        "graceful_shutdown {name}: {seq} events ({published_at_signal} before SIGTERM, sent \
         while {slow_at_signal} slow and {fast_at_signal} fast ran; {AFTER_SHUTDOWN} published \
         after the bus closed, none taken); in flight at SIGTERM {} ({slow_in_flight} slow), \
         aborted {}, {} started after the shutdown line; exit code {}, {:.2} s after SIGTERM \
         (deadline {SHUTDOWN_DEADLINE:?}, shutdown {} ms); handed back and finished by the \
         second instance: {} of {}, {:.1} s after it started; {duplicates} finished twice; \
         second instance: in flight {}, aborted {}, exit code {}; run {:.1} s",
        report1.in_flight,
        report1.aborted,
        started_after_line.len(),
        status1.code().unwrap_or(-1),
        exited_after.as_secs_f64(),
        report1.took_ms,
        unfinished1.intersection(&finished2).count(),
        unfinished1.len(),
        handed_back_in.as_secs_f64(),
        report2.in_flight,
        report2.aborted,
        status2.code().unwrap_or(-1),
        began.elapsed().as_secs_f64(),
    );
    for path in &paths {
        let _ = std::fs::remove_file(path);
    }
}

/// Publishes the event `seq` (slow or not, by its number) and counts it.
async fn publish(publisher: &EventBus, seq: &mut u32, test: &str) {
    let job = Job {
        seq: *seq,
        slow: is_slow(*seq),
    };
    let report = publisher.emit_event(job).await;
    assert!(
        matches!(report.published(), Some(Ok(()))),
        "{test}: publishing seq {seq}: {report:?}"
    );
    *seq += 1;
}

/// Appends `line` with one `write(2)`: in the file whole, or not at all.
fn append(file: &File, line: &str) -> Result<(), String> {
    match (&*file).write(line.as_bytes()) {
        Ok(n) if n == line.len() => Ok(()),
        Ok(n) => Err(format!("{line:?}: short write of {n} bytes")),
        Err(error) => Err(format!("{line:?}: {error}")),
    }
}

/// The consumer role: handles jobs until SIGTERM (or until its stdin closes: the parent is
/// gone), then shuts its bus down.
async fn consume(broker: Broker) {
    use tokio::signal::unix::{SignalKind, signal};

    let prefix = std::env::var(PREFIX_ENV).expect("the prefix of the run");
    let path = std::env::var(FILE_ENV).expect("the consumer's file");
    let slow = std::env::var(SLOW_ENV).is_ok_and(|slow| slow == "1");
    // Before anything else: a SIGTERM from now on is handled, not fatal.
    let mut terminate = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    let (gone_tx, gone) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        let _ = gone_tx.send(());
    });

    // On Redis each process is an instance with a name of its own (the default): the second
    // consumer is a new instance, not the next life of the first.
    let transport = broker
        .connect(&prefix, None)
        .await
        .unwrap_or_else(|error| panic!("consumer: cannot connect to {}: {error}", broker.url()));
    let bus = EventBus::builder()
        .service("graceful-shutdown")
        .shared_transport(transport)
        .build();
    let file = Arc::new(
        OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("the consumer's file"),
    );
    let records = Arc::clone(&file);
    bus.on("graceful.job", move |job: Arc<Job>| {
        let file = Arc::clone(&records);
        async move {
            append(&file, &format!("started {}\n", job.seq))?;
            let work = if job.slow && slow { SLOW } else { FAST };
            tokio::time::sleep(work).await;
            append(&file, &format!("finished {}\n", job.seq))
        }
    })
    .policy(
        // The timeout (longer than any event) sets the group's ack wait to twice it: an
        // aborted event comes back within `REDELIVERY_PATIENCE` only if it was handed back.
        Policy::new()
            .group(Group::Named(GROUP))
            .timeout(LISTENER_TIMEOUT),
    )
    .add();
    let info = bus.listeners("graceful.job").pop().expect("the listener");
    assert!(
        info.is_distributed(),
        "the listener consumes from the broker"
    );
    assert_eq!(info.group(), Some(GROUP));
    bus.ready().await.expect("subscribed");
    println!("{READY}");
    let _ = std::io::stdout().flush();

    let why = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = gone => "stdin closed",
    };
    let began = Instant::now();
    let mut shutdown = std::pin::pin!(bus.shutdown(SHUTDOWN_DEADLINE));
    // The first poll closes the bus: the `shutdown` line goes after it, so that every event
    // that starts after the line was taken before the close (counted in flight).
    let first = std::future::poll_fn(|cx| Poll::Ready(shutdown.as_mut().poll(cx))).await;
    assert!(bus.is_closed(), "the bus is closed by the first poll");
    append(&file, "shutdown\n").expect("the `shutdown` line");
    let report = match first {
        Poll::Ready(report) => report,
        Poll::Pending => shutdown.await,
    };
    let took = began.elapsed();
    println!(
        "{REPORT} in_flight={} aborted={} took_ms={} signal={why}",
        report.in_flight(),
        report.aborted(),
        took.as_millis()
    );
    let _ = std::io::stdout().flush();
}

/// A consumer's report, as it printed it.
#[derive(Debug, Default)]
struct Report {
    in_flight: usize,
    aborted: usize,
    took_ms: u64,
}

impl Report {
    fn parse(words: &str) -> Report {
        let mut report = Report::default();
        for word in words.split_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            match key {
                "in_flight" => report.in_flight = value.parse().expect("in_flight"),
                "aborted" => report.aborted = value.parse().expect("aborted"),
                "took_ms" => report.took_ms = value.parse().expect("took_ms"),
                _ => {}
            }
        }
        report
    }
}

/// What a consumer process says on stdout.
enum Said {
    Ready,
    Report(Report),
}

/// A consumer process; killed if still running when dropped.
struct Consumer {
    life: usize,
    child: Child,
    /// Closed when the parent goes: the consumer shuts down.
    _stdin: Option<ChildStdin>,
    said: mpsc::Receiver<Said>,
}

impl Consumer {
    fn spawn(
        broker: Broker,
        test: &str,
        prefix: &str,
        path: &Path,
        life: usize,
        slow: bool,
    ) -> Consumer {
        let exe = std::env::current_exe().expect("the test binary");
        let mut child = Command::new(exe)
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(ROLE_ENV, broker.name())
            .env(PREFIX_ENV, prefix)
            .env(FILE_ENV, path)
            .env(SLOW_ENV, if slow { "1" } else { "0" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the consumer process starts");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped");
        let (said_tx, said) = mpsc::channel();
        let name = broker.name();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // libtest's `test <name> ... ` may precede it on the line.
                if line.ends_with(READY) {
                    let _ = said_tx.send(Said::Ready);
                } else if let Some(at) = line.find(REPORT) {
                    let _ = said_tx.send(Said::Report(Report::parse(&line[at + REPORT.len()..])));
                }
                // Its own lines, not libtest's (its panics go to stderr, inherited).
                if let Some(at) = line.find("graceful-consumer") {
                    eprintln!("  [{name} consumer {life}] {}", &line[at..]);
                }
            }
        });
        Consumer {
            life,
            child,
            _stdin: stdin,
            said,
        }
    }

    /// Waits until the consumer is subscribed.
    fn wait_ready(&mut self) {
        match self.said.recv_timeout(PATIENCE) {
            Ok(Said::Ready) => {}
            _ => {
                self.check_alive();
                panic!("consumer {} not ready within {PATIENCE:?}", self.life);
            }
        }
    }

    /// How the consumer exited, if it did.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("the consumer's status")
    }

    /// Fails the test if the consumer exited by itself.
    fn check_alive(&mut self) {
        if let Some(status) = self.exited() {
            panic!("consumer {} exited by itself: {status}", self.life);
        }
    }

    /// Sends SIGTERM (`kill -TERM <pid>`).
    fn terminate(&mut self) {
        self.check_alive();
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM {}: {status}", self.child.id());
    }

    /// Waits for the consumer to exit; its status and the report it printed.
    fn wait_exit(&mut self) -> (ExitStatus, Report) {
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.exited() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "consumer {} did not exit within {PATIENCE:?} of SIGTERM",
                self.life
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        // The reader thread sees the end of stdout once the process is gone.
        let report = loop {
            match self.said.recv_timeout(Duration::from_secs(10)) {
                Ok(Said::Report(report)) => break report,
                Ok(Said::Ready) => {}
                Err(_) => panic!(
                    "consumer {} exited with {status} without a report",
                    self.life
                ),
            }
        };
        (status, report)
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One line of a consumer's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    Started(u32),
    Finished(u32),
    Shutdown,
}

/// What a consumer recorded, read as the file grows.
struct Ledger {
    file: File,
    partial: Vec<u8>,
    lines: Vec<Line>,
}

impl Ledger {
    fn open(path: &Path) -> Ledger {
        Ledger {
            file: File::open(path).expect("the consumer's file"),
            partial: Vec::new(),
            lines: Vec::new(),
        }
    }

    /// Reads what was appended since the last call.
    fn catch_up(&mut self) {
        let mut new = std::mem::take(&mut self.partial);
        self.file
            .read_to_end(&mut new)
            .expect("reading the consumer's file");
        let complete = new
            .iter()
            .rposition(|&byte| byte == b'\n')
            .map_or(0, |at| at + 1);
        self.partial = new.split_off(complete);
        for line in String::from_utf8_lossy(&new).lines() {
            let parsed = match line.split_once(' ') {
                Some(("started", seq)) => seq.parse().ok().map(Line::Started),
                Some(("finished", seq)) => seq.parse().ok().map(Line::Finished),
                None if line == "shutdown" => Some(Line::Shutdown),
                _ => None,
            };
            self.lines
                .push(parsed.unwrap_or_else(|| panic!("a line of no known form: {line:?}")));
        }
    }

    /// Where the `shutdown` line is.
    fn shutdown_at(&self) -> Option<usize> {
        self.lines.iter().position(|line| *line == Line::Shutdown)
    }

    fn started(&self) -> BTreeSet<u32> {
        self.lines_before(self.lines.len(), |line| match line {
            Line::Started(seq) => Some(seq),
            _ => None,
        })
    }

    fn finished(&self) -> BTreeSet<u32> {
        self.lines_before(self.lines.len(), |line| match line {
            Line::Finished(seq) => Some(seq),
            _ => None,
        })
    }

    /// Every `finished` line's seq, repeats included.
    fn finishes(&self) -> Vec<u32> {
        self.lines
            .iter()
            .filter_map(|line| match *line {
                Line::Finished(seq) => Some(seq),
                _ => None,
            })
            .collect()
    }

    /// The events started and not finished, now.
    fn running(&self) -> BTreeSet<u32> {
        self.running_before(self.lines.len())
    }

    /// The events started (anywhere in the file) and not finished before line `at`.
    fn running_before(&self, at: usize) -> BTreeSet<u32> {
        let finished = self.lines_before(at, |line| match line {
            Line::Finished(seq) => Some(seq),
            _ => None,
        });
        self.started()
            .into_iter()
            .filter(|seq| !finished.contains(seq))
            .collect()
    }

    /// The events whose first `started` line comes after line `at`.
    fn started_after(&self, at: usize) -> Vec<u32> {
        let before = self.lines_before(at, |line| match line {
            Line::Started(seq) => Some(seq),
            _ => None,
        });
        self.lines[at..]
            .iter()
            .filter_map(|line| match *line {
                Line::Started(seq) if !before.contains(&seq) => Some(seq),
                _ => None,
            })
            .collect()
    }

    fn lines_before(&self, at: usize, pick: impl Fn(Line) -> Option<u32>) -> BTreeSet<u32> {
        self.lines[..at]
            .iter()
            .filter_map(|line| pick(*line))
            .collect()
    }
}
