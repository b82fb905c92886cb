//! Shared by the integration tests: a transport on the shared server (a fresh key prefix per
//! test, its keys deleted at the end), a private `redis-server` a test can restart or flush,
//! and bounded waits.
#![allow(dead_code, reason = "each test file uses a part of these helpers")]

use std::future::Future;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bus_core::transport::TransportError;
use bus_redis::{RedisTransport, RedisTransportBuilder};

#[allow(unused_imports, reason = "each test binary uses a different subset")]
pub use bus_conformance::checks::*;

/// The shared server of the machine (and of CI). Tests never flush it, and delete only the
/// keys of their own prefix.
pub const SHARED_URL: &str = "redis://127.0.0.1:6379";

/// A transport on a fresh key prefix of a server; the prefix's keys are deleted when this is
/// dropped (even when the test panics).
pub struct TestRedis {
    pub transport: RedisTransport,
    pub prefix: String,
    pub url: String,
}

impl std::ops::Deref for TestRedis {
    type Target = RedisTransport;
    fn deref(&self) -> &RedisTransport {
        &self.transport
    }
}

impl TestRedis {
    /// Connects to the shared server with `configure` applied to the builder. `None` (with a
    /// printed reason) when the server is down and this is not CI; in CI that panics.
    pub async fn connect(
        test: &str,
        configure: impl FnOnce(RedisTransportBuilder) -> RedisTransportBuilder,
    ) -> Option<TestRedis> {
        TestRedis::connect_to(SHARED_URL, test, configure).await
    }

    /// As [`TestRedis::connect`], on any server.
    pub async fn connect_to(
        url: &str,
        test: &str,
        configure: impl FnOnce(RedisTransportBuilder) -> RedisTransportBuilder,
    ) -> Option<TestRedis> {
        let prefix = format!("test:{}", unique());
        let builder = RedisTransport::builder(url).key_prefix(prefix.clone());
        match configure(builder).connect().await {
            Ok(transport) => Some(TestRedis {
                transport,
                prefix,
                url: url.to_owned(),
            }),
            Err(error @ TransportError::Unreachable { .. }) if !ci() => {
                skip(
                    test,
                    format_args!("Redis is not reachable at {url}: {error}"),
                );
                None
            }
            Err(error) => panic!("{test}: cannot connect to Redis at {url}: {error}"),
        }
    }

    /// Another connection on the same prefix, configured by `configure`.
    pub async fn another(
        &self,
        configure: impl FnOnce(RedisTransportBuilder) -> RedisTransportBuilder,
    ) -> RedisTransport {
        configure(RedisTransport::builder(self.url.clone()).key_prefix(self.prefix.clone()))
            .connect()
            .await
            .unwrap_or_else(|error| panic!("cannot connect to Redis at {}: {error}", self.url))
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        delete_prefix(&self.url, &self.prefix);
    }
}

/// Deletes every key under `<prefix>:` (a runtime of its own: this may run inside the test's
/// runtime, or while it unwinds).
pub fn delete_prefix(url: &str, prefix: &str) {
    let url = url.to_owned();
    let glob = format!("{prefix}:*");
    let cleanup = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            let Ok(client) = bus_redis::redis::Client::open(url.as_str()) else {
                return;
            };
            // A patient connection: a loaded machine must not leave keys behind.
            let config = bus_redis::redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(10)))
                .set_response_timeout(Some(Duration::from_secs(10)));
            for _attempt in 0..3 {
                let connect = client.get_multiplexed_async_connection_with_config(&config);
                let Ok(mut conn) = connect.await else {
                    continue;
                };
                if delete_matching(&mut conn, &glob).await.is_ok() {
                    return;
                }
            }
            eprintln!("could not delete the keys `{glob}` at {url}");
        });
    });
    let _ = cleanup.join();
}

/// `SCAN MATCH glob` and `UNLINK` until the scan ends.
async fn delete_matching(
    conn: &mut bus_redis::redis::aio::MultiplexedConnection,
    glob: &str,
) -> Result<(), bus_redis::redis::RedisError> {
    let mut cursor = 0_u64;
    loop {
        let (next, keys): (u64, Vec<String>) = bus_redis::redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(glob)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        if !keys.is_empty() {
            bus_redis::redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<i64>(conn)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// Polls `condition` until it holds, within [`PATIENCE`]; panics with `what` otherwise.
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}"
        );
        // A poll of a condition, bounded by the deadline above.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `redis-server` of the test's own, on a free loopback port with its own directory and an
/// append-only file; killed when dropped.
pub struct PrivateRedisServer {
    binary: PathBuf,
    port: u16,
    dir: PathBuf,
    /// More command-line arguments (users, TLS), after the usual ones: they win.
    extra: Vec<String>,
    child: Option<Child>,
}

impl PrivateRedisServer {
    /// Starts one. `None` (with a printed reason) when no `redis-server` binary is found and
    /// this is not CI; in CI that panics.
    pub fn start(test: &str) -> Option<PrivateRedisServer> {
        PrivateRedisServer::start_with(test, |_port| Vec::new())
    }

    /// As [`PrivateRedisServer::start`], with more command-line arguments made from the port,
    /// given after the usual ones so that they win (`--user alice on '>secret' '~*' '&*'
    /// '+@all' --user default off`, or `--port 0 --tls-port <port> --tls-cert-file <file>
    /// ...` to serve only TLS on the port).
    pub fn start_with(
        test: &str,
        extra: impl FnOnce(u16) -> Vec<String>,
    ) -> Option<PrivateRedisServer> {
        let candidates = [
            std::env::var_os("REDIS_SERVER_BIN").map(PathBuf::from),
            Some(PathBuf::from("/usr/bin/redis-server")),
            Some(PathBuf::from("/usr/local/bin/redis-server")),
            Some(PathBuf::from("/usr/sbin/redis-server")),
        ];
        let Some(binary) = candidates.into_iter().flatten().find(|path| path.exists()) else {
            let message = "no redis-server binary (set REDIS_SERVER_BIN, or install the Debian \
                           package redis-server)";
            if ci() {
                panic!("{test}: {message}");
            }
            skip(test, message);
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .expect("a free loopback port");
        let dir = std::env::temp_dir().join(format!("bus-redis-test-{}", unique()));
        std::fs::create_dir_all(&dir).expect("a data directory");
        let mut server = PrivateRedisServer {
            binary,
            port,
            dir,
            extra: extra(port),
            child: None,
        };
        server.launch();
        Some(server)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: no graceful shutdown, no final save) and starts it again on
    /// the same port and directory: what it has is what its append-only file kept.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    fn launch(&mut self) {
        let child = Command::new(&self.binary)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--dir")
            .arg(&self.dir)
            // `always`: a write is in the file before its reply goes out. With the default
            // `everysec`, a write can wait up to 2 s behind a background fsync while its reply
            // is already sent, so a kill loses acknowledged events (seen: 1 run in 50).
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", "", "--daemonize", "no"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        // Wait until it accepts connections: a readiness wait, bounded.
        for _ in 0..400 {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "redis-server did not listen on port {} within 10 s",
            self.port
        );
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
