//! The rules for event names, shared word for word by the runtime (`bus-core`) and the
//! `#[bus::listener]` macro (`bus-macros`, which includes this file with `#[path]`), so the
//! compile-time check and the run-time check can never drift apart.
//!
//! This file must stay free of dependencies: it is compiled into the proc-macro crate too.

/// The longest event name accepted, in bytes.
///
/// Long enough for any real dotted name, short enough to be a valid NATS subject and Redis key
/// once a transport adds its prefix.
pub const MAX_NAME_LEN: usize = 256;

/// Why a string is not a valid event name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameProblem {
    /// The name is the empty string.
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`] bytes.
    TooLong {
        /// The length of the rejected name, in bytes.
        len: usize,
    },
    /// Two dots in a row, or a dot at the start or the end.
    EmptyToken {
        /// Byte offset of the empty token.
        at: usize,
    },
    /// A `*` or `>` wildcard, which only listener patterns may hold.
    Wildcard {
        /// Byte offset of the wildcard.
        at: usize,
    },
    /// A character outside `A-Z a-z 0-9 _ -` (whitespace, punctuation, non-ASCII...).
    InvalidChar {
        /// The offending character.
        ch: char,
        /// Byte offset of the character.
        at: usize,
    },
}

impl NameProblem {
    /// A lower-case, rustc-style sentence saying what is wrong and what to write instead.
    pub fn message(&self) -> String {
        match *self {
            NameProblem::Empty => "event name must not be empty; write a dotted name such as \
                                   `user.created`"
                .to_owned(),
            NameProblem::TooLong { len } => {
                format!("event name is {len} bytes long; the limit is {MAX_NAME_LEN} bytes")
            }
            NameProblem::EmptyToken { at } => format!(
                "event name has an empty token at byte {at}; tokens are separated by single dots \
                 and the name must not start or end with a dot"
            ),
            NameProblem::Wildcard { at } => format!(
                "event name has a wildcard at byte {at}; an emitted event needs a concrete name \
                 such as `orders.created`"
            ),
            NameProblem::InvalidChar { ch, at } => format!(
                "event name has the character {ch:?} at byte {at}; use only ASCII letters, digits, \
                 `_` and `-`, with `.` between tokens"
            ),
        }
    }
}

/// Checks `name` against the event-name rules: dot-separated tokens of ASCII letters, digits,
/// `_` and `-`, no empty token, at most [`MAX_NAME_LEN`] bytes.
///
/// These are the NATS subject token rules narrowed to a set every broker accepts, so a name
/// that passes here maps 1:1 to a subject or a stream key later.
pub fn check_event_name(name: &str) -> Result<(), NameProblem> {
    if name.is_empty() {
        return Err(NameProblem::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameProblem::TooLong { len: name.len() });
    }
    let mut token_start = 0;
    for (at, ch) in name.char_indices() {
        match ch {
            '.' => {
                if at == token_start {
                    return Err(NameProblem::EmptyToken { at });
                }
                token_start = at + 1;
            }
            '*' | '>' => return Err(NameProblem::Wildcard { at }),
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '-' => {}
            _ => return Err(NameProblem::InvalidChar { ch, at }),
        }
    }
    if token_start == name.len() {
        return Err(NameProblem::EmptyToken { at: name.len() });
    }
    Ok(())
}

/// Cases both crates test against, so the two uses of this file are checked by one table:
/// `(name, is_valid)`.
#[cfg(test)]
pub const CASES: &[(&str, bool)] = &[
    ("user.created", true),
    ("orders.eu.created", true),
    ("a", true),
    ("user_signup-v2.done", true),
    ("UPPER.Case.09", true),
    ("", false),
    (".user", false),
    ("user.", false),
    ("user..created", false),
    ("user created", false),
    (" user", false),
    ("user\tcreated", false),
    ("user.*", false),
    ("orders.>", false),
    ("ordérs", false),
    ("user/created", false),
    ("user:created", false),
];
