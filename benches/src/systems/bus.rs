//! `bus`, ours, through its public API only.

use std::future::Future;
use std::sync::Arc;

use crate::system::{Delivery, System};
use crate::work::{Event, Work};

/// An [`EventBus`](::bus::EventBus), built by the caller so that every dispatch mode it offers
/// is one contender line (see [`contenders`](crate::contenders)).
#[derive(Debug)]
pub struct Bus {
    bus: ::bus::EventBus,
}

impl Bus {
    /// Benchmarks `bus`, whichever way it was built.
    pub fn new(bus: ::bus::EventBus) -> Self {
        Bus { bus }
    }
}

impl System for Bus {
    const DELIVERY: Delivery = Delivery::Task;
    const PATTERNS: bool = true;

    fn add_listener(&mut self, name: &Arc<str>, _index: usize, work: &'static Work) {
        // The closure captures `work`, so each add is a listener of its own (a closure with
        // no state would be one listener however often it is added).
        self.bus
            .add_listener(name, move |event: Arc<Event>| async move {
                work.handle(event.seq).await;
            });
    }

    fn emit(&self, name: &Arc<str>, seq: u64) -> impl Future<Output = ()> + Send {
        // Fire and forget: the emission is dropped.
        drop(self.bus.emit(name, Event { seq }));
        std::future::ready(())
    }

    async fn roundtrip(&self, name: &Arc<str>, seq: u64, _work: &'static Work) {
        let report = self.bus.emit(name, Event { seq }).await;
        assert!(
            report.failed() == 0 && report.delivered() > 0,
            "bus: a delivery failed or none happened: {report:?}"
        );
    }

    async fn settle(&self) {
        self.bus.drain().await;
    }
}
