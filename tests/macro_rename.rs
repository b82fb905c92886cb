//! `#[bus::listener]` and `#[derive(bus::Event)]` in a crate that renames `bus` or shadows its
//! name: the generated code reaches the runtime through `::bus` (which no local name can
//! capture), or through the path given by `crate = "..."`.

// The crate's own `bus` is std here; `::bus` is still the real crate.
#[expect(
    unused_imports,
    reason = "shadows the crate's name, as a user's crate may"
)]
use std as bus;

extern crate bus as renamed;

#[derive(Debug)]
struct Shadowed;

const SHADOWED_LINE: u32 = line!() + 1;
#[::bus::listener("rename.shadowed")]
async fn on_shadowed(_event: &Shadowed) {}

#[derive(Debug, Clone)]
struct Renamed;

#[renamed::listener("x.y", crate = "renamed")]
async fn on_renamed(_event: Renamed) {}

#[derive(Debug, ::bus::Event)]
#[event(name = "rename.typed")]
struct TypedShadowed;

#[::bus::listener(timeout = "1s")]
async fn on_typed_shadowed(_event: &TypedShadowed) {}

#[derive(Debug, renamed::Event)]
#[event(name = "rename.typed-renamed", crate = "renamed")]
struct TypedRenamed;

#[renamed::listener(crate = "renamed", retry = 1)]
async fn on_typed_renamed(_event: &TypedRenamed) {}

/// The fn paths of the listeners of `event` on the global bus.
fn listener_names(event: &str) -> Vec<String> {
    renamed::global()
        .listeners(event)
        .iter()
        .map(|info| info.name().to_owned())
        .collect()
}

#[tokio::test]
async fn reaches_bus_when_its_name_is_shadowed() {
    assert_eq!(
        listener_names("rename.shadowed"),
        ["macro_rename::on_shadowed"]
    );
    // Located at the attribute, through `::core::line!()` and friends.
    let location = ::bus::global().listeners("rename.shadowed")[0].location();
    assert!(location.file().ends_with("macro_rename.rs"), "{location}");
    assert_eq!((location.line(), location.column()), (SHADOWED_LINE, 1));
    let report = ::bus::emit("rename.shadowed", Shadowed).await;
    assert_eq!((report.delivered(), report.failed()), (1, 0));
}

#[tokio::test]
async fn reaches_bus_through_the_crate_option() {
    let names = listener_names("x.y");
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].ends_with("::on_renamed"), "{names:?}");
    let report = renamed::emit("x.y", Renamed).await;
    assert_eq!((report.delivered(), report.failed()), (1, 0));
}

#[tokio::test]
async fn derives_events_and_infers_names_when_bus_is_shadowed_or_renamed() {
    use renamed::Event as _;

    assert_eq!(TypedShadowed::NAME, "rename.typed");
    assert_eq!(
        listener_names("rename.typed"),
        ["macro_rename::on_typed_shadowed"]
    );
    let report = renamed::emit_event(TypedShadowed).await;
    assert_eq!((report.delivered(), report.failed()), (1, 0));

    assert_eq!(TypedRenamed::NAME, "rename.typed-renamed");
    let listeners = renamed::global().listeners(TypedRenamed::NAME);
    assert_eq!(listeners.len(), 1, "{listeners:?}");
    assert_eq!(listeners[0].policy(), renamed::Policy::new().retry(1));
    let report = renamed::emit_event(TypedRenamed).await;
    assert_eq!((report.delivered(), report.failed()), (1, 0));
}
