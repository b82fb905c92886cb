//! `broadcast`: a `tokio::sync::broadcast` channel per name, one receiver task per listener.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::broadcast::{self, error::RecvError};
use tokio::task::AbortHandle;

use crate::system::{Delivery, System};
use crate::work::{Event, Work};

/// A name-to-sender map over `tokio::sync::broadcast`.
///
/// Each channel holds every event its name receives in the run ([`Setup::capacity`]), so no
/// receiver can lag; one that does anyway fails the run through [`Work::fail`] instead of
/// dropping events silently.
///
/// [`Setup::capacity`]: crate::Setup::capacity
#[derive(Debug)]
pub struct Broadcast {
    capacity: usize,
    senders: HashMap<Arc<str>, broadcast::Sender<Event>>,
    receivers: Vec<AbortHandle>,
}

impl Broadcast {
    /// Channels of `capacity` events each.
    pub fn new(capacity: usize) -> Self {
        Broadcast {
            capacity: capacity.max(1),
            senders: HashMap::new(),
            receivers: Vec::new(),
        }
    }
}

impl Drop for Broadcast {
    fn drop(&mut self) {
        for receiver in &self.receivers {
            receiver.abort();
        }
    }
}

impl System for Broadcast {
    const DELIVERY: Delivery = Delivery::Queue;

    fn add_listener(&mut self, name: &Arc<str>, _index: usize, work: &'static Work) {
        let capacity = self.capacity;
        let sender = self
            .senders
            .entry(Arc::clone(name))
            .or_insert_with(|| broadcast::channel(capacity).0);
        let mut receiver = sender.subscribe();
        let name = Arc::clone(name);
        let task = tokio::spawn(async move {
            loop {
                match receiver.recv().await {
                    Ok(event) => work.handle(event.seq).await,
                    Err(RecvError::Closed) => break,
                    Err(RecvError::Lagged(lost)) => {
                        work.fail(format!(
                            "broadcast: a receiver of `{name}` lagged and lost {lost} events \
                             (capacity {capacity}); no number is reported for lost events"
                        ));
                        break;
                    }
                }
            }
        });
        self.receivers.push(task.abort_handle());
    }

    fn emit(&self, name: &Arc<str>, seq: u64) -> impl Future<Output = ()> + Send {
        if let Some(sender) = self.senders.get(&**name) {
            // Fails only when no receiver is left, which the run never does.
            sender
                .send(Event { seq })
                .expect("broadcast: every receiver is gone");
        }
        std::future::ready(())
    }
}
