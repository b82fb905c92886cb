struct UserCreated;

#[bus::listener("user.created", timeout)]
async fn on_user_created(_event: &UserCreated) {}

fn main() {}
