struct UserCreated;

#[bus::listener("user.created")]
async extern "C" fn on_user_created(_event: &UserCreated) {}

fn main() {}
