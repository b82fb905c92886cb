#[bus::listener("user.created")]
async fn on_user_created(_event: &impl std::fmt::Debug) {}

fn main() {}
