struct UserCreated;

#[bus::listener("user.created")]
fn on_user_created(_event: &UserCreated) {}

fn main() {}
