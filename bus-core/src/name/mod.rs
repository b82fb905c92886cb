//! Event names and listener patterns at run time: the rules of the `bus-names` crate (which the
//! macro checks at compile time too) turned into typed errors, and the patterns that listeners
//! are registered under, with their index.

pub(crate) mod pattern;

use bus_names::check_event_name;

use crate::error::NameError;

/// Checks an event name, for `emit` and `add_listener`.
pub(crate) fn validate(name: &str) -> Result<(), NameError> {
    check_event_name(name).map_err(|problem| NameError::new(name, problem))
}

/// Checks `name` against the event-name rules that `emit` applies: dot-separated tokens of
/// ASCII letters, digits, `_` and `-`, no wildcard. For transports and other code that takes
/// names from outside (the wire) and must refuse what `emit` would.
///
/// ```
/// assert!(bus::event::validate_name("orders.eu.created").is_ok());
/// assert!(bus::event::validate_name("orders.*").is_err());
/// ```
///
/// # Errors
///
/// A [`NameError`] saying what is wrong.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    validate(name)
}

/// Checks `pattern` against the listener-pattern rules that `add_listener` applies: a name, or
/// tokens where a whole `*` matches one token and a last `>` one or more.
///
/// ```
/// assert!(bus::event::validate_pattern("orders.*.created").is_ok());
/// assert!(bus::event::validate_pattern("orders.>.created").is_err());
/// ```
///
/// # Errors
///
/// A [`NameError`] saying what is wrong.
pub fn validate_pattern(pattern: &str) -> Result<(), NameError> {
    pattern::Pattern::parse(pattern).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bus_names::{CASES, MAX_NAME_LEN, NameProblem};
    use proptest::prelude::*;

    #[test]
    fn the_shared_table_holds() {
        for &(name, valid) in CASES {
            assert_eq!(validate(name).is_ok(), valid, "{name:?}");
        }
    }

    /// The rules, written as plainly as possible.
    fn reference(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name.split('.').all(|token| {
                !token.is_empty()
                    && token
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            })
    }

    proptest! {
        #[test]
        fn agrees_with_the_reference(name in "[a-cA-C0-9_.*> é\t-]{0,12}") {
            prop_assert_eq!(check_event_name(&name).is_ok(), reference(&name));
        }

        #[test]
        fn errors_point_at_the_offending_byte(name in "[a-c.*> é]{1,12}") {
            match check_event_name(&name) {
                Ok(()) => prop_assert!(reference(&name)),
                Err(NameProblem::InvalidChar { ch, at }) => {
                    prop_assert_eq!(name[at..].chars().next(), Some(ch));
                }
                Err(NameProblem::Wildcard { at }) => {
                    prop_assert!(matches!(name.as_bytes()[at], b'*' | b'>'));
                }
                Err(NameProblem::EmptyToken { at }) => {
                    prop_assert!(at == name.len() || name.as_bytes()[at] == b'.');
                }
                Err(other) => prop_assert!(false, "unexpected {:?}", other),
            }
        }

        #[test]
        fn valid_names_of_any_length_up_to_the_limit(len in 1..=MAX_NAME_LEN + 8) {
            let name = "a".repeat(len);
            prop_assert_eq!(check_event_name(&name).is_ok(), len <= MAX_NAME_LEN);
        }

        #[test]
        fn messages_are_never_empty(name in "\\PC{0,8}") {
            if let Err(error) = validate(&name) {
                prop_assert!(!error.to_string().is_empty());
            }
        }
    }
}
