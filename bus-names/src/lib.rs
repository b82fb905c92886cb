//! The rules for event names and listener patterns, shared by the runtime (`bus-core`) and the
//! `#[bus::listener]` macro (`bus-macros`), so the compile-time check and the run-time check can
//! never drift apart.
//!
//! Depend on `bus`, which applies these rules where names are given (`emit`, `add_listener`,
//! the macro's arguments) and exposes them as `bus::event::validate_name` and
//! `bus::event::validate_pattern`. This crate has no dependency: the proc-macro crate compiles
//! it too.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

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

/// Why a string is not a valid listener pattern.
///
/// Patterns follow the event-name rules, so those problems are reported as [`NameProblem`]s;
/// the other variants are the ways a wildcard can be misplaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatternProblem {
    /// The pattern breaks a rule it shares with event names (empty, too long, empty token,
    /// invalid character).
    Name(NameProblem),
    /// A `*` or `>` shares its token with other characters (`ord*`, `a.b>`).
    WildcardInsideToken {
        /// The wildcard character, `*` or `>`.
        wildcard: char,
        /// Byte offset of the wildcard.
        at: usize,
    },
    /// A `>` token is followed by more tokens (`orders.>.created`).
    RestNotLast {
        /// Byte offset of the `>`.
        at: usize,
    },
}

impl PatternProblem {
    /// A lower-case, rustc-style sentence saying what is wrong and what to write instead.
    pub fn message(&self) -> String {
        match *self {
            PatternProblem::Name(problem) => problem.message(),
            PatternProblem::WildcardInsideToken { wildcard, at } => format!(
                "listener pattern has `{wildcard}` inside a token at byte {at}; a wildcard must be \
                 a whole token: write `*` to match exactly one token (`orders.*.created`) or `>` \
                 as the last token to match one or more (`orders.>`)"
            ),
            PatternProblem::RestNotLast { at } => format!(
                "listener pattern has `>` at byte {at} before its last token; `>` matches all the \
                 remaining tokens, so it must come last (`orders.>`); write `*` to match a single \
                 token (`orders.*.created`)"
            ),
        }
    }
}

/// Checks `text` against the listener-pattern rules, in NATS subject syntax: the event-name
/// rules, except that a token may be exactly `*` (matching exactly one token) and the last
/// token may be exactly `>` (matching one or more tokens).
///
/// Every valid event name is a valid pattern, which matches that name only.
pub fn check_pattern(text: &str) -> Result<(), PatternProblem> {
    // Whole-token wildcards are masked with a one-byte literal, so the shared event-name rules
    // check everything else and their byte offsets still point into `text`. Any wildcard left
    // after masking is misplaced.
    let last = text.split('.').count() - 1;
    let mut masked = String::with_capacity(text.len());
    for (i, token) in text.split('.').enumerate() {
        if i > 0 {
            masked.push('.');
        }
        let whole_wildcard = token == "*" || (token == ">" && i == last);
        masked.push_str(if whole_wildcard { "_" } else { token });
    }
    match check_event_name(&masked) {
        Ok(()) => Ok(()),
        Err(NameProblem::Wildcard { at }) => Err(misplaced_wildcard(text, at)),
        Err(problem) => Err(PatternProblem::Name(problem)),
    }
}

/// Says why the wildcard at byte `at` of `text`, which survived masking, is misplaced.
fn misplaced_wildcard(text: &str, at: usize) -> PatternProblem {
    let start = text[..at].rfind('.').map_or(0, |dot| dot + 1);
    let end = text[at..].find('.').map_or(text.len(), |dot| at + dot);
    if &text[start..end] == ">" {
        PatternProblem::RestNotLast { at }
    } else {
        PatternProblem::WildcardInsideToken {
            // Wildcards are ASCII, so the byte is the whole character.
            wildcard: char::from(text.as_bytes()[at]),
            at,
        }
    }
}

/// Cases both crates test against, so the two uses of these rules are checked by one table:
/// `(name, is_valid)`. Not public API: shared by the tests of `bus-core` and `bus-macros`.
#[doc(hidden)]
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

/// Listener patterns both crates test against, as [`CASES`] is for event names:
/// `(pattern, is_valid)`. Not public API.
#[doc(hidden)]
pub const PATTERN_CASES: &[(&str, bool)] = &[
    ("orders.eu.created", true),
    ("orders.*", true),
    ("orders.*.created", true),
    ("orders.>", true),
    ("orders.*.>", true),
    ("*", true),
    (">", true),
    ("*.*", true),
    ("*.>", true),
    ("ord*", false),
    ("*orders", false),
    ("a.b>", false),
    ("a.**", false),
    ("orders.>.created", false),
    (">.>", false),
    (">.*", false),
    ("", false),
    ("orders..*", false),
    ("*.", false),
    (".>", false),
    ("orders.* ", false),
    ("orders.*.x y", false),
];
