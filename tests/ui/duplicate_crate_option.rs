struct UserCreated;

#[bus::listener("user.created", crate = "bus", crate = "bus")]
async fn on_user_created(_event: &UserCreated) {}

fn main() {}
