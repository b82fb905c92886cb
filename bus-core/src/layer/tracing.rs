//! The bus's logging, as a layer.

use super::{AttemptResult, DeadLetter, DeliveryInfo, DeliveryOutcome, EmitInfo, Layer};
use crate::info::ListenerInfo;

/// The bus's logging, as a layer: every bus has it. Failed, panicked, timed-out and aborted
/// deliveries are logged as `tracing` events inside their `bus.deliver` span, along with sheds,
/// type mismatches, dead letters and lag.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingLayer;

impl Layer for TracingLayer {
    fn after(&self, delivery: &DeliveryInfo<'_>, outcome: &DeliveryOutcome<'_>) {
        let (event, listener, attempt) = (
            delivery.event(),
            delivery.listener().name(),
            delivery.attempt(),
        );
        match outcome.result {
            AttemptResult::Delivered => {}
            AttemptResult::Failed(error) => {
                tracing::error!(
                    event, listener, attempt, error = %error, "listener returned an error"
                );
            }
            AttemptResult::Panicked(message) => {
                tracing::error!(event, listener, attempt, panic = %message, "listener panicked");
            }
            AttemptResult::TimedOut(timeout) => {
                tracing::error!(event, listener, attempt, ?timeout, "listener timed out");
            }
            AttemptResult::Aborted => {
                tracing::warn!(event, listener, "listener aborted before it finished");
            }
        }
    }

    fn on_shed(&self, emit: &EmitInfo<'_>) {
        tracing::warn!(
            event = emit.event(),
            event_id = %emit.event_id(),
            listeners = emit.listener_count(),
            "bus full (max_in_flight): event shed, no listener got it"
        );
    }

    fn on_mismatch(&self, emit: &EmitInfo<'_>, listener: &ListenerInfo) {
        tracing::debug!(
            event = emit.event(),
            listener = listener.name(),
            expected = listener.event_type(),
            "pattern listener passed by: it takes another type"
        );
    }

    fn on_dead_letter(&self, letter: &DeadLetter) {
        tracing::error!(
            event = letter.event().name(),
            event_id = %letter.event().id(),
            listener = letter.listener().name(),
            attempts = letter.attempts(),
            error = %letter.error(),
            "delivery dead-lettered after its last attempt"
        );
    }

    fn on_lagged(&self, pattern: &str, missed: u64) {
        tracing::warn!(
            pattern,
            missed,
            "event stream lagged: events dropped from its buffer"
        );
    }
}
