struct UserCreated;

#[bus::listener("user created", retries = 3)]
fn on_user_created(_event: &mut UserCreated, _retry: u32) {}

fn main() {}
