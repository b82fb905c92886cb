struct OrderEvent;

#[bus::listener("ord*")]
async fn on_order_event(_event: &OrderEvent) {}

fn main() {}
