//! `bus groups`: the consumer groups and where they stand.

use serde_json::json;

use crate::args::Groups;
use crate::broker::Broker;
use crate::error::CliError;
use crate::matcher::matches;
use crate::output::{Output, table};

/// Checks the command before connecting: the event name.
pub(crate) fn prepare(groups: &Groups) -> Result<(), CliError> {
    if let Some(event) = &groups.event {
        bus_core::event::validate_name(event).map_err(|error| {
            CliError::usage(
                format!("`{event}` is not an event name: {error}"),
                "give an event name such as `orders.placed` (not a pattern)",
            )
        })?;
    }
    Ok(())
}

/// Lists the groups ([`Transport::groups`](bus_core::transport::Transport::groups)), those
/// whose pattern matches `--event` only when given.
pub(crate) async fn run(broker: &Broker, groups: &Groups, output: &Output) -> Result<(), CliError> {
    let Some(mut listed) = broker.transport.groups().await? else {
        return Err(CliError::Unsupported {
            transport: broker.transport.name().to_owned(),
            what: "list its consumer groups",
        });
    };
    if let Some(event) = &groups.event {
        listed.retain(|group| matches(&group.pattern, event));
    }
    if output.json {
        for group in &listed {
            output.json_line(&json!({
                "name": group.name,
                "pattern": group.pattern,
                "lag": group.stats.map(|stats| stats.lag),
                "pending": group.stats.map(|stats| stats.pending),
                "consumers": group.consumers,
            }))?;
        }
        return Ok(());
    }
    if listed.is_empty() {
        eprintln!("no consumer group on {}", broker.url);
        return Ok(());
    }
    let number = |n: Option<u64>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
    let rows: Vec<Vec<String>> = listed
        .iter()
        .map(|group| {
            vec![
                group.name.clone(),
                group.pattern.clone(),
                number(group.stats.map(|stats| stats.lag)),
                number(group.stats.map(|stats| stats.pending)),
                number(group.consumers),
            ]
        })
        .collect();
    let cut = output.terminal.then_some(60);
    output.write(&table(
        &["GROUP", "PATTERN", "LAG", "PENDING", "CONSUMERS"],
        &rows,
        cut,
    ))
}
