//! A relay killed (SIGKILL) after its publish reached NATS and before it marked the row loses
//! nothing, and NATS stores the event once: the next relay publishes it again under the same
//! source and id, which the stream drops as a duplicate.
//!
//! The test runs its own binary again as a child process that runs only
//! `crash_child_relay`: a relay whose transport publishes to NATS, then never returns.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bus_core::transport::{
    BoxFuture, Capabilities, SubscribeOptions, Transport, TransportError, TransportSubscription,
    WireEvent,
};
use bus_postgres::Relay;
use bus_postgres::sqlx::PgPool;
use common::{DATABASE_URL, NATS_URL, PATIENCE, TestDb, TestNats};

/// Tells the child its table prefix and NATS prefix: `<table prefix> <subject prefix>`.
const CHILD_ENV: &str = "BUS_POSTGRES_CRASH_CHILD";

/// Publishes to NATS, then hangs forever before returning: the relay never marks the row.
struct PublishThenHang(bus_nats::NatsTransport);

impl Transport for PublishThenHang {
    fn name(&self) -> &str {
        "publish-then-hang"
    }

    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }

    fn publish(&self, event: WireEvent) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            self.0.publish(event).await?;
            eprintln!("crash child: published to NATS; hanging before the relay marks the row");
            std::future::pending().await
        })
    }

    fn subscribe(
        &self,
        options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<TransportSubscription, TransportError>> {
        self.0.subscribe(options)
    }
}

/// Kills the child when dropped, so that a failing test leaves no process behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_between_publish_and_mark_loses_nothing() {
    const TEST: &str = "a_relay_killed_between_publish_and_mark_loses_nothing";
    let Some(db) = TestDb::connect(TEST).await else {
        return;
    };
    let Some(nats) = TestNats::connect(TEST).await else {
        return;
    };
    let outbox = db.outbox("shop");
    let id = outbox
        .emit(&mut *db.conn().await, "order.placed", &42)
        .await
        .unwrap();

    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args(["crash_child_relay", "--exact", "--ignored", "--nocapture"])
            .env(CHILD_ENV, format!("{} {}", db.prefix, nats.prefix))
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // The child published the event to NATS...
    let published = async {
        while nats.stream_messages().await < 1 {
            if let Some(status) = child.0.try_wait().unwrap() {
                panic!("the child relay exited ({status}) before publishing");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(PATIENCE, published)
        .await
        .expect("the child relay publishes the event to NATS");
    // ... and hangs before marking the row: still pending.
    assert_eq!(db.lag().await.pending, 1);
    assert!(child.0.try_wait().unwrap().is_none(), "the child hangs");

    // SIGKILL: no destructor, no rollback sent; PostgreSQL ends the transaction when the
    // connection closes.
    child.0.kill().unwrap();
    child.0.wait().unwrap();

    let transport: Arc<dyn Transport> = Arc::new(nats.transport.clone());
    let relay = db.relay(transport).start().unwrap();
    db.wait_until_all_published("the row the killed relay held")
        .await;
    assert_eq!(
        relay.published(),
        1,
        "the new relay published the row again"
    );
    relay.stop().await;

    assert_eq!(nats.stream_messages().await, 1, "NATS stores it once");
    assert_eq!(nats.stream_ids().await, [id]);
    assert_eq!(
        nats.transport.duplicates_dropped(),
        1,
        "the second publish was dropped as a duplicate"
    );
}

/// The child process of `a_relay_killed_between_publish_and_mark_loses_nothing`: a relay
/// that publishes, then hangs until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of `a_relay_killed_between_publish_and_mark_loses_nothing`"]
async fn crash_child_relay() {
    let spec = std::env::var(CHILD_ENV).expect("run by its parent test only");
    let (table_prefix, subject_prefix) = spec.split_once(' ').expect("two prefixes");
    // Plain connections: the parent owns the tables and the stream, and cleans them up.
    let pool = PgPool::connect(DATABASE_URL).await.unwrap();
    let nats = bus_nats::NatsTransport::builder(NATS_URL)
        .subject_prefix(subject_prefix)
        .stream_name(format!("TEST_{}", subject_prefix.to_uppercase()))
        .connect()
        .await
        .unwrap();
    let _relay = Relay::builder(pool, Arc::new(PublishThenHang(nats)))
        .prefix(table_prefix)
        .poll_interval(Duration::from_millis(100))
        .publish_timeout(Duration::from_secs(24 * 3600))
        .start()
        .unwrap();
    std::future::pending::<()>().await;
}
