#[derive(bus::Event)]
#[event(name = "user.created", crate = "not a path")]
struct UserCreated;

fn main() {}
