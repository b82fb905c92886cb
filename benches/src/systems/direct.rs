//! `direct`: the lower bound. The registry every dynamic bus needs (a name to its type-erased
//! listeners), then each listener's future awaited inline, in order, with no task.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::scenario::Job;
use crate::system::{Delivery, NotApplicable, System};
use crate::work::{Event, Work};

type Listener = Box<dyn Fn(Arc<Event>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Listeners awaited inside `emit`: one lookup, one `Arc` for the event, one boxed future per
/// listener, and no task, no tracking, no isolation.
#[derive(Default)]
pub struct Direct {
    listeners: HashMap<Arc<str>, Vec<Listener>>,
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct")
            .field("names", &self.listeners.len())
            .finish_non_exhaustive()
    }
}

impl Direct {
    /// No listener yet.
    pub fn new() -> Self {
        Direct::default()
    }
}

impl System for Direct {
    const DELIVERY: Delivery = Delivery::Inline;

    fn supports(job: &Job) -> Result<(), NotApplicable> {
        match job {
            Job::Memory { .. } => Err(NotApplicable(
                "runs its listeners inside emit, so it never holds a pending delivery",
            )),
            _ => Ok(()),
        }
    }

    fn add_listener(&mut self, name: &Arc<str>, _index: usize, work: &'static Work) {
        let listener: Listener =
            Box::new(move |event| Box::pin(async move { work.handle(event.seq).await }));
        self.listeners
            .entry(Arc::clone(name))
            .or_default()
            .push(listener);
    }

    async fn emit(&self, name: &Arc<str>, seq: u64) {
        if let Some(listeners) = self.listeners.get(&**name) {
            let event = Arc::new(Event { seq });
            for listener in listeners {
                listener(Arc::clone(&event)).await;
            }
        }
    }

    async fn roundtrip(&self, name: &Arc<str>, seq: u64, _work: &'static Work) {
        self.emit(name, seq).await;
    }
}
