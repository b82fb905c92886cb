#[derive(bus::Event)]
#[event(nam = "user.created")]
struct UserCreated;

fn main() {}
