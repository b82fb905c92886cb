struct UserCreated;

#[bus::listener("user.created", onec)]
async fn on_user_created(_event: &UserCreated) {}

fn main() {}
