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

/// The queue-name part of group `group`: its ASCII letters, digits, `-`, `_` and `.`, every
/// other character replaced by `_`; when anything was replaced or cut (to fit in `room`
/// bytes), a hash of the whole group name follows, so that distinct groups never share a
/// queue. A group the bus makes (`<service>.<module>::<listener>`) maps this way; a group of
/// those characters alone is its own name. Deterministic across processes (FNV-1a).
fn queue_part(group: &str, room: usize) -> String {
    const HASHED: usize = 17; // `_` and 16 hex digits
    let clean = group
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'));
    if clean && group.len() <= room {
        return group.to_owned();
    }
    let readable: String = group
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(room.saturating_sub(HASHED))
        .collect();
    format!("{readable}_{:016x}", fnv1a(group.as_bytes()))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The queues of group `group` under the exchange `exchange`: `<exchange>.<group>` (a durable
/// quorum queue) and `<exchange>.<group>.delay` (where nacked events wait for their delay),
/// the group's name mapped as [`queue_part`] says when it has other characters than ASCII
/// letters, digits, `-`, `_` and `.`, or is too long.
pub(crate) fn group_queues(
    exchange: &str,
    group: &str,
) -> Result<(String, String), TransportError> {
    if group.is_empty() {
        return Err(TransportError::invalid(NAME, "group", group, "empty"));
    }
    // `<exchange>.` before, `.delay` after.
    let room = MAX_SHORT.saturating_sub(exchange.len() + 1 + 6);
    let part = queue_part(group, room);
    let queue = format!("{exchange}.{part}");
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
        assert!(group_queues("bus", "").is_err());
        // Groups the bus makes from a listener's type name, and long ones: a readable part
        // and a hash, distinct for distinct groups, within AMQP's 255 bytes.
        let (a, _) = group_queues("bus", "svc.app::on_order::{{closure}}").expect("mapped");
        let (b, _) = group_queues("bus", "svc.app::on_order::{{closure}}2").expect("mapped");
        assert!(a.starts_with("bus.svc.app__on_order____closure___"), "{a}");
        assert_ne!(a, b);
        assert_ne!(group_queues("bus", "a b").expect("mapped").0, "bus.a b");
        let long = "g".repeat(400);
        let (queue, delay) = group_queues("bus", &long).expect("mapped");
        assert!(
            delay.len() <= MAX_SHORT
                && queue.ends_with(&format!("{:016x}", fnv1a(long.as_bytes())))
        );
        assert_ne!(
            queue,
            group_queues("bus", &"g".repeat(401)).expect("mapped").0
        );
    }
}
