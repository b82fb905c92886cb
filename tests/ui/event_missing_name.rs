// The one error is the missing name: the type is still an event for the code that uses it.
#[derive(bus::Event)]
struct UserCreated;

#[bus::listener]
async fn on_user_created(_event: &UserCreated) {}

fn main() {
    drop(bus::emit_event(UserCreated));
}
