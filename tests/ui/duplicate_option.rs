struct UserCreated;

#[bus::listener("user.created", once, retry = 3, once)]
async fn on_user_created(_event: &UserCreated) {}

fn main() {}
