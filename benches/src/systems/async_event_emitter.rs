//! `async-event-emitter`: string names, serde values, `emit(..).await` running the listeners
//! concurrently inside the caller's task, as the crate's README shows.

use std::sync::Arc;

use crate::system::{Delivery, System};
use crate::work::{Event, Work};

/// An [`async_event_emitter::AsyncEventEmitter`]; events travel bincode-encoded, as the crate
/// does for every value.
#[derive(Debug, Default)]
pub struct AsyncEventEmitter {
    emitter: async_event_emitter::AsyncEventEmitter,
}

impl AsyncEventEmitter {
    /// No listener yet.
    pub fn new() -> Self {
        AsyncEventEmitter::default()
    }
}

impl System for AsyncEventEmitter {
    const DELIVERY: Delivery = Delivery::Inline;

    fn add_listener(&mut self, name: &Arc<str>, _index: usize, work: &'static Work) {
        self.emitter.on(name, move |event: Event| async move {
            work.handle(event.seq).await;
        });
    }

    async fn emit(&self, name: &Arc<str>, seq: u64) {
        if let Err(error) = self.emitter.emit(name, Event { seq }).await {
            panic!("async-event-emitter: emit failed: {error}");
        }
    }

    async fn roundtrip(&self, name: &Arc<str>, seq: u64, _work: &'static Work) {
        self.emit(name, seq).await;
    }
}
