#[derive(bus::Event)]
#[event(name = "user.created")]
#[event(name = "user.signed-up")]
struct UserCreated;

fn main() {}
