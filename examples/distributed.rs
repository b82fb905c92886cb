//! Two services, two instances each, as four separate processes on one broker: NATS
//! JetStream, Redis Streams or RabbitMQ (with the feature `amqp`), chosen by the URL's scheme.
//!
//! ```sh
//! cargo run --example distributed --features nats,redis                               # NATS, 127.0.0.1:4222
//! cargo run --example distributed --features nats,redis -- redis://127.0.0.1:6379     # Redis Streams
//! cargo run --example distributed --features nats,redis -- nats://host:4222
//! cargo run --example distributed --features nats,redis,amqp -- amqp://guest:guest@127.0.0.1:5672/%2f
//! ```
//!
//! This process starts the four workers (itself, run as `distributed worker <url> <service>
//! <instance>`), waits until each is subscribed, publishes 20 `orders.placed` events, and
//! reads what the workers print. Each service handles each order once (fan-out across
//! services), and the two instances of a service share the orders (competing consumers). The
//! listeners and the emits are the same on either broker: only `connect` looks at the URL.
//!
//! A worker also stops on SIGTERM (what `kill`, systemd, Docker and Kubernetes send) or
//! Ctrl-C: it stops taking orders, gives the orders in hand up to `SHUTDOWN_DEADLINE` (5 s) to
//! finish, prints what its shutdown did to stderr, and exits with 0. An order cut short at the
//! deadline is not acknowledged: the broker delivers it again, to the other instance of the
//! service or to the next one that starts. Ctrl-C in the demo's terminal reaches the four
//! workers too. A worker runs on its own as well:
//!
//! ```sh
//! cargo run --example distributed --features nats,redis -- worker redis://127.0.0.1:6379 billing 1
//! # then Ctrl-C, or from another shell: kill -TERM <pid>
//! # billing#1: SIGTERM: shut down with 0 deliveries in flight, 0 aborted
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bus::nats::NatsTransport;
use bus::redis::RedisTransport;
use bus::transport::Transport;
use bus::{EventBus, Policy, policy::Group};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, bus::Event)]
#[event(name = "orders.placed", distributed)]
struct OrderPlaced {
    id: u32,
}

/// Sent to every instance (no group): time to stop.
#[derive(Debug, Serialize, Deserialize, bus::Event)]
#[event(name = "demo.stop", distributed)]
struct Stop;

const ORDERS: u32 = 20;
const SERVICES: [&str; 2] = ["billing", "shipping"];

type Error = Box<dyn std::error::Error + Send + Sync>;

/// How long a worker that is told to stop (by the demo, by SIGTERM or by Ctrl-C) waits for the
/// orders it is handling before it aborts them. An aborted order is left unacknowledged, so the
/// broker delivers it again; keep this below the grace period of whatever stops the process
/// (Kubernetes sends SIGKILL 30 s after SIGTERM by default, Docker 10 s after).
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

/// The broker when no URL is given.
const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// The transport for `url`: `nats://` is NATS JetStream, `redis://` (or `rediss://`) Redis
/// Streams, `amqp://` RabbitMQ. The keys, subjects, streams and the exchange of the demo live
/// under the prefix `demo`.
async fn connect(url: &str) -> Result<Arc<dyn Transport>, Error> {
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    Ok(match scheme {
        "nats" => Arc::new(
            NatsTransport::builder(url)
                .subject_prefix("demo")
                .connect()
                .await?,
        ),
        "redis" | "rediss" => Arc::new(
            RedisTransport::builder(url)
                .key_prefix("demo")
                .connect()
                .await?,
        ),
        #[cfg(feature = "amqp")]
        "amqp" => Arc::new(
            bus::amqp::AmqpTransport::builder(url)
                .exchange("demo")
                .connect()
                .await?,
        ),
        _ => {
            return Err(format!(
                "`{url}`: expected a nats://, redis:// or (with the feature `amqp`) amqp:// \
                 URL, e.g. {DEFAULT_URL} or redis://127.0.0.1:6379"
            )
            .into());
        }
    })
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [worker, url, service, instance] if worker == "worker" => {
            run_worker(url, service, instance).await
        }
        [url] => run_demo(url).await,
        [] => run_demo(DEFAULT_URL).await,
        _ => Err(
            "usage: distributed [nats://host:port | redis://host:port | amqp://host:port]".into(),
        ),
    }
}

/// One instance of one service: handles orders until told to stop.
async fn run_worker(url: &str, service: &str, instance: &str) -> Result<(), Error> {
    let bus = EventBus::builder()
        .service(service)
        .shared_transport(connect(url).await?)
        .build();
    let (who, what) = (format!("{service}#{instance}"), service.to_owned());
    bus.add_listener("orders.placed", move |order: Arc<OrderPlaced>| {
        let (who, what) = (who.clone(), what.clone());
        async move {
            // The work takes a moment, so the other instance gets its share.
            tokio::time::sleep(Duration::from_millis(20)).await;
            println!("{who} {what} order {}", order.id);
        }
    });
    let (stop_tx, mut stop_rx) = tokio::sync::mpsc::channel(1);
    bus.on("demo.stop", move |_: Arc<Stop>| {
        let stop_tx = stop_tx.clone();
        async move {
            let _ = stop_tx.send(()).await;
        }
    })
    .policy(Policy::new().group(Group::Ungrouped))
    .add();
    // Before "ready": from then on, a SIGTERM no longer kills the process outright.
    let mut signals = Signals::install()?;
    bus.ready().await?;
    println!("ready");
    tokio::select! {
        _ = stop_rx.recv() => {
            bus.shutdown(SHUTDOWN_DEADLINE).await;
        }
        signal = signals.next() => {
            let signal = signal?;
            // No more orders from the broker; the ones in hand finish, or are aborted at the
            // deadline and left unacknowledged for the broker to deliver again.
            let report = bus.shutdown(SHUTDOWN_DEADLINE).await;
            // stderr: stdout is the demo's pipe, which is gone when Ctrl-C stopped the demo too.
            eprintln!(
                "{service}#{instance}: {signal}: shut down with {} deliveries in flight, {} aborted",
                report.in_flight(),
                report.aborted()
            );
        }
    }
    Ok(())
}

/// The signals that stop a worker: SIGTERM and SIGINT (Ctrl-C) on Unix, Ctrl-C elsewhere.
/// Their handlers are in place from [`Signals::install`] on, so that a signal that comes
/// before the worker waits for it is not lost.
struct Signals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                terminate: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// The name of the next signal.
    async fn next(&mut self) -> std::io::Result<&'static str> {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.terminate.recv() => Ok("SIGTERM"),
                _ = self.interrupt.recv() => Ok("Ctrl-C"),
            }
        }
        #[cfg(not(unix))]
        {
            tokio::signal::ctrl_c().await.map(|()| "Ctrl-C")
        }
    }
}

/// Starts the four workers, publishes the orders, and shows who handled what.
async fn run_demo(url: &str) -> Result<(), Error> {
    // Fails here, before any worker starts, on a URL of another kind or a broker that is down.
    let transport = connect(url).await?;
    let shown = bus::transport::ServerUrl::new(url);
    println!("broker: {shown} ({})", transport.name());
    let exe = std::env::current_exe()?;
    let mut workers: Vec<(String, Child)> = Vec::new();
    for service in SERVICES {
        for instance in ["1", "2"] {
            let child = Command::new(&exe)
                .args(["worker", url, service, instance])
                .stdout(Stdio::piped())
                .spawn()?;
            workers.push((format!("{service}#{instance}"), child));
        }
    }
    // Each worker's lines, read on a thread of its own.
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<(String, String)>();
    for (name, child) in &mut workers {
        let stdout = child.stdout.take().ok_or("worker without stdout")?;
        let (name, lines_tx) = (name.clone(), lines_tx.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines_tx.send((name.clone(), line));
            }
        });
    }
    drop(lines_tx);
    let next_line = || {
        lines_rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| "a worker went quiet for 30 s")
    };
    let mut ready = BTreeSet::new();
    while ready.len() < workers.len() {
        let (name, line) = next_line()?;
        if line == "ready" {
            ready.insert(name);
        }
    }
    println!("4 workers subscribed: {ready:?}");

    let bus = EventBus::builder()
        .service("checkout")
        .shared_transport(transport)
        .build();
    for id in 0..ORDERS {
        let report = bus.emit_event(OrderPlaced { id }).await;
        if let Some(Err(error)) = report.published() {
            return Err(error.clone().into());
        }
    }
    println!("published {ORDERS} orders");

    // service -> order -> instances that handled it
    let mut handled: BTreeMap<String, BTreeMap<u32, Vec<String>>> = BTreeMap::new();
    let mut count = 0;
    while count < ORDERS as usize * SERVICES.len() {
        let (name, line) = next_line()?;
        let mut words = line.split_whitespace();
        if let (Some(who), Some(service), Some("order"), Some(id)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            let id: u32 = id.parse()?;
            let by = handled.entry(service.to_owned()).or_default();
            by.entry(id).or_default().push(who.to_owned());
            count += 1;
            debug_assert_eq!(name, who);
        }
    }
    bus.emit_event(Stop).await;
    for (name, mut child) in workers {
        let status = child.wait()?;
        if !status.success() {
            return Err(format!("worker {name} exited with {status}").into());
        }
    }

    for (service, orders) in &handled {
        let mut per_instance: BTreeMap<&str, usize> = BTreeMap::new();
        for instances in orders.values() {
            for instance in instances {
                *per_instance.entry(instance).or_default() += 1;
            }
        }
        let once = orders.len() == ORDERS as usize && orders.values().all(|by| by.len() == 1);
        println!(
            "{service}: {} orders, each handled once: {once}; shared as {per_instance:?}",
            orders.len()
        );
        if !once {
            return Err(format!("{service} did not handle each order exactly once").into());
        }
    }
    Ok(())
}
