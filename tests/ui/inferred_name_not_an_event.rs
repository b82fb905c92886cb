use std::sync::Arc;

#[derive(Clone)]
struct UserCreated;

// No event name: it would be `<UserCreated as bus::Event>::NAME`, but `UserCreated` is not an
// event. Each argument form is reported at its type.
#[bus::listener]
async fn by_ref(_event: &UserCreated) {}

#[bus::listener(once)]
async fn by_arc(_event: Arc<UserCreated>) {}

#[bus::listener]
async fn by_value(_event: UserCreated) {}

fn main() {}
