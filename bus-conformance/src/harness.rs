//! What a transport's test provides to the suite ([`Harness`]), and how big a run is ([`Size`]).

use std::sync::Arc;
use std::time::Duration;

use bus_core::transport::{BoxFuture, Transport};

/// The guard of every wait in the suite unless a harness says otherwise: how long a case waits
/// for the next thing it expects (a delivery, a publish ack) before it fails.
pub const DEFAULT_GUARD: Duration = Duration::from_secs(30);

/// A transport under test, as its test file provides it to the suite.
///
/// One harness stands for one broker: every [`connect`](Harness::connect) is a new connection
/// to that same broker, as another process of the same deployment would open. The suite builds
/// a fresh harness for each case, and each case names its events and groups with a random
/// prefix of its own, so cases may share a broker and run in parallel.
pub trait Harness: Send + Sync {
    /// The transport's name, for skips and failure messages (`"memory"`, `"nats"`).
    fn name(&self) -> &str;

    /// A new connection to the broker: another instance of a service, another process.
    ///
    /// # Panics
    ///
    /// Should panic, naming the broker's address, when the broker cannot be reached: the case
    /// then fails (a conformance run never skips an unreachable broker).
    fn connect(&self) -> BoxFuture<'_, Arc<dyn Transport>>;

    /// Stops and starts the broker again, resolving once it accepts connections. Only called
    /// by cases that need the [`restartable`](bus_core::transport::Capabilities::restartable)
    /// capability, so a transport that does not declare it keeps this default.
    ///
    /// # Panics
    ///
    /// The default panics: the broker is not restartable.
    fn restart_broker(&self) -> BoxFuture<'_, ()> {
        let name = self.name().to_owned();
        Box::pin(async move {
            unreachable!("the {name} harness cannot restart its broker: it is not `restartable`")
        })
    }

    /// How long a case waits for the next thing it expects (a delivery, a publish ack, a
    /// connection) before it fails: a guard against a hung case, never a measure of speed.
    /// Each wait has its own guard, so a long case is not cut short. Defaults to
    /// [`DEFAULT_GUARD`].
    fn guard_timeout(&self) -> Duration {
        DEFAULT_GUARD
    }
}

impl<H: Harness + ?Sized> Harness for Arc<H> {
    fn name(&self) -> &str {
        (**self).name()
    }

    fn connect(&self) -> BoxFuture<'_, Arc<dyn Transport>> {
        (**self).connect()
    }

    fn restart_broker(&self) -> BoxFuture<'_, ()> {
        (**self).restart_broker()
    }

    fn guard_timeout(&self) -> Duration {
        (**self).guard_timeout()
    }
}

impl<H: Harness + ?Sized> Harness for Box<H> {
    fn name(&self) -> &str {
        (**self).name()
    }

    fn connect(&self) -> BoxFuture<'_, Arc<dyn Transport>> {
        (**self).connect()
    }

    fn restart_broker(&self) -> BoxFuture<'_, ()> {
        (**self).restart_broker()
    }

    fn guard_timeout(&self) -> Duration {
        (**self).guard_timeout()
    }
}

/// How many events a case moves: the full counts of the reference suite, or a tenth of them
/// for a quick local run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Size {
    /// The counts of issue 5 (and of Watermill's suite): the default, and what CI runs.
    #[default]
    Full,
    /// A tenth of the counts (at least one of each), for local runs.
    Short,
}

/// The environment variable that selects the [`Size`] of a run: `short` or `full`.
pub const SIZE_ENV: &str = "BUS_CONFORMANCE";

impl Size {
    /// The size the environment asks for: [`Size::Short`] when `BUS_CONFORMANCE=short`,
    /// [`Size::Full`] when it is unset, empty or `full`.
    ///
    /// # Panics
    ///
    /// On any other value, so that a typo never passes for a full run.
    pub fn from_env() -> Size {
        match std::env::var(SIZE_ENV) {
            Err(std::env::VarError::NotPresent) => Size::Full,
            Ok(value) => match value.trim().to_ascii_lowercase().as_str() {
                "" | "full" => Size::Full,
                "short" => Size::Short,
                other => panic!("{SIZE_ENV}={other:?}: expected `short` or `full`"),
            },
            Err(error) => panic!("{SIZE_ENV}: {error}"),
        }
    }

    /// `full` at [`Size::Full`], a tenth of it (at least 1) at [`Size::Short`].
    pub fn scale(self, full: usize) -> usize {
        match self {
            Size::Full => full,
            Size::Short => (full / 10).max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_is_a_tenth_and_never_zero() {
        assert_eq!(Size::Full.scale(5_000), 5_000);
        assert_eq!(Size::Short.scale(5_000), 500);
        assert_eq!(Size::Short.scale(3), 1);
        assert_eq!(Size::default(), Size::Full);
    }
}
