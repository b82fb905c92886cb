//! Listeners in another crate of the workspace, and in modules, are found by `bus::emit` once
//! the binary links that crate. This binary names it with the one line the docs prescribe.

// The one line: without it, the linker drops the crate and its listeners (see
// `linking_dropped.rs`).
use linked_listeners as _;

mod common;

use common::guarded;

#[test]
fn listeners_of_a_linked_crate_are_registered_with_their_paths() {
    let listeners = bus::global().listeners("order.shipped");
    let names: Vec<&str> = listeners.iter().map(|l| l.name()).collect();
    assert_eq!(
        names,
        [
            "linked_listeners::notify_customer",
            "linked_listeners::warehouse::restock"
        ],
        "sorted by fn path"
    );
    for listener in &listeners {
        assert_eq!(listener.kind(), bus::listener::ListenerKind::Annotated);
        assert_eq!(listener.event_type(), "linked_listeners::OrderShipped");
        assert!(
            listener
                .location()
                .file()
                .ends_with("linked-listeners/src/lib.rs")
        );
    }
}

#[tokio::test]
async fn bus_emit_reaches_them() {
    let report = guarded(
        "emit",
        bus::emit("order.shipped", linked_listeners::OrderShipped { order: 1 }),
    )
    .await;
    assert_eq!(report.delivered(), 2);
    assert_eq!(
        linked_listeners::NOTIFIED.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert_eq!(linked_listeners::restocked(), 1);
}
