//! Fuzzes the listener-pattern parser and the pattern index through the public API.
//!
//! The input is read as lines (lossy UTF-8, at most [`MAX_LINES`]). For every line:
//!
//! - `validate_pattern` and `validate_name` agree with plain reference rules (the ones the
//!   proptests of `pattern.rs` and `name.rs` use), and an error names the rejected text;
//! - every valid name is a valid pattern;
//! - `on(line, ..).try_add()` accepts the line exactly when it is a valid pattern.
//!
//! Then every line that is a valid pattern gets a listener on one bus (so the index holds
//! several patterns at once, duplicates included), every line that is a valid name is emitted,
//! and each emit must reach exactly the listeners whose pattern a reference matcher says
//! matches the name: no more, no fewer.

#![no_main]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use bus_core::{
    EventBus,
    error::EmitError,
    event::{validate_name, validate_pattern},
};
use libfuzzer_sys::fuzz_target;

/// Lines of one input looked at; the rest is ignored, to keep each run short.
const MAX_LINES: usize = 32;

/// `bus_core`'s longest event name, in bytes (`bus_names::MAX_NAME_LEN`).
const MAX_NAME_LEN: usize = 256;

/// The runtime every emit runs in: deliveries of the listeners here finish while `emit` runs,
/// so it is entered, never driven.
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime")
});

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines: Vec<&str> = text.split('\n').take(MAX_LINES).collect();
    let _runtime = RUNTIME.enter();
    let bus = EventBus::new();

    // Each registered pattern with the number of events its listener received.
    let mut listeners: Vec<(&str, Arc<AtomicUsize>)> = Vec::new();
    for &line in &lines {
        let valid_pattern = reference_valid_pattern(line);
        let valid_name = reference_valid_name(line);
        check_validation(line, valid_pattern, valid_name);

        let received = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&received);
        let added = bus
            .on(line, move |_: Arc<()>| {
                let counter = Arc::clone(&counter);
                async move {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
            .try_add();
        assert_eq!(added.is_ok(), valid_pattern, "on({line:?}).try_add()");
        if added.is_ok() {
            listeners.push((line, received));
        }
    }

    let mut expected = vec![0_usize; listeners.len()];
    for &name in &lines {
        if !reference_valid_name(name) {
            assert!(
                matches!(
                    bus.try_emit(name, ()).map_err(EmitError::from),
                    Err(EmitError::InvalidName(_))
                ),
                "try_emit({name:?}) of an invalid name"
            );
            continue;
        }
        let name_tokens: Vec<&str> = name.split('.').collect();
        let mut matching = 0;
        for (count, (pattern, _)) in expected.iter_mut().zip(&listeners) {
            let pattern_tokens: Vec<&str> = pattern.split('.').collect();
            if reference_matches(&pattern_tokens, &name_tokens) {
                *count += 1;
                matching += 1;
            }
        }
        let emission = bus
            .try_emit(name, ())
            .unwrap_or_else(|error| panic!("try_emit({name:?}): {error}"));
        assert_eq!(
            emission.listener_count(),
            matching,
            "listeners reached by {name:?}, patterns {:?}",
            listeners.iter().map(|(p, _)| p).collect::<Vec<_>>()
        );
    }
    for ((pattern, received), expected) in listeners.iter().zip(expected) {
        assert_eq!(
            received.load(Ordering::Relaxed),
            expected,
            "events received by the listener of {pattern:?}, names {lines:?}"
        );
    }
});

/// `validate_pattern` and `validate_name` agree with the reference rules; their errors name
/// the rejected text and say something.
fn check_validation(line: &str, valid_pattern: bool, valid_name: bool) {
    match validate_pattern(line) {
        Ok(()) => assert!(valid_pattern, "validate_pattern accepted {line:?}"),
        Err(error) => {
            assert!(!valid_pattern, "validate_pattern refused {line:?}: {error}");
            assert_eq!(error.name(), line);
            assert!(!error.to_string().is_empty());
        }
    }
    match validate_name(line) {
        Ok(()) => assert!(valid_name, "validate_name accepted {line:?}"),
        Err(error) => {
            assert!(!valid_name, "validate_name refused {line:?}: {error}");
            assert_eq!(error.name(), line);
            assert!(!error.to_string().is_empty());
        }
    }
    assert!(
        !valid_name || valid_pattern,
        "{line:?} is a name but not a pattern"
    );
}

/// A token of an event name: ASCII letters, digits, `_` and `-`, at least one.
fn is_name_token(token: &str) -> bool {
    !token.is_empty()
        && token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The event-name rules, written as plainly as possible (as in `name.rs`'s proptest).
fn reference_valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && name.split('.').all(is_name_token)
}

/// The pattern rules, written as plainly as possible (as in `pattern.rs`'s proptest): name
/// tokens, where a token may be `*` and the last token may be `>`.
fn reference_valid_pattern(text: &str) -> bool {
    let tokens: Vec<&str> = text.split('.').collect();
    !text.is_empty()
        && text.len() <= MAX_NAME_LEN
        && tokens.iter().enumerate().all(|(i, token)| {
            *token == "*" || (*token == ">" && i == tokens.len() - 1) || is_name_token(token)
        })
}

/// Whether a valid pattern matches a valid name, token by token: `*` is exactly one token, a
/// last `>` one or more, anything else itself.
fn reference_matches(pattern: &[&str], name: &[&str]) -> bool {
    match (pattern, name) {
        ([], []) => true,
        ([">"], [_, ..]) => true,
        (["*", pattern @ ..], [_, name @ ..]) => reference_matches(pattern, name),
        ([literal, pattern @ ..], [token, name @ ..]) => {
            literal == token && reference_matches(pattern, name)
        }
        _ => false,
    }
}
