struct UserCreated;

#[bus::listener]
async fn on_user_created(_event: &UserCreated) {}

fn main() {}
