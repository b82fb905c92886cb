//! The `#[bus::listener]` attribute of the `bus` event bus.
//!
//! Depend on `bus`, which re-exports the attribute as [`bus::listener`](macro@listener); this
//! crate is its implementation. The generated code reaches the runtime only through
//! `::bus::__private`, which is not public API.
//!
//! The attribute reads its input in `parse`, generates code in `expand` and reports mistakes
//! through `diagnostics`, all on `proc_macro2` so that plain unit tests run them.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod diagnostics;
mod expand;
// The event-name and listener-pattern rules, shared word for word with the runtime so that the
// compile-time and the run-time checks cannot drift apart.
#[path = "../../bus-core/src/name_rules.rs"]
mod name_rules;
mod parse;

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
/// - **The event name**, first and required: a string literal of dot-separated tokens of ASCII
///   letters, digits, `_` and `-`, such as `"user.created"` or `"orders.eu.v2"`. It may also be
///   a pattern, in NATS subject syntax: a whole token `*` matches exactly one token
///   (`"orders.*.created"`), and `>` as the last token matches one or more (`"orders.>"`). It
///   is checked at compile time, against the same rules that the runtime applies to event
///   names and listener patterns.
/// - **`crate = "path"`**, optional: where to find the `bus` crate when it is not `::bus`,
///   because it was renamed in `Cargo.toml` or is re-exported by another crate:
///
/// ```
/// # extern crate bus as my_bus;
/// # #[derive(Debug)] struct UserCreated;
/// #[my_bus::listener("user.created", crate = "my_bus")]
/// async fn send_welcome(event: &UserCreated) {}
/// ```
///
/// # The event argument
///
/// The fn takes exactly one argument, the event. Every listener of an event shares one value
/// of it, so the argument may be:
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
