struct UserCreated;

#[bus::listener("user.created", group)]
async fn on_user_created(_event: &UserCreated) {}

fn main() {}
