//! Subscription patterns (NATS token syntax: `*` one token, a last `>` one or more), matched
//! twice: in SQL, as a regular expression the database applies to the `name` column when it
//! gives a group its delivery records, and in Rust, to wake only the subscriptions a
//! notification concerns. bus-core's matcher is private to it; both forms here are checked
//! against a reference and against each other (unit and property tests, and
//! `tests/transport_patterns.rs` against PostgreSQL itself).

/// A pattern that passed `check_pattern`: its tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Matcher {
    tokens: Vec<String>,
}

impl Matcher {
    /// `pattern` must have passed `bus_core::transport::support::check_pattern`.
    pub(crate) fn new(pattern: &str) -> Matcher {
        Matcher {
            tokens: pattern.split('.').map(str::to_owned).collect(),
        }
    }

    /// Whether `name` matches: token by token, `*` any one token, a last `>` one or more.
    pub(crate) fn matches(&self, name: &str) -> bool {
        let mut names = name.split('.');
        for (position, token) in self.tokens.iter().enumerate() {
            let last = position + 1 == self.tokens.len();
            match (token.as_str(), names.next()) {
                (_, None) => return false,
                (">", Some(_)) if last => return true,
                ("*", Some(_)) => {}
                (literal, Some(name)) if literal == name => {}
                _ => return false,
            }
        }
        names.next().is_none()
    }

    /// The PostgreSQL regular expression (ARE, for `~`) that matches the same names, anchored:
    /// a literal token as it is (event-name tokens are ASCII letters, digits, `_` and `-`; any
    /// other character is escaped all the same), `*` as `[^.]+`, a last `>` as `.+`, tokens
    /// joined by `\.`.
    pub(crate) fn regex(&self) -> String {
        let mut regex = String::from("^");
        for (position, token) in self.tokens.iter().enumerate() {
            if position > 0 {
                regex.push_str("\\.");
            }
            match token.as_str() {
                "*" => regex.push_str("[^.]+"),
                ">" if position + 1 == self.tokens.len() => regex.push_str(".+"),
                literal => {
                    for c in literal.chars() {
                        if !(c.is_ascii_alphanumeric() || c == '_') {
                            regex.push('\\');
                        }
                        regex.push(c);
                    }
                }
            }
        }
        regex.push('$');
        regex
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// NATS subject matching, written as plainly as possible.
    fn reference(pattern: &str, name: &str) -> bool {
        let name: Vec<&str> = name.split('.').collect();
        let pattern: Vec<&str> = pattern.split('.').collect();
        for (position, token) in pattern.iter().enumerate() {
            match *token {
                ">" => return name.len() > position,
                "*" if position < name.len() => {}
                literal if name.get(position) == Some(&literal) => {}
                _ => return false,
            }
        }
        name.len() == pattern.len()
    }

    #[test]
    fn nats_semantics() {
        let cases = [
            ("a", "a", true),
            ("a", "a.b", false),
            ("a.*", "a.b", true),
            ("a.*", "a", false),
            ("a.*", "a.b.c", false),
            ("a.>", "a.b", true),
            ("a.>", "a.b.c", true),
            ("a.>", "a", false),
            ("*.b.>", "a.b.c", true),
            ("*.b.>", "a.b", false),
            (">", "a", true),
            ("A", "a", false),
            ("a.*.c", "a.b.d", false),
            ("t1", "t10", false),
            ("a-b", "a-b", true),
        ];
        for (pattern, name, expected) in cases {
            assert_eq!(
                Matcher::new(pattern).matches(name),
                expected,
                "{pattern} {name}"
            );
            assert_eq!(reference(pattern, name), expected, "{pattern} {name}");
        }
    }

    #[test]
    fn regexes_read_as_expected() {
        assert_eq!(Matcher::new("a.*.c").regex(), "^a\\.[^.]+\\.c$");
        assert_eq!(Matcher::new("a-b.>").regex(), "^a\\-b\\..+$");
        assert_eq!(Matcher::new("orders").regex(), "^orders$");
    }

    fn pattern() -> impl Strategy<Value = String> {
        (
            proptest::collection::vec(prop_oneof!["[ab]", "a-", "_b", Just("*".to_owned())], 1..4),
            any::<bool>(),
        )
            .prop_map(|(tokens, tail)| {
                let mut pattern = tokens.join(".");
                if tail {
                    pattern.push_str(".>");
                }
                pattern
            })
    }

    proptest! {
        #[test]
        fn the_matcher_agrees_with_the_reference(
            pattern in pattern(),
            name in proptest::collection::vec(prop_oneof!["[ab]", "a-", "_b"], 1..6),
        ) {
            let name = name.join(".");
            prop_assert_eq!(Matcher::new(&pattern).matches(&name), reference(&pattern, &name));
            prop_assert!(bus_core::transport::support::check_pattern(&pattern).is_ok());
        }
    }

    /// The regular expressions, run by PostgreSQL itself on random patterns and names, agree
    /// with the matcher (and so with NATS semantics). Skipped, with a message, when the shared
    /// server is down outside CI.
    #[tokio::test]
    async fn postgres_applies_the_regexes_as_the_matcher_does() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;

        let url = std::env::var("BUS_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let ci = std::env::var("CI").is_ok_and(|value| value == "true" || value == "1");
        let mut connection = match <sqlx::PgConnection as sqlx::Connection>::connect(&url).await {
            Ok(connection) => connection,
            Err(error) if !ci => {
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED postgres_applies_the_regexes_as_the_matcher_does: PostgreSQL is \
                     not reachable at {url}: {error}"
                );
                return;
            }
            Err(error) => panic!("cannot connect to PostgreSQL at {url}: {error}"),
        };
        let names = proptest::collection::vec(prop_oneof!["[ab]", "a-", "_b"], 1..6)
            .prop_map(|tokens| tokens.join("."));
        let mut runner = TestRunner::deterministic();
        let (mut patterns, mut regexes, mut subjects) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..2_000 {
            let pattern = pattern()
                .new_tree(&mut runner)
                .expect("a pattern")
                .current();
            let name = names.new_tree(&mut runner).expect("a name").current();
            regexes.push(Matcher::new(&pattern).regex());
            patterns.push(pattern);
            subjects.push(name);
        }
        let matched: Vec<bool> = sqlx::query_scalar(
            "SELECT n ~ r FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(n, r, i) \
             ORDER BY i",
        )
        .bind(&subjects)
        .bind(&regexes)
        .fetch_all(&mut connection)
        .await
        .expect("the regexes run");
        let mut positives = 0;
        for (((pattern, name), regex), matched) in
            patterns.iter().zip(&subjects).zip(&regexes).zip(matched)
        {
            assert_eq!(
                matched,
                reference(pattern, name),
                "`{name}` ~ `{regex}` (pattern `{pattern}`)"
            );
            positives += usize::from(matched);
        }
        assert!(positives > 20, "the cases hold matches too: {positives}");
    }
}
