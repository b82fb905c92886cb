//! Listener patterns in NATS subject syntax (`orders.*`, `orders.>`), and an index that finds
//! every pattern matching an event name by walking a token trie.
//!
//! The syntax is the NATS one so a pattern maps 1:1 to a broker subscription later: `*` as a
//! whole token matches exactly one token, `>` as the last token matches one or more tokens.
//! Everything else follows the event-name rules. The syntax check itself (`check_pattern`,
//! `PatternProblem`) lives in the `bus-names` crate, so that `#[bus::listener]` checks its pattern
//! at compile time with the very same code.

use std::fmt;
use std::str::Split;
use std::sync::Arc;

use bus_names::check_pattern;

use crate::error::NameError;
use crate::shared_map::SharedMap;

/// One token of a parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Token {
    /// A token that must appear as is.
    Literal(Box<str>),
    /// `*`: exactly one token, whatever it is.
    Any,
    /// `>`: one or more tokens, whatever they are. Only ever the last token.
    Rest,
}

/// A validated listener pattern such as `orders.eu.created`, `orders.*.created` or `orders.>`.
///
/// Parsed once when a listener is added so that matching never re-validates; cheap to clone
/// because the registry keeps a copy per listener.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Pattern {
    text: Arc<str>,
    tokens: Arc<[Token]>,
}

impl Pattern {
    /// Parses a pattern: dot-separated tokens following the event-name rules, where a token may
    /// be exactly `*` and the last token may be exactly `>`.
    ///
    /// # Errors
    ///
    /// Returns a [`NameError`] saying what to write instead when `text` breaks an
    /// event-name rule or holds a wildcard anywhere but as a whole token (`>` only last).
    pub(crate) fn parse(text: &str) -> Result<Pattern, NameError> {
        check_pattern(text).map_err(|problem| NameError::pattern(text, problem))?;
        let tokens = text
            .split('.')
            .map(|token| match token {
                "*" => Token::Any,
                ">" => Token::Rest,
                literal => Token::Literal(literal.into()),
            })
            .collect();
        Ok(Pattern {
            text: text.into(),
            tokens,
        })
    }

    /// The pattern as written, which is also its NATS subject.
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pattern has no wildcard, so it matches exactly one event name (itself) and
    /// the registry can keep it in its plain by-name map.
    pub(crate) fn is_literal(&self) -> bool {
        self.tokens
            .iter()
            .all(|token| matches!(token, Token::Literal(_)))
    }

    /// Whether the pattern matches the event name `name`, token by token.
    ///
    /// The plain reference that [`PatternIndex`] is tested against, and what the in-memory
    /// transport filters with. `name` is expected to be a valid event name; any other string
    /// gets a definite answer, never a panic.
    pub(crate) fn matches(&self, name: &str) -> bool {
        let mut names = name.split('.');
        for token in self.tokens.iter() {
            match (token, names.next()) {
                (_, None) => return false,
                (Token::Rest, Some(_)) => return true,
                (Token::Any, Some(_)) => {}
                (Token::Literal(literal), Some(name)) => {
                    if **literal != *name {
                        return false;
                    }
                }
            }
        }
        names.next().is_none()
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Values keyed by pattern, answering "which values' patterns match this event name?".
///
/// A trie with one level per token: the cost of a lookup grows with the number of tokens in the
/// name and the number of matches, not with the number of registered patterns. Several values
/// may share a pattern.
///
/// Persistent, because the registry is copy-on-write: `clone` is O(1), and an insert or a
/// removal copies only the nodes on the pattern's path (children are [`SharedMap`]s and
/// `Arc`s), so registering n patterns one by one is O(n log n), not O(n²).
#[derive(Debug, Clone)]
pub(crate) struct PatternIndex<T> {
    root: Node<T>,
    len: usize,
}

/// One trie node: the patterns whose tokens so far lead here.
#[derive(Debug, Clone)]
struct Node<T> {
    /// Children for literal next tokens.
    literals: SharedMap<Box<str>, Node<T>>,
    /// The child for a `*` next token.
    any: Option<Arc<Node<T>>>,
    /// Values of patterns whose next and last token is `>`.
    rest: Arc<[T]>,
    /// Values of patterns that end here.
    exact: Arc<[T]>,
}

// Written out because the derive would require `T: Default`.
impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            literals: SharedMap::default(),
            any: None,
            rest: Arc::new([]),
            exact: Arc::new([]),
        }
    }
}

impl<T> Node<T> {
    /// Whether the node holds nothing, so its parent can drop it.
    fn is_empty(&self) -> bool {
        self.literals.is_empty()
            && self.any.is_none()
            && self.rest.is_empty()
            && self.exact.is_empty()
    }
}

// Written out because the derive would require `T: Default`.
impl<T> Default for PatternIndex<T> {
    fn default() -> Self {
        PatternIndex::new()
    }
}

impl<T> PatternIndex<T> {
    /// An empty index.
    pub(crate) fn new() -> Self {
        PatternIndex {
            root: Node::default(),
            len: 0,
        }
    }

    /// The number of values in the index, counting each value once whatever its pattern.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether the index holds no value.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Calls `f` on every value whose pattern matches the event name `name`, once per value.
    ///
    /// Does not allocate. The order of the calls is unspecified. `name` is expected to be a
    /// valid event name; any other string gets a definite answer, the same as
    /// [`Pattern::matches`], never a panic.
    pub(crate) fn for_each_match(&self, name: &str, mut f: impl FnMut(&T)) {
        visit(&self.root, name.split('.'), &mut f);
    }
}

impl<T: Clone> PatternIndex<T> {
    /// Adds `value` under `pattern`, beside any values already there.
    pub(crate) fn insert(&mut self, pattern: &Pattern, value: T) {
        let mut node = &mut self.root;
        for token in pattern.tokens.iter() {
            node = match token {
                Token::Literal(literal) => node.literals.entry(literal.clone()).or_default(),
                Token::Any => Arc::make_mut(node.any.get_or_insert_with(Arc::default)),
                Token::Rest => {
                    push(&mut node.rest, value);
                    self.len += 1;
                    return;
                }
            };
        }
        push(&mut node.exact, value);
        self.len += 1;
    }

    /// Removes the values under exactly `pattern` (not the patterns it matches) for which `pred`
    /// returns `true`, and returns how many were removed.
    ///
    /// Nodes left empty are dropped, so adding and removing listeners does not grow the index.
    pub(crate) fn remove(&mut self, pattern: &Pattern, mut pred: impl FnMut(&T) -> bool) -> usize {
        let removed = remove_in(&mut self.root, &pattern.tokens, &mut pred);
        self.len -= removed;
        removed
    }
}

/// Calls `f` on the values below `node` whose remaining pattern tokens match `names`.
///
/// Recursion is bounded by the number of tokens in the name (at most 129 for a valid name).
fn visit<T>(node: &Node<T>, mut names: Split<'_, char>, f: &mut impl FnMut(&T)) {
    let Some(name) = names.next() else {
        node.exact.iter().for_each(&mut *f);
        return;
    };
    // At least one token is left, which is all `>` asks for.
    node.rest.iter().for_each(&mut *f);
    if let Some(child) = node.literals.get(name) {
        visit(child, names.clone(), f);
    }
    if let Some(child) = &node.any {
        visit(child, names, f);
    }
}

/// Removes the values under `tokens` below `node` that `pred` selects, dropping nodes left empty.
///
/// Copies the shared nodes on the pattern's path, which the registry only walks when it removes
/// a listener it found under that pattern.
fn remove_in<T: Clone>(
    node: &mut Node<T>,
    tokens: &[Token],
    pred: &mut impl FnMut(&T) -> bool,
) -> usize {
    match tokens.split_first() {
        None => remove_from(&mut node.exact, pred),
        // `>` is always the last token.
        Some((Token::Rest, _)) => remove_from(&mut node.rest, pred),
        Some((Token::Any, tokens)) => {
            let Some(child) = node.any.as_mut() else {
                return 0;
            };
            let child = Arc::make_mut(child);
            let removed = remove_in(child, tokens, pred);
            if child.is_empty() {
                node.any = None;
            }
            removed
        }
        Some((Token::Literal(literal), tokens)) => {
            let Some(child) = node.literals.get_mut(literal) else {
                return 0;
            };
            let removed = remove_in(child, tokens, pred);
            if child.is_empty() {
                node.literals.remove(literal);
            }
            removed
        }
    }
}

/// Appends `value` to a shared list of values (a new list: the old one may be in a snapshot).
fn push<T: Clone>(values: &mut Arc<[T]>, value: T) {
    *values = values
        .iter()
        .cloned()
        .chain(std::iter::once(value))
        .collect();
}

/// Removes the values `pred` selects from `values`, returning how many there were.
fn remove_from<T: Clone>(values: &mut Arc<[T]>, pred: &mut impl FnMut(&T) -> bool) -> usize {
    let kept: Vec<T> = values.iter().filter(|v| !pred(v)).cloned().collect();
    let removed = values.len() - kept.len();
    if removed > 0 {
        *values = kept.into();
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use bus_names::{
        CASES, MAX_NAME_LEN, NameProblem, PATTERN_CASES, PatternProblem, check_event_name,
    };
    use proptest::prelude::*;

    fn pattern(text: &str) -> Pattern {
        Pattern::parse(text).unwrap_or_else(|error| panic!("{error}"))
    }

    fn problem(text: &str) -> PatternProblem {
        match Pattern::parse(text) {
            Ok(pattern) => panic!("{pattern} was accepted"),
            Err(error) => error.problem(),
        }
    }

    /// The values matching `name`, sorted, so results compare regardless of visit order.
    fn matches_of<T: Clone + Ord>(index: &PatternIndex<T>, name: &str) -> Vec<T> {
        let mut found = Vec::new();
        index.for_each_match(name, |value| found.push(value.clone()));
        found.sort();
        found
    }

    /// The number of trie nodes, to check that removal prunes.
    fn node_count<T>(node: &Node<T>) -> usize {
        1 + node.literals.values().map(node_count).sum::<usize>()
            + node.any.as_deref().map_or(0, node_count)
    }

    #[test]
    fn star_matches_exactly_one_token() {
        let p = pattern("orders.*");
        assert!(p.matches("orders.eu"));
        assert!(!p.matches("orders"));
        assert!(!p.matches("orders.eu.created"));
        assert!(!p.matches("invoices.eu"));
        assert!(pattern("orders.*.created").matches("orders.eu.created"));
        assert!(!pattern("orders.*.created").matches("orders.eu.deleted"));
    }

    #[test]
    fn rest_matches_one_or_more_tokens() {
        let p = pattern("orders.>");
        assert!(p.matches("orders.eu"));
        assert!(p.matches("orders.eu.created"));
        assert!(!p.matches("orders"));
        assert!(!p.matches("invoices.eu"));
    }

    #[test]
    fn lone_wildcards() {
        for name in ["a", "orders.eu", "orders.eu.created"] {
            assert!(pattern(">").matches(name), "{name}");
        }
        assert!(pattern("*").matches("orders"));
        assert!(!pattern("*").matches("orders.eu"));
        assert!(pattern("*.>").matches("orders.eu"));
        assert!(!pattern("*.>").matches("orders"));
    }

    #[test]
    fn literal_patterns_match_only_themselves() {
        let p = pattern("orders.eu.created");
        assert!(p.is_literal());
        assert!(p.matches("orders.eu.created"));
        assert!(!p.matches("orders.eu"));
        assert!(!p.matches("orders.eu.created.v2"));
        assert!(!pattern("orders.*").is_literal());
        assert!(!pattern("orders.>").is_literal());
    }

    #[test]
    fn displays_as_written() {
        let p = pattern("orders.*.>");
        assert_eq!(p.to_string(), "orders.*.>");
        assert_eq!(p.as_str(), "orders.*.>");
    }

    #[test]
    fn the_shared_name_table_holds_for_patterns() {
        for &(name, valid) in CASES {
            let parsed = Pattern::parse(name);
            if valid {
                assert!(parsed.is_ok_and(|p| p.is_literal()), "{name:?}");
            } else if !name.contains(['*', '>']) {
                assert!(parsed.is_err(), "{name:?}");
            }
        }
    }

    #[test]
    fn the_shared_pattern_table_holds() {
        for &(text, valid) in PATTERN_CASES {
            assert_eq!(Pattern::parse(text).is_ok(), valid, "{text:?}");
            assert_eq!(check_pattern(text).is_ok(), valid, "{text:?}");
        }
    }

    #[test]
    fn misplaced_wildcards_are_rejected() {
        assert_eq!(
            problem("ord*"),
            PatternProblem::WildcardInsideToken {
                wildcard: '*',
                at: 3
            }
        );
        assert_eq!(
            problem("a.b>"),
            PatternProblem::WildcardInsideToken {
                wildcard: '>',
                at: 3
            }
        );
        assert_eq!(
            problem("a.**"),
            PatternProblem::WildcardInsideToken {
                wildcard: '*',
                at: 2
            }
        );
        assert_eq!(
            problem("orders.>.created"),
            PatternProblem::RestNotLast { at: 7 }
        );
        assert_eq!(problem(">.>"), PatternProblem::RestNotLast { at: 0 });
    }

    #[test]
    fn name_rules_still_apply() {
        assert_eq!(problem(""), PatternProblem::Name(NameProblem::Empty));
        assert_eq!(
            problem("orders..*"),
            PatternProblem::Name(NameProblem::EmptyToken { at: 7 })
        );
        assert_eq!(
            problem("*."),
            PatternProblem::Name(NameProblem::EmptyToken { at: 2 })
        );
        assert_eq!(
            problem("orders.*.x y"),
            PatternProblem::Name(NameProblem::InvalidChar { ch: ' ', at: 10 })
        );
        let long = format!("{}.>", "a".repeat(MAX_NAME_LEN));
        assert_eq!(
            problem(&long),
            PatternProblem::Name(NameProblem::TooLong { len: long.len() })
        );
    }

    #[test]
    fn errors_name_the_pattern_and_say_what_to_write() {
        let error = Pattern::parse("ord*").unwrap_err();
        assert_eq!(error.name(), "ord*");
        assert_eq!(
            error.to_string(),
            "invalid listener pattern \"ord*\": listener pattern has `*` inside a token at byte 3; \
             a wildcard must be a whole token: write `*` to match exactly one token \
             (`orders.*.created`) or `>` as the last token to match one or more (`orders.>`)"
        );
        let error = Pattern::parse("orders.>.created").unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid listener pattern \"orders.>.created\": listener pattern has `>` at byte 7 \
             before its last token; `>` matches all the remaining tokens, so it must come last \
             (`orders.>`); write `*` to match a single token (`orders.*.created`)"
        );
        let error = Pattern::parse("a..b").unwrap_err();
        assert!(
            error.to_string().starts_with(
                "invalid listener pattern \"a..b\": event name has an empty token at byte 2"
            ),
            "{error}"
        );
    }

    #[test]
    fn index_finds_every_matching_pattern() {
        let mut index = PatternIndex::new();
        for (i, text) in [
            "orders.eu.created",
            "orders.*.created",
            "orders.>",
            ">",
            "*",
            "orders.*",
            "invoices.>",
        ]
        .into_iter()
        .enumerate()
        {
            index.insert(&pattern(text), i);
        }
        assert_eq!(index.len(), 7);
        assert_eq!(matches_of(&index, "orders.eu.created"), [0, 1, 2, 3]);
        assert_eq!(matches_of(&index, "orders.eu"), [2, 3, 5]);
        assert_eq!(matches_of(&index, "orders"), [3, 4]);
        assert_eq!(matches_of(&index, "payments.eu"), [3]);
    }

    #[test]
    fn index_keeps_values_sharing_a_pattern() {
        let mut index = PatternIndex::new();
        index.insert(&pattern("orders.*"), 1);
        index.insert(&pattern("orders.*"), 2);
        index.insert(&pattern("orders.*"), 3);
        assert_eq!(matches_of(&index, "orders.eu"), [1, 2, 3]);
        assert_eq!(index.remove(&pattern("orders.*"), |&v| v == 2), 1);
        assert_eq!(matches_of(&index, "orders.eu"), [1, 3]);
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn remove_takes_only_the_exact_pattern_and_prunes() {
        let mut index = PatternIndex::new();
        index.insert(&pattern("orders.eu.created"), 1);
        index.insert(&pattern("orders.*.created"), 2);
        index.insert(&pattern("orders.>"), 3);
        // `orders.>` matches `orders.eu.created` but is a different pattern.
        assert_eq!(index.remove(&pattern("orders.>"), |&v| v == 1), 0);
        assert_eq!(index.remove(&pattern("orders.eu.created"), |_| true), 1);
        assert_eq!(index.remove(&pattern("never.added"), |_| true), 0);
        assert_eq!(index.remove(&pattern("orders.*.created"), |_| true), 1);
        assert_eq!(index.remove(&pattern("orders.>"), |_| true), 1);
        assert!(index.is_empty());
        assert!(index.root.is_empty());
        assert_eq!(node_count(&index.root), 1);
    }

    #[test]
    fn clones_are_independent() {
        let mut index = PatternIndex::new();
        index.insert(&pattern("orders.*"), 1);
        let snapshot = index.clone();
        index.insert(&pattern("orders.>"), 2);
        index.remove(&pattern("orders.*"), |_| true);
        assert_eq!(matches_of(&snapshot, "orders.eu"), [1]);
        assert_eq!(matches_of(&index, "orders.eu"), [2]);
    }

    #[test]
    fn odd_names_get_an_answer_not_a_panic() {
        let mut index = PatternIndex::new();
        for (i, text) in ["*", ">", "a.*", "a.>"].into_iter().enumerate() {
            index.insert(&pattern(text), i);
        }
        for name in ["", ".", "a.", "..", "a..b", "*", ">", "a.>"] {
            let expected: Vec<usize> = ["*", ">", "a.*", "a.>"]
                .into_iter()
                .enumerate()
                .filter(|(_, text)| pattern(text).matches(name))
                .map(|(i, _)| i)
                .collect();
            assert_eq!(matches_of(&index, name), expected, "{name:?}");
        }
    }

    /// The pattern rules, written as plainly as possible.
    fn reference_valid(text: &str) -> bool {
        let tokens: Vec<&str> = text.split('.').collect();
        !text.is_empty()
            && text.len() <= MAX_NAME_LEN
            && tokens.iter().enumerate().all(|(i, token)| {
                *token == "*"
                    || (*token == ">" && i == tokens.len() - 1)
                    || (!token.is_empty()
                        && token
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            })
    }

    /// Names of 1 to 5 tokens over a small alphabet, so random patterns often match.
    fn name() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..=5)
            .prop_map(|tokens| tokens.join("."))
    }

    /// Valid patterns over the same alphabet, with `*` anywhere and maybe a trailing `>`.
    fn pattern_text() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "*"]), 0..=5),
            any::<bool>(),
        )
            .prop_map(|(mut tokens, rest)| {
                if rest || tokens.is_empty() {
                    tokens.push(">");
                }
                tokens.join(".")
            })
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(String, u8),
        /// Remove the values under the pattern that are below the threshold.
        Remove(String, u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (pattern_text(), any::<u8>()).prop_map(|(p, v)| Op::Insert(p, v)),
            1 => (pattern_text(), any::<u8>()).prop_map(|(p, v)| Op::Remove(p, v)),
        ]
    }

    proptest! {
        #[test]
        fn index_agrees_with_the_reference(
            ops in prop::collection::vec(op(), 0..40),
            names in prop::collection::vec(name(), 1..20),
        ) {
            let mut index = PatternIndex::new();
            let mut model: Vec<(Pattern, u8)> = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(text, value) => {
                        let p = pattern(&text);
                        index.insert(&p, value);
                        model.push((p, value));
                    }
                    Op::Remove(text, below) => {
                        let p = pattern(&text);
                        let before = model.len();
                        model.retain(|(q, v)| !(*q == p && *v < below));
                        let removed = index.remove(&p, |&v| v < below);
                        prop_assert_eq!(removed, before - model.len());
                    }
                }
                prop_assert_eq!(index.len(), model.len());
                prop_assert_eq!(index.is_empty(), model.is_empty());
            }
            for name in &names {
                let mut expected: Vec<u8> = model
                    .iter()
                    .filter(|(p, _)| p.matches(name))
                    .map(|&(_, v)| v)
                    .collect();
                expected.sort_unstable();
                prop_assert_eq!(matches_of(&index, name), expected, "name {:?}", name);
            }
            // Removing everything leaves nothing behind.
            for (p, _) in &model {
                index.remove(p, |_| true);
            }
            prop_assert!(index.is_empty());
            prop_assert_eq!(node_count(&index.root), 1);
        }

        #[test]
        fn parser_accepts_exactly_the_valid_patterns(text in "[a-c*>.é _-]{0,12}") {
            match Pattern::parse(&text) {
                Ok(p) => {
                    prop_assert!(reference_valid(&text));
                    prop_assert_eq!(p.to_string(), text);
                }
                Err(error) => {
                    prop_assert!(!reference_valid(&text));
                    prop_assert_eq!(error.name(), text.as_str());
                }
            }
        }

        #[test]
        fn generated_patterns_round_trip(text in pattern_text()) {
            prop_assert_eq!(pattern(&text).to_string(), text);
        }

        #[test]
        fn literal_patterns_are_exactly_the_event_names(text in "[a-c*>.]{0,10}") {
            let literal = Pattern::parse(&text).is_ok_and(|p| p.is_literal());
            prop_assert_eq!(literal, check_event_name(&text).is_ok());
        }

        #[test]
        fn literal_patterns_match_by_equality(text in name(), name in name()) {
            prop_assert_eq!(pattern(&text).matches(&name), text == name);
        }

        #[test]
        fn wildcard_errors_point_at_the_wildcard(text in "[a*>.]{1,10}") {
            match Pattern::parse(&text).map_err(|error| error.problem()) {
                Err(PatternProblem::WildcardInsideToken { wildcard, at }) => {
                    prop_assert_eq!(char::from(text.as_bytes()[at]), wildcard);
                }
                Err(PatternProblem::RestNotLast { at }) => {
                    prop_assert_eq!(text.as_bytes()[at], b'>');
                    prop_assert!(text[at..].starts_with(">."));
                }
                Err(PatternProblem::Name(NameProblem::EmptyToken { .. })) | Ok(_) => {}
                Err(other) => prop_assert!(false, "unexpected {:?}", other),
            }
        }

        #[test]
        fn parser_never_panics(text in "\\PC{0,300}") {
            if let Err(error) = Pattern::parse(&text) {
                prop_assert!(!error.to_string().is_empty());
            }
        }

        #[test]
        fn index_never_panics_on_odd_names(text in pattern_text(), name in "[a-c*>. ]{0,8}") {
            let p = pattern(&text);
            let mut index = PatternIndex::new();
            index.insert(&p, ());
            let mut found = 0;
            index.for_each_match(&name, |()| found += 1);
            prop_assert_eq!(found == 1, p.matches(&name));
        }
    }
}
