//! The `#[bus::listener]` attribute and the `#[derive(bus::Event)]` derive of the `bus` event
//! bus.
//!
//! Depend on `bus`, which re-exports them as [`bus::listener`](macro@listener) and
//! [`bus::Event`](macro@Event); this crate is their implementation. The generated code reaches
//! the runtime only through `::bus::` public paths and `::bus::__private`, which is not public
//! API.
//!
//! The attribute reads its input in `parse`, generates code in `expand` and reports mistakes
//! through `diagnostics`, all on `proc_macro2` so that plain unit tests run them. The derive,
//! much smaller, is read and generated in `event`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod diagnostics;
mod event;
mod expand;
mod parse;
#[cfg(test)]
mod snapshot;

/// Registers an `async fn` as a listener of an event, for the whole program.
///
/// ```
/// # #[derive(Debug)] struct UserCreated { name: String }
/// #[bus::listener("user.created")]
/// async fn on_user_created(event: &UserCreated) {
///     println!("welcome, {}", event.name);
/// }
/// ```
///
/// Every `bus::emit("user.created", UserCreated { .. })` in the program then runs
/// `on_user_created`, concurrently with the other listeners and without the emitter waiting
/// for it. Nothing needs to be called at startup: the fn is
/// registered at link time and [`bus::global()`] holds it from its first use.
///
/// The fn itself is left exactly as written, so it can still be called directly, in unit tests
/// for instance.
///
/// # Arguments
///
/// - **The event name**, first: a string literal of dot-separated tokens of ASCII letters,
///   digits, `_` and `-`, such as `"user.created"` or `"orders.eu.v2"`. It may also be a
///   pattern, in NATS subject syntax: a whole token `*` matches exactly one token
///   (`"orders.*.created"`), and `>` as the last token matches one or more (`"orders.>"`). It
///   is checked at compile time, against the same rules that the runtime applies to event
///   names and listener patterns.
///
///   Without a name, the listener listens to its event type's name,
///   [`<E as bus::Event>::NAME`](../bus/trait.Event.html), as
///   [`#[derive(bus::Event)]`](macro@Event) sets it; an event type that is not a `bus::Event` is
///   a compile error at the argument's type:
///
/// ```
/// #[derive(Debug, bus::Event)]
/// #[event(name = "user.created")]
/// struct UserCreated { name: String }
///
/// #[bus::listener] // listens to "user.created"
/// async fn send_welcome(user: &UserCreated) {
///     println!("welcome, {}", user.name);
/// }
/// ```
///
/// - **`once`**: the listener takes the first matching event only, then removes itself from
///   its bus: it runs exactly once, however many emits race (as [`EventBus::once`]). Each bus
///   built with the annotated listeners ([`bus::global()`],
///   [`EventBus::with_annotated_listeners`]) gets its own one call.
/// - **Delivery policy**: how the bus runs this listener's deliveries, as a [`bus::Policy`]
///   that [`ListenerInfo::policy`] shows. Options not given keep the default: no limit, no
///   timeout, no retry.
///   - **`concurrency = N`**: at most `N` (at least 1) deliveries of this listener run at once;
///     the others wait their turn, in emit order. `concurrency = 1` handles events one at a
///     time, in the order they were emitted.
///   - **`timeout = "5s"`**: a delivery that takes longer is cancelled and counts as failed.
///   - **`retry = N`**: a delivery that fails (an `Err`, a panic or a timeout) is tried again
///     up to `N` times.
///   - **`backoff = "100ms"`**: the delay before the first retry, doubling with each further
///     one; only with `retry`.
///   - **`group = false`** or **`group = "name"`**: on a bus with a transport, every instance
///     gets every event (`false`), or the listener joins the consumer group `name`; by default
///     the instances of one service share the events (`bus::policy::Group`).
///
///   Durations are a number and a unit (`"250ms"`, `"5s"`, `"1m 30s"`, `"2h"`), read with
///   [`humantime`](https://docs.rs/humantime) at compile time, so a typo is a compile error.
///
/// ```
/// # #[derive(Debug, bus::Event)]
/// # #[event(name = "order.placed")]
/// # struct OrderPlaced { total: u64 }
/// # async fn charge_card(total: u64) -> Result<(), String> { Ok(()) }
/// #[bus::listener(concurrency = 1, timeout = "5s", retry = 3, backoff = "100ms")]
/// async fn charge(order: &OrderPlaced) -> Result<(), String> {
///     charge_card(order.total).await
/// }
///
/// #[bus::listener("app.started", once)]
/// async fn warm_caches(_: &()) {}
/// ```
///
/// - **`crate = "path"`**: where to find the `bus` crate when it is not `::bus`, because it was
///   renamed in `Cargo.toml` or is re-exported by another crate:
///
/// ```
/// # extern crate bus as my_bus;
/// # #[derive(Debug)] struct UserCreated;
/// #[my_bus::listener("user.created", crate = "my_bus")]
/// async fn send_welcome(event: &UserCreated) {}
/// ```
///
/// The options come in any order, with the name or without it:
/// `#[bus::listener("user.created", once, timeout = "1s")]`, `#[bus::listener(once)]`. Each
/// mistake in them is a compile error on the option at fault.
///
/// # The event argument
///
/// The fn takes the event, and optionally the event's envelope as a second argument
/// (`envelope: &bus::Envelope`: its id, source, time, causation and extensions). Every
/// listener of an event shares one value of it, so the event argument may be:
///
/// | argument | the fn gets | requires |
/// |---|---|---|
/// | `&E` | a borrow of the shared event, for the whole call | |
/// | `Arc<E>` (`std::sync::Arc`) | the shared event itself | |
/// | `E` | a clone of its own | `E: Clone` |
///
/// The event type `E` is the type of every event emitted under this name, and must be
/// `Send + Sync + 'static`. `&mut E` is not accepted: the event is shared.
///
/// # Return type
///
/// Nothing (`()`), or `Result<(), Err>` where `Err` converts into
/// `Box<dyn std::error::Error + Send + Sync>` (any error type, `String`, `&'static str`, ...).
/// An `Err` counts the delivery as failed in the [`DeliveryReport`] and is logged; a panic is
/// caught and handled the same way. Neither affects the other listeners.
///
/// ```
/// # #[derive(Debug)] struct UserCreated { name: String }
/// #[bus::listener("user.created")]
/// async fn check_name(event: &UserCreated) -> Result<(), String> {
///     if event.name.is_empty() {
///         return Err("a user without a name".to_owned());
///     }
///     Ok(())
/// }
/// ```
///
/// # What the fn must be
///
/// An `async fn` that is not `const`, `unsafe` or `extern`, not generic (no type, lifetime or
/// const parameters, no `impl Trait` argument), and free: it runs on its own, so it takes no
/// `self` and is declared in a module or a block, not in an `impl` or a `trait`. Its future
/// must be `Send`, as it runs on Tokio's multi-threaded scheduler: do not hold an `Rc` or a
/// `std::sync::MutexGuard` across an `.await`.
///
/// Each mistake is a compile error on the token at fault, saying what to write instead.
///
/// # Equivalent code without the macro
///
/// The attribute keeps the fn and appends one registration, in a `const _` block so that
/// nothing it declares can clash with your names. The first example expands to:
///
/// ```
/// # #[derive(Debug)] struct UserCreated { name: String }
#[doc = include_str!("../tests/expand/on_user_created.expanded.rs")]
/// ```
///
/// With the name from the event type and options, as in
/// `#[bus::listener(once, concurrency = 1, timeout = "5s", retry = 3, backoff = "100ms")]` on
/// `async fn charge(order: Arc<OrderPlaced>, envelope: &bus::Envelope)`, the name is the
/// type's, the shim takes the envelope too, and the registration carries the options:
///
/// ```
/// # use std::sync::Arc;
/// # #[derive(Debug, bus::Event)] #[event(name = "order.placed")] struct OrderPlaced { total: u64 }
/// # mod payments {
/// #     #[derive(Debug)] pub struct PaymentError;
/// #     impl std::fmt::Display for PaymentError {
/// #         fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("declined") }
/// #     }
/// #     impl std::error::Error for PaymentError {}
/// #     pub async fn charge(_: &bus::EventId, _: u64) -> Result<(), PaymentError> { Ok(()) }
/// # }
/// # use payments::PaymentError;
#[doc = include_str!("../tests/expand/charge.expanded.rs")]
/// ```
///
/// `__listener` adapts the fn to the `Arc<E>` that every listener receives (for `E` by value it
/// calls `__private::clone_event(&*event)`; for `Arc<E>` it passes the `Arc`). `inventory`
/// collects the registration at link time, and [`bus::global()`] adds it, named with the fn's
/// path and located at the attribute, as [`EventBus::listeners`] shows. `__private` is not
/// public API; the public way to add a listener at run time, to any bus, is
/// [`EventBus::add_listener`]:
///
/// ```
/// # use std::sync::Arc;
/// # #[derive(Debug)] struct UserCreated { name: String }
/// # async fn on_user_created(event: &UserCreated) {}
/// bus::global().add_listener("user.created", |event: Arc<UserCreated>| async move {
///     on_user_created(&event).await;
/// });
/// ```
///
/// # Listeners in other crates
///
/// The linker keeps only the crates that the program refers to. A crate of listeners that is a
/// dependency but that no code names is dropped, and its listeners with it. Name it once,
/// anywhere in the binary:
///
/// ```
/// # extern crate bus as my_listeners;
/// use my_listeners as _;
/// ```
///
// These docs are read on the `bus` page, which re-exports the attribute, but intra-doc links
// resolve here, where `bus` is not a dependency: link to its pages instead.
/// [`bus::global()`]: ../bus/fn.global.html
/// [`bus::Policy`]: ../bus/struct.Policy.html
/// [`ListenerInfo::policy`]: ../bus/struct.ListenerInfo.html#method.policy
/// [`EventBus::with_annotated_listeners`]: ../bus/struct.EventBus.html#method.with_annotated_listeners
/// [`EventBus::once`]: ../bus/struct.EventBus.html#method.once
/// [`DeliveryReport`]: ../bus/struct.DeliveryReport.html
/// [`EventBus::listeners`]: ../bus/struct.EventBus.html#method.listeners
/// [`EventBus::add_listener`]: ../bus/struct.EventBus.html#method.add_listener
#[proc_macro_attribute]
pub fn listener(
    args: proc_macro::TokenStream,
    item: proc_macro::TokenStream,
) -> proc_macro::TokenStream {
    expand::listener(args.into(), item.into()).into()
}

/// Implements [`bus::Event`] for a type: binds it to one event name, checked at compile time.
///
/// ```
/// #[derive(Debug, bus::Event)]
/// #[event(name = "user.created")]
/// struct UserCreated {
///     name: String,
/// }
///
/// assert_eq!(<UserCreated as bus::Event>::NAME, "user.created");
/// ```
///
/// [`bus::emit_event`] then emits a value under its type's name, and a
/// [`#[bus::listener]`](macro@listener) that names no event listens to the name of its
/// argument's type:
///
/// ```
/// # #[derive(Debug, bus::Event)]
/// # #[event(name = "user.created")]
/// # struct UserCreated { name: String }
/// #[bus::listener]
/// async fn send_welcome(user: &UserCreated) {
///     println!("welcome, {}", user.name);
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let report = bus::emit_event(UserCreated { name: "Ada".into() }).await;
/// assert_eq!(report.delivered(), 1);
/// # }
/// ```
///
/// # Attributes
///
/// - **`#[event(name = "...")]`**, required: the event name, dot-separated tokens of ASCII
///   letters, digits, `_` and `-`, checked against the rules the runtime applies to emitted
///   names. A pattern (`orders.*`, `orders.>`) is a listener's business, not an event's: the
///   name of an event type holds no wildcard.
/// - **`#[event(crate = "path")]`**, optional: where to find the `bus` crate when it is not
///   `::bus` (see [`listener`](macro@listener)).
/// - **`#[event(distributed)]`**, optional: the type travels through the broker of a bus with
///   a transport, as JSON (it must be `serde::Serialize + serde::Deserialize`; the derive then
///   also submits its codec at link time). Without it the type stays in process, serde or not:
///   deriving `Serialize` for a log line never moves a listener onto the broker. A generic type
///   is named, per instance, with `EventBusBuilder::distributed::<T>()` instead.
///
/// They may be written in one `#[event(..)]` or in several. Enums, unions and generic types are
/// accepted too; a generic type is an event for the parameters that make it
/// `Send + Sync + 'static`.
///
/// # Expansion
///
/// ```
/// # #[derive(Debug)] struct UserCreated { name: String }
#[doc = include_str!("../tests/expand/derive_event.expanded.rs")]
/// ```
///
// As on `listener`: these docs are read on the `bus` page, so link to its pages.
/// [`bus::Event`]: ../bus/trait.Event.html
/// [`bus::emit_event`]: ../bus/fn.emit_event.html
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: proc_macro::TokenStream) -> proc_macro::TokenStream {
    event::derive(input.into()).into()
}
