//! `bus publish`: publish events as a bus would.

use std::io::Read;
use std::time::SystemTime;

use bus_core::transport::WireEvent;
use serde_json::json;

use crate::args::Publish;
use crate::broker::Broker;
use crate::error::CliError;
use crate::output::Output;

/// A new event id: 128 random bits, written as a UUID is (8-4-4-4-12 lower-case hex), like the
/// ids a bus makes.
pub(crate) fn new_id() -> String {
    let hex = format!("{:032x}", fastrand::u128(..));
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Checks one payload: one JSON value. Returns it as given, without surrounding whitespace.
fn payload(text: &str, place: &str) -> Result<String, CliError> {
    let text = text.trim();
    serde_json::from_str::<serde_json::Value>(text).map_err(|error| {
        CliError::usage(
            format!("{place} is not JSON: {error}"),
            "give one JSON value, quoted for the shell: '{\"id\": 7}' (a text is '\"text\"')",
        )
    })?;
    Ok(text.to_owned())
}

/// The payloads to publish: the argument, or the lines of the file (blank ones skipped), each
/// checked before anything is published.
fn payloads(publish: &Publish) -> Result<Vec<String>, CliError> {
    if let Some(json) = &publish.payload {
        return Ok(vec![payload(json, "the payload")?]);
    }
    let Some(path) = &publish.file else {
        return Err(CliError::usage(
            "no payload",
            "give the JSON payload, or --file with one JSON value per line",
        ));
    };
    let mut text = String::new();
    let read = if path.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text)
    } else {
        std::fs::File::open(path).and_then(|mut file| file.read_to_string(&mut text))
    };
    read.map_err(|source| CliError::Io {
        what: format!("reading `{}`", path.display()),
        source,
    })?;
    let mut all = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        all.push(payload(
            line,
            &format!("line {} of `{}`", number + 1, path.display()),
        )?);
    }
    if all.is_empty() {
        return Err(CliError::usage(
            format!("`{}` holds no event", path.display()),
            "write one JSON value per line",
        ));
    }
    Ok(all)
}

/// Checks the command before connecting: the event name, the source and id, and every
/// payload; returns the payloads.
pub(crate) fn prepare(publish: &Publish) -> Result<Vec<String>, CliError> {
    bus_core::event::validate_name(&publish.name).map_err(|error| {
        CliError::usage(
            format!("`{}` is not an event name: {error}", publish.name),
            "event names are dot-separated tokens of letters, digits, `_` and `-`, such as \
             `orders.placed`",
        )
    })?;
    if publish.source.is_empty() {
        return Err(CliError::usage(
            "the source is empty",
            "give --source the name of a service, or leave it out (bus-cli)",
        ));
    }
    if publish.id.as_deref() == Some("") {
        return Err(CliError::usage(
            "the id is empty",
            "give --id a non-empty id, or leave it out for a new one",
        ));
    }
    payloads(publish)
}

/// Publishes each payload (from [`prepare`]) as an event named `publish.name`, and prints its
/// id.
pub(crate) async fn run(
    broker: &Broker,
    publish: &Publish,
    payloads: Vec<String>,
    output: &Output,
) -> Result<(), CliError> {
    for data in payloads {
        let id = publish.id.clone().unwrap_or_else(new_id);
        let event = WireEvent::new(
            id.clone(),
            publish.source.clone(),
            publish.name.clone(),
            data,
        )
        .at(SystemTime::now())
        .content_type("application/json");
        broker.transport.publish(event).await?;
        if output.json {
            output.json_line(&json!({
                "id": id,
                "source": publish.source,
                "type": publish.name,
            }))?;
        } else {
            output.write(&format!("{id}\n"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_uuid_shaped_and_new() {
        let (a, b) = (new_id(), new_id());
        assert_ne!(a, b);
        let groups: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{a}");
        assert!(a.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
    }

    #[test]
    fn payloads_are_json() {
        assert_eq!(payload("  {\"a\": 1} ", "x").expect("JSON"), "{\"a\": 1}");
        assert_eq!(payload("\"text\"", "x").expect("JSON"), "\"text\"");
        let error = payload("{a: 1}", "the payload").expect_err("not JSON");
        assert!(
            error.to_string().starts_with("the payload is not JSON"),
            "{error}"
        );
        assert_eq!(error.exit_code(), crate::error::EXIT_USAGE);
    }
}
