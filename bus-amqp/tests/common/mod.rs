//! Shared by the integration tests: transports on the machine's RabbitMQ on an exchange of
//! their own (a fresh name per test), whose exchange and group queues are deleted at the end,
//! and a private RabbitMQ node a test can restart.
#![allow(dead_code, reason = "each test file uses a part of these helpers")]

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use bus_amqp::{AmqpTransport, AmqpTransportBuilder};
use bus_core::transport::TransportError;

#[allow(unused_imports, reason = "each test binary uses a different subset")]
pub use bus_conformance::checks::*;

/// The shared broker of the machine (and of CI), as `guest`.
pub const SHARED_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Transports on one fresh exchange; the exchange and every group queue they declared are
/// deleted when this is dropped (even when the test panics).
pub struct TestAmqp {
    pub exchange: String,
    pub url: String,
    opened: Mutex<Vec<AmqpTransport>>,
}

impl TestAmqp {
    /// A fresh exchange on the shared broker, and a first transport on it. `None` (with a
    /// printed reason) when the broker is down and this is not CI; in CI that panics.
    pub async fn connect(
        test: &str,
        configure: impl FnOnce(AmqpTransportBuilder) -> AmqpTransportBuilder,
    ) -> Option<(TestAmqp, AmqpTransport)> {
        TestAmqp::connect_to(SHARED_URL, test, configure).await
    }

    /// As [`TestAmqp::connect`], on any broker.
    pub async fn connect_to(
        url: &str,
        test: &str,
        configure: impl FnOnce(AmqpTransportBuilder) -> AmqpTransportBuilder,
    ) -> Option<(TestAmqp, AmqpTransport)> {
        let this = TestAmqp {
            exchange: format!("test.{}", unique()),
            url: url.to_owned(),
            opened: Mutex::default(),
        };
        match this.open(configure).await {
            Ok(transport) => Some((this, transport)),
            Err(error @ TransportError::Unreachable { .. }) if !ci() => {
                skip(
                    test,
                    format_args!("RabbitMQ is not reachable at {url}: {error}"),
                );
                None
            }
            Err(error) => panic!("{test}: cannot connect to RabbitMQ at {url}: {error}"),
        }
    }

    /// Another transport on the exchange.
    pub async fn open(
        &self,
        configure: impl FnOnce(AmqpTransportBuilder) -> AmqpTransportBuilder,
    ) -> Result<AmqpTransport, TransportError> {
        let transport =
            configure(AmqpTransport::builder(self.url.clone()).exchange(self.exchange.clone()))
                .connect()
                .await?;
        self.opened
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(transport.clone());
        Ok(transport)
    }

    /// Another transport on the exchange, which must connect.
    pub async fn another(&self) -> AmqpTransport {
        self.open(|builder| builder)
            .await
            .unwrap_or_else(|error| panic!("cannot connect to RabbitMQ at {}: {error}", self.url))
    }
}

impl Drop for TestAmqp {
    fn drop(&mut self) {
        let opened =
            std::mem::take(&mut *self.opened.lock().unwrap_or_else(PoisonError::into_inner));
        let mut groups: Vec<String> = opened
            .iter()
            .flat_map(AmqpTransport::declared_groups)
            .collect();
        groups.sort();
        groups.dedup();
        drop(opened);
        let (url, exchange) = (self.url.clone(), self.exchange.clone());
        // A runtime of its own: this may run inside the test's runtime, or while it unwinds.
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let Ok(transport) = AmqpTransport::builder(url)
                    .exchange(exchange)
                    .connect()
                    .await
                else {
                    return;
                };
                for group in groups {
                    let _ = transport.delete_group(&group).await;
                }
                let _ = transport.delete_exchange().await;
            });
        });
        let _ = cleanup.join();
    }
}

/// How long a private node may take to start (it takes about 5 s), or to go down once killed.
const PRIVATE_PATIENCE: Duration = Duration::from_secs(30);

/// A RabbitMQ node of the test's own (`rabbitmq-server`), on free loopback ports, with its
/// data in a temporary directory: a test may kill it (SIGKILL, no graceful shutdown) and start
/// it again on the same data, durable queues kept. Killed, and its directory removed, when
/// dropped. The shared `epmd` (port 4369) is reused and left running.
///
/// Needs root (the server drops to user `rabbitmq`, which must own the directory) and the
/// `rabbitmq-server` of the Debian package.
pub struct PrivateRabbitMq {
    binary: PathBuf,
    dir: PathBuf,
    node: String,
    port: u16,
    dist_port: u16,
    /// The `rabbitmq-server` wrapper, leader of its process group.
    child: Option<Child>,
    /// Where this start's output begins in `out.log`.
    log_from: u64,
}

impl PrivateRabbitMq {
    /// Starts one and waits until it is ready. `None` (with a printed reason) when this is not
    /// root or there is no `rabbitmq-server`, and this is not CI; in CI that panics.
    pub fn start(test: &str) -> Option<PrivateRabbitMq> {
        let candidates = [
            std::env::var_os("RABBITMQ_SERVER_BIN").map(PathBuf::from),
            Some(PathBuf::from("/usr/sbin/rabbitmq-server")),
            Some(PathBuf::from("/usr/lib/rabbitmq/bin/rabbitmq-server")),
        ];
        let binary = candidates.into_iter().flatten().find(|path| path.exists());
        let problem = match (&binary, is_root()) {
            (None, _) => Some(
                "no rabbitmq-server (set RABBITMQ_SERVER_BIN, or install the Debian package \
                 rabbitmq-server)",
            ),
            (Some(_), false) => {
                Some("a private RabbitMQ node needs root (rabbitmq-server drops to user rabbitmq)")
            }
            (Some(_), true) => None,
        };
        let (Some(binary), None) = (binary, problem) else {
            let message = problem.unwrap_or_default();
            if ci() {
                panic!("{test}: {message}");
            }
            skip(test, message);
            return None;
        };
        let dir = std::env::temp_dir().join(format!("bus-amqp-rmq-{}", unique()));
        std::fs::create_dir_all(&dir).expect("a directory for the private node");
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("its enabled_plugins");
        let chowned = Command::new("chown")
            .args(["-R", "rabbitmq:"])
            .arg(&dir)
            .status()
            .is_ok_and(|status| status.success());
        assert!(
            chowned,
            "{test}: cannot give {} to user rabbitmq",
            dir.display()
        );
        let mut server = PrivateRabbitMq {
            binary,
            dir,
            node: format!("bustest{}@localhost", unique()),
            port: free_port(),
            dist_port: free_port(),
            child: None,
            log_from: 0,
        };
        server.launch();
        Some(server)
    }

    /// The port it listens on for AMQP.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Kills the node (SIGKILL: no graceful shutdown), waits until its port is closed, and
    /// starts it again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + PRIVATE_PATIENCE;
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "the private RabbitMQ node {} still listens on port {} {PRIVATE_PATIENCE:?} \
                 after it was killed",
                self.node,
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.launch();
    }

    /// Starts the node and waits, bounded, until it accepts connections and said it started.
    fn launch(&mut self) {
        let log = self.dir.join("out.log");
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .expect("the private node's out.log");
        self.log_from = out.metadata().map_or(0, |metadata| metadata.len());
        let err = out.try_clone().expect("out.log, for stderr too");
        let dir = &self.dir;
        let child = Command::new(&self.binary)
            .env("HOME", dir)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_MNESIA_DIR", dir.join("mnesia/node"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .env("RABBITMQ_FEATURE_FLAGS_FILE", dir.join("feature_flags"))
            .env("RABBITMQ_PLUGINS_EXPAND_DIR", dir.join("plugins-expand"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // A process group of its own: a terminal's signals are not its, and `Drop` can
            // kill what is left of it.
            .process_group(0)
            .spawn()
            .expect("rabbitmq-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + PRIVATE_PATIENCE;
        loop {
            let output = self.output();
            if output.contains("Kernel pid terminated") || self.exited() {
                self.fail("did not start (it stopped)");
            }
            if output.contains("Starting broker... completed")
                && TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                return;
            }
            if Instant::now() >= deadline {
                self.fail(&format!("was not ready within {PRIVATE_PATIENCE:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What this start wrote to `out.log` so far.
    fn output(&self) -> String {
        let mut output = String::new();
        if let Ok(mut log) = File::open(self.dir.join("out.log")) {
            let _ = log.seek(SeekFrom::Start(self.log_from));
            let _ = log.read_to_string(&mut output);
        }
        output
    }

    /// Whether the wrapper process exited.
    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|child| !matches!(child.try_wait(), Ok(None)))
    }

    fn fail(&mut self, what: &str) -> ! {
        let output = self.output();
        let lines: Vec<&str> = output.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        self.kill();
        panic!(
            "the private RabbitMQ node {} (port {}, in {}) {what}; the end of its out.log:\n{tail}",
            self.node,
            self.port,
            self.dir.display()
        );
    }

    /// Kills the node (SIGKILL to the process of the pid file, then to what is left of the
    /// wrapper's process group) and reaps the wrapper.
    fn kill(&mut self) {
        if let Some(pid) = read_pid(&self.dir.join("pid")) {
            signal_kill(&pid.to_string());
        }
        if let Some(mut child) = self.child.take() {
            signal_kill(&format!("-{}", child.id()));
            let deadline = Instant::now() + PRIVATE_PATIENCE;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.dir.join("pid"));
    }
}

impl Drop for PrivateRabbitMq {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free loopback port: one the system gave a listener that is closed again.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// Whether this process runs as root (the `Uid:` line of `/proc/self/status`).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().next())
            == Some("0")
    })
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `kill -9 <target>` (a pid, or `-<pgid>` for a process group); errors ignored.
fn signal_kill(target: &str) {
    let _ = Command::new("kill")
        .args(["-9", "--", target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
