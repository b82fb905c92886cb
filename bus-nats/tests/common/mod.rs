//! Shared by the integration tests: a transport on the shared server (unique prefix and stream
//! per test, deleted at the end), a private `nats-server` a test can restart, and bounded waits.
#![allow(dead_code, reason = "each test file uses a part of these helpers")]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bus_core::transport::TransportError;
use bus_nats::{NatsTransport, NatsTransportBuilder};

#[allow(unused_imports, reason = "each test binary uses a different subset")]
pub use bus_conformance::checks::*;

/// The shared server of the machine (and of CI).
pub const SHARED_URL: &str = "127.0.0.1:4222";

/// A transport on a fresh prefix and stream of the shared server; the stream is deleted when
/// this is dropped (even when the test panics).
pub struct TestNats {
    pub transport: NatsTransport,
    pub prefix: String,
    url: String,
}

impl std::ops::Deref for TestNats {
    type Target = NatsTransport;
    fn deref(&self) -> &NatsTransport {
        &self.transport
    }
}

impl TestNats {
    /// Connects to the shared server with `configure` applied to the builder. `None` (with a
    /// printed reason) when the server is down and this is not CI; in CI that panics.
    pub async fn connect(
        test: &str,
        configure: impl FnOnce(NatsTransportBuilder) -> NatsTransportBuilder,
    ) -> Option<TestNats> {
        TestNats::connect_to(SHARED_URL, test, configure).await
    }

    /// As [`TestNats::connect`], on any server.
    pub async fn connect_to(
        url: &str,
        test: &str,
        configure: impl FnOnce(NatsTransportBuilder) -> NatsTransportBuilder,
    ) -> Option<TestNats> {
        let prefix = format!("t{}", unique());
        let builder = NatsTransport::builder(url)
            .subject_prefix(prefix.clone())
            .stream_name(format!("TEST_{}", prefix.to_uppercase()));
        match configure(builder).connect().await {
            Ok(transport) => Some(TestNats {
                transport,
                prefix,
                url: url.to_owned(),
            }),
            Err(error @ TransportError::Unreachable { .. }) if !ci() => {
                skip(
                    test,
                    format_args!("NATS with JetStream is not reachable at {url}: {error}"),
                );
                None
            }
            Err(error) => panic!("{test}: cannot connect to NATS at {url}: {error}"),
        }
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        let url = self.url.clone();
        let stream = self.transport.stream_name().to_owned();
        // A runtime of its own: this may run inside the test's runtime, or while it unwinds.
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let Ok(Ok(client)) =
                    tokio::time::timeout(Duration::from_secs(5), async_nats::connect(url)).await
                else {
                    return;
                };
                let js = async_nats::jetstream::new(client);
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), js.delete_stream(&stream)).await;
            });
        });
        let _ = cleanup.join();
    }
}

/// A `nats-server -js` of the test's own, on a free loopback port with its own store; killed
/// when dropped.
pub struct PrivateNatsServer {
    binary: PathBuf,
    port: u16,
    store: PathBuf,
    /// More command-line arguments (authorization, TLS).
    extra: Vec<String>,
    child: Option<Child>,
}

impl PrivateNatsServer {
    /// Starts one. `None` (with a printed reason) when no `nats-server` binary is found and
    /// this is not CI; in CI that panics.
    pub fn start(test: &str) -> Option<PrivateNatsServer> {
        PrivateNatsServer::start_with(test, |_port| Vec::new())
    }

    /// As [`PrivateNatsServer::start`], with more command-line arguments made from the port
    /// (`--user alice --pass secret`, `--auth token`, `--tls --tlscert <file> --tlskey <file>`).
    pub fn start_with(
        test: &str,
        extra: impl FnOnce(u16) -> Vec<String>,
    ) -> Option<PrivateNatsServer> {
        let candidates = [
            std::env::var_os("NATS_SERVER_BIN").map(PathBuf::from),
            Some(PathBuf::from("/usr/sbin/nats-server")),
            Some(PathBuf::from("/usr/bin/nats-server")),
            Some(PathBuf::from("/usr/local/bin/nats-server")),
        ];
        let Some(binary) = candidates.into_iter().flatten().find(|path| path.exists()) else {
            let message = "no nats-server binary (set NATS_SERVER_BIN, or install the Debian \
                           package nats-server)";
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
        let store = std::env::temp_dir().join(format!("bus-nats-test-{}", unique()));
        std::fs::create_dir_all(&store).expect("a store directory");
        let mut server = PrivateNatsServer {
            binary,
            port,
            store,
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

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: no graceful shutdown) and starts it again on the same port
    /// and store.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    fn launch(&mut self) {
        let child = Command::new(&self.binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        // Wait until it accepts connections: a readiness wait, bounded.
        for _ in 0..400 {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "nats-server did not listen on port {} within 10 s",
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

impl Drop for PrivateNatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}
