//! Patterns in NATS token syntax (`*` one token, a last `>` one or more), as the transports
//! match them.

/// Whether the event name `name` matches `pattern`.
pub(crate) fn matches(pattern: &str, name: &str) -> bool {
    let tokens: Vec<&str> = pattern.split('.').collect();
    let mut names = name.split('.');
    for (position, token) in tokens.iter().enumerate() {
        let last = position + 1 == tokens.len();
        match (*token, names.next()) {
            (_, None) => return false,
            (">", Some(_)) if last => return true,
            ("*", Some(_)) => {}
            (literal, Some(part)) if literal == part => {}
            _ => return false,
        }
    }
    names.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_as_nats_subjects_do() {
        for (pattern, name, expected) in [
            ("orders.placed", "orders.placed", true),
            ("orders.*", "orders.placed", true),
            ("orders.*", "orders.placed.eu", false),
            ("orders.>", "orders.placed.eu", true),
            ("orders.>", "orders", false),
            (">", "a", true),
            ("*.placed", "orders.placed", true),
            ("orders", "orders.placed", false),
            ("a.>.b", "a.x.b", false),
        ] {
            assert_eq!(matches(pattern, name), expected, "{pattern} {name}");
        }
    }
}
