//! Two `#[bus::listener]` fns that take different types under one name are reported when the
//! global bus is built, and an emit of either type reaches only its own listeners.

mod common;

use common::{Logs, guarded};

#[derive(Debug)]
struct UserCreated;

#[derive(Debug)]
struct AccountCreated;

#[bus::listener("created")]
async fn on_user(_: &UserCreated) {}

#[bus::listener("created")]
async fn on_account(_: &AccountCreated) {}

#[tokio::test]
async fn conflicting_types_are_reported_when_the_global_bus_is_built() {
    let logs = Logs::default();
    let global = {
        let _capture = logs.capture();
        // The first use builds the global bus (this is the only test in this binary).
        bus::global()
    };
    let lines = logs.lines_with(&[
        "ERROR",
        "different types",
        "created",
        "macro_conflicts::on_user",
        "macro_conflicts::UserCreated",
        "macro_conflicts::on_account",
        "macro_conflicts::AccountCreated",
    ]);
    assert_eq!(lines.len(), 1, "{}", logs.text());

    assert!(matches!(
        global
            .try_emit("created", UserCreated)
            .map_err(bus::error::EmitError::from),
        Err(bus::error::EmitError::TypeMismatch { .. })
    ));
    let report = guarded("emit", global.emit("created", AccountCreated)).await;
    assert_eq!((report.delivered(), report.failed()), (1, 1));
}
