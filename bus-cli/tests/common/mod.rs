//! The brokers the tests run the `bus` binary against: the shared NATS, Redis and PostgreSQL
//! servers of the machine (and of CI), each test on a prefix of its own, deleted at the end.
//! A broker that cannot be reached skips the test with a message, and fails it when `CI=true`.
#![allow(dead_code, reason = "each test uses a part of these helpers")]

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

pub use bus_conformance::checks::{ci, skip, unique};
use bus_core::transport::{Transport, TransportError};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The shared servers.
pub const NATS_URL: &str = "nats://127.0.0.1:4222";
/// As [`NATS_URL`], with credentials that the server (without authorization) ignores: the
/// tests check that they never show.
pub const NATS_URL_WITH_PASSWORD: &str = "nats://cli:s3cret-nats@127.0.0.1:4222";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
/// The default user of a Redis without passwords takes any password.
pub const REDIS_URL_WITH_PASSWORD: &str = "redis://default:s3cret-redis@127.0.0.1:6379";
/// RabbitMQ's default user, whose password must not show either.
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// The server trusts local connections: the password is not checked.
pub const POSTGRES_URL_WITH_PASSWORD: &str = "postgres://postgres:s3cret-pg@127.0.0.1:5432/test";

/// The secrets of the URLs above, which no output may contain.
pub const SECRETS: [&str; 4] = ["s3cret-nats", "s3cret-redis", "s3cret-pg", "guest:guest"];

/// How long one run of the binary may take.
pub const RUN_LIMIT: Duration = Duration::from_secs(60);

/// What a run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The standard output's lines, each parsed as JSON.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|error| panic!("not JSON: {line:?}: {error}\n{self:?}"))
            })
            .collect()
    }

    /// Panics unless the run exited with `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "exit code: {self:#?}");
        for secret in SECRETS {
            assert!(
                !self.stdout.contains(secret) && !self.stderr.contains(secret),
                "a password shows: {self:#?}"
            );
        }
        self
    }
}

/// The binary, with `args`, its standard input closed.
pub fn command(args: &[String]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bus"));
    command
        .args(args)
        .env_remove("BUS_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs the binary with `args` to its end.
pub async fn run(args: &[String]) -> Run {
    let child = command(args).spawn().expect("the bus binary runs");
    let output = tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("bus {args:?} did not end within {RUN_LIMIT:?}"))
        .expect("its output");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Strings, from anything that reads as one.
pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| (*arg).to_owned()).collect()
}

/// Which broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Nats,
    Redis,
    Postgres,
    /// RabbitMQ, its prefix the exchange's name.
    Amqp,
}

/// A broker under a fresh prefix: a transport of the test on it, and the arguments that point
/// the binary at it. The prefix's streams, keys or tables are deleted when this is dropped.
pub struct Target {
    pub kind: Kind,
    /// The transport the test publishes, subscribes and rejects with.
    pub transport: Arc<dyn Transport>,
    /// `--url <url with a password> --<prefix flag> <prefix>`.
    pub args: Vec<String>,
    prefix: String,
}

impl Target {
    /// Connects to the broker of `kind` under a fresh prefix; `None` (after saying why) when
    /// it cannot be reached outside CI.
    pub async fn connect(kind: Kind, test: &str) -> Option<Target> {
        let prefix = format!("cli{}", unique());
        let connected: Result<Arc<dyn Transport>, TransportError> = match kind {
            Kind::Nats => bus_nats::NatsTransport::builder(NATS_URL)
                .subject_prefix(&prefix)
                .connect()
                .await
                .map(|transport| Arc::new(transport) as Arc<dyn Transport>),
            Kind::Redis => bus_redis::RedisTransport::builder(REDIS_URL)
                .key_prefix(&prefix)
                .connect()
                .await
                .map(|transport| Arc::new(transport) as Arc<dyn Transport>),
            Kind::Postgres => bus_postgres::PostgresTransport::builder(POSTGRES_URL)
                .table_prefix(format!("{prefix}_"))
                .connect()
                .await
                .map(|transport| Arc::new(transport) as Arc<dyn Transport>),
            Kind::Amqp => bus_amqp::AmqpTransport::builder(AMQP_URL)
                .exchange(&prefix)
                .connect()
                .await
                .map(|transport| Arc::new(transport) as Arc<dyn Transport>),
        };
        let transport = match connected {
            Ok(transport) => transport,
            Err(error) if !ci() => {
                skip(test, format_args!("{kind:?} is not reachable: {error}"));
                return None;
            }
            Err(error) => panic!("{test}: {kind:?} is not reachable (CI=true): {error}"),
        };
        let (url, flag, value) = match kind {
            Kind::Nats => (NATS_URL_WITH_PASSWORD, "--subject-prefix", prefix.clone()),
            Kind::Redis => (REDIS_URL_WITH_PASSWORD, "--key-prefix", prefix.clone()),
            Kind::Postgres => (
                POSTGRES_URL_WITH_PASSWORD,
                "--table-prefix",
                format!("{prefix}_"),
            ),
            Kind::Amqp => (AMQP_URL, "--exchange", prefix.clone()),
        };
        Some(Target {
            kind,
            transport,
            args: strings(&["--url", url, flag, &value]),
            prefix,
        })
    }

    /// The arguments for a run: the target's, then `args`.
    pub fn with(&self, args: &[&str]) -> Vec<String> {
        let mut all = self.args.clone();
        all.extend(strings(args));
        all
    }

    /// Runs the binary on this broker with `args`.
    pub async fn bus(&self, args: &[&str]) -> Run {
        run(&self.with(args)).await
    }

    /// Starts the binary on this broker with `args`, its output piped.
    pub fn spawn(&self, args: &[&str]) -> Child {
        command(&self.with(args))
            .spawn()
            .expect("the bus binary runs")
    }
}

/// Reads `child`'s standard error until a line holds `needle`; returns the lines read.
pub async fn wait_for_stderr(child: &mut Child, needle: &str) -> Vec<String> {
    let stderr = child.stderr.take().expect("piped");
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    let found = tokio::time::timeout(RUN_LIMIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            let done = line.contains(needle);
            seen.push(line);
            if done {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(found, Ok(true)),
        "no `{needle}` on the standard error; it said {seen:?}"
    );
    seen
}

impl Drop for Target {
    fn drop(&mut self) {
        let (kind, prefix) = (self.kind, self.prefix.clone());
        // A runtime of its own: this may run inside the test's runtime, or while it unwinds.
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(20), delete(kind, prefix)).await;
            });
        });
        let _ = cleanup.join();
    }
}

/// Deletes what the prefix left on the broker.
async fn delete(kind: Kind, prefix: String) {
    match kind {
        Kind::Nats => {
            let Ok(client) = bus_nats::async_nats::connect(NATS_URL).await else {
                return;
            };
            let js = bus_nats::async_nats::jetstream::new(client);
            let stream = prefix.to_uppercase();
            for name in [stream.clone(), format!("{stream}_DEAD_LETTERS")] {
                let _ = js.delete_stream(name).await;
            }
        }
        Kind::Redis => {
            use bus_redis::redis;
            let Ok(client) = redis::Client::open(REDIS_URL) else {
                return;
            };
            let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                return;
            };
            let mut cursor = 0_u64;
            loop {
                let Ok((next, keys)): Result<(u64, Vec<String>), _> = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{prefix}:*"))
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await
                else {
                    return;
                };
                if !keys.is_empty() {
                    let _: Result<u64, _> =
                        redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
                }
                if next == 0 {
                    return;
                }
                cursor = next;
            }
        }
        Kind::Amqp => {
            // The tail's queue was exclusive and went with it: the exchange is what is left.
            if let Ok(transport) = bus_amqp::AmqpTransport::builder(AMQP_URL)
                .exchange(&prefix)
                .connect()
                .await
            {
                let _ = transport.delete_exchange().await;
            }
        }
        Kind::Postgres => {
            use bus_postgres::sqlx::{self, Connection as _};
            let Ok(mut connection) = sqlx::PgConnection::connect(POSTGRES_URL).await else {
                return;
            };
            let p = format!("{prefix}_");
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP TABLE IF EXISTS {p}deliveries, {p}groups, {p}events"
            )))
            .execute(&mut connection)
            .await;
        }
    }
}
