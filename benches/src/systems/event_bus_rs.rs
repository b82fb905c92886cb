//! `event_bus_rs`: topics of byte messages, each subscription a stream consumed by its own
//! task, as the crate's README shows.

use std::future::Future;
use std::sync::Arc;

use futures_util::StreamExt as _;
use tokio::task::AbortHandle;

use crate::system::{Delivery, System};
use crate::work::Work;

/// An [`event_bus_rs::EventBus`] whose topics hold every event of the run.
///
/// Its topics are bounded channels: a publish to a full topic is an error
/// (`CapacityOverflow`), which fails the run rather than dropping the event.
pub struct EventBusRs {
    bus: event_bus_rs::EventBus,
    subscribers: Vec<AbortHandle>,
}

impl std::fmt::Debug for EventBusRs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBusRs")
            .field("subscribers", &self.subscribers.len())
            .finish_non_exhaustive()
    }
}

impl EventBusRs {
    /// Topics of `capacity` messages each.
    pub fn new(capacity: usize) -> Self {
        EventBusRs {
            bus: event_bus_rs::EventBus::new_with_topic_capacity(capacity.max(1)),
            subscribers: Vec::new(),
        }
    }
}

impl Drop for EventBusRs {
    fn drop(&mut self) {
        // A subscription keeps its topic open, so its stream never ends by itself.
        for subscriber in &self.subscribers {
            subscriber.abort();
        }
    }
}

impl System for EventBusRs {
    const DELIVERY: Delivery = Delivery::Queue;

    fn add_listener(&mut self, name: &Arc<str>, _index: usize, work: &'static Work) {
        let mut subscription = self.bus.subscribe(name);
        let name = Arc::clone(name);
        let task = tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                let Some(seq) = message.get(..8).and_then(|b| b.try_into().ok()) else {
                    work.fail(format!("event_bus_rs: a malformed message on `{name}`"));
                    return;
                };
                work.handle(u64::from_le_bytes(seq)).await;
            }
        });
        self.subscribers.push(task.abort_handle());
    }

    fn emit(&self, name: &Arc<str>, seq: u64) -> impl Future<Output = ()> + Send {
        if let Err(error) = self.bus.publish(name, &seq.to_le_bytes()) {
            panic!("event_bus_rs: {error}; no number is reported for lost events");
        }
        std::future::ready(())
    }
}
