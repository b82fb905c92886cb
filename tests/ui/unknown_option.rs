struct UserCreated;

#[bus::listener("user.created", retries = 3)]
async fn on_user_created(_event: &UserCreated) {}

fn main() {}
