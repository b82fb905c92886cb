#[derive(bus::Event)]
#[event(name)]
struct UserCreated;

fn main() {}
