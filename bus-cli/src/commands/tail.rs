//! `bus tail`: follow events live.

use bus_core::transport::SubscribeOptions;
use futures_util::StreamExt;

use crate::args::Tail;
use crate::broker::Broker;
use crate::error::CliError;
use crate::output::{Output, event_json, event_text, is_closed};

/// Subscribes outside any group and prints each event as it comes, acknowledging it once
/// printed; ends after `--count` events, on Ctrl-C, or when the output is closed.
pub(crate) async fn run(broker: &Broker, tail: &Tail, output: &Output) -> Result<(), CliError> {
    let mut events = broker
        .transport
        .subscribe(SubscribeOptions::new(&tail.pattern))
        .await?;
    eprintln!(
        "following `{}` on {} (Ctrl-C to stop)",
        tail.pattern, broker.url
    );
    let mut seen = 0_u64;
    while tail.count.is_none_or(|count| seen < count) {
        let next = tokio::select! {
            next = events.next() => next,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Some(delivery) = next else {
            break;
        };
        let delivery = delivery?;
        let printed = if output.json {
            output.json_line(&event_json(delivery.event()))
        } else {
            let separator = if seen == 0 { "" } else { "\n" };
            output.write(&format!("{separator}{}", event_text(delivery.event())))
        };
        match printed {
            Ok(()) => {}
            Err(error) if is_closed(&error) => {
                // Nobody reads any more: this one goes back to the broker, and the tail ends.
                drop(delivery);
                break;
            }
            Err(error) => return Err(error),
        }
        delivery.ack().await?;
        seen += 1;
    }
    drop(events);
    broker.transport.flush().await;
    Ok(())
}
