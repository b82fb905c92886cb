// A pattern is for listeners: an event type needs the concrete name it is emitted under.
#[derive(bus::Event)]
#[event(name = "orders.*")]
struct OrderCreated;

fn main() {}
