//! Helpers shared by the integration tests.
#![allow(dead_code, reason = "each test binary uses a different subset")]

#[cfg(all(feature = "nats", feature = "redis"))]
pub mod brokers;

use std::cell::RefCell;
use std::future::IntoFuture;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once, PoisonError};
use std::time::Duration;

/// A guard against a hung test: generous, never a measure of speed.
pub const GUARD: Duration = Duration::from_secs(10);

/// Awaits `future`, failing the test if it has not finished within [`GUARD`].
pub async fn guarded<F: IntoFuture>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(GUARD, future.into_future()).await {
        Ok(output) => output,
        Err(_) => panic!("{what} did not finish within {GUARD:?}"),
    }
}

/// Log lines captured from `tracing`, as the `fmt` subscriber writes them (no colours).
///
/// One global subscriber writes every record to the capture of the thread that logs it. A
/// per-test `set_default` subscriber would race with the tests running beside it: tracing
/// caches whether a log line is enabled once per line of code, for every thread, and a test
/// without a subscriber that hits the line first can leave it disabled for a test with one.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

thread_local! {
    /// The capture of this thread, if any.
    static CAPTURE: RefCell<Option<Logs>> = const { RefCell::new(None) };
}

/// Where the global subscriber writes: the logging thread's capture, or nowhere.
struct ThreadCapture;

impl Write for ThreadCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with_borrow_mut(|capture| match capture {
            Some(logs) => logs.write(buf),
            None => Ok(buf.len()),
        })
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Stops a capture when dropped.
pub struct CaptureGuard(());

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        CAPTURE.with_borrow_mut(|capture| *capture = None);
    }
}

impl Logs {
    /// Captures every log record of this thread until the guard drops. Use with a
    /// current-thread runtime so that listener tasks log on this thread too.
    pub fn capture(&self) -> CaptureGuard {
        static INSTALL: Once = Once::new();
        INSTALL.call_once(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_ansi(false)
                .with_writer(|| ThreadCapture)
                .finish();
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other global subscriber in the tests");
        });
        CAPTURE.with_borrow_mut(|capture| *capture = Some(self.clone()));
        CaptureGuard(())
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }

    /// The captured lines that contain every one of `needles`.
    pub fn lines_with(&self, needles: &[&str]) -> Vec<String> {
        self.text()
            .lines()
            .filter(|line| needles.iter().all(|needle| line.contains(needle)))
            .map(str::to_owned)
            .collect()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `ci`, `skip` and `unique`: the same for every test crate of the workspace.
#[allow(unused_imports, reason = "each test binary uses a different subset")]
pub use bus_conformance::checks::{ci, skip, unique};

/// The connected transport, or `None` (the test is skipped, locally only) when the broker is
/// down; any other error fails the test.
pub fn reachable<T>(test: &str, connected: Result<T, bus::transport::TransportError>) -> Option<T> {
    match connected {
        Ok(transport) => Some(transport),
        Err(error @ bus::transport::TransportError::Unreachable { .. }) if !ci() => {
            skip(test, format_args!("the broker is not reachable: {error}"));
            None
        }
        Err(error) => panic!("{test}: cannot connect: {error}"),
    }
}

/// How many deliveries run at once, and the most seen so far.
#[derive(Default)]
pub struct Gauge {
    running: AtomicUsize,
    max: AtomicUsize,
}

impl Gauge {
    /// Counts one more delivery running until the guard drops (also when it is aborted).
    pub fn enter(self: &Arc<Self>) -> Running {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        Running(Arc::clone(self))
    }

    /// The most deliveries seen running at once.
    pub fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

/// One delivery counted as running by a [`Gauge`], until dropped.
pub struct Running(Arc<Gauge>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}
