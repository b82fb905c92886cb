//! What `try_emit` refuses up front, and what `emit` does with the same mistakes: never a
//! panic, never a listener called with the wrong type.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bus::{
    EventBus,
    error::{AddListenerError, DeliveryError, EmitError},
};
use common::{Logs, guarded};

#[derive(Debug)]
struct UserCreated;

#[derive(Debug)]
struct OrderPlaced;

static USER_CALLS: AtomicUsize = AtomicUsize::new(0);

async fn on_user(_: Arc<UserCreated>) {
    USER_CALLS.fetch_add(1, Ordering::SeqCst);
}

#[tokio::test]
async fn a_type_mismatch_is_an_error_naming_the_event_and_both_types() {
    let logs = Logs::default();
    let _capture = logs.capture();
    let bus = EventBus::new();
    bus.add_listener("user.created", on_user);

    let error = bus
        .try_emit("user.created", OrderPlaced)
        .map_err(EmitError::from)
        .unwrap_err();
    let EmitError::TypeMismatch {
        event,
        listener,
        expected,
        actual,
    } = &error
    else {
        panic!("expected a type mismatch, got {error:?}");
    };
    assert_eq!(event, "user.created");
    assert_eq!(listener, "emit_errors::on_user");
    assert_eq!(*expected, "emit_errors::UserCreated");
    assert_eq!(*actual, "emit_errors::OrderPlaced");
    let text = error.to_string();
    for part in [
        "user.created",
        "emit_errors::UserCreated",
        "emit_errors::OrderPlaced",
        "emit_errors::on_user",
    ] {
        assert!(text.contains(part), "{text:?} should name {part}");
    }

    // `emit` does not panic: the mismatch is logged and reported, the listener never called.
    let report = guarded("emit", bus.emit("user.created", OrderPlaced)).await;
    assert_eq!((report.delivered(), report.failed()), (0, 1));
    assert!(matches!(
        &report.failures()[0],
        DeliveryError::NotDelivered {
            reason: EmitError::TypeMismatch { .. },
            ..
        }
    ));
    assert_eq!(USER_CALLS.load(Ordering::SeqCst), 0);
    let lines = logs.lines_with(&[
        "ERROR",
        "event not delivered",
        "user.created",
        "emit_errors::OrderPlaced",
    ]);
    assert_eq!(lines.len(), 1, "{}", logs.text());

    // The right type still goes through.
    let report = guarded("emit", bus.emit("user.created", UserCreated)).await;
    assert_eq!(report.delivered(), 1);
    assert_eq!(USER_CALLS.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn with_listeners_of_two_types_emit_reaches_only_its_own_type() {
    let logs = Logs::default();
    let _capture = logs.capture();
    let bus = EventBus::new();
    let users = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&users);
    bus.add_listener("mixed", move |_: Arc<UserCreated>| {
        let counter = Arc::clone(&counter);
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    bus.add_listener("mixed", |_: Arc<OrderPlaced>| async {});
    assert_eq!(
        logs.lines_with(&["WARN", "different types", "mixed"]).len(),
        1,
        "the conflict is reported when the second listener is added: {}",
        logs.text()
    );

    assert!(matches!(
        bus.try_emit("mixed", UserCreated).map_err(EmitError::from),
        Err(EmitError::TypeMismatch { .. })
    ));
    assert_eq!(
        users.load(Ordering::SeqCst),
        0,
        "try_emit delivers nothing when it fails"
    );

    let report = guarded("emit", bus.emit("mixed", UserCreated)).await;
    assert_eq!((report.delivered(), report.failed()), (1, 1));
    assert_eq!(users.load(Ordering::SeqCst), 1);
}

static OUTSIDE_CALLS: AtomicUsize = AtomicUsize::new(0);

async fn on_user_outside(_: Arc<UserCreated>) {
    OUTSIDE_CALLS.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn emitting_outside_a_runtime_is_an_error_not_a_panic() {
    let bus = EventBus::new();
    bus.add_listener("user.created", on_user_outside);

    let error = bus
        .try_emit("user.created", UserCreated)
        .map_err(EmitError::from)
        .unwrap_err();
    assert_eq!(
        error,
        EmitError::NoRuntime {
            event: "user.created".to_owned()
        }
    );
    assert!(error.to_string().contains("no Tokio runtime"), "{error}");

    // `emit` neither panics nor delivers; the report says why.
    let emission = bus.emit("user.created", UserCreated);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = runtime.block_on(emission.into_future());
    assert_eq!((report.delivered(), report.failed()), (0, 1));
    assert!(matches!(
        &report.failures()[0],
        DeliveryError::NotDelivered {
            reason: EmitError::NoRuntime { .. },
            ..
        }
    ));
    assert_eq!(OUTSIDE_CALLS.load(Ordering::SeqCst), 0);

    // No listener: nothing to start, so no runtime is needed.
    assert!(bus.try_emit("nobody.listens", UserCreated).is_ok());
}

#[tokio::test]
async fn invalid_event_names_are_refused_with_a_reason() {
    let bus = EventBus::new();
    for (name, says) in [
        ("", "must not be empty"),
        ("user created", "' '"),
        ("user..created", "empty token"),
        (".user", "empty token"),
        ("orders.*", "wildcard"),
        ("orders.>", "wildcard"),
        ("ordérs", "'é'"),
    ] {
        let error = bus
            .try_emit(name, UserCreated)
            .map_err(EmitError::from)
            .unwrap_err();
        let EmitError::InvalidName(ref name_error) = error else {
            panic!("{name:?}: expected InvalidName, got {error:?}");
        };
        assert_eq!(name_error.name(), name);
        assert!(error.to_string().contains(says), "{name:?}: {error}");
        // `emit` logs instead of failing.
        let report = guarded("emit", bus.emit(name, UserCreated)).await;
        assert_eq!((report.delivered(), report.failed()), (0, 0));
    }
    let long = "a".repeat(300);
    assert!(matches!(
        bus.try_emit(&long, UserCreated).map_err(EmitError::from),
        Err(EmitError::InvalidName(_))
    ));
}

#[tokio::test]
async fn invalid_names_are_refused_when_adding_too() {
    let bus = EventBus::new();
    let error = bus.on("user created", on_user).try_add().unwrap_err();
    let AddListenerError::InvalidName { listener, source } = &error else {
        panic!("{error:?}");
    };
    assert_eq!(listener, "emit_errors::on_user");
    assert_eq!(source.name(), "user created");
    assert!(
        error.to_string().contains("emit_errors::on_user"),
        "{error}"
    );

    // `add_listener` logs and registers nothing; its id matches no listener.
    let id = bus.add_listener("user created", on_user);
    assert!(!bus.remove(id));
    assert!(bus.event_names().is_empty());
}

/// An event that is not `Clone`: what `try_emit` gives back is the value itself.
#[derive(Debug, PartialEq)]
struct Signup(String);

#[tokio::test]
async fn try_emit_gives_the_event_back_with_the_reason() {
    let bus = EventBus::builder().max_in_flight(1).build();
    bus.add_listener("user.signup", |_: Arc<Signup>| async {
        tokio::task::yield_now().await;
    });
    bus.add_listener("user.created", on_user);
    let refusals = [
        bus.try_emit("user..signup", Signup("invalid name".into())),
        bus.try_emit("user.created", Signup("wrong type".into())),
    ];
    // One delivery waits, so the next finds the bus full.
    let running = bus.try_emit("user.signup", Signup("first".into())).unwrap();
    let full = bus.try_emit("user.signup", Signup("full".into()));
    for (refused, says) in
        refusals
            .into_iter()
            .chain([full])
            .zip(["invalid name", "wrong type", "full"])
    {
        let refused = refused.expect_err(says);
        let message = refused.to_string();
        assert_eq!(message, refused.error().to_string());
        let (error, event) = refused.into_parts();
        assert_eq!(event, Signup(says.to_owned()));
        match says {
            "invalid name" => assert!(matches!(error, EmitError::InvalidName(_)), "{error}"),
            "wrong type" => assert!(matches!(error, EmitError::TypeMismatch { .. }), "{error}"),
            _ => assert!(matches!(error, EmitError::Full { .. }), "{error}"),
        }
    }
    guarded("emission", running).await;
    bus.shutdown(std::time::Duration::from_secs(1)).await;
    let closed = bus
        .try_emit("user.signup", Signup("closed".into()))
        .unwrap_err();
    assert!(matches!(closed.error(), EmitError::Closed { .. }));
    assert_eq!(closed.into_event(), Signup("closed".into()));
}
