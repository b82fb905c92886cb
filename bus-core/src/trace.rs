//! W3C trace context on the wire: the CloudEvents distributed-tracing extension
//! (`traceparent`, `tracestate`), so that one trace runs from an emit in one service to the
//! last listener in another.
//!
//! Every event a bus publishes carries the trace context of its emit, when there is one:
//!
//! - with the `opentelemetry` feature and a `tracing-opentelemetry` layer installed, the
//!   context of the `publish <event>` span (a child of the span the emit ran in);
//! - otherwise, the context of the event from a broker being handled: a listener of an event
//!   that came with a `traceparent` passes it on, unchanged, to the events it publishes (or
//!   writes to an outbox) while it runs, with no OpenTelemetry crate in the build.
//!
//! An event published again as it was kept (by an outbox relay, through
//! [`EventBus::try_emit_received`](crate::EventBus::try_emit_received)) keeps the context it
//! was written with.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use crate::transport::WireEvent;

/// The extension attribute of the W3C `traceparent` (CloudEvents distributed-tracing
/// extension): `00-<trace id>-<parent span id>-<flags>`.
pub const TRACEPARENT: &str = "traceparent";

/// The extension attribute of the W3C `tracestate`: vendor-specific trace data, passed on as
/// it came.
pub const TRACESTATE: &str = "tracestate";

/// A W3C trace context, as an event carries it on the wire: a valid `traceparent` and the
/// `tracestate` that came with it.
///
/// ```
/// use bus::trace::TraceContext;
///
/// let trace = TraceContext::parse(
///     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
///     Some("congo=t61rcWkgMzE"),
/// )
/// .unwrap();
/// assert_eq!(trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert_eq!(trace.parent_id(), "00f067aa0ba902b7");
/// assert!(trace.sampled());
/// assert!(TraceContext::parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None).is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// Always the 55 characters of a version-00 `traceparent`.
    traceparent: String,
    tracestate: Option<String>,
}

/// The length of a version-00 `traceparent`.
const TRACEPARENT_LEN: usize = 55;

impl TraceContext {
    /// The trace context of a `traceparent` and `tracestate`, or `None` when `traceparent` is
    /// not valid per W3C Trace Context §3.2: version `ff`, a field that is not lower-case hex
    /// of its length, an all-zero trace id or parent id, or (version `00`) anything after the
    /// flags. A later version's extra fields are dropped (the context is read as version 00),
    /// as the specification says. An empty `tracestate` is none.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<TraceContext> {
        let bytes = traceparent.as_bytes();
        let version = bytes.get(..2)?;
        let valid_length = match version {
            b"00" => bytes.len() == TRACEPARENT_LEN,
            b"ff" => false,
            _ => {
                bytes.len() == TRACEPARENT_LEN
                    || (bytes.len() > TRACEPARENT_LEN && bytes[TRACEPARENT_LEN] == b'-')
            }
        };
        if !valid_length || !is_hex(version) {
            return None;
        }
        let field = |start: usize, len: usize| {
            let dash = *bytes.get(start - 1)? == b'-';
            let text = bytes.get(start..start + len)?;
            (dash && is_hex(text)).then_some(text)
        };
        let trace_id = field(3, 32)?;
        let parent_id = field(36, 16)?;
        let flags = field(53, 2)?;
        if trace_id.iter().all(|&b| b == b'0') || parent_id.iter().all(|&b| b == b'0') {
            return None;
        }
        // Read as version 00: a later version's own fields are not passed on.
        let mut normalized = String::with_capacity(TRACEPARENT_LEN);
        normalized.push_str("00");
        normalized.push_str(&traceparent[2..53]);
        normalized.push_str(std::str::from_utf8(flags).ok()?);
        Some(TraceContext {
            traceparent: normalized,
            tracestate: tracestate
                .map(str::trim)
                .filter(|state| !state.is_empty())
                .map(str::to_owned),
        })
    }

    /// The trace context an event on the wire carries, if it carries a valid one.
    pub fn of(wire: &WireEvent) -> Option<TraceContext> {
        let traceparent = wire.extensions.get(TRACEPARENT)?;
        TraceContext::parse(
            traceparent,
            wire.extensions.get(TRACESTATE).map(String::as_str),
        )
    }

    /// Writes this context on `wire` (`traceparent`, and `tracestate` when there is one).
    pub fn write_to(&self, wire: &mut WireEvent) {
        wire.extensions
            .insert(TRACEPARENT.to_owned(), self.traceparent.clone());
        match &self.tracestate {
            Some(state) => {
                wire.extensions.insert(TRACESTATE.to_owned(), state.clone());
            }
            None => {
                wire.extensions.remove(TRACESTATE);
            }
        }
    }

    /// The `traceparent`, as written on the wire.
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// The `tracestate`, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// The trace id: 32 lower-case hex digits.
    pub fn trace_id(&self) -> &str {
        &self.traceparent[3..35]
    }

    /// The id of the span this context's event was published from: 16 lower-case hex digits.
    pub fn parent_id(&self) -> &str {
        &self.traceparent[36..52]
    }

    /// Whether the caller recorded its trace (the `sampled` flag).
    pub fn sampled(&self) -> bool {
        self.flags() & 1 == 1
    }

    fn flags(&self) -> u8 {
        u8::from_str_radix(&self.traceparent[53..55], 16).unwrap_or(0)
    }
}

/// Lower-case hex digits only (W3C Trace Context forbids upper case).
fn is_hex(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

thread_local! {
    /// The trace context of the event from a broker whose delivery is polled on this thread.
    static CURRENT: RefCell<Option<Arc<TraceContext>>> = const { RefCell::new(None) };
}

/// The trace context an event emitted here and now would carry: with the `opentelemetry`
/// feature, the current span's, when an OpenTelemetry layer gives it one; otherwise that of
/// the event from a broker whose listener runs here (set around every poll of its future, as
/// [`current_event_id`](crate::event::current_event_id) is). `None` outside both.
///
/// For code that writes events itself (an outbox): the bus writes it on what it publishes.
pub fn current() -> Option<TraceContext> {
    #[cfg(feature = "opentelemetry")]
    if let Some(trace) = otel::of_span(&tracing::Span::current()) {
        return Some(trace);
    }
    CURRENT.with_borrow(|current| current.as_deref().cloned())
}

/// Writes the trace context of a publish on `wire`: the one it kept, if it has one; else,
/// with the `opentelemetry` feature, that of `span` (the publish span) or, when it is
/// disabled, of the span the emit runs in; else that of the event from a broker being handled.
pub(crate) fn write_publish(wire: &mut WireEvent, span: &tracing::Span) {
    if wire.extensions.contains_key(TRACEPARENT) {
        return;
    }
    #[cfg(feature = "opentelemetry")]
    {
        let of_span = if span.is_disabled() {
            otel::of_span(&tracing::Span::current())
        } else {
            otel::of_span(span)
        };
        if let Some(trace) = of_span {
            return trace.write_to(wire);
        }
    }
    #[cfg(not(feature = "opentelemetry"))]
    let _ = span;
    CURRENT.with_borrow(|current| {
        if let Some(trace) = current {
            trace.write_to(wire);
        }
    });
}

pin_project! {
    /// The future of a delivery from a broker, polled with its event's trace context marked
    /// current, so that what its listener publishes passes it on.
    pub(crate) struct Continued<F> {
        trace: Option<Arc<TraceContext>>,
        #[pin]
        future: F,
    }
}

impl<F> Continued<F> {
    pub(crate) fn new(trace: Option<TraceContext>, future: F) -> Self {
        Continued {
            trace: trace.map(Arc::new),
            future,
        }
    }
}

impl<F: Future> Future for Continued<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let Some(trace) = this.trace else {
            return this.future.poll(cx);
        };
        /// Restores the previous context, on a panic too.
        struct Restore(Option<Arc<TraceContext>>);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.set(self.0.take());
            }
        }
        let _restore = Restore(CURRENT.replace(Some(Arc::clone(trace))));
        this.future.poll(cx)
    }
}

/// The OpenTelemetry side: spans as trace contexts and back.
#[cfg(feature = "opentelemetry")]
pub(crate) mod otel {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::TraceContext;
    use crate::policy::Trace;

    /// The trace context of `span`, when an OpenTelemetry layer gives it a valid one.
    pub(crate) fn of_span(span: &tracing::Span) -> Option<TraceContext> {
        if span.is_disabled() {
            return None;
        }
        let context = span.context();
        let span_context = context.span().span_context().clone();
        if !span_context.is_valid() {
            return None;
        }
        let traceparent = format!(
            "00-{:032x}-{:016x}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        );
        let tracestate = span_context.trace_state().header();
        TraceContext::parse(&traceparent, Some(&tracestate))
    }

    /// The remote span context `trace` names.
    fn span_context(trace: &TraceContext) -> Option<SpanContext> {
        let trace_id = TraceId::from_hex(trace.trace_id()).ok()?;
        let span_id = SpanId::from_hex(trace.parent_id()).ok()?;
        let state = trace
            .tracestate()
            .and_then(|state| state.parse::<TraceState>().ok())
            .unwrap_or_default();
        Some(SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::new(trace.flags()),
            true,
            state,
        ))
    }

    /// Makes `span` (a delivery's, just created) continue `trace`: its child, or a new trace
    /// linked to it, as the listener's policy says. Without a context it starts a new trace,
    /// rather than hang under the consumer's span, which lasts as long as the consumer.
    pub(crate) fn continue_in(span: &tracing::Span, trace: Option<&TraceContext>, how: Trace) {
        let remote = trace.and_then(span_context);
        let parent = match (&remote, how) {
            (Some(remote), Trace::Child) => {
                opentelemetry::Context::new().with_remote_span_context(remote.clone())
            }
            _ => opentelemetry::Context::new(),
        };
        // Fails only without an OpenTelemetry layer, or for a disabled span: nothing to do.
        let _ = span.set_parent(parent);
        if let (Some(remote), Trace::Link) = (remote, how) {
            span.add_link(remote);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_reads_its_fields() {
        let trace = TraceContext::parse(VALID, Some(" rojo=00f067aa0ba902b7 ")).unwrap();
        assert_eq!(trace.traceparent(), VALID);
        assert_eq!(trace.tracestate(), Some("rojo=00f067aa0ba902b7"));
        assert_eq!(trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(trace.parent_id(), "00f067aa0ba902b7");
        assert!(trace.sampled());
        let unsampled = TraceContext::parse(&VALID.replace("-01", "-00"), Some("")).unwrap();
        assert!(!unsampled.sampled());
        assert_eq!(unsampled.tracestate(), None);
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        for invalid in [
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert_eq!(TraceContext::parse(invalid, None), None, "{invalid:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_as_version_00() {
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-adds";
        assert_eq!(
            TraceContext::parse(later, None).unwrap().traceparent(),
            VALID
        );
    }

    #[test]
    fn a_context_goes_on_the_wire_and_back() {
        let trace = TraceContext::parse(VALID, Some("congo=t61rcWkgMzE")).unwrap();
        let mut wire = WireEvent::new("1", "shop", "orders.placed", "{}");
        wire.extensions
            .insert(TRACESTATE.to_owned(), "stale=1".to_owned());
        trace.write_to(&mut wire);
        assert_eq!(TraceContext::of(&wire), Some(trace));
        let bare = TraceContext::parse(VALID, None).unwrap();
        bare.write_to(&mut wire);
        assert_eq!(wire.extensions.get(TRACESTATE), None, "no stale tracestate");
    }

    #[test]
    fn a_kept_context_is_not_replaced_and_the_handled_one_is_written() {
        let kept = TraceContext::parse(VALID, None).unwrap();
        let handled = TraceContext::parse(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            None,
        )
        .unwrap();
        let span = tracing::Span::none();
        let mut fresh = WireEvent::new("1", "shop", "orders.placed", "{}");
        let mut relayed = fresh.clone();
        kept.write_to(&mut relayed);
        let _restore = CURRENT.replace(Some(Arc::new(handled.clone())));
        write_publish(&mut fresh, &span);
        write_publish(&mut relayed, &span);
        CURRENT.set(None);
        assert_eq!(TraceContext::of(&fresh), Some(handled));
        assert_eq!(TraceContext::of(&relayed), Some(kept));
    }

    #[tokio::test]
    async fn a_continued_future_sees_its_context_while_polled_only() {
        let trace = TraceContext::parse(VALID, None).unwrap();
        let inside = Continued::new(Some(trace.clone()), async {
            let before = current();
            tokio::task::yield_now().await;
            (before, current())
        })
        .await;
        assert_eq!(inside, (Some(trace.clone()), Some(trace)));
        assert_eq!(current(), None);
    }

    proptest! {
        /// Whatever comes in a header, parsing never panics, and what it accepts is a
        /// version-00 context that parses as itself.
        #[test]
        fn parsing_is_total_and_stable(traceparent in "\\PC{0,70}", hex in "[0-9a-f]{32}") {
            if let Some(trace) = TraceContext::parse(&traceparent, None) {
                prop_assert_eq!(trace.traceparent().len(), TRACEPARENT_LEN);
                let again = TraceContext::parse(trace.traceparent(), None);
                prop_assert_eq!(again, Some(trace));
            }
            let built = format!("00-{hex}-{}-01", &hex[..16]);
            let zero = hex.bytes().all(|b| b == b'0') || hex[..16].bytes().all(|b| b == b'0');
            prop_assert_eq!(TraceContext::parse(&built, None).is_some(), !zero);
        }
    }
}
