struct UserCreated;
struct Database;

#[bus::listener("user.created")]
async fn on_user_created(_event: &UserCreated, _db: &Database) {}

fn main() {}
