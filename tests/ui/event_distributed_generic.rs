#[derive(Debug, bus::Event)]
#[event(name = "pages.loaded", distributed)]
struct Page<T> {
    items: Vec<T>,
}

fn main() {}
