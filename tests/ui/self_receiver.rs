struct UserCreated;
struct Mailer;

impl Mailer {
    #[bus::listener("user.created")]
    async fn on_user_created(&self, _event: &UserCreated) {}
}

fn main() {}
