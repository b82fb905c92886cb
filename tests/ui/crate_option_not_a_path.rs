struct UserCreated;

#[bus::listener("user.created", crate = "not a path")]
async fn on_user_created(_event: &UserCreated) {}

fn main() {}
