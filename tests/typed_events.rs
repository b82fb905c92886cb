//! Typed events: `#[derive(bus::Event)]` binds a type to its name, `publish` emits a value under
//! it, and `#[bus::listener]` without a name listens to it, whichever way it takes the event.

mod common;

use std::sync::{Arc, Mutex, PoisonError};

use bus::{Event, EventBus, listener::ListenerKind};
use common::guarded;

#[derive(Debug, Clone, PartialEq, bus::Event)]
#[event(name = "typed.user.created")]
struct UserCreated {
    name: String,
}

#[derive(Debug, bus::Event)]
#[event(name = "typed.order.changed")]
enum OrderChanged {
    Added(u32),
}

#[derive(Debug, bus::Event)]
#[event(name = "typed.cache.filled")]
struct Filled<T> {
    value: T,
}

/// Every call of the listeners below, as `(listener, user name)`. Tests run concurrently on
/// buses of their own, so each emits its own user name and looks for that one.
static CALLS: Mutex<Vec<(&str, String)>> = Mutex::new(Vec::new());

fn record(listener: &'static str, name: &str) {
    CALLS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((listener, name.to_owned()));
}

/// The listeners that were called with `name`, sorted.
fn called_with(name: &str) -> Vec<&'static str> {
    let mut listeners: Vec<&str> = CALLS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter(|(_, called)| called == name)
        .map(|&(listener, _)| listener)
        .collect();
    listeners.sort_unstable();
    listeners
}

#[bus::listener]
async fn by_ref(user: &UserCreated) {
    record("by_ref", &user.name);
}

#[bus::listener]
async fn by_arc(user: Arc<UserCreated>) -> Result<(), String> {
    record("by_arc", &user.name);
    Ok(())
}

#[bus::listener]
async fn by_value(mut user: UserCreated) {
    user.name.push('!'); // Its own copy: the others still see the name as emitted.
    record("by_value", &user.name);
}

// The name in the attribute wins over the type's.
#[bus::listener("typed.audit")]
async fn audit(user: &UserCreated) {
    record("audit", &user.name);
}

#[bus::listener]
async fn on_order_changed(change: &OrderChanged) {
    let OrderChanged::Added(id) = change;
    record("on_order_changed", &id.to_string());
}

#[bus::listener]
async fn on_filled(filled: &Filled<String>) {
    record("on_filled", &filled.value);
}

fn user(name: &str) -> UserCreated {
    UserCreated { name: name.into() }
}

#[test]
fn the_name_is_the_attributes() {
    assert_eq!(UserCreated::NAME, "typed.user.created");
    assert_eq!(<OrderChanged as Event>::NAME, "typed.order.changed");
    assert_eq!(<Filled<String> as Event>::NAME, "typed.cache.filled");
    assert_eq!(<Filled<u8> as Event>::NAME, "typed.cache.filled");
}

#[tokio::test]
async fn publish_reaches_the_listeners_of_the_type_in_every_form() {
    let bus = EventBus::with_annotated_listeners();
    let report = guarded("publish", bus.emit_event(user("publish"))).await;
    assert_eq!((report.delivered(), report.failed()), (3, 0));
    assert_eq!(report.event(), "typed.user.created");
    assert_eq!(called_with("publish"), ["by_arc", "by_ref"]);
    assert_eq!(called_with("publish!"), ["by_value"]);
}

#[tokio::test]
async fn an_emit_under_the_types_name_reaches_them_too() {
    let bus = EventBus::with_annotated_listeners();
    let report = guarded("emit", bus.emit("typed.user.created", user("emit"))).await;
    assert_eq!(report.delivered(), 3);
    assert_eq!(called_with("emit"), ["by_arc", "by_ref"]);
}

#[tokio::test]
async fn a_listener_with_a_name_of_its_own_keeps_it() {
    let bus = EventBus::with_annotated_listeners();
    let report = guarded("emit", bus.emit("typed.audit", user("audited"))).await;
    assert_eq!(report.delivered(), 1);
    assert_eq!(called_with("audited"), ["audit"]);
}

#[tokio::test]
async fn enums_and_generic_types_are_events() {
    let bus = EventBus::with_annotated_listeners();
    let report = guarded("publish", bus.emit_event(OrderChanged::Added(4_711))).await;
    assert_eq!(report.delivered(), 1);
    assert_eq!(called_with("4711"), ["on_order_changed"]);

    let filled = Filled {
        value: "filled".to_owned(),
    };
    let report = guarded("publish", bus.emit_event(filled)).await;
    assert_eq!(report.delivered(), 1);
    assert_eq!(called_with("filled"), ["on_filled"]);
}

#[test]
fn listings_show_the_listeners_under_the_types_name() {
    let bus = EventBus::with_annotated_listeners();
    let listeners = bus.listeners(UserCreated::NAME);
    let names: Vec<&str> = listeners.iter().map(|info| info.name()).collect();
    assert_eq!(
        names,
        [
            "typed_events::by_arc",
            "typed_events::by_ref",
            "typed_events::by_value"
        ]
    );
    for listener in &listeners {
        assert_eq!(listener.kind(), ListenerKind::Annotated);
        assert_eq!(listener.event_type(), "typed_events::UserCreated");
        assert_eq!(listener.location().file(), file!());
    }
    assert_eq!(
        bus.event_names(),
        [
            "typed.audit",
            "typed.cache.filled",
            "typed.order.changed",
            "typed.user.created"
        ]
    );
}

/// The only test of the global bus in this binary.
#[tokio::test]
async fn bus_publish_reaches_them_through_the_global_bus() {
    let report = guarded("publish", bus::emit_event(user("global"))).await;
    assert_eq!((report.delivered(), report.failed()), (3, 0));
    assert_eq!(called_with("global"), ["by_arc", "by_ref"]);
    assert_eq!(bus::global().listeners(UserCreated::NAME).len(), 3);
}
