//! Shared by the integration tests: a transport on the shared server (unique prefix and streams
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

/// A transport on a fresh prefix and stream of the shared server; the stream and the dead
/// letters' stream are deleted when this is dropped (even when the test panics).
pub struct TestNats {
    pub transport: NatsTransport,
    pub prefix: String,
    /// Deletes the streams when dropped.
    _cleanup: StreamCleanup,
}

impl std::ops::Deref for TestNats {
    type Target = NatsTransport;
    fn deref(&self) -> &NatsTransport {
        &self.transport
    }
}

/// A fresh subject prefix (`t<random>`), for one test.
pub fn fresh_prefix() -> String {
    format!("t{}", unique())
}

/// The stream name the tests give the streams of `prefix`: `TEST_<PREFIX>`.
pub fn test_stream_name(prefix: &str) -> String {
    format!("TEST_{}", prefix.to_uppercase())
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
        TestNats::connect_with_prefix(url, test, &fresh_prefix(), configure).await
    }

    /// As [`TestNats::connect_to`], with the subject prefix given (and its
    /// [`test_stream_name`]).
    pub async fn connect_with_prefix(
        url: &str,
        test: &str,
        prefix: &str,
        configure: impl FnOnce(NatsTransportBuilder) -> NatsTransportBuilder,
    ) -> Option<TestNats> {
        let stream_name = test_stream_name(prefix);
        let cleanup = StreamCleanup::new(url, &stream_name);
        let builder = NatsTransport::builder(url)
            .subject_prefix(prefix)
            .stream_name(stream_name);
        match configure(builder).connect().await {
            Ok(transport) => Some(TestNats {
                transport,
                prefix: prefix.to_owned(),
                _cleanup: cleanup,
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

/// Deletes a stream and its dead letters' stream (`<name>_DEAD_LETTERS`) when dropped, even
/// when the test panics.
pub struct StreamCleanup {
    url: String,
    streams: [String; 2],
}

impl StreamCleanup {
    /// For stream `name` (and its dead letters' stream) on the server at `url`.
    pub fn new(url: &str, name: &str) -> StreamCleanup {
        StreamCleanup {
            url: url.to_owned(),
            streams: [name.to_owned(), format!("{name}_DEAD_LETTERS")],
        }
    }
}

impl Drop for StreamCleanup {
    fn drop(&mut self) {
        let url = self.url.clone();
        let streams = self.streams.clone();
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
                for stream in &streams {
                    let _ = tokio::time::timeout(Duration::from_secs(5), js.delete_stream(stream))
                        .await;
                }
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

    /// Starts it again after [`stop`](PrivateNatsServer::stop), on the same port and store.
    pub fn launch(&mut self) {
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

    /// Kills it (SIGKILL), until [`launch`](PrivateNatsServer::launch).
    pub fn stop(&mut self) {
        self.kill();
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
