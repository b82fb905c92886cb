//! The raw `SKIP LOCKED` queue of `common/skip_locked.rs` works on the same server as the
//! transport, so that a benchmark can compare against it: competing workers do every job
//! exactly once.

#[path = "common/pg_server.rs"]
mod pg_server;
#[path = "common/skip_locked.rs"]
mod skip_locked;

use std::collections::BTreeSet;

use pg_server::{DropTables, ci, pool, shared_url, skip, unique, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_workers_do_every_job_once() {
    let url = shared_url();
    let pool = match pool(&url, 4).await {
        Ok(pool) => pool,
        Err(error) if !ci() => {
            skip(
                "competing_workers_do_every_job_once",
                format_args!("PostgreSQL is not reachable at {url}: {error}"),
            );
            return;
        }
        Err(error) => panic!("cannot connect to PostgreSQL at {url}: {error}"),
    };
    let table = format!("t_{}_queue", unique());
    let _cleanup = DropTables {
        url: url.clone(),
        tables: table.clone(),
    };
    skip_locked::create(&pool, &table)
        .await
        .expect("the queue table");
    skip_locked::enqueue(&pool, &table, 300)
        .await
        .expect("300 jobs");
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (pool, table) = (pool.clone(), table.clone());
            tokio::spawn(async move { skip_locked::work(&pool, &table).await })
        })
        .collect();
    let mut all = Vec::new();
    for worker in workers {
        let done = within("a worker drains the queue", worker)
            .await
            .expect("the worker task")
            .expect("the worker's statements");
        all.extend(done);
    }
    let unique_jobs: BTreeSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), 300, "each job done once, none twice");
    assert_eq!(unique_jobs, (1..=300).collect::<BTreeSet<i64>>());
}
