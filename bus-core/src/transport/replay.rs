//! Putting dead letters back: once the listener that failed them is fixed, the events it
//! could not handle are published again under their own names.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use super::{
    DEAD_LETTER_ATTEMPTS, DEAD_LETTER_GROUP, DEAD_LETTER_OF, DEAD_LETTER_PREFIX,
    DEAD_LETTER_REASON, SubscribeOptions, Transport, TransportError, WireEvent, dead_letter_name,
};

/// The extension attribute of a replayed event: the id of the dead letter it was put back
/// from.
pub const REPLAY_OF: &str = "replayof";

/// The dead letters of some events, kept by a durable group of their own until
/// [`replay`](DeadLetterQueue::replay) puts them back.
///
/// A group sees only the letters written after it was created, so open the queue when the
/// service starts, before the letters it should be able to replay:
///
/// ```no_run
/// # async fn demo(transport: std::sync::Arc<dyn bus_core::transport::Transport>)
/// # -> Result<(), bus_core::transport::TransportError> {
/// use bus_core::transport::DeadLetterQueue;
///
/// // At start-up: from now on, every dead letter of an `orders.…` event is kept.
/// let queue = DeadLetterQueue::open(transport, "orders.>", "orders-replay").await?;
/// // Later, once the failing listener is fixed:
/// let report = queue.replay(DeadLetterQueue::DEFAULT_IDLE).await?;
/// println!("{} events put back", report.replayed);
/// # Ok(()) }
/// ```
///
/// A replayed event is published under its original name with its payload and attributes,
/// the id `<dead letter id>.replay` (a replay that is interrupted and run again is stored
/// once by a broker that deduplicates) and the extension [`REPLAY_OF`]. Like any publish, it
/// reaches every group subscribed to its name, so a group that had handled the original gets
/// it again: listeners see events at least once, and a replay is one more time.
#[derive(Clone)]
pub struct DeadLetterQueue {
    transport: Arc<dyn Transport>,
    options: SubscribeOptions,
}

/// What one [`DeadLetterQueue::replay`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayReport {
    /// Events published again.
    pub replayed: usize,
    /// Letters that were not dead letters of the bus (no original id or name): acknowledged
    /// and dropped, with a warning in the log.
    pub discarded: usize,
}

impl std::fmt::Debug for DeadLetterQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetterQueue")
            .field("transport", &self.transport.name())
            .field("pattern", &self.options.pattern)
            .field("group", &self.options.group)
            .finish()
    }
}

impl DeadLetterQueue {
    /// The default wait for the next letter before a replay ends: one second.
    pub const DEFAULT_IDLE: Duration = Duration::from_secs(1);

    /// Keeps, from now on, the dead letters of the events matching `pattern` (an event name or
    /// a pattern, as listeners take), in the durable group `group` of the letters' names.
    /// Opening the same group again (after a restart) finds the letters kept so far.
    ///
    /// # Errors
    ///
    /// The transport's, when the group cannot be created (broker unreachable, invalid
    /// pattern or group).
    pub async fn open(
        transport: Arc<dyn Transport>,
        pattern: &str,
        group: &str,
    ) -> Result<DeadLetterQueue, TransportError> {
        // A letter is a delivery of this group like any other: it must never become a dead
        // letter itself while it waits here.
        let options = SubscribeOptions::new(dead_letter_name(pattern))
            .group(group)
            .max_deliveries(u32::MAX);
        // Subscribing creates the group; closing the subscription keeps it.
        drop(transport.subscribe(options.clone()).await?);
        Ok(DeadLetterQueue { transport, options })
    }

    /// Publishes every letter kept so far back under its original name, and acknowledges it
    /// once the broker has stored the event. Ends when no letter arrives for `idle`.
    ///
    /// # Errors
    ///
    /// The transport's, when the subscription or a publish fails; the letters not yet put
    /// back stay kept, for the next replay.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the letters not yet acknowledged in the queue; one whose
    /// event was published but not yet acknowledged is put back again by the next replay
    /// (with the same id).
    pub async fn replay(&self, idle: Duration) -> Result<ReplayReport, TransportError> {
        let mut letters = self.transport.subscribe(self.options.clone()).await?;
        let mut report = ReplayReport::default();
        while let Ok(Some(letter)) = tokio::time::timeout(idle, letters.next()).await {
            let letter = letter?;
            let Some(event) = revived(letter.event()) else {
                tracing::warn!(
                    letter = %letter.event().id,
                    name = %letter.event().ty,
                    "not a dead letter of the bus (no original id or name): dropped"
                );
                letter.ack().await?;
                report.discarded += 1;
                continue;
            };
            let (name, id) = (event.ty.clone(), event.id.clone());
            if let Err(error) = self.transport.publish(event).await {
                let reason = format!("replay: publish failed: {error}");
                // Back to the queue for the next replay; its failure is the publish's.
                let _ = letter.nack(Duration::ZERO, reason).await;
                return Err(error);
            }
            letter.ack().await?;
            tracing::info!(event = %name, id = %id, "dead letter put back");
            report.replayed += 1;
        }
        Ok(report)
    }
}

/// The event a dead letter was made from, to publish again, as [`DeadLetterQueue`] replays
/// it: the letter's attributes and payload under the original name, the id
/// `<letter id>.replay`, the extension [`REPLAY_OF`] (the letter's id), without the
/// dead-letter extensions. `None` for a letter that is not one of a bus (no original name or
/// id). For tools that replay stored letters themselves (`bus dead-letters replay`).
pub fn revived(letter: &WireEvent) -> Option<WireEvent> {
    let name = letter
        .ty
        .strip_prefix(DEAD_LETTER_PREFIX)?
        .strip_prefix('.')?;
    letter.extensions.get(DEAD_LETTER_OF)?;
    let mut event = letter.clone();
    event.ty = name.to_owned();
    event.id = format!("{}.replay", letter.id);
    for extension in [
        DEAD_LETTER_OF,
        DEAD_LETTER_REASON,
        DEAD_LETTER_GROUP,
        DEAD_LETTER_ATTEMPTS,
    ] {
        event.extensions.remove(extension);
    }
    event
        .extensions
        .insert(REPLAY_OF.to_owned(), letter.id.clone());
    Some(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revived_letter_is_the_original_under_a_replay_id() {
        let original = WireEvent::new("e-1", "shop", "orders.placed", "{\"id\":1}")
            .content_type("application/json")
            .extension("causationid", "c-0");
        let letter = original.dead_letter("billing", 3, "listener failed: boom");
        let event = revived(&letter).expect("a letter of the bus");
        assert_eq!(event.ty, "orders.placed");
        assert_eq!(event.id, "e-1.dead.billing.replay");
        assert_eq!(event.data, original.data);
        assert_eq!(event.datacontenttype, original.datacontenttype);
        assert_eq!(
            event.extensions.get("causationid").map(String::as_str),
            Some("c-0")
        );
        assert_eq!(
            event.extensions.get(REPLAY_OF).map(String::as_str),
            Some("e-1.dead.billing")
        );
        for gone in [
            DEAD_LETTER_OF,
            DEAD_LETTER_REASON,
            DEAD_LETTER_GROUP,
            DEAD_LETTER_ATTEMPTS,
        ] {
            assert!(!event.extensions.contains_key(gone), "{gone} kept");
        }
    }

    #[test]
    fn what_is_not_a_letter_of_the_bus_is_not_revived() {
        let plain = WireEvent::new("e-1", "shop", "orders.placed", "");
        assert_eq!(revived(&plain), None);
        let mut no_origin = plain.dead_letter("billing", 1, "x");
        no_origin.extensions.remove(DEAD_LETTER_OF);
        assert_eq!(revived(&no_origin), None);
        let mut prefix_only = plain.dead_letter("billing", 1, "x");
        prefix_only.ty = "dead-letterorders".to_owned();
        assert_eq!(revived(&prefix_only), None);
    }
}
