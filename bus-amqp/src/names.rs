//! Names on the broker: the binding key of a pattern, and the queues of a group.

use bus_core::transport::TransportError;

use crate::error::NAME;

/// The most bytes of an AMQP short string: a routing key, a queue or exchange name.
pub(crate) const MAX_SHORT: usize = 255;

/// The binding key of a subscription pattern (NATS token syntax) on a topic exchange: `*`
/// stays `*` (one word); a last `>` (one or more tokens) becomes `*.#`, one word and then zero
/// or more, because AMQP's `#` alone also matches zero words (`orders.#` matches `orders`,
/// which `orders.>` does not).
pub(crate) fn binding_key(pattern: &str) -> String {
    let mut tokens: Vec<&str> = pattern.split('.').collect();
    if tokens.last() == Some(&">") {
        tokens.pop();
        tokens.extend(["*", "#"]);
    }
    tokens.join(".")
}

/// Checks a pattern: the listener-pattern rules, and an AMQP short string once mapped.
pub(crate) fn check_pattern(pattern: &str) -> Result<String, TransportError> {
    bus_core::transport::support::check_pattern(pattern)
        .map_err(|reason| TransportError::invalid(NAME, "pattern", pattern, reason))?;
    let key = binding_key(pattern);
    if key.len() > MAX_SHORT {
        return Err(TransportError::invalid(
            NAME,
            "pattern",
            pattern,
            format!("longer than the {MAX_SHORT} bytes of an AMQP binding key"),
        ));
    }
    Ok(key)
}

/// The queues of group `group` under the exchange `exchange`: `<exchange>.<group>` (a durable
/// quorum queue) and `<exchange>.<group>.delay` (where nacked events wait for their delay).
pub(crate) fn group_queues(
    exchange: &str,
    group: &str,
) -> Result<(String, String), TransportError> {
    let valid = !group.is_empty()
        && group
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'));
    if !valid {
        return Err(TransportError::invalid(
            NAME,
            "group",
            group,
            "use ASCII letters, digits, `-`, `_` and `.`",
        ));
    }
    let queue = format!("{exchange}.{group}");
    let delay = format!("{queue}.delay");
    if delay.len() > MAX_SHORT {
        return Err(TransportError::invalid(
            NAME,
            "group",
            group,
            format!("its queue names would be longer than the {MAX_SHORT} bytes AMQP allows"),
        ));
    }
    Ok((queue, delay))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_map_to_binding_keys() {
        assert_eq!(binding_key("orders.created"), "orders.created");
        assert_eq!(binding_key("orders.*.created"), "orders.*.created");
        assert_eq!(binding_key("orders.>"), "orders.*.#");
        assert_eq!(binding_key(">"), "*.#");
    }

    #[test]
    fn groups_name_their_queues() {
        let (queue, delay) = group_queues("bus", "billing-1").expect("valid");
        assert_eq!(
            (queue.as_str(), delay.as_str()),
            ("bus.billing-1", "bus.billing-1.delay")
        );
        assert!(group_queues("bus", "a b").is_err());
        assert!(group_queues("bus", "").is_err());
    }
}
