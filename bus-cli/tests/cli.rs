//! The `bus` binary end to end, against the real brokers (NATS, Redis and PostgreSQL on this
//! machine, and RabbitMQ for publish and tail), each test on a prefix of its own: publish and tail, dead letters made by a group
//! that rejects an event (list, show, replay, purge), groups and their lag; and, without a
//! broker, what a wrong command line, an unreachable broker and credentials in the URL give.

mod common;

use std::time::Duration;

use bus_core::transport::{Delivery, REPLAY_OF, SubscribeOptions, TransportSubscription};
use futures_util::StreamExt;
use serde_json::Value;

use common::{Kind, Run, Target, run, strings, wait_for_stderr};

/// The broker tests, once per broker.
macro_rules! on_every_broker {
    ($($test:ident),* $(,)?) => {
        $(
            mod $test {
                use super::*;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn nats() {
                    if let Some(target) = Target::connect(Kind::Nats, concat!(stringify!($test), "::nats")).await {
                        super::$test(target).await;
                    }
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn redis() {
                    if let Some(target) = Target::connect(Kind::Redis, concat!(stringify!($test), "::redis")).await {
                        super::$test(target).await;
                    }
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if let Some(target) = Target::connect(Kind::Postgres, concat!(stringify!($test), "::postgres")).await {
                        super::$test(target).await;
                    }
                }
            }
        )*
    };
}

on_every_broker!(publish_then_tail, dead_letters, groups_with_their_lag);

/// RabbitMQ keeps no dead letters the tool can list and no groups it can enumerate
/// (`stored_dead_letters` and `list_groups` are off): following and publishing work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_then_tail_on_rabbitmq() {
    if let Some(target) = Target::connect(Kind::Amqp, "publish_then_tail_on_rabbitmq").await {
        publish_then_tail(target).await;
    }
}

/// How long a test waits for the broker to show what it expects.
const PATIENCE: Duration = Duration::from_secs(20);

/// The next delivery of `subscription`, within [`PATIENCE`].
async fn next(subscription: &mut TransportSubscription, what: &str) -> Box<dyn Delivery> {
    match tokio::time::timeout(PATIENCE, subscription.next()).await {
        Ok(Some(Ok(delivery))) => delivery,
        other => panic!(
            "{what}: {:?}",
            other.map(|o| o.map(|d| d.map(|d| d.event().clone())))
        ),
    }
}

/// Runs `args` until `done` holds of the run (at most [`PATIENCE`]); returns that run.
async fn until(target: &Target, args: &[&str], what: &str, done: impl Fn(&Run) -> bool) -> Run {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let run = target.bus(args).await;
        if done(&run) {
            return run;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: still {run:#?} after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `bus publish` prints the id of an event that a `bus tail --json` started before sees, with
/// its CloudEvents attributes and its payload; the tail ends after `--count`, and its line
/// about the broker shows the URL without its password.
async fn publish_then_tail(target: Target) {
    let mut tail = target.spawn(&["tail", "orders.>", "--json", "--count", "1"]);
    let said = wait_for_stderr(&mut tail, "following").await;
    assert!(said.iter().any(|line| line.contains(":***@")), "{said:?}");
    let published = target
        .bus(&[
            "publish",
            "orders.placed",
            r#"{"n": 1}"#,
            "--source",
            "cli-test",
        ])
        .await;
    published.expect_code(0);
    let id = published.stdout.trim().to_owned();
    assert_eq!(id.split('-').count(), 5, "a UUID-shaped id: {published:?}");
    let output = tokio::time::timeout(common::RUN_LIMIT, tail.wait_with_output())
        .await
        .expect("the tail ends after one event")
        .expect("its output");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let line = String::from_utf8(output.stdout).expect("UTF-8");
    let event: Value = serde_json::from_str(line.trim()).expect("one JSON object");
    assert_eq!(event["id"], id.as_str(), "{event}");
    assert_eq!(event["type"], "orders.placed");
    assert_eq!(event["source"], "cli-test");
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["datacontenttype"], "application/json");
    assert_eq!(event["data"]["n"], 1);
    assert!(
        event["time"]
            .as_str()
            .is_some_and(|time| time.contains('T')),
        "{event}"
    );

    // A file of events, one per line: both published, ids printed in order.
    let dir = std::env::temp_dir().join(format!("bus-cli-{}", common::unique()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let file = dir.join("events.jsonl");
    std::fs::write(&file, "{\"n\": 2}\n\n{\"n\": 3}\n").expect("the file");
    let mut subscription = target
        .transport
        .subscribe(SubscribeOptions::new("orders.bulk"))
        .await
        .expect("subscribed");
    let path = file.to_string_lossy().into_owned();
    let bulk = target
        .bus(&["publish", "orders.bulk", "--file", &path, "--json"])
        .await;
    bulk.expect_code(0);
    let ids: Vec<String> = bulk
        .json_lines()
        .iter()
        .map(|line| line["id"].as_str().expect("an id").to_owned())
        .collect();
    assert_eq!(ids.len(), 2, "{bulk:?}");
    for (id, n) in ids.iter().zip([2, 3]) {
        let delivery = next(&mut subscription, "a published line").await;
        assert_eq!(&delivery.event().id, id);
        let data: Value = serde_json::from_slice(&delivery.event().data).expect("JSON");
        assert_eq!(data["n"], n);
        delivery.ack().await.expect("acked");
    }
    // A bad line publishes nothing at all, and says which line.
    std::fs::write(&file, "{\"n\": 4}\n{n: 5}\n").expect("the file");
    let bad = target
        .bus(&["publish", "orders.bulk", "--file", &path])
        .await;
    bad.expect_code(2);
    assert!(bad.stderr.contains("line 2"), "{bad:?}");
    let quiet = tokio::time::timeout(Duration::from_millis(500), subscription.next()).await;
    assert!(quiet.is_err(), "a file with a bad line published something");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A group that allows one delivery rejects an event: its dead letter is listed (as a table
/// and as JSON), shown by its id or its event's, replayed (the event comes back under its name
/// with `replayof`, and the letter is gone), and a second one purged (not without `--yes`
/// when there is no terminal to ask on).
async fn dead_letters(target: Target) {
    let mut billing = target
        .transport
        .subscribe(
            SubscribeOptions::new("orders.>")
                .group("billing")
                .max_deliveries(1),
        )
        .await
        .expect("the group");
    let published = target
        .bus(&["publish", "orders.placed", r#"{"n": 2}"#])
        .await;
    published.expect_code(0);
    let id = published.stdout.trim().to_owned();
    reject_next(&mut billing, &id).await;
    let letter_id = format!("{id}.dead.billing");

    let listed = until(
        &target,
        &["dead-letters", "list", "--json"],
        "the letter listed",
        |run| run.code == 0 && run.stdout.lines().count() == 1,
    )
    .await;
    listed.expect_code(0);
    let summary = &listed.json_lines()[0];
    assert_eq!(summary["id"], letter_id.as_str(), "{summary}");
    assert_eq!(summary["event"], "orders.placed");
    assert_eq!(summary["of"], id.as_str());
    assert_eq!(summary["group"], "billing");
    assert_eq!(summary["attempts"], 1);
    assert!(
        summary["reason"]
            .as_str()
            .is_some_and(|r| r.contains("cli test")),
        "{summary}"
    );
    let table = target.bus(&["dead-letters", "list", "orders.*"]).await;
    table.expect_code(0);
    assert!(table.stdout.starts_with("ID"), "{table:?}");
    assert!(
        table.stdout.contains(&letter_id) && table.stdout.contains("billing"),
        "{table:?}"
    );
    let other_group = target
        .bus(&["dead-letters", "list", "--group", "shipping", "--json"])
        .await;
    other_group.expect_code(0);
    assert!(other_group.stdout.is_empty(), "{other_group:?}");

    let shown = target
        .bus(&["dead-letters", "show", &letter_id, "--json"])
        .await;
    shown.expect_code(0);
    let letter = &shown.json_lines()[0];
    assert_eq!(letter["type"], "dead-letter.orders.placed");
    assert_eq!(letter["deadletterof"], id.as_str());
    assert_eq!(letter["data"]["n"], 2);
    let by_event = target.bus(&["dead-letters", "show", &id]).await;
    by_event.expect_code(0);
    assert!(
        by_event.stdout.contains("dead-letter.orders.placed"),
        "{by_event:?}"
    );
    assert!(by_event.stdout.contains("\"n\": 2"), "{by_event:?}");
    let missing = target
        .bus(&["dead-letters", "show", "no-such-letter"])
        .await;
    missing.expect_code(4);
    assert!(missing.stderr.contains("no-such-letter"), "{missing:?}");
    target
        .bus(&["dead-letters", "replay", "--id", "no-such-letter"])
        .await
        .expect_code(4);

    let mut watcher = target
        .transport
        .subscribe(SubscribeOptions::new("orders.placed"))
        .await
        .expect("a watcher");
    let replayed = target.bus(&["dead-letters", "replay", "--json"]).await;
    replayed.expect_code(0);
    assert_eq!(replayed.json_lines()[0]["replayed"], 1, "{replayed:?}");
    let again = next(&mut watcher, "the replayed event").await;
    assert_eq!(again.event().id, format!("{letter_id}.replay"));
    assert_eq!(
        again.event().extensions.get(REPLAY_OF).map(String::as_str),
        Some(letter_id.as_str())
    );
    assert_eq!(&again.event().data[..], br#"{"n": 2}"#);
    again.ack().await.expect("acked");
    let after = target.bus(&["dead-letters", "list", "--json"]).await;
    after.expect_code(0);
    assert!(
        after.stdout.is_empty(),
        "the replayed letter is still listed: {after:?}"
    );

    let second = target
        .bus(&["publish", "orders.cancelled", r#"{"n": 3}"#])
        .await;
    second.expect_code(0);
    reject_next(&mut billing, second.stdout.trim()).await;
    until(
        &target,
        &["dead-letters", "list", "--json"],
        "the second letter",
        |run| run.stdout.lines().count() == 1,
    )
    .await;
    let refused = target.bus(&["dead-letters", "purge"]).await;
    refused.expect_code(2);
    assert!(refused.stderr.contains("--yes"), "{refused:?}");
    let kept = target.bus(&["dead-letters", "list", "--json"]).await;
    assert_eq!(kept.stdout.lines().count(), 1, "{kept:?}");
    let purged = target
        .bus(&[
            "dead-letters",
            "purge",
            "orders.cancelled",
            "--yes",
            "--json",
        ])
        .await;
    purged.expect_code(0);
    assert_eq!(purged.json_lines()[0]["deleted"], 1, "{purged:?}");
    let none = target.bus(&["dead-letters", "list", "--json"]).await;
    none.expect_code(0);
    assert!(none.stdout.is_empty(), "{none:?}");
}

/// Takes the deliveries of `group` until the event `id`, and rejects it (acks the others).
async fn reject_next(group: &mut TransportSubscription, id: &str) {
    loop {
        let delivery = next(group, "the event to reject").await;
        if delivery.event().id == id {
            delivery
                .reject("cli test: rejected".to_owned())
                .await
                .expect("rejected");
            return;
        }
        delivery.ack().await.expect("acked");
    }
}

/// A group created behind 3 events shows with its lag (lag + pending 3), in the table too, and
/// only for the event names its pattern matches.
async fn groups_with_their_lag(target: Target) {
    drop(
        target
            .transport
            .subscribe(SubscribeOptions::new("orders.lag").group("lagging"))
            .await
            .expect("the group"),
    );
    for n in 0..3 {
        target
            .bus(&["publish", "orders.lag", &format!("{{\"n\": {n}}}")])
            .await
            .expect_code(0);
    }
    let listed = until(&target, &["groups", "--json"], "the group's lag", |run| {
        run.code == 0
            && run.json_lines().iter().any(|group| {
                group["name"] == "lagging"
                    && group["pattern"] == "orders.lag"
                    && group["lag"].as_u64().unwrap_or(0) + group["pending"].as_u64().unwrap_or(0)
                        == 3
            })
    })
    .await;
    listed.expect_code(0);
    let table = target.bus(&["groups", "orders.lag"]).await;
    table.expect_code(0);
    assert!(table.stdout.starts_with("GROUP"), "{table:?}");
    assert!(table.stdout.contains("lagging"), "{table:?}");
    let elsewhere = target.bus(&["groups", "payments.taken", "--json"]).await;
    elsewhere.expect_code(0);
    assert!(elsewhere.stdout.is_empty(), "{elsewhere:?}");
}

/// A broker that cannot be reached exits 3, says so, and shows the URL with its password
/// masked; no broker is needed.
#[tokio::test]
async fn an_unreachable_broker_exits_3_and_masks_the_password() {
    for url in [
        "nats://alice:s3cret-nats@127.0.0.1:1",
        "redis://alice:s3cret-redis@127.0.0.1:1",
        "postgres://alice:s3cret-pg@127.0.0.1:1/test",
        "amqp://alice:s3cret-pg@127.0.0.1:1/%2f",
    ] {
        let run = run(&strings(&["--url", url, "groups"])).await;
        run.expect_code(3);
        assert!(run.stderr.contains("unreachable"), "{run:?}");
        assert!(run.stderr.contains("alice:***@127.0.0.1:1"), "{run:?}");
        assert!(run.stderr.contains("hint:"), "{run:?}");
    }
}

/// What is wrong on the command line exits 2 with a message, before any connection: no URL,
/// an unknown scheme (its password masked), a setting of another transport, a bad event name,
/// a payload that is not JSON, a bad pattern; `--help` shows the examples.
#[tokio::test]
async fn a_wrong_command_line_exits_2() {
    let nats = "nats://127.0.0.1:1";
    for (args, says) in [
        (vec!["groups"], "no broker URL"),
        (
            vec!["--url", "amqps://bob:s3cret-pg@host", "groups"],
            "bob:***@host",
        ),
        (
            vec!["--url", nats, "--key-prefix", "x", "groups"],
            "--key-prefix",
        ),
        (
            vec!["--url", nats, "publish", "orders..placed", "{}"],
            "not an event name",
        ),
        (
            vec!["--url", nats, "publish", "orders.placed", "{oops"],
            "not JSON",
        ),
        (
            vec!["--url", nats, "tail", "orders.>.x"],
            "not an event name or pattern",
        ),
        (vec!["--url", nats, "publish", "orders.placed"], "required"),
        (vec!["--url", nats, "frobnicate"], "unrecognized subcommand"),
    ] {
        let run = run(&strings(&args)).await;
        run.expect_code(2);
        assert!(run.stderr.contains(says), "{args:?}: {run:#?}");
    }
    let help = run(&strings(&["--help"])).await;
    help.expect_code(0);
    assert!(
        help.stdout.contains("Examples:") && help.stdout.contains("Exit codes"),
        "{help:?}"
    );
    for command in [
        &["tail", "--help"][..],
        &["dead-letters", "purge", "--help"],
    ] {
        let help = run(&strings(command)).await;
        help.expect_code(0);
        assert!(help.stdout.contains("Examples:"), "{command:?}: {help:?}");
    }
}
