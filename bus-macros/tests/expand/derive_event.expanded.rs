#[automatically_derived]
impl ::bus::__private::Event for UserCreated {
    const NAME: &'static str = "user.created";
}
