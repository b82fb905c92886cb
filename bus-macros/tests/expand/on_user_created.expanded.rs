async fn on_user_created(event: &UserCreated) {
    println!("welcome, {}", event.name);
}
#[doc(hidden)]
const _: () = {
    async fn __listener(
        event: ::bus::__private::Arc<UserCreated>,
    ) -> ::bus::__private::ListenerResult {
        ::bus::__private::into_result(on_user_created(&event).await)
    }
    ::bus::__private::inventory::submit! {
        ::bus::__private::StaticListener::new(
            "user.created",
            ::core::concat!(::core::module_path!(), "::", "on_user_created"),
            ::core::file!(),
            ::core::line!(),
            ::core::column!(),
            || ::bus::__private::registration::<
                UserCreated,
                _,
                (::bus::__private::Arc<UserCreated>,),
                _,
            >(__listener, on_user_created),
        )
    }
};
