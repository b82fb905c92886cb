//! Health and metrics over HTTP: a service on NATS JetStream that serves `/healthz` (for a
//! Kubernetes-style probe: 200 when [`EventBus::health`] says healthy, 503 otherwise, the
//! report as text either way) and `/metrics` (the Prometheus text format, the distributed
//! path's metrics and the group lag gauges among them), with axum.
//!
//! ```text
//! cargo run --example health --features metrics,nats                   # serves on 127.0.0.1:8080
//! cargo run --example health --features metrics,nats -- --self-test    # checks itself, exits
//! ```
//!
//! A NATS URL may be given as the first argument (default `nats://127.0.0.1:4222`). With
//! `--self-test` it serves on a free port, emits a few orders, fetches both routes once over
//! HTTP and exits non-zero unless `/healthz` answers 200 and `/metrics` shows the publishes
//! and the group lag: `.ci/run` runs it so.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use bus::nats::NatsTransport;
use bus::{EventBus, Policy, policy::Group};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Serialize, Deserialize, bus::Event)]
#[event(name = "health_example.order", distributed)]
struct OrderPlaced {
    id: u32,
}

async fn bill(order: Arc<OrderPlaced>) {
    println!("  [billing] order {} billed", order.id);
}

#[derive(Clone)]
struct App {
    bus: EventBus,
    metrics: PrometheusHandle,
}

/// 200 and the report when the bus is healthy; 503 and the report otherwise.
async fn healthz(State(app): State<App>) -> (StatusCode, String) {
    let health = app.bus.health().await;
    let status = if health.is_healthy() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, format!("{health}\n"))
}

async fn scrape(State(app): State<App>) -> String {
    app.metrics.render()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let self_test = args.iter().any(|arg| arg == "--self-test");
    let url = args
        .iter()
        .find(|arg| !arg.starts_with("--"))
        .map_or("nats://127.0.0.1:4222", String::as_str);

    // The recorder first: the bus describes its metrics to the recorder it finds.
    let metrics = PrometheusBuilder::new().install_recorder()?;
    let transport = NatsTransport::builder(url)
        .subject_prefix("health-example")
        .stream_name("HEALTH_EXAMPLE")
        .connect()
        .await?;
    let bus = EventBus::builder()
        .service("shop")
        .transport(transport)
        .group_stats_interval(Duration::from_millis(200))
        .build();
    bus.on("health_example.order", bill)
        .policy(Policy::new().group(Group::Named("health-example-billing")))
        .add();
    bus.ready().await?;

    let address = if self_test {
        "127.0.0.1:0"
    } else {
        "127.0.0.1:8080"
    };
    let listener = TcpListener::bind(address).await?;
    let address = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(scrape))
        .with_state(App {
            bus: bus.clone(),
            metrics,
        });
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    println!("serving http://{address}/healthz and http://{address}/metrics");

    if !self_test {
        server.await??;
        return Ok(());
    }
    for id in 1..=3 {
        bus.emit_event(OrderPlaced { id }).await;
    }
    // The gauges are sampled every 200 ms: wait for a sample after the orders were billed.
    bus.drain().await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (status, health) = get_once(address, "/healthz").await?;
    println!("GET /healthz -> {status}\n{health}");
    let (_, scraped) = get_once(address, "/metrics").await?;
    let shown: Vec<&str> = scraped
        .lines()
        .filter(|line| {
            line.starts_with("bus_published_total") || line.starts_with("bus_consumer_lag")
        })
        .collect();
    println!("GET /metrics -> ...\n{}", shown.join("\n"));
    bus.shutdown(Duration::from_secs(5)).await;
    server.abort();

    let published = shown
        .iter()
        .any(|line| line.starts_with("bus_published_total"));
    let lag = shown
        .iter()
        .any(|line| line.starts_with("bus_consumer_lag"));
    if status != 200 || !published || !lag {
        return Err(format!(
            "self-test failed: /healthz {status}, bus_published_total shown: {published}, \
             bus_consumer_lag shown: {lag}"
        )
        .into());
    }
    println!("self-test passed");
    Ok(())
}

/// One `GET` over a connection of its own: the status code and the body. Enough for a
/// self-test; a real client is the prober's.
async fn get_once(
    address: std::net::SocketAddr,
    path: &str,
) -> Result<(u16, String), Box<dyn std::error::Error>> {
    let mut stream = TcpStream::connect(address).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or("no status line")?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    Ok((status, body))
}
