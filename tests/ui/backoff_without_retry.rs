struct UserCreated;

#[bus::listener("user.created", timeout = "1s", backoff = "100ms")]
async fn on_user_created(_event: &UserCreated) {}

fn main() {}
