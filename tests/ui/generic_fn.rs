#[bus::listener("user.created")]
async fn on_user_created<E: Send + Sync + 'static>(_event: &E) {}

fn main() {}
