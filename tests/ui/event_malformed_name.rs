#[derive(bus::Event)]
#[event(name = "user created")]
struct UserCreated;

fn main() {}
