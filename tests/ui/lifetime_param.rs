struct UserCreated;

#[bus::listener("user.created")]
async fn on_user_created<'a>(_event: &'a UserCreated) {}

fn main() {}
