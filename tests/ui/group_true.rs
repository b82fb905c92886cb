struct UserCreated;

#[bus::listener("user.created", group = true)]
async fn on_user_created(_event: &UserCreated) {}

fn main() {}
