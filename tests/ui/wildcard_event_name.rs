struct UserCreated;

#[bus::listener("user.*")]
async fn on_user_created(_event: &UserCreated) {}

fn main() {}
