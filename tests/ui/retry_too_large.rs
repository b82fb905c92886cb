struct UserCreated;

#[bus::listener("user.created", retry = 5_000_000_000)]
async fn on_user_created(_event: &UserCreated) {}

fn main() {}
