//! In the default mode, a delivery to a listener that completes without suspending allocates
//! nothing: an emit costs the shared event's `Arc`, whatever the number of listeners.
//!
//! The allocation counter is process-wide, so this file holds one check and runs without
//! libtest's harness (`harness = false` in Cargo.toml): the harness's main thread allocates
//! now and then while it waits for a test, and under load those blocks landed in the count.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bus::EventBus;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

#[derive(Debug)]
struct Tick;

static CALLS: AtomicUsize = AtomicUsize::new(0);

async fn listener<const N: usize>(_: Arc<Tick>) {
    CALLS.fetch_add(1, Ordering::Relaxed);
}

fn bus_with_listeners(count: usize) -> EventBus {
    let bus = EventBus::new();
    let all = [
        bus.add_listener("tick", listener::<0>),
        bus.add_listener("tick", listener::<1>),
        bus.add_listener("tick", listener::<2>),
        bus.add_listener("tick", listener::<3>),
        bus.add_listener("tick", listener::<4>),
        bus.add_listener("tick", listener::<5>),
        bus.add_listener("tick", listener::<6>),
        bus.add_listener("tick", listener::<7>),
        bus.add_listener("tick", listener::<8>),
        bus.add_listener("tick", listener::<9>),
    ];
    for id in &all[count..] {
        assert!(bus.remove(*id));
    }
    assert_eq!(bus.listeners("tick").len(), count);
    bus
}

/// Emits `emits` events on `bus`, dropping half of the emissions and awaiting the other half.
async fn emit_many(bus: &EventBus, emits: usize) {
    for i in 0..emits {
        let emission = bus.emit("tick", Tick);
        if i % 2 == 0 {
            assert!(emission.await.is_ok());
        }
    }
}

/// Heap blocks allocated by [`emit_many`].
async fn blocks_allocated(bus: &EventBus, emits: usize) -> u64 {
    let before = dhat::HeapStats::get().total_blocks;
    emit_many(bus, emits).await;
    dhat::HeapStats::get().total_blocks - before
}

fn main() {
    no_allocation_per_listener_when_listeners_complete_at_once();
    println!("test no_allocation_per_listener_when_listeners_complete_at_once ... ok");
}

fn no_allocation_per_listener_when_listeners_complete_at_once() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let one = bus_with_listeners(1);
    let ten = bus_with_listeners(10);
    runtime.block_on(async {
        // Warm-up: each listener gets the memory it reuses.
        emit_many(&one, 10).await;
        emit_many(&ten, 10).await;
    });

    let _profiler = dhat::Profiler::builder().testing().build();
    let (with_one, with_ten) = runtime.block_on(async {
        (
            blocks_allocated(&one, 1_000).await,
            blocks_allocated(&ten, 1_000).await,
        )
    });
    dhat::assert_eq!(with_one, 1_000, "one block per emit: the event's Arc");
    dhat::assert_eq!(with_ten, with_one, "ten listeners cost no more than one");
    assert_eq!(CALLS.load(Ordering::Relaxed), 1_010 + 10_100);
}
