async fn charge(
    order: Arc<OrderPlaced>,
    envelope: &bus::Envelope,
) -> Result<(), PaymentError> {
    payments::charge(envelope.id(), order.total).await
}
#[doc(hidden)]
const _: () = {
    async fn __listener(
        event: ::bus::__private::Arc<OrderPlaced>,
        envelope: ::bus::__private::Envelope,
    ) -> ::bus::__private::ListenerResult {
        ::bus::__private::into_result(charge(event, &envelope).await)
    }
    ::bus::__private::inventory::submit! {
        ::bus::__private::StaticListener::new(
            <OrderPlaced as ::bus::__private::Event>::NAME,
            ::core::concat!(::core::module_path!(), "::", "charge"),
            ::core::file!(),
            ::core::line!(),
            ::core::column!(),
            || {
                ::bus::__private::registration::<
                    OrderPlaced,
                    _,
                    (::bus::__private::Arc<OrderPlaced>, ::bus::__private::Envelope),
                    _,
                >(__listener, charge)
                    .once()
                    .policy(
                        ::bus::__private::Policy::new()
                            .concurrency(1)
                            .timeout(::bus::__private::Duration::from_secs(5))
                            .retry(3)
                            .backoff(::bus::__private::Duration::from_millis(100)),
                    )
            },
        )
    }
};
