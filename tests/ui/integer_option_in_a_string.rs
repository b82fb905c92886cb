struct UserCreated;

#[bus::listener("user.created", concurrency = "1")]
async fn on_user_created(_event: &UserCreated) {}

fn main() {}
