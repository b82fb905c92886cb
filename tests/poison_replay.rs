//! A listener that fails on every 10th event (an error, or a panic on every 20th) while 1,000
//! events stream through: its other events and a sibling service's listener keep flowing,
//! each poison event ends in the dead letters with its reason, and once the listener is
//! fixed, `DeadLetterQueue::replay` puts them back and the listener handles every one. On the
//! in-memory transport, on NATS JetStream and on Redis Streams.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus::transport::{
    DEAD_LETTER_REASON, DeadLetterQueue, MemoryTransport, SubscribeOptions, Transport,
    dead_letter_name,
};
use bus::{EventBus, Policy, policy::Group};
use serde::{Deserialize, Serialize};
use tokio_stream::StreamExt;

const EVENTS: u64 = 1_000;
/// Every event whose number is a multiple of this fails while the listener is broken.
const POISON_EVERY: u64 = 10;
/// How long the test waits for what it expects before it fails.
const PATIENCE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize, Deserialize, bus::Event)]
#[event(name = "poison.tick", distributed)]
struct Tick {
    seq: u64,
}

fn is_poison(seq: u64) -> bool {
    seq.is_multiple_of(POISON_EVERY)
}

/// What each listener handled: every sequence number, with how many times.
#[derive(Default)]
struct Handled(Mutex<BTreeMap<u64, usize>>);

impl Handled {
    fn record(&self, seq: u64) {
        *self.0.lock().unwrap().entry(seq).or_default() += 1;
    }

    fn distinct(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn total(&self) -> usize {
        self.0.lock().unwrap().values().sum()
    }

    fn missing(&self, expected: impl Iterator<Item = u64>) -> Vec<u64> {
        let handled = self.0.lock().unwrap();
        expected
            .filter(|seq| !handled.contains_key(seq))
            .take(20)
            .collect()
    }
}

/// Waits until `done` holds, or fails the test with `what` and the state `status` describes.
async fn wait_until(what: &str, done: impl Fn() -> bool, status: impl Fn() -> String) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}: {}",
            status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Keeps the listener's planned panics out of the output; any other panic prints as usual.
fn quiet_planned_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let planned = info
                .payload()
                .downcast_ref::<String>()
                .is_some_and(|message| message.ends_with("makes billing panic"));
            if !planned {
                default(info);
            }
        }));
    });
}

async fn poison_is_dead_lettered_then_replayed(transport: Arc<dyn Transport>, label: &str) {
    quiet_planned_panics();
    let started = std::time::Instant::now();
    // Kept from now on, before any letter is written.
    let queue = DeadLetterQueue::open(Arc::clone(&transport), "poison.tick", "replayer")
        .await
        .unwrap();
    // A watcher of the letters as they are written, to check their reasons.
    let mut letters = transport
        .subscribe(SubscribeOptions::new(dead_letter_name("poison.tick")))
        .await
        .unwrap();

    let bus = EventBus::builder()
        .service("shop")
        .shared_transport(Arc::clone(&transport))
        .distributed::<Tick>()
        .build();
    let broken = Arc::new(AtomicBool::new(true));
    let billed = Arc::new(Handled::default());
    let audited = Arc::new(Handled::default());
    {
        let (broken, billed) = (Arc::clone(&broken), Arc::clone(&billed));
        bus.on("poison.tick", move |tick: Arc<Tick>| {
            let (broken, billed) = (Arc::clone(&broken), Arc::clone(&billed));
            async move {
                if broken.load(Ordering::SeqCst) && is_poison(tick.seq) {
                    if tick.seq.is_multiple_of(2 * POISON_EVERY) {
                        panic!("tick {} makes billing panic", tick.seq);
                    }
                    return Err(format!("tick {} is poison for billing", tick.seq));
                }
                billed.record(tick.seq);
                Ok(())
            }
        })
        .policy(
            Policy::new()
                .group(Group::Named("billing"))
                .retry(1)
                .backoff(Duration::from_millis(1)),
        )
        .add();
    }
    {
        let audited = Arc::clone(&audited);
        bus.on("poison.tick", move |tick: Arc<Tick>| {
            let audited = Arc::clone(&audited);
            async move { audited.record(tick.seq) }
        })
        .policy(Policy::new().group(Group::Named("audit")))
        .add();
    }
    bus.ready().await.unwrap();

    for seq in 0..EVENTS {
        let report = bus.emit_event(Tick { seq }).await;
        assert!(report.is_ok(), "{label}: publish {seq}: {report:?}");
    }
    let poison: BTreeSet<u64> = (0..EVENTS).filter(|&seq| is_poison(seq)).collect();
    let healthy = EVENTS as usize - poison.len();

    // The poison events end in the dead letters, each with its reason.
    let mut reasons = BTreeMap::new();
    while reasons.len() < poison.len() {
        let letter = tokio::time::timeout(PATIENCE, letters.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{label}: {} of {} dead letters within {PATIENCE:?}",
                    reasons.len(),
                    poison.len()
                )
            })
            .expect("the letters' subscription ended")
            .unwrap();
        let event = letter.event();
        let tick: Tick = serde_json::from_slice(&event.data).unwrap();
        let reason = event.extensions[DEAD_LETTER_REASON].clone();
        assert!(
            poison.contains(&tick.seq),
            "{label}: tick {} dead-lettered, but it is not poison: {reason}",
            tick.seq
        );
        letter.ack().await.unwrap();
        reasons.insert(tick.seq, reason);
    }
    for (seq, reason) in &reasons {
        let expected = if seq.is_multiple_of(2 * POISON_EVERY) {
            format!("tick {seq} makes billing panic")
        } else {
            format!("tick {seq} is poison for billing")
        };
        assert!(reason.contains(&expected), "{label}: tick {seq}: {reason}");
    }
    // Meanwhile the rest flowed, for billing and for the sibling service.
    wait_until(
        "billing handles every healthy tick",
        || billed.distinct() == healthy,
        || format!("{label}: {} of {healthy}", billed.distinct()),
    )
    .await;
    wait_until(
        "audit handles every tick",
        || audited.distinct() == EVENTS as usize,
        || format!("{label}: {} of {EVENTS}", audited.distinct()),
    )
    .await;
    assert_eq!(
        billed
            .missing(0..EVENTS)
            .into_iter()
            .collect::<BTreeSet<_>>(),
        poison.iter().copied().take(20).collect::<BTreeSet<_>>(),
        "{label}: billing handled exactly the healthy ticks"
    );

    // Fixed: the replay puts the poison back, and billing handles all of it.
    broken.store(false, Ordering::SeqCst);
    let report = queue.replay(Duration::from_secs(2)).await.unwrap();
    assert_eq!(report.replayed, poison.len(), "{label}: {report:?}");
    assert_eq!(report.discarded, 0, "{label}: {report:?}");
    wait_until(
        "billing handles every replayed tick",
        || billed.distinct() == EVENTS as usize,
        || {
            format!(
                "{label}: {} of {EVENTS}, missing {:?}",
                billed.distinct(),
                billed.missing(0..EVENTS)
            )
        },
    )
    .await;
    // A replay is a publish: the sibling service sees the replayed events once more.
    wait_until(
        "audit gets the replayed ticks too",
        || audited.total() >= EVENTS as usize + poison.len(),
        || format!("{label}: {} deliveries", audited.total()),
    )
    .await;
    // The queue is empty now.
    let again = queue.replay(Duration::from_millis(500)).await.unwrap();
    assert_eq!(again.replayed, 0, "{label}: a second replay: {again:?}");
    bus.shutdown(Duration::from_secs(5)).await;
    println!(
        "poison_replay {label}: {EVENTS} events, {} poison ({} errors, {} panics) dead-lettered \
         with their reasons, {} replayed and handled, {} billing deliveries, {} audit \
         deliveries, took {:.1} s",
        poison.len(),
        poison
            .iter()
            .filter(|seq| !seq.is_multiple_of(2 * POISON_EVERY))
            .count(),
        poison
            .iter()
            .filter(|seq| seq.is_multiple_of(2 * POISON_EVERY))
            .count(),
        report.replayed,
        billed.total(),
        audited.total(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_poison_is_dead_lettered_then_replayed() {
    poison_is_dead_lettered_then_replayed(Arc::new(MemoryTransport::new()), "memory").await;
}

#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_poison_is_dead_lettered_then_replayed() {
    let prefix = format!("t{}", common::unique());
    let stream = format!("TEST_{}", prefix.to_uppercase());
    let connected = bus::nats::NatsTransport::builder("nats://127.0.0.1:4222")
        .subject_prefix(prefix)
        .stream_name(stream.clone())
        .connect()
        .await;
    let Some(nats) = common::reachable("nats_poison_is_dead_lettered_then_replayed", connected)
    else {
        return;
    };
    let jetstream = nats.jetstream().clone();
    let letters = nats.dead_letter_stream_name().map(str::to_owned);
    poison_is_dead_lettered_then_replayed(Arc::new(nats), "nats").await;
    let _ = jetstream.delete_stream(&stream).await;
    if let Some(letters) = letters {
        let _ = jetstream.delete_stream(&letters).await;
    }
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_poison_is_dead_lettered_then_replayed() {
    let connected = bus::redis::RedisTransport::builder("redis://127.0.0.1:6379")
        .key_prefix(format!("t{}", common::unique()))
        .connect()
        .await;
    let Some(redis) = common::reachable("redis_poison_is_dead_lettered_then_replayed", connected)
    else {
        return;
    };
    poison_is_dead_lettered_then_replayed(Arc::new(redis), "redis").await;
}
