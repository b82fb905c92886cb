//! `seed`: the seed design, ported literally. A lock around
//! `HashMap<String, HashSet<fn(Arc<Event>) -> Pin<Box<dyn Future<Output = ()> + Send>>>>`,
//! and `tokio::spawn` for every listener of every emit.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};

use crate::scenario::Job;
use crate::system::{Delivery, NotApplicable, System};
use crate::work::{Event, Work};

/// The seed's listener: a plain fn pointer. It cannot capture state, so its handlers reach
/// [`Work`] through the static every system shares.
type Listener = fn(Arc<Event>) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// The seed event bus.
#[derive(Debug, Default)]
pub struct Seed {
    listeners: RwLock<HashMap<String, HashSet<Listener>>>,
}

/// One handler fn per listener rank. The seed keeps listeners in a `HashSet<fn>`, so the
/// listeners of one name must be distinct fn pointers; `black_box(K)` gives each a body of
/// its own, or the compiler could merge them into one address (rust-lang/rust#118833) and
/// the set would hold one listener where the scenario registered ten.
fn handler<const K: usize>(event: Arc<Event>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        black_box(K);
        Work::global().handle(event.seq).await;
    })
}

const HANDLERS: [Listener; 16] = [
    handler::<0>,
    handler::<1>,
    handler::<2>,
    handler::<3>,
    handler::<4>,
    handler::<5>,
    handler::<6>,
    handler::<7>,
    handler::<8>,
    handler::<9>,
    handler::<10>,
    handler::<11>,
    handler::<12>,
    handler::<13>,
    handler::<14>,
    handler::<15>,
];

impl Seed {
    /// An empty seed bus.
    pub fn new() -> Self {
        Seed::default()
    }

    /// The seed's emit: one task per listener, nothing returned.
    pub fn emit(&self, name: &str, event: Event) {
        let event = Arc::new(event);
        let listeners = self
            .listeners
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(set) = listeners.get(name) {
            for listener in set {
                tokio::spawn(listener(Arc::clone(&event)));
            }
        }
    }
}

impl System for Seed {
    const DELIVERY: Delivery = Delivery::Task;

    fn supports(job: &Job) -> Result<(), NotApplicable> {
        match job {
            Job::Throughput(plan) if plan.listeners > HANDLERS.len() => Err(NotApplicable(
                "the seed's HashSet<fn> needs a distinct fn per listener of a name; 16 exist",
            )),
            _ => Ok(()),
        }
    }

    fn add_listener(&mut self, name: &Arc<str>, index: usize, _work: &'static Work) {
        let mut listeners = self
            .listeners
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let added = listeners
            .entry(name.to_string())
            .or_default()
            .insert(HANDLERS[index]);
        assert!(
            added,
            "seed: handler {index} of `{name}` has the same address as another; the set \
             would hold fewer listeners than the scenario registers"
        );
    }

    fn emit(&self, name: &Arc<str>, seq: u64) -> impl Future<Output = ()> + Send {
        Seed::emit(self, name, Event { seq });
        std::future::ready(())
    }
}
