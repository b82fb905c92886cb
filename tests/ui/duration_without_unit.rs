struct UserCreated;

#[bus::listener("user.created", timeout = "5")]
async fn on_user_created(_event: &UserCreated) {}

fn main() {}
