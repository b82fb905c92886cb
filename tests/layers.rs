//! Middleware: a `Layer`'s hooks run around every emit and every delivery attempt.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus::{
    EventBus, Policy,
    layer::{AttemptResult, DeliveryInfo, DeliveryOutcome, EmitInfo, Layer},
};
use common::guarded;

/// Writes down every hook call, in order.
#[derive(Default)]
struct Journal {
    lines: Mutex<Vec<String>>,
    timed: bool,
    elapsed: Mutex<Vec<Option<Duration>>>,
    finals: Mutex<Vec<bool>>,
}

impl Journal {
    fn timed() -> Self {
        Journal {
            timed: true,
            ..Journal::default()
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    fn write(&self, line: String) {
        self.lines.lock().unwrap().push(line);
    }
}

impl Layer for Journal {
    fn on_emit(&self, emit: &EmitInfo<'_>) {
        self.write(format!(
            "emit {} to {}",
            emit.event(),
            emit.listener_count()
        ));
    }

    fn before(&self, delivery: &DeliveryInfo<'_>) {
        self.write(format!(
            "before {} #{}",
            delivery.event(),
            delivery.attempt()
        ));
    }

    fn after(&self, delivery: &DeliveryInfo<'_>, outcome: &DeliveryOutcome<'_>) {
        let result = match outcome.result() {
            AttemptResult::Delivered => "delivered".to_owned(),
            AttemptResult::Failed(error) => format!("failed: {error}"),
            AttemptResult::Panicked(message) => format!("panicked: {message}"),
            AttemptResult::TimedOut(_) => "timed out".to_owned(),
            AttemptResult::Aborted => "aborted".to_owned(),
            _ => "other".to_owned(),
        };
        self.write(format!(
            "after {} #{}: {result}",
            delivery.event(),
            delivery.attempt()
        ));
        self.elapsed.lock().unwrap().push(outcome.elapsed());
        self.finals.lock().unwrap().push(outcome.is_final());
    }

    fn timed(&self) -> bool {
        self.timed
    }
}

#[tokio::test]
async fn hooks_wrap_every_delivery_whatever_its_end() {
    let journal = Arc::new(Journal::default());
    let bus = EventBus::builder().layer(Arc::clone(&journal)).build();
    bus.add_listener("a.ok", |_: Arc<u8>| async {});
    bus.add_listener("a.err", |_: Arc<u8>| async { Err::<(), _>("nope") });
    bus.add_listener("a.panic", |_: Arc<u8>| async {
        tokio::task::yield_now().await;
        if true {
            panic!("boom");
        }
    });
    for name in ["a.ok", "a.err", "a.panic"] {
        guarded(name, bus.emit(name, 0_u8)).await;
    }
    assert_eq!(
        journal.lines(),
        [
            "emit a.ok to 1",
            "before a.ok #1",
            "after a.ok #1: delivered",
            "emit a.err to 1",
            "before a.err #1",
            "after a.err #1: failed: nope",
            "emit a.panic to 1",
            "before a.panic #1",
            "after a.panic #1: panicked: boom",
        ]
    );
    assert!(
        journal.elapsed.lock().unwrap().iter().all(Option::is_none),
        "no layer asked for timing"
    );
    assert_eq!(
        *journal.finals.lock().unwrap(),
        [true; 3],
        "no retries here"
    );
}

#[tokio::test(start_paused = true)]
async fn retried_attempts_each_pass_through_the_hooks() {
    let journal = Arc::new(Journal::timed());
    let bus = EventBus::builder().layer(Arc::clone(&journal)).build();
    let calls = Arc::new(Mutex::new(0_u32));
    bus.on("a.flaky", {
        let calls = Arc::clone(&calls);
        move |_: Arc<u8>| {
            let mut calls = calls.lock().unwrap();
            *calls += 1;
            let result = if *calls < 3 { Err("not yet") } else { Ok(()) };
            async move { result }
        }
    })
    .policy(Policy::new().retry(5).backoff(Duration::from_millis(10)))
    .add();
    let report = guarded("the retries", bus.emit("a.flaky", 0_u8)).await;
    assert_eq!(report.delivered(), 1);
    assert_eq!(
        journal.lines(),
        [
            "emit a.flaky to 1",
            "before a.flaky #1",
            "after a.flaky #1: failed: not yet",
            "before a.flaky #2",
            "after a.flaky #2: failed: not yet",
            "before a.flaky #3",
            "after a.flaky #3: delivered",
        ]
    );
    let elapsed = journal.elapsed.lock().unwrap().clone();
    assert_eq!(elapsed.len(), 3);
    assert!(
        elapsed.iter().all(Option::is_some),
        "a timed layer gets durations"
    );
}

#[tokio::test]
async fn a_layer_added_to_a_running_bus_sees_the_emits_after_it() {
    let bus = EventBus::new();
    bus.add_listener("a.later", |_: Arc<u8>| async {});
    bus.emit("a.later", 1_u8).await;
    let journal = Arc::new(Journal::default());
    bus.layer(Arc::clone(&journal));
    bus.emit("a.later", 2_u8).await;
    assert_eq!(
        journal.lines(),
        [
            "emit a.later to 1",
            "before a.later #1",
            "after a.later #1: delivered"
        ]
    );
}

#[tokio::test]
async fn layers_run_in_the_order_they_were_added() {
    #[derive(Clone)]
    struct Named(&'static str, Arc<Mutex<Vec<&'static str>>>);
    impl Layer for Named {
        fn before(&self, _: &DeliveryInfo<'_>) {
            self.1.lock().unwrap().push(self.0);
        }
    }
    let order = Arc::new(Mutex::new(Vec::new()));
    let bus = EventBus::builder()
        .layer(Named("first", Arc::clone(&order)))
        .layer(Named("second", Arc::clone(&order)))
        .build();
    bus.add_listener("a.ordered", |_: Arc<u8>| async {});
    bus.emit("a.ordered", 0_u8).await;
    assert_eq!(*order.lock().unwrap(), ["first", "second"]);
}

#[tokio::test]
async fn an_aborted_delivery_still_ends_its_hooks() {
    let journal = Arc::new(Journal::default());
    let bus = EventBus::builder().layer(Arc::clone(&journal)).build();
    bus.add_listener("a.stuck", |_: Arc<u8>| std::future::pending::<()>());
    let emission = bus.emit("a.stuck", 0_u8);
    let report = guarded("shutdown", bus.shutdown(Duration::from_millis(1))).await;
    assert_eq!(report.aborted(), 1);
    guarded("the report", emission).await;
    assert_eq!(
        journal.lines(),
        [
            "emit a.stuck to 1",
            "before a.stuck #1",
            "after a.stuck #1: aborted"
        ]
    );
}

/// A layer whose hooks all panic.
struct Panicking;

impl Layer for Panicking {
    fn on_emit(&self, _: &EmitInfo<'_>) {
        panic!("on_emit");
    }
    fn before(&self, _: &DeliveryInfo<'_>) {
        panic!("before");
    }
    fn after(&self, _: &DeliveryInfo<'_>, _: &DeliveryOutcome<'_>) {
        panic!("after");
    }
}

#[tokio::test]
async fn a_panicking_hook_is_caught_and_every_delivery_still_finishes_once() {
    let journal = Arc::new(Journal::default());
    let bus = EventBus::builder()
        .layer(Panicking)
        .layer(Arc::clone(&journal))
        .max_in_flight(3)
        .build();
    // A listener that waits, so each delivery ends in a task of its own.
    bus.add_listener("jobs.run", |_: Arc<u32>| async {
        tokio::task::yield_now().await;
    });
    for round in 0..10_u32 {
        let emission = bus
            .try_emit("jobs.run", round)
            .map_err(|refused| format!("round {round}: {refused}: a delivery was never finished"));
        let report = guarded("emission", emission.unwrap()).await;
        assert_eq!(report.delivered(), 1, "round {round}");
    }
    guarded("drain", bus.drain()).await;
    assert_eq!(bus.in_flight(), 0);
    let report = guarded("shutdown", bus.shutdown(Duration::from_secs(1))).await;
    assert_eq!((report.in_flight(), report.aborted()), (0, 0));
    // The layer after the panicking one still saw every hook.
    let lines = journal.lines();
    assert_eq!(
        lines
            .iter()
            .filter(|line| line.starts_with("emit "))
            .count(),
        10
    );
    assert_eq!(
        lines
            .iter()
            .filter(|line| line.starts_with("before "))
            .count(),
        10
    );
    assert_eq!(
        lines
            .iter()
            .filter(|line| line.starts_with("after "))
            .count(),
        10
    );
}
