struct UserCreated;

#[bus::listener("ordérs.created")]
async fn on_user_created(_event: &UserCreated) {}

fn main() {}
