//! What can go wrong, each with the exit code it ends the process with and, where there is
//! one, what to do about it.

use std::error::Error as _;
use std::process::ExitCode;

use bus_core::transport::TransportError;

/// The process finished what it was asked: 0.
pub(crate) const EXIT_OK: u8 = 0;
/// An error that is neither of the others (the broker refused, the transport cannot do what
/// was asked, a file cannot be read, a purge was not confirmed): 1.
pub(crate) const EXIT_ERROR: u8 = 1;
/// The command line is wrong (clap's own code for its errors; also a bad event name, JSON
/// payload, pattern or URL scheme, and a purge without a terminal and without `--yes`): 2.
pub(crate) const EXIT_USAGE: u8 = 2;
/// The broker cannot be reached (or did not answer in time): 3.
pub(crate) const EXIT_UNREACHABLE: u8 = 3;
/// What was asked for does not exist (a dead letter's id): 4.
pub(crate) const EXIT_NOT_FOUND: u8 = 4;

/// An error of a command.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// The command line is wrong; the message says how.
    #[error("{message}")]
    Usage {
        /// What is wrong.
        message: String,
        /// What to write instead.
        hint: Option<String>,
    },
    /// The broker cannot be reached.
    #[error("{0}")]
    Unreachable(#[source] TransportError),
    /// The broker or the transport refused.
    #[error("{0}")]
    Transport(#[source] TransportError),
    /// The transport cannot do what was asked.
    #[error("the {transport} transport cannot {what}")]
    Unsupported {
        /// The transport's name.
        transport: String,
        /// What it cannot do.
        what: &'static str,
    },
    /// Something asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The operator did not confirm.
    #[error("{0}")]
    Cancelled(String),
    /// Reading a file or the terminal, or writing the output, failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

impl CliError {
    /// A usage error with a hint.
    pub(crate) fn usage(message: impl Into<String>, hint: impl Into<String>) -> CliError {
        CliError::Usage {
            message: message.into(),
            hint: Some(hint.into()),
        }
    }

    /// The exit code of this error.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage { .. } => EXIT_USAGE,
            CliError::Unreachable(_) => EXIT_UNREACHABLE,
            CliError::NotFound(_) => EXIT_NOT_FOUND,
            CliError::Transport(_)
            | CliError::Unsupported { .. }
            | CliError::Cancelled(_)
            | CliError::Io { .. } => EXIT_ERROR,
        }
    }

    /// What to do about it, when the message does not say already.
    pub(crate) fn hint(&self) -> Option<String> {
        match self {
            CliError::Usage { hint, .. } => hint.clone(),
            CliError::Unreachable(_) => Some(
                "check the URL (`--url` or BUS_URL) and that the broker runs and is reachable \
                 from here"
                    .to_owned(),
            ),
            CliError::Transport(error) if mentions_missing_table(error) => Some(
                "the tables of this table prefix do not exist in this database: check \
                 `--table-prefix` (default `bus_`) and the database of the URL"
                    .to_owned(),
            ),
            CliError::Unsupported { .. } => Some(
                "use a transport that can (NATS, Redis and PostgreSQL all can), or a newer `bus`"
                    .to_owned(),
            ),
            _ => None,
        }
    }

    /// Prints the error (and its hint) on the standard error, and gives the exit code.
    pub(crate) fn report(&self) -> ExitCode {
        eprintln!("error: {self}");
        if let Some(hint) = self.hint() {
            eprintln!("hint: {hint}");
        }
        ExitCode::from(self.exit_code())
    }
}

impl From<TransportError> for CliError {
    fn from(error: TransportError) -> CliError {
        match error {
            TransportError::Unreachable { .. } | TransportError::PublishTimedOut { .. } => {
                CliError::Unreachable(error)
            }
            TransportError::Invalid { .. } => CliError::Usage {
                message: error.to_string(),
                hint: None,
            },
            error => CliError::Transport(error),
        }
    }
}

/// Whether an error of the PostgreSQL transport is a table that does not exist.
fn mentions_missing_table(error: &TransportError) -> bool {
    let mut cause: Option<&dyn std::error::Error> = error.source();
    while let Some(current) = cause {
        let text = current.to_string();
        if text.contains("relation") && text.contains("does not exist") {
            return true;
        }
        cause = current.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_errors_map_to_exit_codes() {
        let unreachable = TransportError::unreachable("nats", std::io::Error::other("refused"));
        assert_eq!(CliError::from(unreachable).exit_code(), EXIT_UNREACHABLE);
        let timed_out = TransportError::PublishTimedOut {
            transport: "nats".to_owned(),
            event: "a".to_owned(),
            deadline: std::time::Duration::from_secs(1),
        };
        assert_eq!(CliError::from(timed_out).exit_code(), EXIT_UNREACHABLE);
        let invalid = TransportError::invalid("nats", "pattern", "a..b", "empty token");
        assert_eq!(CliError::from(invalid).exit_code(), EXIT_USAGE);
        let broker = TransportError::broker("nats", std::io::Error::other("refused"));
        assert_eq!(CliError::from(broker).exit_code(), EXIT_ERROR);
        assert_eq!(
            CliError::NotFound("x".to_owned()).exit_code(),
            EXIT_NOT_FOUND
        );
        assert_eq!(EXIT_OK, 0);
    }
}
