struct UserCreated;

#[bus::listener("user.created", timeout = "0s")]
async fn on_user_created(_event: &UserCreated) {}

fn main() {}
