struct UserCreated;

#[bus::listener("user.created", retry = 3, backoff = "100 milliseconds")]
async fn on_user_created(_event: &UserCreated) {}

fn main() {}
