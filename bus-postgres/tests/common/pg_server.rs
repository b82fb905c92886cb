//! Shared by the transport's integration tests: a transport on a fresh table prefix of the
//! machine's server (its tables dropped at the end), a private PostgreSQL a test starts from a
//! temporary directory and may restart, and skips that show.
#![allow(dead_code, reason = "each test file uses a part of these helpers")]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use bus_core::transport::TransportError;
use bus_postgres::sqlx::PgPool;
use bus_postgres::sqlx::postgres::PgPoolOptions;
use bus_postgres::{PostgresTransport, PostgresTransportBuilder};

#[allow(unused_imports, reason = "each test binary uses a different subset")]
pub use bus_conformance::checks::*;

/// The shared server of the machine (and of CI), unless `BUS_POSTGRES_URL` says otherwise.
/// Tests never touch tables but those of their own prefix.
pub fn shared_url() -> String {
    std::env::var("BUS_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// The pool of a test: small, since many tests share the server's `max_connections`.
pub async fn pool(url: &str, connections: u32) -> Result<PgPool, bus_postgres::sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(10))
        .test_before_acquire(false)
        .connect(url)
        .await
}

/// A transport on a fresh table prefix; the prefix's tables are dropped when this is dropped
/// (even when the test panics).
pub struct TestPostgres {
    pub transport: PostgresTransport,
    pub pool: PgPool,
    pub prefix: String,
    pub url: String,
}

impl std::ops::Deref for TestPostgres {
    type Target = PostgresTransport;
    fn deref(&self) -> &PostgresTransport {
        &self.transport
    }
}

impl TestPostgres {
    /// Connects to the shared server with `configure` applied to the builder. `None` (with a
    /// printed reason) when the server is down and this is not CI; in CI that panics.
    pub async fn connect(
        test: &str,
        configure: impl FnOnce(PostgresTransportBuilder) -> PostgresTransportBuilder,
    ) -> Option<TestPostgres> {
        TestPostgres::connect_to(&shared_url(), test, configure).await
    }

    /// As [`TestPostgres::connect`], on any server.
    pub async fn connect_to(
        url: &str,
        test: &str,
        configure: impl FnOnce(PostgresTransportBuilder) -> PostgresTransportBuilder,
    ) -> Option<TestPostgres> {
        let pool = match pool(url, 10).await {
            Ok(pool) => pool,
            Err(error) if !ci() => {
                skip(
                    test,
                    format_args!("PostgreSQL is not reachable at {url}: {error}"),
                );
                return None;
            }
            Err(error) => panic!("{test}: cannot connect to PostgreSQL at {url}: {error}"),
        };
        let prefix = format!("t_{}_", unique());
        let builder = PostgresTransport::builder(pool.clone()).table_prefix(prefix.clone());
        match configure(builder).connect().await {
            Ok(transport) => Some(TestPostgres {
                transport,
                pool,
                prefix,
                url: url.to_owned(),
            }),
            Err(error @ TransportError::Unreachable { .. }) if !ci() => {
                skip(
                    test,
                    format_args!("PostgreSQL is not reachable at {url}: {error}"),
                );
                None
            }
            Err(error) => panic!("{test}: cannot connect to PostgreSQL at {url}: {error}"),
        }
    }

    /// Another transport (another instance of the service) on the same prefix and pool,
    /// configured by `configure`.
    pub async fn another(
        &self,
        configure: impl FnOnce(PostgresTransportBuilder) -> PostgresTransportBuilder,
    ) -> PostgresTransport {
        let builder = PostgresTransport::builder(self.pool.clone())
            .table_prefix(self.prefix.clone())
            .create_schema(false);
        configure(builder)
            .connect()
            .await
            .unwrap_or_else(|error| panic!("cannot connect to PostgreSQL at {}: {error}", self.url))
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        drop_prefix(&self.url, &self.prefix);
    }
}

/// Drops the tables of `prefix` (a runtime of its own: this may run inside the test's
/// runtime, or while it unwinds).
pub fn drop_prefix(url: &str, prefix: &str) {
    drop_tables(
        url,
        &format!("{prefix}deliveries, {prefix}groups, {prefix}events"),
    );
}

/// Drops the tables `tables` (a comma-separated list), on a runtime of its own.
pub fn drop_tables(url: &str, tables: &str) {
    let url = url.to_owned();
    let statement = format!("DROP TABLE IF EXISTS {tables} CASCADE");
    let cleanup = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            for _attempt in 0..3 {
                let Ok(pool) = pool(&url, 1).await else {
                    continue;
                };
                let dropped =
                    bus_postgres::sqlx::query(bus_postgres::sqlx::AssertSqlSafe(statement.clone()))
                        .execute(&pool)
                        .await;
                pool.close().await;
                if dropped.is_ok() {
                    return;
                }
            }
            eprintln!("could not run `{statement}` at {url}");
        });
    });
    let _ = cleanup.join();
}

/// Drops its tables when dropped, even when the test panics.
pub struct DropTables {
    pub url: String,
    pub tables: String,
}

impl Drop for DropTables {
    fn drop(&mut self) {
        drop_tables(&self.url, &self.tables);
    }
}

/// A PostgreSQL server of the test's own, on a free loopback port, in a temporary directory
/// owned by the `postgres` user (`initdb` refuses to run as root); stopped (immediately, as a
/// crash would) and removed when dropped.
pub struct PrivatePostgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    /// Run the server's binaries as `postgres` (`runuser`): this process is root.
    as_postgres: bool,
}

impl PrivatePostgres {
    /// Starts one. `None` (with a printed reason) when the binaries are missing and this is
    /// not CI; in CI that panics.
    pub fn start(test: &str) -> Option<PrivatePostgres> {
        let Some(bin) = bindir() else {
            let message = "no PostgreSQL binaries (`pg_config --bindir`; install the Debian \
                           package postgresql)";
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
        let dir = std::env::temp_dir().join(format!("bus-postgres-test-{}", unique()));
        std::fs::create_dir_all(&dir).expect("a data directory");
        let as_postgres = is_root();
        if as_postgres {
            let chowned = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .expect("chown runs");
            assert!(
                chowned.success(),
                "chown of {} to postgres failed",
                dir.display()
            );
        }
        let server = PrivatePostgres {
            bin,
            dir,
            port,
            as_postgres,
        };
        server.run(
            "initdb",
            &[
                "-D".as_ref(),
                server.data().as_os_str(),
                "-A".as_ref(),
                "trust".as_ref(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--no-instructions".as_ref(),
            ],
        );
        server.launch();
        Some(server)
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server at once (`-m immediate`: no checkpoint, what a crash does) and starts
    /// it again on the same port and directory: what it has is what its WAL kept.
    pub fn restart(&self) {
        self.stop();
        self.launch();
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn launch(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=300",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                self.data().as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "start".as_ref(),
            ],
        );
    }

    fn stop(&self) {
        let _ = self
            .command(
                "pg_ctl",
                &[
                    "-D".as_ref(),
                    self.data().as_os_str(),
                    "-m".as_ref(),
                    "immediate".as_ref(),
                    "-w".as_ref(),
                    "stop".as_ref(),
                ],
            )
            .status();
    }

    fn command(&self, program: &str, args: &[&std::ffi::OsStr]) -> Command {
        let binary = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(binary);
            command
        } else {
            Command::new(binary)
        };
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }

    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) {
        let output = self
            .command(program, args)
            .output()
            .unwrap_or_else(|error| panic!("{program} does not run: {error}"));
        assert!(
            output.status.success(),
            "{program} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The directory of `initdb` and `pg_ctl`: `PG_BINDIR`, `pg_config --bindir`, or the newest
/// `/usr/lib/postgresql/<version>/bin`.
fn bindir() -> Option<PathBuf> {
    let has_initdb = |dir: &PathBuf| dir.join("initdb").exists();
    if let Some(dir) = std::env::var_os("PG_BINDIR").map(PathBuf::from) {
        return has_initdb(&dir).then_some(dir);
    }
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if output.status.success() && has_initdb(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin")))
        .filter(has_initdb)
        .collect();
    versions.sort();
    versions.pop()
}

/// Whether this process runs as root (`id -u` is 0).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
}
