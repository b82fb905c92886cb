//! The case the docs warn about: `linked-listeners` is a dependency of this binary, but nothing
//! here names it, so rustc does not link it and its listeners are not registered.
//!
//! If this test starts failing, rustc links unreferenced crates now and the
//! "Listeners in other crates" section of the crate docs and README can go.

#[test]
fn an_unreferenced_crate_contributes_no_listeners() {
    assert!(
        bus::global().listeners("order.shipped").is_empty(),
        "the crate was linked without being named"
    );
    assert!(bus::global().event_names().is_empty());
}
