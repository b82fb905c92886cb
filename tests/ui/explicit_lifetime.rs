struct UserCreated;

#[bus::listener("user.created")]
async fn on_user_created(_event: &'static UserCreated) {}

fn main() {}
