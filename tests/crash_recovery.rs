//! A consumer process killed with SIGKILL in the middle of a stream loses nothing, on NATS
//! JetStream, on Redis Streams and on PostgreSQL (`PostgresTransport`) (issue 7, first fault).
//!
//! The parent publishes 100,000 `crash.tick` events (25,000 on PostgreSQL, see below) through
//! an `EventBus` with the transport while a consumer, a separate OS process (this test binary
//! run again, told by environment variables that it is the consumer), handles them with a
//! distributed listener in a named group. The listener appends `"<seq>\n"` to a file with one
//! `write(2)` before it returns `Ok`, so an event is acknowledged only once it is recorded, and
//! what a killed process recorded stays in the file. Three times, at a random count of
//! recorded lines between 10 % and 90 % of the stream (one in each third of that range), the
//! parent kills the consumer with SIGKILL and starts a new instance in the same group. The
//! last instance finishes the stream: every event must be recorded at least once
//! (at-least-once delivery: none lost); the duplicates (events handled again because their ack
//! did not reach the broker before the kill) are counted and reported, not failed on.
//!
//! Redelivery after a kill: on Redis the consumer has a stable
//! [`instance_name`](bus::redis::RedisTransportBuilder::instance_name), so the next instance
//! re-reads at once what the killed one left pending. On NATS the messages a killed consumer
//! held (being handled, or fetched and not handed out yet: it pulls 64 at a time) come back
//! after the group's ack wait, which a bus sets to at least 30 s (`DEFAULT_ACK_WAIT`) and no
//! builder setting shortens: the NATS run ends at least 30 s after the last kill. On
//! PostgreSQL the same holds for the deliveries a killed consumer had claimed (being handled,
//! or claimed and not handed out yet: a claim takes 16, the default `batch_size`): a claim
//! sets their `available_at` to the ack wait ahead, after which the next instance claims
//! them again; the instance name is only written in `claimed_by`. The PostgreSQL run uses the
//! tables `<prefix>_events`, `_groups` and `_deliveries` of
//! `postgres://postgres@127.0.0.1:5432/test`, dropped at the end.
//!
//! The PostgreSQL stream is scaled down to 25,000 events ([`POSTGRES_EVENTS`]): each publish
//! there is a transaction of its own, committed to disk, and the transport moved about 450
//! events/s end to end on the 2-core test machine under load (100,000 took 226 s of the
//! 300 s [`DEADLINE`]); 25,000 keep the run near the length of the others, with the same
//! three kills in the same 10–90 % range.
//!
//! A broker that is down skips the test with a message, or fails it when `CI=true`. Set
//! `CRASH_RECOVERY_SEED` to replay the kill points of a run (its seed is printed).
#![cfg(all(feature = "nats", feature = "redis", feature = "postgres"))]

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bus::transport::TransportError;
use bus::{EventBus, Policy, policy::Group};
use common::brokers::{Broker, Cleanup, unique_prefix};
use common::{ci, skip};
use serde::{Deserialize, Serialize};

mod common;

/// How many events the stream has on NATS and Redis.
const EVENTS: u32 = 100_000;
/// How many events the stream has on PostgreSQL, where every publish is a transaction of its
/// own (a commit, flushed to disk): see the module documentation.
const POSTGRES_EVENTS: u32 = 25_000;
/// How many times the consumer is killed.
const KILLS: usize = 3;
/// The kill points are drawn between these fractions of the stream, in per cent.
const KILL_RANGE: (u32, u32) = (10, 90);
/// How many emissions the publisher has in flight at once.
const PUBLISH_WINDOW: usize = 1_000;
/// A bound on the whole run, so that a stuck stream fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(300);
/// How often the progress is printed.
const PROGRESS: Duration = Duration::from_secs(10);
/// A bound on a consumer's start and on its graceful stop.
const PATIENCE: Duration = Duration::from_secs(60);

/// Set (to the broker's name) in a consumer process.
const ROLE_ENV: &str = "CRASH_RECOVERY_CONSUMER";
const PREFIX_ENV: &str = "CRASH_RECOVERY_PREFIX";
const FILE_ENV: &str = "CRASH_RECOVERY_FILE";
const SEED_ENV: &str = "CRASH_RECOVERY_SEED";

/// What a consumer prints once its subscription is in place.
const READY: &str = "crash-consumer ready";
/// The group every consumer instance joins.
const GROUP: &str = "crash-recovery.ticks";

#[derive(Debug, Serialize, Deserialize, bus::Event)]
#[event(name = "crash.tick", distributed)]
struct Tick {
    seq: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_consumer_killed_three_times_loses_nothing() {
    run(
        Broker::Nats,
        "nats_consumer_killed_three_times_loses_nothing",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_consumer_killed_three_times_loses_nothing() {
    run(
        Broker::Redis,
        "redis_consumer_killed_three_times_loses_nothing",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_consumer_killed_three_times_loses_nothing() {
    run(
        Broker::Postgres,
        "postgres_consumer_killed_three_times_loses_nothing",
    )
    .await;
}

async fn run(broker: Broker, test: &str) {
    if std::env::var_os(ROLE_ENV).is_some() {
        consume(broker).await;
        return;
    }
    let prefix = unique_prefix("crash", broker);
    let transport = match broker.connect(&prefix, None).await {
        Ok(transport) => transport,
        Err(error @ TransportError::Unreachable { .. }) if !ci() => {
            let (name, url) = (broker.name(), broker.url());
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
    let seed = std::env::var(SEED_ENV)
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let mut rng = fastrand::Rng::with_seed(seed);
    let events = events(broker);
    let kill_points = kill_points(&mut rng, events);
    println!(
        "crash_recovery {}: seed {seed} ({SEED_ENV}={seed} replays it), prefix {prefix}, \
         kill points {kill_points:?}",
        broker.name()
    );

    let path = std::env::temp_dir().join(format!("{prefix}.handled"));
    File::create(&path).expect("the file of handled events");
    let mut ledger = Ledger::open(&path, events);
    let spawn = |life: usize| Consumer::spawn(broker, test, &prefix, &path, life);

    let mut consumer = spawn(1);
    consumer.wait_ready();

    let started = Instant::now();
    let publisher = tokio::spawn(publish_all(
        EventBus::builder()
            .service("crash-recovery-publisher")
            .shared_transport(transport)
            .build(),
        events,
    ));
    let mut publisher = Some(AbortOnDrop(publisher));
    let mut killed_at = Vec::new();
    let mut next_progress = PROGRESS;
    loop {
        ledger.catch_up();
        if killed_at.len() < KILLS && ledger.lines >= kill_points[killed_at.len()] {
            consumer.kill();
            ledger.catch_up();
            killed_at.push(ledger.lines);
            println!(
                "crash_recovery {}: SIGKILL {} at {} handled lines ({} distinct), after {:.1} s",
                broker.name(),
                killed_at.len(),
                ledger.lines,
                ledger.distinct,
                started.elapsed().as_secs_f64()
            );
            consumer = spawn(killed_at.len() + 1);
            continue;
        }
        if killed_at.len() == KILLS && ledger.distinct == events {
            break;
        }
        consumer.check_alive();
        if started.elapsed() >= next_progress {
            next_progress += PROGRESS;
            println!(
                "crash_recovery {}: {:.0} s: {} handled lines, {} distinct",
                broker.name(),
                started.elapsed().as_secs_f64(),
                ledger.lines,
                ledger.distinct
            );
        }
        if publisher.as_ref().is_some_and(|task| task.0.is_finished()) {
            let outcome = (&mut publisher.take().expect("checked").0).await;
            match outcome {
                Ok(Ok(took)) => println!(
                    "crash_recovery {}: {events} events published in {:.1} s",
                    broker.name(),
                    took.as_secs_f64()
                ),
                Ok(Err(error)) => panic!("{test}: publishing failed: {error}"),
                Err(error) => panic!("{test}: the publisher task failed: {error}"),
            }
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{test}: after {DEADLINE:?}, {} of {events} events handled ({} lines), kills at \
             {killed_at:?} of {kill_points:?}, publisher {}; missing (first 20): {:?}",
            ledger.distinct,
            ledger.lines,
            if publisher.is_some() {
                "still publishing"
            } else {
                "done"
            },
            ledger.missing(20),
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = started.elapsed();
    if let Some(mut task) = publisher {
        // Every event was handled, so every publish was stored: the task is finishing.
        (&mut task.0)
            .await
            .expect("the publisher task")
            .unwrap_or_else(|error| panic!("{test}: publishing failed: {error}"));
    }
    consumer.stop();
    ledger.catch_up();

    assert!(
        ledger.bad.is_empty(),
        "{test}: lines of the file that are no sequence number below {events}: {:?}",
        ledger.bad
    );
    let missing = ledger.missing(20);
    assert!(
        missing.is_empty(),
        "{test}: {} events never handled, first ones: {missing:?}",
        events - ledger.distinct
    );
    let duplicates = ledger.lines - u64::from(ledger.distinct);
    let mut times: BTreeMap<u32, u32> = BTreeMap::new();
    for &count in ledger.seen.iter().filter(|&&count| count > 1) {
        *times.entry(count).or_default() += 1;
    }
    println!(
        "crash_recovery {}: {events} events, {KILLS} SIGKILLs at handled counts {killed_at:?}, \
         0 lost, {duplicates} duplicates (events by times handled, past once: {times:?}), \
         took {:.1} s",
        broker.name(),
        took.as_secs_f64()
    );
    let _ = std::fs::remove_file(&path);
}

/// The publisher task, stopped if the test fails before it is done (so that it does not
/// write under the prefix after the cleanup).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How many events the stream has on `broker`.
fn events(broker: Broker) -> u32 {
    match broker {
        Broker::Postgres => POSTGRES_EVENTS,
        Broker::Nats | Broker::Redis => EVENTS,
    }
}

/// One kill point in each third of the range [`KILL_RANGE`] of a stream of `events`, in
/// handled lines.
fn kill_points(rng: &mut fastrand::Rng, events: u32) -> [u64; KILLS] {
    let (low, high) = KILL_RANGE;
    let at = |per_cent: u64| u64::from(events) * per_cent / 100;
    let (low, high) = (at(low.into()), at(high.into()));
    let span = high - low;
    std::array::from_fn(|third| {
        let third = third as u64;
        let start = low + span * third / KILLS as u64;
        let end = low + span * (third + 1) / KILLS as u64;
        rng.u64(start..end)
    })
}

/// Publishes seq 0 to `events` - 1, [`PUBLISH_WINDOW`] at a time; how long it took.
async fn publish_all(bus: EventBus, events: u32) -> Result<Duration, String> {
    let started = Instant::now();
    let mut seq = 0;
    while seq < events {
        let end = (seq + PUBLISH_WINDOW as u32).min(events);
        let emissions: Vec<_> = (seq..end).map(|seq| bus.emit_event(Tick { seq })).collect();
        for (emission, seq) in emissions.into_iter().zip(seq..) {
            let report = emission.await;
            if !matches!(report.published(), Some(Ok(()))) {
                return Err(format!("seq {seq}: {report:?}"));
            }
        }
        seq = end;
    }
    Ok(started.elapsed())
}

/// The consumer role: handles ticks until its stdin closes (or it is killed).
async fn consume(broker: Broker) {
    let prefix = std::env::var(PREFIX_ENV).expect("the prefix of the run");
    let path = std::env::var(FILE_ENV).expect("the file of handled events");
    // On Redis each instance is the next life of the same consumer: it first takes up what
    // the killed one left pending, without waiting for the ack wait. (On PostgreSQL the name
    // is only in `claimed_by`; on NATS it is unused.)
    let transport = broker
        .connect(&prefix, Some(format!("{prefix}-consumer")))
        .await
        .unwrap_or_else(|error| panic!("consumer: cannot connect to {}: {error}", broker.url()));
    let bus = EventBus::builder()
        .service("crash-recovery")
        .shared_transport(transport)
        .build();
    let file = Arc::new(
        OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("the file of handled events"),
    );
    bus.on("crash.tick", move |tick: Arc<Tick>| {
        let file = Arc::clone(&file);
        async move {
            // One write(2) of the whole line: it is in the file, or not at all, whenever
            // the process is killed.
            let line = format!("{}\n", tick.seq);
            let written = (&*file).write(line.as_bytes());
            match written {
                Ok(n) if n == line.len() => Ok(()),
                Ok(n) => Err(format!("seq {}: short write of {n} bytes", tick.seq)),
                Err(error) => Err(format!("seq {}: {error}", tick.seq)),
            }
        }
    })
    .policy(Policy::new().group(Group::Named(GROUP)))
    .add();
    let info = bus.listeners("crash.tick").pop().expect("the listener");
    assert!(
        info.is_distributed(),
        "the listener consumes from the broker"
    );
    assert_eq!(info.group(), Some(GROUP));
    bus.ready().await.expect("subscribed");
    println!("{READY}");
    let _ = std::io::stdout().flush();

    // The parent closes stdin to stop this instance (and so does its death).
    tokio::task::spawn_blocking(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
    })
    .await
    .expect("reading stdin");
    let report = bus.shutdown(Duration::from_secs(10)).await;
    println!("crash-consumer stopped: {report:?}");
}

/// A consumer process; killed if still running when dropped.
struct Consumer {
    life: usize,
    child: Child,
    stdin: Option<ChildStdin>,
    ready: mpsc::Receiver<()>,
}

impl Consumer {
    fn spawn(broker: Broker, test: &str, prefix: &str, path: &Path, life: usize) -> Consumer {
        let exe = std::env::current_exe().expect("the test binary");
        let mut child = Command::new(exe)
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(ROLE_ENV, broker.name())
            .env(PREFIX_ENV, prefix)
            .env(FILE_ENV, path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the consumer process starts");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped");
        let (ready_tx, ready) = mpsc::channel();
        let name = broker.name();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // libtest's `test <name> ... ` may precede it on the line.
                if line.ends_with(READY) {
                    let _ = ready_tx.send(());
                }
                // Its own lines, not libtest's (its panics go to stderr, inherited).
                if let Some(at) = line.find("crash-consumer") {
                    eprintln!("  [{name} consumer, life {life}] {}", &line[at..]);
                }
            }
        });
        Consumer {
            life,
            child,
            stdin,
            ready,
        }
    }

    /// Waits until the consumer is subscribed.
    fn wait_ready(&mut self) {
        if self.ready.recv_timeout(PATIENCE).is_err() {
            self.check_alive();
            panic!("consumer life {} not ready within {PATIENCE:?}", self.life);
        }
    }

    /// Fails the test if the consumer exited by itself.
    fn check_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("consumer life {} exited by itself: {status}", self.life);
        }
    }

    /// SIGKILL, and waits for the process to be gone.
    fn kill(&mut self) {
        self.check_alive();
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("the killed consumer");
    }

    /// Closes stdin: the consumer shuts its bus down and exits.
    fn stop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    assert!(
                        status.success(),
                        "consumer life {} exited with {status}",
                        self.life
                    );
                    return;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => panic!(
                    "consumer life {} did not stop within {PATIENCE:?}",
                    self.life
                ),
            }
        }
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

/// What the consumers recorded, read as the file grows.
struct Ledger {
    file: File,
    partial: Vec<u8>,
    /// How many times each seq was handled.
    seen: Vec<u32>,
    lines: u64,
    distinct: u32,
    /// Lines that are no seq (at most 20).
    bad: Vec<String>,
}

impl Ledger {
    fn open(path: &Path, events: u32) -> Ledger {
        Ledger {
            file: File::open(path).expect("the file of handled events"),
            partial: Vec::new(),
            seen: vec![0; events as usize],
            lines: 0,
            distinct: 0,
            bad: Vec::new(),
        }
    }

    /// Reads what was appended since the last call.
    fn catch_up(&mut self) {
        let mut new = std::mem::take(&mut self.partial);
        self.file
            .read_to_end(&mut new)
            .expect("reading the file of handled events");
        let complete = new
            .iter()
            .rposition(|&byte| byte == b'\n')
            .map_or(0, |at| at + 1);
        self.partial = new.split_off(complete);
        for line in new
            .split(|&byte| byte == b'\n')
            .filter(|line| !line.is_empty())
        {
            self.lines += 1;
            let seq = std::str::from_utf8(line)
                .ok()
                .and_then(|line| line.parse::<usize>().ok())
                .filter(|&seq| seq < self.seen.len());
            match seq {
                Some(seq) => {
                    if self.seen[seq] == 0 {
                        self.distinct += 1;
                    }
                    self.seen[seq] += 1;
                }
                None if self.bad.len() < 20 => {
                    self.bad.push(String::from_utf8_lossy(line).into_owned());
                }
                None => {}
            }
        }
    }

    /// The first `limit` seqs never handled.
    fn missing(&self, limit: usize) -> Vec<usize> {
        self.seen
            .iter()
            .enumerate()
            .filter(|(_, count)| **count == 0)
            .map(|(seq, _)| seq)
            .take(limit)
            .collect()
    }
}
