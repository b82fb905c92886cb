//! `bus_duplicates_dropped_total`: a publish of a source and id already stored counts under
//! `stage="publish"`; the same id from another source counts nowhere. The test records into a
//! recorder of its own, on a current-thread runtime on this thread.

#[path = "common/pg_server.rs"]
mod pg_server;

use bus_core::transport::support::DUPLICATES_DROPPED;
use bus_core::transport::{Transport, WireEvent};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use pg_server::{TestPostgres, unique};

#[test]
fn dropped_duplicates_are_counted_in_metrics() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let Some(pg) = TestPostgres::connect("duplicates_in_metrics", |builder| builder).await
            else {
                return;
            };
            let id = format!("order-{}", unique());
            let shop = WireEvent::new(&id, "shop", "dedup.orders", "shop");
            let billing = WireEvent::new(&id, "billing", "dedup.orders", "billing");
            for event in [&shop, &billing, &shop] {
                pg.publish(event.clone()).await.expect("published");
            }
            let mut counted = Vec::new();
            for (key, _, _, value) in snapshotter.snapshot().into_vec() {
                if key.key().name() != DUPLICATES_DROPPED {
                    continue;
                }
                let DebugValue::Counter(count) = value else {
                    panic!("{DUPLICATES_DROPPED} is not a counter: {value:?}");
                };
                let mut labels: Vec<(String, String)> = key
                    .key()
                    .labels()
                    .map(|label| (label.key().to_owned(), label.value().to_owned()))
                    .collect();
                labels.sort();
                counted.push((labels, count));
            }
            let publish = vec![
                ("stage".to_owned(), "publish".to_owned()),
                ("transport".to_owned(), "postgres".to_owned()),
            ];
            assert_eq!(counted, [(publish, 1)]);
            assert_eq!(pg.duplicates_dropped(), 1);
        });
    });
}
