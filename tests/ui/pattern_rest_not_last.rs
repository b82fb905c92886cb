struct OrderEvent;

#[bus::listener("orders.>.x")]
async fn on_order_event(_event: &OrderEvent) {}

fn main() {}
