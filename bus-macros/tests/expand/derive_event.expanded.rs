#[automatically_derived]
impl ::bus::Event for UserCreated {
    const NAME: &'static str = "user.created";
}
