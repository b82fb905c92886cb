//! A busy group subscription at the default `fetch_batch` (1) keeps a pull request open: with
//! events pending and the subscriber waiting for its next delivery, the server always has a
//! pull request of it waiting. The regression: the subscription stopped asking (the server
//! showing no pull request waiting, nothing unacknowledged and thousands of events pending)
//! until its missed heartbeats made it re-open, 10 s later, again and again.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bus_core::transport::{SubscribeOptions, Transport, WireEvent};
use bus_nats::NatsTransport;
use common::{TestNats, unique};
use futures_util::StreamExt;

const EVENTS: usize = 20_000;
/// No delivery for this long while the subscriber waits: the consumer's state is looked at.
/// Only when to look, not a pass mark: what is asserted is the state seen.
const STALL: Duration = Duration::from_secs(1);
/// A bound on a hang: the whole consumption, far above its duration in any mode.
const HANG: Duration = Duration::from_secs(300);

/// What the server said while the subscriber was waiting with no delivery for [`STALL`].
struct Stall {
    at: Duration,
    handled: usize,
    waited: Duration,
    num_waiting: usize,
    num_ack_pending: usize,
    num_pending: u64,
    /// How many samples of this stall saw the same.
    samples: usize,
}

impl std::fmt::Debug for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "at {:.1?}, {} handled, no delivery for {:.1?}: num_waiting {}, num_ack_pending {}, \
             num_pending {} ({} samples)",
            self.at,
            self.handled,
            self.waited,
            self.num_waiting,
            self.num_ack_pending,
            self.num_pending,
            self.samples
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_fetch_batch_keeps_a_pull_request_open() {
    let test = "default_fetch_batch_keeps_a_pull_request_open";
    let Some(nats) = TestNats::connect(test, |builder| builder).await else {
        return;
    };
    let group = "throughput";
    // The group's consumer exists from here: it gets everything published next.
    let mut subscription = nats
        .subscribe(SubscribeOptions::new("load.*").group(group))
        .await
        .unwrap();

    // A backlog first (64 publishes in flight), so that events are pending throughout.
    let published = Instant::now();
    let ids: BTreeSet<String> = futures_util::stream::iter(0..EVENTS)
        .map(|n| {
            let transport = nats.transport.clone();
            async move {
                let id = format!("{n}-{}", unique());
                transport
                    .publish(WireEvent::new(id.clone(), test, "load.run", "{}"))
                    .await
                    .unwrap_or_else(|error| panic!("publish {n}: {error}"));
                id
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    println!("published {EVENTS} events in {:?}", published.elapsed());

    // The subscriber: receives, acks, and says when it is waiting for its next delivery.
    let received = Arc::new(AtomicUsize::new(0));
    let waiting = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let consumer = tokio::spawn({
        let received = Arc::clone(&received);
        let waiting = Arc::clone(&waiting);
        async move {
            let mut seen = Vec::with_capacity(EVENTS);
            while seen.len() < EVENTS {
                waiting.store(true, Ordering::SeqCst);
                let next = subscription.next().await;
                waiting.store(false, Ordering::SeqCst);
                received.fetch_add(1, Ordering::SeqCst);
                let delivery = next
                    .expect("the subscription does not end")
                    .expect("no subscription error");
                seen.push(delivery.event().id.clone());
                delivery.ack().await.expect("ack");
            }
            seen
        }
    });

    // Progress, sampled; the consumer's state whenever it stalls.
    let stream = nats
        .jetstream()
        .get_stream(nats.stream_name())
        .await
        .unwrap();
    let consumer_name = NatsTransport::consumer_name(group);
    let mut stalls: Vec<Stall> = Vec::new();
    let mut violations: Vec<Stall> = Vec::new();
    let mut last = (0, Instant::now());
    let mut samples = Vec::new();
    let mut next_sample = Instant::now();
    while !consumer.is_finished() {
        assert!(
            start.elapsed() < HANG,
            "{} of {EVENTS} events handled after {HANG:?}; stalls: {stalls:#?} {violations:#?}",
            received.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let handled = received.load(Ordering::SeqCst);
        if Instant::now() >= next_sample {
            samples.push((start.elapsed(), handled));
            next_sample += Duration::from_secs(1);
        }
        if handled != last.0 {
            last = (handled, Instant::now());
            continue;
        }
        if last.1.elapsed() < STALL || !waiting.load(Ordering::SeqCst) {
            continue;
        }
        let info = stream.consumer_info(&consumer_name).await.unwrap();
        // Still waiting, and nothing delivered while the server answered.
        if !waiting.load(Ordering::SeqCst) || received.load(Ordering::SeqCst) != handled {
            continue;
        }
        let mut stall = Stall {
            at: start.elapsed(),
            handled,
            waited: last.1.elapsed(),
            num_waiting: info.num_waiting,
            num_ack_pending: info.num_ack_pending,
            num_pending: info.num_pending,
            samples: 1,
        };
        // The invariant: a subscriber waiting for events that are pending, with nothing in
        // flight to it, has a pull request waiting on the server.
        let list = if stall.num_pending > 0 && stall.num_ack_pending == 0 && stall.num_waiting == 0
        {
            &mut violations
        } else {
            &mut stalls
        };
        // One entry per stall: its first sample printed, its last kept.
        match list.last_mut() {
            Some(same) if same.handled == stall.handled => {
                stall.samples += same.samples;
                *same = stall;
            }
            _ => {
                println!("stalled: {stall:?}");
                list.push(stall);
            }
        }
    }
    let seen = consumer.await.expect("the subscriber does not panic");
    let elapsed = start.elapsed();
    println!(
        "{EVENTS} events received and acked in {elapsed:?}: {:.0} events/s (not asserted)",
        EVENTS as f64 / elapsed.as_secs_f64()
    );
    let per_second: Vec<usize> = samples
        .windows(2)
        .map(|pair| pair[1].1 - pair[0].1)
        .collect();
    println!("events handled per second: {per_second:?}");

    assert!(
        violations.is_empty(),
        "the subscriber waited with events pending and no pull request open on the server \
         ({} times): {violations:#?}",
        violations.len()
    );
    let distinct: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(distinct.len(), seen.len(), "an event was delivered twice");
    assert_eq!(distinct, ids, "every published event, none lost");
    let info = stream.consumer_info(&consumer_name).await.unwrap();
    assert_eq!(info.num_pending, 0, "events left undelivered");
    assert_eq!(info.num_redelivered, 0, "events delivered twice");
}
