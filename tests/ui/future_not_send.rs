use std::rc::Rc;

struct UserCreated;

async fn audit() {}

#[bus::listener("user.created")]
async fn on_user_created(_event: &UserCreated) {
    let seen = Rc::new(1);
    audit().await;
    drop(seen);
}

fn main() {}
