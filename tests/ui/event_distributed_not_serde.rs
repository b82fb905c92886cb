#[derive(Debug, bus::Event)]
#[event(name = "orders.placed", distributed)]
struct OrderPlaced {
    id: u64,
}

fn main() {}
