use std::rc::Rc;

// Events are shared across tasks and threads.
#[derive(bus::Event)]
#[event(name = "user.created")]
struct UserCreated {
    name: Rc<str>,
}

fn main() {}
