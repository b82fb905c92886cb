//! `bus`: the command line of the `bus` event bus, for the operator of a running system on NATS
//! JetStream, Redis Streams or PostgreSQL (the transports of `bus-nats`, `bus-redis` and
//! `bus-postgres`, picked by the URL's scheme).
//!
//! - `bus tail <pattern>`: follow the events published from now on (a subscription outside any
//!   group), printed as people read them or, with `--json`, one CloudEvents JSON object a line.
//! - `bus publish <name> <json>` (or `--file`): publish events as a bus would.
//! - `bus dead-letters list | show <id> | replay | purge`: the dead letters the broker keeps.
//! - `bus groups`: the consumer groups, with their lag, pending count and consumers.
//!
//! Exit codes: 0 ok, 1 error, 2 usage, 3 broker unreachable, 4 not found. Credentials in the
//! URL never show: every line the command prints shows the URL masked, as the transports do
//! (`nats://user:***@host:4222`). `bus --help` and `bus <command> --help` give examples.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod args;
mod broker;
mod commands;
mod error;
mod matcher;
mod output;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};
use crate::error::{CliError, EXIT_ERROR, EXIT_OK};
use crate::output::{Output, is_closed};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // Usage errors exit 2, `--help` and `--version` 0: clap's own codes.
            let code = error.exit_code();
            let _ = error.print();
            return ExitCode::from(u8::try_from(code).unwrap_or(EXIT_ERROR));
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(source) => {
            return CliError::Io {
                what: "starting the runtime".to_owned(),
                source,
            }
            .report();
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::from(EXIT_OK),
        // Whoever read the output stopped reading (`| head`): not an error.
        Err(error) if is_closed(&error) => ExitCode::SUCCESS,
        Err(error) => error.report(),
    }
}

/// Connects and runs the command.
async fn run(cli: Cli) -> Result<(), CliError> {
    let output = Output::new(cli.json);
    // What can be checked without the broker is, first: settings that do not fit the URL,
    // names, patterns, payloads.
    broker::check(&cli.connection)?;
    let mut payloads = Vec::new();
    match &cli.command {
        Command::Tail(tail) => commands::dead_letters::check_pattern(&tail.pattern)?,
        Command::Publish(publish) => payloads = commands::publish::prepare(publish)?,
        Command::DeadLetters(command) => commands::dead_letters::prepare(command)?,
        Command::Groups(groups) => commands::groups::prepare(groups)?,
    }
    let broker = broker::connect(&cli.connection).await?;
    let done = match &cli.command {
        Command::Tail(tail) => commands::tail::run(&broker, tail, &output).await,
        Command::Publish(publish) => {
            commands::publish::run(&broker, publish, payloads, &output).await
        }
        Command::DeadLetters(command) => {
            commands::dead_letters::run(&broker, command, &output).await
        }
        Command::Groups(groups) => commands::groups::run(&broker, groups, &output).await,
    };
    broker.transport.flush().await;
    done
}
