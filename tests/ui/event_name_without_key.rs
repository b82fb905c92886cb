#[derive(bus::Event)]
#[event("user.created")]
struct UserCreated;

fn main() {}
