struct UserCreated;

const FIVE_SECONDS: &str = "5s";

// The macro reads the duration at compile time: it must be written out.
#[bus::listener("user.created", timeout = FIVE_SECONDS)]
async fn on_user_created(_event: &UserCreated) {}

fn main() {}
