//! Every emitted event carries an envelope (unique id, emit time, causation), and pattern
//! listeners can take `AnyEvent`.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bus::{AnyEvent, EventBus, EventId};
use common::{Logs, guarded};

#[tokio::test]
async fn every_emit_gets_a_unique_id_that_its_listeners_see() {
    let bus = EventBus::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    bus.add_listener("job.done", {
        let seen = Arc::clone(&seen);
        move |_: Arc<u32>| {
            seen.lock().unwrap().push(bus::event::current_event_id());
            async {}
        }
    });
    let mut ids = Vec::new();
    for n in 0..100_u32 {
        let emission = bus.emit("job.done", n);
        ids.push(emission.event_id().expect("a valid emit has an id").clone());
        let report = emission.await;
        assert_eq!(report.event_id(), ids.last());
    }
    let unique: HashSet<EventId> = ids.iter().cloned().collect();
    assert_eq!(unique.len(), 100, "ids never repeat");
    let seen: Vec<Option<EventId>> = seen.lock().unwrap().clone();
    let expected: Vec<Option<EventId>> = ids.into_iter().map(Some).collect();
    assert_eq!(seen, expected, "each listener saw its own event's id");
    assert_eq!(
        bus::event::current_event_id(),
        None,
        "outside a listener there is none"
    );
}

#[tokio::test]
async fn an_event_emitted_by_a_listener_records_its_cause() {
    let bus = EventBus::new();
    let caused = Arc::new(Mutex::new(Vec::new()));
    // `order.placed` -> (inline listener) `invoice.created` -> (suspending listener)
    // `mail.sent`: both links are recorded, whether the emitter ran inline or as a task.
    bus.add_listener("order.placed", {
        let bus = bus.clone();
        move |_: Arc<u32>| {
            bus.emit("invoice.created", 1_u32);
            async {}
        }
    });
    bus.add_listener("invoice.created", {
        let bus = bus.clone();
        move |_: Arc<u32>| {
            let bus = bus.clone();
            async move {
                tokio::task::yield_now().await;
                bus.emit("mail.sent", 2_u32);
            }
        }
    });
    for name in ["invoice.created", "mail.sent"] {
        bus.add_listener(name, {
            let caused = Arc::clone(&caused);
            move |event: Arc<AnyEvent>| {
                caused.lock().unwrap().push((
                    event.name().to_owned(),
                    event.id().clone(),
                    event.causation().cloned(),
                ));
                async {}
            }
        });
    }
    let root = bus.emit("order.placed", 0_u32);
    let root_id = root.event_id().unwrap().clone();
    guarded("the chain", async {
        root.await;
        bus.drain().await;
    })
    .await;
    let caused = caused.lock().unwrap().clone();
    assert_eq!(caused.len(), 2, "{caused:?}");
    let (invoice, invoice_id, invoice_cause) = &caused[0];
    assert_eq!(invoice, "invoice.created");
    assert_eq!(*invoice_cause, Some(root_id));
    let (mail, _, mail_cause) = &caused[1];
    assert_eq!(mail, "mail.sent");
    assert_eq!(*mail_cause, Some(invoice_id.clone()));
}

#[tokio::test]
async fn an_any_event_listener_receives_every_type_under_its_pattern() {
    let bus = EventBus::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    bus.add_listener("orders.>", {
        let seen = Arc::clone(&seen);
        move |event: Arc<AnyEvent>| {
            let what = if let Some(amount) = event.downcast_ref::<u64>() {
                format!("{} amount {amount}", event.name())
            } else if let Some(note) = event.downcast_ref::<String>() {
                format!("{} note {note}", event.name())
            } else {
                format!("{} of {}", event.name(), event.type_name())
            };
            seen.lock().unwrap().push((what, event.emitted_at()));
            async {}
        }
    });
    let before = SystemTime::now();
    let paid = bus.emit("orders.eu.paid", 42_u64).await;
    bus.emit("orders.eu.noted", String::from("fragile")).await;
    bus.emit("orders.us.flagged", 'x').await;
    let after = SystemTime::now();
    assert_eq!(paid.delivered(), 1);
    let seen = seen.lock().unwrap().clone();
    let texts: Vec<&str> = seen.iter().map(|(text, _)| text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "orders.eu.paid amount 42",
            "orders.eu.noted note fragile",
            "orders.us.flagged of char"
        ]
    );
    for (_, at) in &seen {
        assert!(
            before <= *at && *at <= after,
            "emitted_at is the emit's time"
        );
    }
}

#[tokio::test]
async fn any_event_listeners_and_typed_listeners_share_a_name() {
    let bus = EventBus::new();
    let typed = Arc::new(AtomicUsize::new(0));
    let any = Arc::new(AtomicUsize::new(0));
    bus.add_listener("audit.entry", {
        let typed = Arc::clone(&typed);
        move |_: Arc<u32>| {
            typed.fetch_add(1, Ordering::SeqCst);
            async {}
        }
    });
    bus.add_listener("audit.entry", {
        let any = Arc::clone(&any);
        move |event: Arc<AnyEvent>| {
            assert_eq!(event.downcast_ref::<u32>(), Some(&5));
            any.fetch_add(1, Ordering::SeqCst);
            async {}
        }
    });
    // `try_emit` checks types strictly: an `AnyEvent` listener takes any type.
    let report = bus.try_emit("audit.entry", 5_u32).unwrap().await;
    assert_eq!((report.delivered(), report.failed()), (2, 0));
    assert_eq!(typed.load(Ordering::SeqCst), 1);
    assert_eq!(any.load(Ordering::SeqCst), 1);
}

/// Counts the pattern listeners passed by because they take another type.
#[derive(Default)]
struct Mismatches(Mutex<Vec<(String, String)>>);

impl bus::layer::Layer for Mismatches {
    fn on_mismatch(&self, emit: &bus::layer::EmitInfo<'_>, listener: &bus::listener::ListenerInfo) {
        self.0
            .lock()
            .unwrap()
            .push((emit.event().to_owned(), listener.event_type().to_owned()));
    }
}

#[tokio::test]
async fn a_typed_pattern_listener_never_gets_another_type_and_the_miss_is_counted() {
    let mismatches = Arc::new(Mismatches::default());
    let bus = EventBus::builder().layer(Arc::clone(&mismatches)).build();
    let amounts = Arc::new(Mutex::new(Vec::new()));
    bus.add_listener("orders.*.paid", {
        let amounts = Arc::clone(&amounts);
        move |amount: Arc<u64>| {
            amounts.lock().unwrap().push(*amount);
            async {}
        }
    });
    let wrong = bus
        .emit("orders.eu.paid", String::from("not an amount"))
        .await;
    assert_eq!(
        (wrong.delivered(), wrong.failed()),
        (0, 0),
        "passed by, not failed"
    );
    let right = bus.emit("orders.eu.paid", 7_u64).await;
    assert_eq!(right.delivered(), 1);
    assert_eq!(*amounts.lock().unwrap(), [7]);
    assert_eq!(
        *mismatches.0.lock().unwrap(),
        [("orders.eu.paid".to_owned(), "u64".to_owned())]
    );
}

#[tokio::test(flavor = "current_thread")]
async fn spans_name_the_event_id_its_cause_the_listener_and_the_attempt() {
    let logs = Logs::default();
    let _capture = logs.capture();
    let bus = EventBus::new();
    bus.add_listener("report.requested", {
        let bus = bus.clone();
        move |_: Arc<u32>| {
            bus.emit("report.failed", 1_u32);
            async {}
        }
    });
    bus.add_listener("report.failed", |_: Arc<u32>| async {
        Err::<(), _>("printer on fire")
    });
    let root = bus.emit("report.requested", 0_u32);
    let root_id = root.event_id().unwrap().clone();
    root.await;
    bus.drain().await;
    let lines = logs.lines_with(&["printer on fire"]);
    assert_eq!(lines.len(), 1, "{}", logs.text());
    let line = &lines[0];
    for needle in [
        "bus.emit{".to_owned(),
        "event=report.failed".to_owned(),
        format!("causation={root_id}"),
        "bus.deliver{".to_owned(),
        "listener_id=".to_owned(),
        "attempt=1".to_owned(),
    ] {
        assert!(line.contains(&needle), "{needle} missing in: {line}");
    }
    assert!(line.contains("event_id="), "{line}");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_retried_delivery_logs_each_attempt_in_its_span() {
    let logs = Logs::default();
    let _capture = logs.capture();
    let bus = EventBus::new();
    bus.on("sync.requested", |_: Arc<u32>| async {
        Err::<(), _>("remote unreachable")
    })
    .policy(
        bus::Policy::new()
            .retry(2)
            .backoff(std::time::Duration::from_millis(10)),
    )
    .add();
    bus.emit("sync.requested", 0_u32).await;
    let lines = logs.lines_with(&["remote unreachable", "listener returned an error"]);
    assert_eq!(lines.len(), 3, "{}", logs.text());
    for (line, attempt) in lines.iter().zip(1..) {
        assert!(
            line.contains("bus.deliver{") && line.contains(&format!("attempt={attempt}")),
            "attempt {attempt} not in its span: {line}"
        );
    }
}

/// What a listener that takes the envelope saw: its name, id, source, cause and time.
type Seen = (String, EventId, String, Option<EventId>, SystemTime);

fn record(seen: &Arc<Mutex<Vec<Seen>>>, envelope: &bus::Envelope) {
    seen.lock().unwrap().push((
        envelope.name().to_owned(),
        envelope.id().clone(),
        envelope.source().to_owned(),
        envelope.causation().cloned(),
        envelope.emitted_at(),
    ));
}

#[bus::listener("envelope.annotated")]
async fn annotated_with_envelope(amount: &u64, envelope: &bus::Envelope) {
    ANNOTATED_SEEN.lock().unwrap().push((
        *amount,
        envelope.id().clone(),
        envelope.source().to_owned(),
    ));
}

static ANNOTATED_SEEN: Mutex<Vec<(u64, EventId, String)>> = Mutex::new(Vec::new());

#[tokio::test]
async fn a_listener_that_takes_the_envelope_gets_the_whole_of_it_on_every_path() {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    for mode in [bus::Dispatch::InlineFirst, bus::Dispatch::Spawn] {
        let bus = EventBus::builder()
            .service("billing")
            .dispatch(mode)
            .build();
        // Inline (or spawned), under a policy (always a task), suspending (a task after its
        // first poll), and once.
        bus.add_listener("invoice.sent", {
            let seen = Arc::clone(&seen);
            move |_: Arc<u32>, envelope: bus::Envelope| {
                record(&seen, &envelope);
                async {}
            }
        });
        bus.on("invoice.sent", {
            let seen = Arc::clone(&seen);
            move |_: Arc<u32>, envelope: bus::Envelope| {
                let seen = Arc::clone(&seen);
                async move {
                    tokio::task::yield_now().await;
                    record(&seen, &envelope);
                }
            }
        })
        .policy(bus::Policy::new().retry(1))
        .add();
        bus.add_listener("invoice.sent", {
            let seen = Arc::clone(&seen);
            move |_: Arc<u32>, envelope: bus::Envelope| {
                let seen = Arc::clone(&seen);
                async move {
                    tokio::task::yield_now().await;
                    record(&seen, &envelope);
                }
            }
        });
        bus.on("invoice.sent", {
            let seen = Arc::clone(&seen);
            move |_: Arc<u32>, envelope: bus::Envelope| {
                record(&seen, &envelope);
                async {}
            }
        })
        .once()
        .add();
        // An event emitted by a listener names its cause.
        bus.add_listener("order.paid", {
            let bus = bus.clone();
            move |_: Arc<u32>| {
                bus.emit("invoice.sent", 1_u32);
                async {}
            }
        });

        let before = SystemTime::now();
        let paid = bus.emit("order.paid", 0_u32);
        let paid_id = paid.event_id().unwrap().clone();
        guarded("the emit", paid).await;
        guarded("the deliveries", bus.drain()).await;
        let after = SystemTime::now();
        let seen = std::mem::take(&mut *seen.lock().unwrap());
        assert_eq!(seen.len(), 4, "{mode:?}: {seen:?}");
        let invoice_id = seen[0].1.clone();
        assert!(invoice_id.as_u128().is_some(), "made here");
        assert_ne!(invoice_id, paid_id);
        for (name, id, source, cause, at) in &seen {
            assert_eq!(name, "invoice.sent", "{mode:?}");
            assert_eq!(id, &invoice_id, "{mode:?}: one event, one id");
            assert_eq!(source, "billing", "{mode:?}: the bus's service");
            assert_eq!(cause.as_ref(), Some(&paid_id), "{mode:?}");
            assert!(before <= *at && *at <= after, "{mode:?}: the emit's time");
        }
    }

    // A bus without a service says `bus`; an event emitted outside a listener has no cause.
    let bus = EventBus::new();
    bus.add_listener("invoice.sent", {
        let seen = Arc::clone(&seen);
        move |_: Arc<u32>, envelope: bus::Envelope| {
            record(&seen, &envelope);
            assert_eq!(envelope.content_type(), None, "never bytes");
            assert_eq!(envelope.extensions().count(), 0);
            async {}
        }
    });
    let report = bus.emit("invoice.sent", 2_u32).await;
    assert_eq!(report.delivered(), 1);
    let (_, id, source, cause, _) = seen.lock().unwrap().pop().unwrap();
    assert_eq!(
        (Some(&id), source.as_str(), cause),
        (report.event_id(), "bus", None)
    );
}

#[tokio::test]
async fn an_annotated_fn_takes_the_envelope_as_its_second_argument() {
    let bus = EventBus::builder()
        .service("ledger")
        .annotated_listeners()
        .build();
    let report = bus.emit("envelope.annotated", 7_u64).await;
    assert_eq!(report.delivered(), 1);
    let seen = ANNOTATED_SEEN.lock().unwrap().clone();
    assert_eq!(
        seen,
        [(7, report.event_id().unwrap().clone(), "ledger".to_owned())]
    );
}
