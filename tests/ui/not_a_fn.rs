#[bus::listener("user.created")]
struct UserCreated {
    id: u64,
}

fn main() {}
