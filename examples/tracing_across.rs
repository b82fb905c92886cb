//! One trace across two processes (feature `opentelemetry`, over NATS JetStream): this process,
//! service `shop`, starts a second one, service `billing`, emits an order inside a span, and
//! billing's listener emits a payment that shop receives back. Each process records its spans
//! with OpenTelemetry (through `tracing-opentelemetry`, into an in-memory exporter); billing
//! hands its spans over as JSON lines when it exits, and shop prints them all as one tree:
//!
//! ```text
//! cargo run --example tracing_across --features opentelemetry,nats
//!
//! trace 5b8aa5a2d2c872e8321cf37308d69df2
//! └─ checkout [shop]
//!    └─ publish tracing_example.order [shop]
//!       └─ process tracing_example.order [billing]
//!          └─ publish tracing_example.payment [billing]
//!             └─ process tracing_example.payment [shop]
//! ```
//!
//! The trace context crosses the broker as the CloudEvents distributed-tracing extension
//! (`traceparent`). In production the exporter is an OTLP one, and a tracing backend draws
//! the same tree (with the transport's own spans, such as `bus.nats.publish`, beside these).
//! A NATS URL may be given as the first argument. It exits non-zero unless the five spans
//! above form that one chain.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bus::EventBus;
use bus::nats::NatsTransport;
use opentelemetry::trace::{SpanId, TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

#[derive(Debug, Serialize, Deserialize, bus::Event)]
#[event(name = "tracing_example.order", distributed)]
struct OrderPlaced {
    id: u32,
}

#[derive(Debug, Serialize, Deserialize, bus::Event)]
#[event(name = "tracing_example.payment", distributed)]
struct PaymentTaken {
    order: u32,
}

/// One finished span, as the processes exchange them.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Span {
    trace: String,
    span: String,
    parent: String,
    name: String,
    service: String,
}

/// Records this process's spans through OpenTelemetry, in memory.
fn install_tracing() -> (InMemorySpanExporter, SdkTracerProvider) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("tracing_across")));
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
    (exporter, provider)
}

fn finished(exporter: &InMemorySpanExporter, service: &str) -> Vec<Span> {
    exporter
        .get_finished_spans()
        .unwrap_or_default()
        .into_iter()
        .map(|span| Span {
            trace: span.span_context.trace_id().to_string(),
            span: span.span_context.span_id().to_string(),
            parent: span.parent_span_id.to_string(),
            name: span.name.into_owned(),
            service: service.to_owned(),
        })
        .collect()
}

async fn connect(url: &str, prefix: &str) -> Result<NatsTransport, bus::transport::TransportError> {
    NatsTransport::builder(url)
        .subject_prefix(prefix)
        .stream_name(prefix.to_uppercase())
        .connect()
        .await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, url, prefix] = args.as_slice()
        && flag == "--billing"
    {
        return billing(url, prefix).await;
    }
    let url = args.first().map_or("nats://127.0.0.1:4222", String::as_str);
    shop(url).await
}

/// Service `billing`, the second process: bills each order by emitting a payment; exits after
/// the first, writing its spans to stdout as JSON lines.
async fn billing(url: &str, prefix: &str) -> Result<(), Box<dyn std::error::Error>> {
    let (exporter, provider) = install_tracing();
    let bus = EventBus::builder()
        .service("billing")
        .transport(connect(url, prefix).await?)
        .build();
    let (billed, mut orders) = mpsc::unbounded_channel();
    let emitter = bus.clone();
    bus.add_listener("tracing_example.order", move |order: Arc<OrderPlaced>| {
        let (emitter, billed) = (emitter.clone(), billed.clone());
        async move {
            // Emitted inside the delivery's span: the payment continues the order's trace.
            emitter.emit_event(PaymentTaken { order: order.id }).await;
            let _ = billed.send(());
        }
    });
    bus.ready().await?;
    println!("ready");
    orders.recv().await;
    bus.shutdown(Duration::from_secs(5)).await;
    provider.force_flush()?;
    for span in finished(&exporter, "billing") {
        println!("{}", serde_json::to_string(&span)?);
    }
    Ok(())
}

/// Service `shop`, this process: starts billing, emits an order in a span, waits for the
/// payment, then prints both processes' spans of that trace as a tree.
async fn shop(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let (exporter, provider) = install_tracing();
    let prefix = "tracing-across";
    let transport = connect(url, prefix).await?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--billing", url, prefix])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("billing's stdout")?).lines();
    // Billing's group exists once it is ready: the order is not published before.
    let ready = tokio::task::block_in_place(|| lines.next()).transpose()?;
    if ready.as_deref() != Some("ready") {
        return Err(format!("billing did not start: {ready:?}").into());
    }

    let bus = EventBus::builder()
        .service("shop")
        .transport(transport)
        .build();
    let (paid, mut payments) = mpsc::unbounded_channel();
    bus.add_listener(
        "tracing_example.payment",
        move |payment: Arc<PaymentTaken>| {
            let _ = paid.send(payment.order);
            async {}
        },
    );
    bus.ready().await?;

    let checkout = tracing::info_span!("checkout");
    let trace = checkout
        .context()
        .span()
        .span_context()
        .trace_id()
        .to_string();
    // The emit publishes when called: inside the span.
    let emission = checkout.in_scope(|| bus.emit_event(OrderPlaced { id: 7 }));
    emission.await;
    drop(checkout);
    let order = tokio::time::timeout(Duration::from_secs(30), payments.recv()).await?;
    println!("shop: payment for order {order:?} received");

    let mut spans: Vec<Span> = tokio::task::block_in_place(|| {
        lines
            .map_while(Result::ok)
            .filter_map(|line| serde_json::from_str(&line).ok())
            .collect()
    });
    let exited = tokio::task::block_in_place(|| child.wait())?;
    bus.shutdown(Duration::from_secs(5)).await;
    provider.force_flush()?;
    spans.extend(finished(&exporter, "shop"));
    spans.retain(|span| span.trace == trace);
    print_tree(&trace, &spans);
    let expected = [
        "checkout",
        "publish tracing_example.order",
        "process tracing_example.order",
        "publish tracing_example.payment",
        "process tracing_example.payment",
    ];
    if !exited.success() || !is_chain(&spans, &expected) {
        return Err(format!("not one trace across both services: {expected:?}").into());
    }
    Ok(())
}

/// Prints the spans of `trace` as a tree.
fn print_tree(trace: &str, spans: &[Span]) {
    let mut children: HashMap<&str, Vec<&Span>> = HashMap::new();
    for span in spans {
        children.entry(span.parent.as_str()).or_default().push(span);
    }
    fn print(span: &Span, depth: usize, children: &HashMap<&str, Vec<&Span>>) {
        println!("{}└─ {} [{}]", "   ".repeat(depth), span.name, span.service);
        for child in children.get(span.span.as_str()).into_iter().flatten() {
            print(child, depth + 1, children);
        }
    }
    println!("\ntrace {trace}");
    let root = SpanId::INVALID.to_string();
    for span in children.get(root.as_str()).into_iter().flatten() {
        print(span, 0, &children);
    }
}

/// Whether `names` are spans of `spans`, each the child of the one before, the first a root.
fn is_chain(spans: &[Span], names: &[&str]) -> bool {
    let mut parent = SpanId::INVALID.to_string();
    names.iter().all(|name| {
        let found = spans
            .iter()
            .find(|span| span.name == *name && span.parent == parent);
        found.map(|span| parent.clone_from(&span.span)).is_some()
    })
}
