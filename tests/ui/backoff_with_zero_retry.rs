struct UserCreated;

#[bus::listener("user.created", retry = 0, backoff = "100ms")]
async fn on_user_created(_event: &UserCreated) {}

fn main() {}
