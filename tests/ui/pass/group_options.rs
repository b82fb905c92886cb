use std::sync::Arc;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct UserCreated;

#[bus::listener("user.created", group = false)]
async fn everywhere(_event: Arc<UserCreated>) {}

#[bus::listener("user.created", group = "audit", retry = 2)]
async fn audited(_event: &UserCreated) {}

fn main() {}
