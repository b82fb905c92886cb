//! What a listener is: an async fn or closure taking `Arc<E>`, or `Arc<E>` and the event's
//! [`Envelope`], and how the bus stores listeners of different event types side by side.
//!
//! [`ErasedListener::deliver`] is a double dispatch: the registry holds listeners with their
//! types erased, and `deliver` hands the listener's *concrete* future type back to the engine
//! ([`Dispatcher::run`]), so that a delivery completed inline is never boxed, and the
//! listener's lane holds that future unboxed too ([`Concrete`], [`Lanes`]). Those are the
//! deliberate import cycles of the crate (`erased` ↔ `run`, `erased` ↔ `lane`), and why they
//! live in this folder.

use std::any::{Any, TypeId};
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

use super::lane::Lanes;
use super::run::{Dispatcher, FutureSlots};
use crate::error::BoxError;
use crate::event::{AnyEvent, Envelope, ErasedEvent};

mod sealed {
    pub trait Sealed {}
    impl Sealed for () {}
    impl<E> Sealed for Result<(), E> {}
}

/// What a listener may return: `()`, or `Result<(), E>` with
/// `E: Into<Box<dyn std::error::Error + Send + Sync>>`.
///
/// An `Err` counts the delivery as failed in the [`DeliveryReport`](crate::DeliveryReport) and
/// is logged; it never affects other listeners.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a valid return type for a bus listener",
    label = "a listener must return `()` or `Result<(), E>`",
    note = "the error type `E` must convert into `Box<dyn std::error::Error + Send + Sync>`"
)]
pub trait ListenerOutput: sealed::Sealed {
    /// Converts the listener's output into the bus's uniform result.
    fn into_result(self) -> Result<(), BoxError>;
}

impl ListenerOutput for () {
    fn into_result(self) -> Result<(), BoxError> {
        Ok(())
    }
}

impl<E: Into<BoxError>> ListenerOutput for Result<(), E> {
    fn into_result(self) -> Result<(), BoxError> {
        self.map_err(Into::into)
    }
}

/// An async function or closure that handles events of type `E`.
///
/// Implemented for every `Fn(Arc<E>) -> Fut` and every `Fn(Arc<E>, Envelope) -> Fut` where
/// `Fut` is a `Send + 'static` future whose output is a [`ListenerOutput`]: an
/// `async fn f(event: Arc<E>)`, a closure `|event: Arc<E>| async move { .. }`, or one that
/// also takes the event's [`Envelope`] (`|event: Arc<E>, envelope: Envelope| ..`).
/// `#[bus::listener]` adapts fns taking `&E` or `E` (and `&Envelope`) to these shapes. `Args`
/// tells the two shapes apart and is always inferred.
///
/// You never implement this trait yourself; its items are not public API.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a listener for events of type `{E}`",
    label = "not an event listener",
    note = "a listener is an `async fn` or a closure taking `Arc<{E}>` (and optionally a \
            `bus::Envelope`) and returning `()` or `Result<(), E>`; its future must be \
            `Send + 'static`"
)]
pub trait Listener<E, Args = (Arc<E>,)>: Send + Sync + 'static {
    /// The listener's output.
    #[doc(hidden)]
    type Output: ListenerOutput;
    /// The future of one call.
    #[doc(hidden)]
    type Future: Future<Output = Self::Output> + Send + 'static;
    /// Whether the listener takes the envelope: then the bus makes one for each call.
    #[doc(hidden)]
    const TAKES_ENVELOPE: bool;

    /// Starts handling one event; `envelope` makes its envelope, called only when
    /// [`TAKES_ENVELOPE`](Listener::TAKES_ENVELOPE).
    #[doc(hidden)]
    fn call(&self, event: Arc<E>, envelope: impl FnOnce() -> Envelope) -> Self::Future;
}

impl<F, Fut, E> Listener<E, (Arc<E>,)> for F
where
    F: Fn(Arc<E>) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: ListenerOutput,
    E: Send + Sync + 'static,
{
    type Output = Fut::Output;
    type Future = Fut;
    const TAKES_ENVELOPE: bool = false;

    #[inline]
    fn call(&self, event: Arc<E>, _: impl FnOnce() -> Envelope) -> Fut {
        self(event)
    }
}

impl<F, Fut, E> Listener<E, (Arc<E>, Envelope)> for F
where
    F: Fn(Arc<E>, Envelope) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: ListenerOutput,
    E: Send + Sync + 'static,
{
    type Output = Fut::Output;
    type Future = Fut;
    const TAKES_ENVELOPE: bool = true;

    fn call(&self, event: Arc<E>, envelope: impl FnOnce() -> Envelope) -> Fut {
        self(event, envelope())
    }
}

/// A delivery whose future type is erased: for deliveries that run entirely in a task.
pub(crate) type BoxedDelivery = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

/// A listener with its event type erased, so listeners of different types share one registry.
pub(crate) trait ErasedListener: Send + Sync + 'static {
    /// Hands the delivery of `event` to `dispatcher`, which runs the listener's future with its
    /// concrete type (no boxing when it completes at once). `false`, and nothing run, when the
    /// event is not of the listener's type.
    fn deliver(&self, event: ErasedEvent, dispatcher: Dispatcher<'_>) -> bool;

    /// Calls the listener and boxes its future, for a delivery made in a task. A future that
    /// fails at once when the event is not of the listener's type (the bus checks types
    /// before a delivery, so only a bug gets there).
    fn call_boxed(&self, event: &ErasedEvent, envelope: MakeEnvelope<'_>) -> BoxedDelivery;

    /// The listener itself, for its lane's task, which knows its concrete type.
    fn as_any(&self) -> &dyn Any;
}

/// A listener with its types known: what the engine runs, on the emitter's thread or in the
/// listener's lane.
pub(crate) trait Concrete: Send + Sync + 'static {
    /// The events it takes.
    type Event: Send + Sync + 'static;
    /// The future of one call.
    type Future: Future<Output: ListenerOutput> + Send + 'static;

    /// Starts handling one event; `envelope` makes its envelope, if the listener takes it.
    fn call(&self, event: Arc<Self::Event>, envelope: impl FnOnce() -> Envelope) -> Self::Future;

    /// The memory of its last inline delivery, for its next one.
    fn slots(&self) -> &FutureSlots<Self::Future>;

    /// Where its deliveries wait and run when they do not complete inline.
    fn lanes(&self) -> &Lanes<Self::Event, Self::Future>;
}

/// Makes the envelope of a delivery's event, for a listener that takes it; shared by the
/// future of a delivery run in a task, hence `Sync`.
pub(crate) type MakeEnvelope<'a> = &'a (dyn Fn() -> Envelope + Sync);

/// A typed listener behind [`ErasedListener`].
struct Typed<E, Args, L: Listener<E, Args>> {
    listener: L,
    slots: FutureSlots<L::Future>,
    lanes: Lanes<E, L::Future>,
    _event: PhantomData<fn(Arc<E>, Args)>,
}

impl<E, Args, L> Concrete for Typed<E, Args, L>
where
    E: Send + Sync + 'static,
    Args: 'static,
    L: Listener<E, Args>,
{
    type Event = E;
    type Future = L::Future;

    #[inline]
    fn call(&self, event: Arc<E>, envelope: impl FnOnce() -> Envelope) -> L::Future {
        self.listener.call(event, envelope)
    }

    #[inline]
    fn slots(&self) -> &FutureSlots<L::Future> {
        &self.slots
    }

    #[inline]
    fn lanes(&self) -> &Lanes<E, L::Future> {
        &self.lanes
    }
}

impl<E, Args, L> ErasedListener for Typed<E, Args, L>
where
    E: Send + Sync + 'static,
    Args: 'static,
    L: Listener<E, Args>,
{
    fn deliver(&self, event: ErasedEvent, dispatcher: Dispatcher<'_>) -> bool {
        match event.downcast::<E>() {
            Ok(event) => {
                dispatcher.run(event, self);
                true
            }
            Err(_) => false,
        }
    }

    fn call_boxed(&self, event: &ErasedEvent, envelope: MakeEnvelope<'_>) -> BoxedDelivery {
        match Arc::clone(event).downcast::<E>() {
            Ok(event) => {
                let future = self.listener.call(event, envelope);
                Box::pin(async move { future.await.into_result() })
            }
            Err(_) => Box::pin(std::future::ready(Err(
                "the event is not of the listener's type".into(),
            ))),
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Everything the registry needs to know about a listener, minus its name and location.
pub(crate) struct Erased {
    pub(crate) listener: Box<dyn ErasedListener>,
    pub(crate) event_type: TypeId,
    pub(crate) event_type_name: &'static str,
    /// `Some` when the listener's identity is its type: then adding it again is a no-op.
    pub(crate) identity: Option<TypeId>,
    /// Whether it takes the event's [`Envelope`] besides the event.
    pub(crate) takes_envelope: bool,
}

impl Erased {
    /// Erases a runtime listener.
    ///
    /// A zero-sized listener (a fn item, or a closure that captures nothing) is entirely
    /// described by its type, so its `TypeId` is its identity: adding the same fn twice is one
    /// listener. A listener with state (a capturing closure) has no identity: every add is a new
    /// listener. Fn pointers are never compared (rust-lang/rust#118833: equal in release builds
    /// for distinct fns with the same body).
    pub(crate) fn new<E, Args, L>(listener: L) -> Self
    where
        E: Send + Sync + 'static,
        Args: 'static,
        L: Listener<E, Args>,
    {
        let identity = (size_of::<L>() == 0).then(TypeId::of::<L>);
        Erased::with_identity::<E, Args, L>(listener, identity)
    }

    pub(crate) fn with_identity<E, Args, L>(listener: L, identity: Option<TypeId>) -> Self
    where
        E: Send + Sync + 'static,
        Args: 'static,
        L: Listener<E, Args>,
    {
        Erased {
            listener: Box::new(Typed {
                listener,
                slots: FutureSlots::default(),
                lanes: Lanes::default(),
                _event: PhantomData,
            }),
            event_type: TypeId::of::<E>(),
            event_type_name: std::any::type_name::<E>(),
            identity,
            takes_envelope: L::TAKES_ENVELOPE,
        }
    }
}

impl Erased {
    /// `true` for a listener of [`AnyEvent`], which takes events of every type.
    pub(crate) fn takes_any(&self) -> bool {
        self.event_type == TypeId::of::<AnyEvent>()
    }
}

/// The identity a runtime listener would have, for `remove_listener`.
pub(crate) fn identity_of<L: 'static>() -> Option<TypeId> {
    (size_of::<L>() == 0).then(TypeId::of::<L>)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn named(_: Arc<u32>) {}
    async fn other(_: Arc<u32>) {}

    #[test]
    fn fn_items_have_distinct_identities() {
        let a = Erased::new::<u32, _, _>(named).identity;
        let b = Erased::new::<u32, _, _>(named).identity;
        let c = Erased::new::<u32, _, _>(other).identity;
        assert!(a.is_some());
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn capturing_closures_have_no_identity() {
        let state = Arc::new(1_u8);
        let listener = move |_: Arc<u32>| {
            let _state = Arc::clone(&state);
            async {}
        };
        assert_eq!(Erased::new::<u32, _, _>(listener).identity, None);
    }

    #[test]
    fn erased_listeners_know_their_event_type() {
        let erased = Erased::new::<u32, _, _>(named);
        assert_eq!(erased.event_type, TypeId::of::<u32>());
        assert_eq!(erased.event_type_name, "u32");
    }

    #[test]
    fn outputs_convert() {
        assert!(().into_result().is_ok());
        assert!(Ok::<(), String>(()).into_result().is_ok());
        let err = Err::<(), _>("boom").into_result().unwrap_err();
        assert_eq!(err.to_string(), "boom");
    }
}
