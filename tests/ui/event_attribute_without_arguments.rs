#[derive(bus::Event)]
#[event]
struct UserCreated;

fn main() {}
