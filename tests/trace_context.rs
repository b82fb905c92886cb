//! One trace across services (feature `opentelemetry`): service A emits inside a span, the
//! event goes through the broker to service B, whose listener emits in turn to service C. With
//! `tracing-opentelemetry` and an in-memory span exporter, every span of the way is checked:
//! B's `process` span is a child of A's `publish` span (same trace, that parent), C continues
//! the same trace from B's `publish`, a listener that asks for a link starts a trace of its
//! own linked to the publish, and a `traceparent` written by hand by a foreign producer is
//! continued. On the in-memory transport, NATS JetStream, Redis Streams and PostgreSQL.
#![cfg(feature = "opentelemetry")]

mod common;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bus::policy::Trace;
use bus::transport::{MemoryTransport, Transport, WireEvent};
use bus::{EventBus, Policy};
use opentelemetry::trace::{SpanId, SpanKind, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

/// How long a run waits for what it expects before it fails.
const PATIENCE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Serialize, Deserialize, bus::Event)]
#[event(name = "trace.order", distributed)]
struct OrderPlaced {
    run: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, bus::Event)]
#[event(name = "trace.payment", distributed)]
struct PaymentTaken {
    run: String,
}

/// The spans every test of this binary exports: one global subscriber (tests run on several
/// threads), each test finding its own spans by trace id.
fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<(InMemorySpanExporter, SdkTracerProvider)> = OnceLock::new();
    &EXPORTER
        .get_or_init(|| {
            let exporter = InMemorySpanExporter::default();
            let provider = SdkTracerProvider::builder()
                .with_simple_exporter(exporter.clone())
                .build();
            let subscriber = tracing_subscriber::registry()
                .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("bus-tests")));
            tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
            (exporter, provider)
        })
        .0
}

/// Waits until `found` finds what it looks for among the exported spans.
async fn wait_for<T>(what: &str, found: impl Fn(&[SpanData]) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let spans = exporter().get_finished_spans().expect("the exported spans");
        if let Some(found) = found(&spans) {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} not exported within {PATIENCE:?}; exported:\n{}",
            describe(&spans)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn describe(spans: &[SpanData]) -> String {
    spans
        .iter()
        .map(|span| {
            format!(
                "{} trace={} span={} parent={} links={:?}",
                span.name,
                span.span_context.trace_id(),
                span.span_context.span_id(),
                span.parent_span_id,
                span.links
                    .links
                    .iter()
                    .map(|link| link.span_context.span_id())
                    .collect::<Vec<_>>()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The span named `name` of trace `trace`.
fn span_of(spans: &[SpanData], trace: TraceId, name: &str) -> Option<SpanData> {
    spans
        .iter()
        .find(|span| span.span_context.trace_id() == trace && span.name == name)
        .cloned()
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|attribute| attribute.key.as_str() == key)
        .map(|attribute| attribute.value.to_string())
}

/// A, B and C, each a bus of its own on a connection of its own (`connect`), as three
/// services are.
async fn across<F, Fut>(label: &str, connect: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Transport>>,
{
    exporter();
    let run = format!("{label}-{}", common::unique());
    let build = |service: &str, transport: Arc<dyn Transport>| {
        EventBus::builder()
            .service(service)
            .shared_transport(transport)
            .build()
    };
    let a = build("a", connect().await);
    let b = build("b", connect().await);
    let c = build("c", connect().await);

    let emitter = b.clone();
    b.add_listener("trace.order", move |order: Arc<OrderPlaced>| {
        let emitter = emitter.clone();
        async move {
            let run = order.run.clone();
            emitter.emit_event(PaymentTaken { run }).await;
        }
    });
    let (paid, mut payments) = mpsc::unbounded_channel();
    let (linked, mut links) = mpsc::unbounded_channel();
    let mine = run.clone();
    c.add_listener("trace.payment", move |payment: Arc<PaymentTaken>| {
        let (paid, mine) = (paid.clone(), mine.clone());
        async move {
            if payment.run == mine {
                let _ = paid.send(());
            }
        }
    });
    let mine = run.clone();
    c.on("trace.payment", move |payment: Arc<PaymentTaken>| {
        let (linked, mine) = (linked.clone(), mine.clone());
        async move {
            if payment.run == mine {
                let _ = linked.send(());
            }
        }
    })
    .policy(Policy::new().trace(Trace::Link))
    .add();
    for bus in [&a, &b, &c] {
        bus.ready().await.expect("subscribed");
    }

    // Service A emits inside a span of its own.
    let checkout = tracing::info_span!("checkout");
    let trace = checkout.context().span().span_context().trace_id();
    assert_ne!(
        trace,
        TraceId::INVALID,
        "{label}: the test's span has a trace"
    );
    // The emit publishes when called: in the span's scope.
    let emission = checkout.in_scope(|| a.emit_event(OrderPlaced { run: run.clone() }));
    let report = emission.await;
    assert!(report.is_ok(), "{label}: {report:?}");
    drop(checkout);
    for received in [payments.recv(), links.recv()] {
        tokio::time::timeout(PATIENCE, received)
            .await
            .unwrap_or_else(|_| panic!("{label}: C's listeners ran within {PATIENCE:?}"));
    }

    let names = [
        "checkout",
        "publish trace.order",
        "process trace.order",
        "publish trace.payment",
        "process trace.payment",
    ];
    let [
        checkout,
        publish_order,
        process_order,
        publish_payment,
        process_payment,
    ] = wait_for(&format!("{label}: the trace of A, B and C"), |spans| {
        let found: Option<Vec<SpanData>> = names
            .iter()
            .map(|name| span_of(spans, trace, name))
            .collect();
        found?.try_into().ok()
    })
    .await;
    let parent = |span: &SpanData, of: &SpanData| {
        assert_eq!(
            span.parent_span_id,
            of.span_context.span_id(),
            "{label}: `{}` is a child of `{}`",
            span.name,
            of.name
        );
    };
    parent(&publish_order, &checkout);
    parent(&process_order, &publish_order);
    parent(&publish_payment, &process_order);
    parent(&process_payment, &publish_payment);
    assert!(process_order.parent_span_is_remote, "{label}");
    assert_eq!(publish_order.span_kind, SpanKind::Producer, "{label}");
    assert_eq!(process_order.span_kind, SpanKind::Consumer, "{label}");
    let system = attribute(&publish_order, "messaging.system");
    assert_eq!(system.as_deref(), Some(label), "{label}");
    for (key, value) in [
        ("messaging.destination.name", "trace.order"),
        ("messaging.operation.type", "process"),
    ] {
        assert_eq!(
            attribute(&process_order, key).as_deref(),
            Some(value),
            "{label}: {key}"
        );
    }
    assert!(
        attribute(&process_order, "messaging.consumer.group.name").is_some(),
        "{label}: the group is named"
    );
    assert_eq!(
        attribute(&publish_order, "messaging.operation.type").as_deref(),
        Some("send"),
        "{label}"
    );

    // The listener that asked for a link: a trace of its own, linked to B's publish.
    let publish_id = publish_payment.span_context.span_id();
    let linked = wait_for(&format!("{label}: the linked delivery"), |spans| {
        spans
            .iter()
            .find(|span| {
                span.name == "process trace.payment"
                    && span
                        .links
                        .links
                        .iter()
                        .any(|link| link.span_context.span_id() == publish_id)
            })
            .cloned()
    })
    .await;
    assert_ne!(linked.span_context.trace_id(), trace, "{label}");
    assert_eq!(linked.parent_span_id, SpanId::INVALID, "{label}: a root");

    // A foreign producer's context, written by hand, is continued.
    let foreign_trace = format!("{:032x}", u128::from(fastrand::u64(1..)) << 64 | 7);
    let foreign_parent = format!("{:016x}", fastrand::u64(1..));
    let transport = connect().await;
    let wire = WireEvent::new(
        format!("foreign-{run}"),
        "elsewhere",
        "trace.payment",
        serde_json::to_vec(&PaymentTaken { run: run.clone() }).expect("json"),
    )
    .content_type("application/json")
    .extension(
        "traceparent",
        format!("00-{foreign_trace}-{foreign_parent}-01"),
    )
    .extension("tracestate", "vendor=opaque");
    transport
        .publish(wire)
        .await
        .expect("the foreign event stored");
    let foreign = TraceId::from_hex(&foreign_trace).expect("hex");
    let continued = wait_for(&format!("{label}: the foreign trace"), |spans| {
        span_of(spans, foreign, "process trace.payment")
    })
    .await;
    assert_eq!(
        continued.parent_span_id,
        SpanId::from_hex(&foreign_parent).expect("hex"),
        "{label}: the foreign publisher's span is the parent"
    );
    assert_eq!(
        continued.span_context.trace_state().header(),
        "vendor=opaque",
        "{label}: the tracestate is kept"
    );

    for bus in [a, b, c] {
        bus.shutdown(Duration::from_secs(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_across_services_on_memory() {
    let transport = MemoryTransport::new();
    across("memory", || {
        let transport = transport.clone();
        async move { Arc::new(transport) as Arc<dyn Transport> }
    })
    .await;
}

#[cfg(all(feature = "nats", feature = "redis"))]
async fn on_broker(broker: common::brokers::Broker, test: &str) {
    use common::brokers::{Cleanup, unique_prefix};
    let prefix = unique_prefix("trace", broker);
    let _cleanup = Cleanup {
        broker,
        prefix: prefix.clone(),
    };
    // Reachable, or skipped (outside CI) with a message.
    if common::reachable(test, broker.connect(&prefix, None).await).is_none() {
        return;
    }
    across(broker.name(), || async {
        broker
            .connect(&prefix, None)
            .await
            .expect("the broker, reached a moment ago")
    })
    .await;
}

#[cfg(all(feature = "nats", feature = "redis"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_across_services_on_nats() {
    on_broker(
        common::brokers::Broker::Nats,
        "one_trace_across_services_on_nats",
    )
    .await;
}

#[cfg(all(feature = "nats", feature = "redis"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_across_services_on_redis() {
    on_broker(
        common::brokers::Broker::Redis,
        "one_trace_across_services_on_redis",
    )
    .await;
}

#[cfg(all(feature = "nats", feature = "redis", feature = "postgres"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_across_services_on_postgres() {
    on_broker(
        common::brokers::Broker::Postgres,
        "one_trace_across_services_on_postgres",
    )
    .await;
}
