//! `typed-emitter`: a typed emitter keyed by name, `emit(..).await` running the listeners
//! concurrently inside the caller's task, as the crate's README shows.

use std::sync::Arc;

use crate::system::{Delivery, System};
use crate::work::{Event, Work};

/// A [`typed_emitter::TypedEmitter`] keyed by `Arc<str>` (prebuilt names, cloned per emit
/// without allocating), with [`Event`] values cloned per listener.
#[derive(Debug, Default)]
pub struct TypedEmitter {
    emitter: typed_emitter::TypedEmitter<Arc<str>, Event, ()>,
}

impl TypedEmitter {
    /// No listener yet.
    pub fn new() -> Self {
        TypedEmitter::default()
    }
}

impl System for TypedEmitter {
    const DELIVERY: Delivery = Delivery::Inline;

    fn add_listener(&mut self, name: &Arc<str>, _index: usize, work: &'static Work) {
        self.emitter
            .on(Arc::clone(name), move |event: Event| async move {
                work.handle(event.seq).await;
            });
    }

    async fn emit(&self, name: &Arc<str>, seq: u64) {
        self.emitter.emit(Arc::clone(name), Event { seq }).await;
    }

    async fn roundtrip(&self, name: &Arc<str>, seq: u64, _work: &'static Work) {
        self.emit(name, seq).await;
    }
}
