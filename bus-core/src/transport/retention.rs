//! [`Retention`]: how much of its events a broker keeps.

use std::time::Duration;

/// A limit on the events a broker keeps. Past it the oldest go, whether or not every group has
/// read them: size it well above what a group may fall behind.
///
/// Each transport's builder says which limits it applies, how, and its default:
///
/// | | `bus-redis` (on each `XADD`, approximately) | `bus-nats` (JetStream stream limits) |
/// |---|---|---|
/// | `Unbounded` | no trimming | no limit |
/// | `MaxLen(n)` | `MAXLEN ~ n`: about `n` entries per event name | `max_msgs` `n` for the stream |
/// | `MaxAge(d)` | `MINID ~ <now - d>` | `max_age` `d` |
/// | `MaxBytes(b)` | refused at connect (Redis trims by count or id, not by size) | `max_bytes` `b` |
///
/// A builder that applies several limits at once (NATS: a stream has an age, a count and a
/// size limit) takes a list of them; a single `Retention` is a list of one (it iterates over
/// itself), so `.retention(Retention::MaxAge(d))` and
/// `.retention([Retention::MaxAge(d), Retention::MaxBytes(b)])` both read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Retention {
    /// No limit: events stay until an operator removes them.
    Unbounded,
    /// About the last `n` events (per event name on Redis, in the whole stream on NATS).
    MaxLen(u64),
    /// The events of the last `age`, by the broker's clock.
    MaxAge(Duration),
    /// The newest events up to `bytes` bytes of storage (NATS only).
    MaxBytes(u64),
}

impl IntoIterator for Retention {
    type Item = Retention;
    type IntoIter = std::iter::Once<Retention>;

    /// This one limit, as a list of one.
    fn into_iter(self) -> Self::IntoIter {
        std::iter::once(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_limit_is_a_list_of_one() {
        let one: Vec<Retention> = Retention::MaxLen(3).into_iter().collect();
        assert_eq!(one, [Retention::MaxLen(3)]);
    }
}
