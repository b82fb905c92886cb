struct UserCreated;

#[bus::listener("user.created")]
async fn on_user_created(_event: &UserCreated) -> i32 {
    0
}

fn main() {}
