//! How things are printed: events as people read them or as CloudEvents JSON, and tables.

use std::io::{IsTerminal, Write};

use bus_core::transport::{SPEC_VERSION, WireEvent};
use serde_json::{Map, Value};

use crate::error::CliError;

/// Where the results go: the standard output, as text for people or one JSON object a line.
#[derive(Debug)]
pub(crate) struct Output {
    /// One JSON object a line.
    pub(crate) json: bool,
    /// The standard output is a terminal: long cells are cut to fit.
    pub(crate) terminal: bool,
}

impl Output {
    /// The output of this process.
    pub(crate) fn new(json: bool) -> Output {
        Output {
            json,
            terminal: std::io::stdout().is_terminal(),
        }
    }

    /// Writes `text` (its lines) to the standard output. A closed output (`| head`) is an end,
    /// not an error: [`is_closed`] tells it apart.
    pub(crate) fn write(&self, text: &str) -> Result<(), CliError> {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|source| CliError::Io {
                what: "writing the output".to_owned(),
                source,
            })
    }

    /// Writes one JSON value on a line of its own.
    pub(crate) fn json_line(&self, value: &Value) -> Result<(), CliError> {
        self.write(&format!("{value}\n"))
    }
}

/// Whether `error` is the end of the output (a closed pipe), which ends a command quietly.
pub(crate) fn is_closed(error: &CliError) -> bool {
    matches!(error, CliError::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
}

/// Whether a content type is JSON: none, `application/json` (any parameters, any case) or
/// `application/<x>+json`.
pub(crate) fn is_json(content_type: Option<&str>) -> bool {
    let Some(content_type) = content_type else {
        return true;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|subtype| subtype.ends_with("+json"))
}

/// The event's payload as JSON, if its content type and bytes are.
fn json_payload(event: &WireEvent) -> Option<Value> {
    if !is_json(event.datacontenttype.as_deref()) {
        return None;
    }
    serde_json::from_slice(&event.data).ok()
}

/// The event in the CloudEvents JSON format: every attribute (extensions at the top level), and
/// the payload as `data` (JSON when it is JSON, text when it is UTF-8) or `data_base64`.
pub(crate) fn event_json(event: &WireEvent) -> Value {
    let mut map = Map::new();
    for (name, value) in &event.extensions {
        map.insert(name.clone(), Value::String(value.clone()));
    }
    map.insert("specversion".to_owned(), SPEC_VERSION.into());
    map.insert("id".to_owned(), event.id.clone().into());
    map.insert("source".to_owned(), event.source.clone().into());
    map.insert("type".to_owned(), event.ty.clone().into());
    if let Some(time) = &event.time {
        map.insert("time".to_owned(), time.clone().into());
    }
    if let Some(content_type) = &event.datacontenttype {
        map.insert("datacontenttype".to_owned(), content_type.clone().into());
    }
    if let Some(data) = json_payload(event) {
        map.insert("data".to_owned(), data);
    } else if let Ok(text) = std::str::from_utf8(&event.data) {
        map.insert("data".to_owned(), text.into());
    } else {
        map.insert("data_base64".to_owned(), base64(&event.data).into());
    }
    Value::Object(map)
}

/// The event as people read it: its name and id, each other attribute on a line, then the
/// payload (pretty JSON, or the text as it is, or a note for bytes that are not text).
pub(crate) fn event_text(event: &WireEvent) -> String {
    let mut attributes: Vec<(&str, &str)> = vec![("source", &event.source)];
    if let Some(time) = &event.time {
        attributes.push(("time", time));
    }
    if let Some(content_type) = &event.datacontenttype {
        attributes.push(("datacontenttype", content_type));
    }
    for (name, value) in &event.extensions {
        attributes.push((name, value));
    }
    let width = attributes
        .iter()
        .map(|(name, _)| name.len())
        .max()
        .unwrap_or(0);
    let mut text = format!("{}  id {}\n", event.ty, event.id);
    for (name, value) in attributes {
        text.push_str(&format!("  {name:<width$}  {}\n", printable(value)));
    }
    let payload = match json_payload(event) {
        Some(value) => serde_json::to_string_pretty(&value).unwrap_or_default(),
        None => match std::str::from_utf8(&event.data) {
            Ok(text) => text.to_owned(),
            Err(_) => format!("({} bytes, not text)", event.data.len()),
        },
    };
    for line in payload.lines() {
        text.push_str("  ");
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// `value` with its control characters escaped, so that an attribute never breaks a line or
/// writes to the terminal.
pub(crate) fn printable(value: &str) -> String {
    value
        .chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// A table: a header, then one row per line, columns padded to their widest cell. On a
/// terminal, cells are cut to `max` characters (`…` marks a cut).
pub(crate) fn table(header: &[&str], rows: &[Vec<String>], cut: Option<usize>) -> String {
    let cells: Vec<Vec<String>> = std::iter::once(header.iter().map(|h| (*h).to_owned()).collect())
        .chain(rows.iter().map(|row| {
            row.iter()
                .map(|cell| {
                    let cell = printable(cell);
                    match cut {
                        Some(max) if cell.chars().count() > max => {
                            let kept: String = cell.chars().take(max.saturating_sub(1)).collect();
                            format!("{kept}…")
                        }
                        _ => cell,
                    }
                })
                .collect()
        }))
        .collect();
    let columns = header.len();
    let widths: Vec<usize> = (0..columns)
        .map(|column| {
            cells
                .iter()
                .map(|row| row.get(column).map_or(0, |cell| cell.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for row in cells {
        let mut line = String::new();
        for (column, cell) in row.iter().enumerate() {
            if column + 1 == columns {
                line.push_str(cell);
            } else {
                let pad = widths[column] - cell.chars().count();
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// Standard base64 with padding (RFC 4648 §4), for `data_base64`.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (position, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if position <= chunk.len() {
                text.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                text.push('=');
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_rfc_4648() {
        for (bytes, text) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"\xff\x00\xfe", "/wD+"),
        ] {
            assert_eq!(base64(bytes), text);
        }
    }

    #[test]
    fn events_print_as_cloudevents_json() {
        let event = WireEvent::new("e-1", "shop", "orders.placed", r#"{"id":7}"#)
            .content_type("application/json")
            .extension("causationid", "c-0");
        let json = event_json(&event);
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["type"], "orders.placed");
        assert_eq!(json["causationid"], "c-0");
        assert_eq!(json["data"]["id"], 7);
        let text = WireEvent::new("e-2", "s", "a.b", "plain words").content_type("text/plain");
        assert_eq!(event_json(&text)["data"], "plain words");
        let bytes = WireEvent::new("e-3", "s", "a.b", &b"\xff\x00"[..]);
        assert_eq!(event_json(&bytes)["data_base64"], "/wA=");
        let not_json = WireEvent::new("e-4", "s", "a.b", "{not json");
        assert_eq!(event_json(&not_json)["data"], "{not json");
    }

    #[test]
    fn events_print_for_people() {
        let event = WireEvent::new("e-1", "shop", "orders.placed", r#"{"id":7}"#)
            .content_type("application/json; charset=utf-8")
            .extension("deadletterreason", "line one\nline two");
        let text = event_text(&event);
        assert!(text.starts_with("orders.placed  id e-1\n"), "{text}");
        assert!(text.contains("  source            shop\n"), "{text}");
        assert!(text.contains("line one\\nline two"), "{text}");
        assert!(text.contains("  {\n    \"id\": 7\n  }\n"), "{text}");
    }

    #[test]
    fn tables_align_and_cut() {
        let rows = vec![
            vec!["a".to_owned(), "long value here".to_owned()],
            vec!["bbb".to_owned(), "x".to_owned()],
        ];
        assert_eq!(
            table(&["K", "V"], &rows, None),
            "K    V\na    long value here\nbbb  x\n"
        );
        assert_eq!(
            table(&["K", "V"], &rows, Some(5)),
            "K    V\na    long…\nbbb  x\n"
        );
    }

    #[test]
    fn json_content_types() {
        for yes in [
            None,
            Some("application/json"),
            Some("Application/JSON; charset=utf-8"),
            Some("application/cloudevents+json"),
        ] {
            assert!(is_json(yes), "{yes:?}");
        }
        for no in [Some("text/plain"), Some("application/xml"), Some("")] {
            assert!(!is_json(no), "{no:?}");
        }
    }
}
