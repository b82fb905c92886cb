//! A subscription outside any group: every subscription gets every event, read with `XREAD`
//! from a cursor of its own, from the moment it subscribed.
//!
//! `XREAD` keeps no pending list: nothing in Redis knows what was delivered or settled. The
//! subscription keeps that itself ([`PlainShared`]): the deliveries in flight, each with the
//! end of its ack wait, and the events to deliver again (nacked, dropped, or past their ack
//! wait), with the number of the next attempt. It lives as long as the subscription: what is
//! in flight when the process dies is not delivered again.

use std::sync::Arc;
use std::time::Duration;

use bus_core::transport::Delivery;
use tokio::time::Instant;

use super::{Failure, Intake, Ready, Received, ms, not_settled};
use crate::delivery::{Flight, PlainShared, Redeliver, Settlement, dead_letter};

/// How many entries one `XREAD` asks for: there is no pending list to fill, so reading ahead
/// costs nothing but memory.
const READ_BATCH: usize = 256;
/// The longest block of an `XREAD`.
pub(super) const MAX_BLOCK: Duration = Duration::from_secs(1);

/// The protocol of a subscription outside any group.
pub(super) struct PlainReader {
    /// The deliveries in flight and the events to deliver again, shared with the deliveries.
    shared: Arc<PlainShared>,
    ack_wait: Duration,
}

impl PlainReader {
    pub(super) fn new(ack_wait: Duration) -> PlainReader {
        PlainReader {
            shared: Arc::default(),
            ack_wait,
        }
    }

    /// One round of a subscription outside any group, in this order:
    ///
    /// 1. The deliveries whose ack wait is over go back in line, with one more attempt, or to
    ///    the dead letter after the last allowed one: what a pending list would do, done here.
    /// 2. The events in line whose time has come go to the buffer, and the round ends: they
    ///    are handed out before anything new is read.
    /// 3. Otherwise, block in `XREAD` from each stream's cursor until the earliest of 1 s,
    ///    the next look for new streams, the next event due in line, and the next end of an
    ///    ack wait, so that steps 1 and 2 run on time.
    pub(super) async fn round(&mut self, intake: &mut Intake) -> Result<(), Failure> {
        let now = Instant::now();
        let expired = self.shared.lock().expired(now);
        for flight in expired {
            if flight.attempt >= intake.origin.max_deliveries {
                let reason = not_settled(flight.attempt);
                let stored = dead_letter(
                    &intake.inner,
                    &intake.origin,
                    &flight.event,
                    flight.attempt,
                    &reason,
                )
                .await;
                if let Err(error) = stored {
                    tracing::error!(%error, reason, "cannot store the dead letter of an event; it is dropped");
                }
            } else {
                self.shared.lock().redeliver(Redeliver {
                    at: flight.at,
                    event: flight.event,
                    attempt: flight.attempt + 1,
                    due: now,
                });
            }
        }
        let due = self.shared.lock().due(now);
        if !due.is_empty() {
            for again in due {
                intake.buffer.push_back(Ready {
                    at: again.at,
                    event: again.event,
                    attempt: again.attempt,
                    received: now,
                });
            }
            return Ok(());
        }
        let mut until = now + MAX_BLOCK;
        if intake.streams.wildcard() {
            until = until.min(intake.streams.next_discovery());
        }
        if let Some(due) = self.shared.lock().next_due() {
            until = until.min(due);
        }
        if intake.streams.is_empty() {
            // `XREAD` needs a stream: wait for the next step due instead.
            tokio::time::sleep_until(until).await;
            return Ok(());
        }
        // At least 1 ms: `BLOCK 0` blocks for ever.
        let block = ms(until.saturating_duration_since(Instant::now())).max(1);
        let mut command = redis::cmd("XREAD");
        command
            .arg("COUNT")
            .arg(READ_BATCH)
            .arg("BLOCK")
            .arg(block)
            .arg("STREAMS");
        for stream in intake.streams.iter() {
            command.arg(&stream.key);
        }
        for stream in intake.streams.iter() {
            command.arg(&stream.cursor);
        }
        let reply = intake.read(&command, "XREAD").await?;
        for (key, entries) in reply {
            for entry in entries {
                match intake.receive(&key, entry, 1).await {
                    Received::Ready(ready) => intake.buffer.push_back(ready),
                    // Nothing to acknowledge outside a group.
                    Received::Done(_) | Received::Left => {}
                }
            }
        }
        Ok(())
    }

    /// A delivery of `ready`, registered in flight: its ack wait starts now, as it is handed
    /// out, not when it was read (it may have waited in the buffer).
    pub(super) fn hand_out(&self, intake: &Intake, ready: Ready) -> Box<dyn Delivery> {
        let flight = self.shared.lock().start(Flight {
            at: ready.at.clone(),
            event: Arc::clone(&ready.event),
            attempt: ready.attempt,
            deadline: Instant::now() + self.ack_wait,
        });
        let settlement = Settlement::Plain {
            shared: Arc::clone(&self.shared),
            flight,
        };
        intake.deliver(ready, settlement)
    }
}
