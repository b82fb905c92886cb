//! `#[bus::listener]`: annotated fns are registered at link time, in every argument form, stay
//! callable as written, and are the same listener as a runtime add of the same fn.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bus::{EventBus, listener::ListenerKind};
use common::guarded;

#[derive(Debug, Clone, PartialEq)]
struct UserCreated {
    name: String,
}

static BY_REF: AtomicUsize = AtomicUsize::new(0);
static BY_ARC: AtomicUsize = AtomicUsize::new(0);
static BY_VALUE: AtomicUsize = AtomicUsize::new(0);

#[bus::listener("user.created")]
async fn by_ref(user: &UserCreated) {
    count_if_emitted(&BY_REF, user);
}

/// Counts the emitted event only: other tests call these fns directly with other names.
fn count_if_emitted(counter: &AtomicUsize, user: &UserCreated) {
    if user.name == "Ada" {
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

#[bus::listener("user.created")]
async fn by_arc(user: Arc<UserCreated>) -> Result<(), std::io::Error> {
    count_if_emitted(&BY_ARC, &user);
    Ok(())
}

#[bus::listener("user.created")]
async fn by_value(mut user: UserCreated) -> Result<(), String> {
    count_if_emitted(&BY_VALUE, &user);
    user.name.push('!'); // Its own copy: the others still see "Ada".
    Ok(())
}

mod billing {
    pub mod invoices {
        #[derive(Debug)]
        pub struct InvoiceDue(pub u32);

        /// Doc comments and attributes stay on the fn.
        #[bus::listener("invoice.due")]
        #[inline(never)]
        pub(crate) async fn remind(due: &InvoiceDue) -> Result<(), String> {
            if due.0 == 0 {
                return Err(format!("invoice {} has no amount", due.0));
            }
            Ok(())
        }
    }
}

#[tokio::test]
async fn every_argument_form_receives_the_event() {
    let bus = EventBus::with_annotated_listeners();
    let report = guarded(
        "emit",
        bus.emit("user.created", UserCreated { name: "Ada".into() }),
    )
    .await;
    assert!(report.is_ok(), "{:?}", report.failures());
    assert_eq!(report.delivered(), 3);
    assert_eq!(BY_REF.load(Ordering::SeqCst), 1);
    assert_eq!(BY_ARC.load(Ordering::SeqCst), 1);
    assert_eq!(BY_VALUE.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_listener_in_a_nested_module_is_found_and_its_errors_reported() {
    let bus = EventBus::with_annotated_listeners();
    let listeners = bus.listeners("invoice.due");
    assert_eq!(listeners.len(), 1);
    assert_eq!(
        listeners[0].name(),
        "macro_listener::billing::invoices::remind"
    );
    assert_eq!(
        listeners[0].event_type(),
        "macro_listener::billing::invoices::InvoiceDue"
    );

    let ok = guarded(
        "emit",
        bus.emit("invoice.due", billing::invoices::InvoiceDue(10)),
    )
    .await;
    assert_eq!((ok.delivered(), ok.failed()), (1, 0));
    let failed = guarded(
        "emit",
        bus.emit("invoice.due", billing::invoices::InvoiceDue(0)),
    )
    .await;
    assert_eq!((failed.delivered(), failed.failed()), (0, 1));
    assert_eq!(
        failed.failures()[0].to_string(),
        "listener `macro_listener::billing::invoices::remind` failed on event `invoice.due`: \
         invoice 0 has no amount"
    );
}

#[tokio::test]
async fn annotated_fns_stay_callable_as_written() {
    by_ref(&UserCreated { name: "Bob".into() }).await;
    by_arc(Arc::new(UserCreated { name: "Bob".into() }))
        .await
        .unwrap();
    by_value(UserCreated { name: "Bob".into() }).await.unwrap();
    assert_eq!(
        billing::invoices::remind(&billing::invoices::InvoiceDue(0)).await,
        Err("invoice 0 has no amount".to_owned())
    );
}

#[test]
fn listings_show_fn_paths_types_and_source_locations() {
    let bus = EventBus::with_annotated_listeners();
    let listeners = bus.listeners("user.created");
    let names: Vec<&str> = listeners.iter().map(|l| l.name()).collect();
    assert_eq!(
        names,
        [
            "macro_listener::by_arc",
            "macro_listener::by_ref",
            "macro_listener::by_value"
        ],
        "in a stable order: by fn path"
    );
    for listener in &listeners {
        assert_eq!(listener.kind(), ListenerKind::Annotated);
        assert_eq!(listener.event_type(), "macro_listener::UserCreated");
        assert_eq!(listener.location().file(), file!());
        assert!(listener.location().line() > 0);
    }
    assert_eq!(bus.event_names(), ["invoice.due", "user.created"]);
}

#[test]
fn runtime_add_of_an_annotated_fn_is_the_same_listener() {
    let bus = EventBus::with_annotated_listeners();
    let annotated = bus.listeners("user.created");
    let by_arc_id = annotated
        .iter()
        .find(|l| l.name() == "macro_listener::by_arc")
        .unwrap()
        .id();
    assert_eq!(bus.add_listener("user.created", by_arc), by_arc_id);
    assert_eq!(bus.listeners("user.created").len(), 3);

    // And removable by the fn, like any runtime listener.
    assert!(bus.remove_listener("user.created", by_arc));
    assert_eq!(bus.listeners("user.created").len(), 2);
    // Listeners taking `&E` or `E` are removed by id.
    let by_ref_id = bus.listeners("user.created")[0].id();
    assert!(bus.remove(by_ref_id));
    assert_eq!(bus.listeners("user.created").len(), 1);
}

#[tokio::test]
async fn the_global_bus_holds_the_annotated_listeners_and_takes_runtime_ones() {
    let global = bus::global();
    assert!(std::ptr::eq(global, bus::global()), "built once");
    assert_eq!(global.listeners("user.created").len(), 3);

    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let id = global.add_listener("global.only", move |_: Arc<u8>| {
        let counter = Arc::clone(&counter);
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let report = guarded("emit", bus::emit("global.only", 7_u8)).await;
    assert_eq!(report.delivered(), 1);
    assert!(bus::try_emit("global.only", "not a u8").is_err());
    assert!(global.remove(id));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
