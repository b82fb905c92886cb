//! `bus dead-letters`: list, show, replay and purge the dead letters the broker keeps.
//!
//! The letters are read from the broker as it stores them
//! ([`Transport::dead_letters`](bus_core::transport::Transport::dead_letters)), every one kept,
//! whether or not some group read it; replaying publishes each letter's event again (as
//! [`DeadLetterQueue`] does) and then deletes the letter
//! ([`Transport::delete_dead_letters`](bus_core::transport::Transport::delete_dead_letters));
//! purging deletes them. A `DeadLetterQueue` group that holds a letter deleted here never gets
//! it again.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use bus_core::transport::{
    DEAD_LETTER_ATTEMPTS, DEAD_LETTER_GROUP, DEAD_LETTER_OF, DEAD_LETTER_PREFIX,
    DEAD_LETTER_REASON, DeadLetterQueue, StoredDeadLetter, WireEvent, revived,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::args::{DeadLetters, Purge, Replay, Select, Show};
use crate::broker::Broker;
use crate::error::CliError;
use crate::output::{Output, event_json, event_text, table};

/// How many letters one delete asks the broker for.
const DELETE_BATCH: usize = 100;

/// Runs a `bus dead-letters` command.
pub(crate) async fn run(
    broker: &Broker,
    command: &DeadLetters,
    output: &Output,
) -> Result<(), CliError> {
    match command {
        DeadLetters::List(select) => list(broker, select, output).await,
        DeadLetters::Show(show) => show_one(broker, show, output).await,
        DeadLetters::Replay(replay) => replay_letters(broker, replay, output).await,
        DeadLetters::Purge(purge) => purge_letters(broker, purge, output).await,
    }
}

/// The name of the event a letter is of (`dead-letter.a.b` → `a.b`).
fn original_name(letter: &WireEvent) -> &str {
    letter
        .ty
        .strip_prefix(DEAD_LETTER_PREFIX)
        .and_then(|rest| rest.strip_prefix('.'))
        .unwrap_or(&letter.ty)
}

/// An extension of the letter, or `-`.
fn extension<'a>(letter: &'a WireEvent, name: &str) -> &'a str {
    letter.extensions.get(name).map_or("-", String::as_str)
}

/// Whether the letter has `id`, or is the letter of the event `id`.
fn has_id(letter: &WireEvent, id: &str) -> bool {
    letter.id == id || letter.extensions.get(DEAD_LETTER_OF).map(String::as_str) == Some(id)
}

/// Checks the command before connecting: the pattern of the letters' events.
pub(crate) fn prepare(command: &DeadLetters) -> Result<(), CliError> {
    let events = match command {
        DeadLetters::List(select) => &select.events,
        DeadLetters::Replay(replay) => &replay.select.events,
        DeadLetters::Purge(purge) => &purge.select.events,
        DeadLetters::Show(_) => return Ok(()),
    };
    check_pattern(events)
}

/// Checks an event name or pattern given on the command line.
pub(crate) fn check_pattern(pattern: &str) -> Result<(), CliError> {
    bus_core::event::validate_pattern(pattern).map_err(|error| {
        CliError::usage(
            format!("`{pattern}` is not an event name or pattern: {error}"),
            "give an event name (`orders.placed`) or a pattern (`orders.*`, `orders.>`, `>`)",
        )
    })
}

/// The letters `select` names, as the broker stores them, oldest first.
async fn selected(broker: &Broker, select: &Select) -> Result<Vec<StoredDeadLetter>, CliError> {
    let Some(mut letters) = broker.transport.dead_letters(&select.events).await? else {
        return Err(CliError::Unsupported {
            transport: broker.transport.name().to_owned(),
            what: "read back the dead letters it keeps",
        });
    };
    if let Some(group) = &select.group {
        letters.retain(|stored| stored.letter.extensions.get(DEAD_LETTER_GROUP) == Some(group));
    }
    if !select.ids.is_empty() {
        letters.retain(|stored| select.ids.iter().any(|id| has_id(&stored.letter, id)));
        let missing: Vec<&str> = select
            .ids
            .iter()
            .filter(|id| !letters.iter().any(|stored| has_id(&stored.letter, id)))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(CliError::NotFound(format!(
                "no dead letter of `{}`{} has the id {} on {}",
                select.events,
                select
                    .group
                    .as_ref()
                    .map(|group| format!(" and group `{group}`"))
                    .unwrap_or_default(),
                missing
                    .iter()
                    .map(|id| format!("`{id}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                broker.url
            )));
        }
    }
    Ok(letters)
}

/// The summary of a letter, as `list --json` prints it.
fn summary_json(letter: &WireEvent) -> serde_json::Value {
    let attempts = letter
        .extensions
        .get(DEAD_LETTER_ATTEMPTS)
        .and_then(|attempts| attempts.parse::<u64>().ok());
    json!({
        "id": letter.id,
        "event": original_name(letter),
        "of": letter.extensions.get(DEAD_LETTER_OF),
        "reason": letter.extensions.get(DEAD_LETTER_REASON),
        "group": letter.extensions.get(DEAD_LETTER_GROUP),
        "attempts": attempts,
        "time": letter.time,
        "source": letter.source,
    })
}

/// `bus dead-letters list`.
async fn list(broker: &Broker, select: &Select, output: &Output) -> Result<(), CliError> {
    let letters = selected(broker, select).await?;
    if output.json {
        for stored in &letters {
            output.json_line(&summary_json(&stored.letter))?;
        }
        return Ok(());
    }
    if letters.is_empty() {
        eprintln!("no dead letter of `{}` on {}", select.events, broker.url);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = letters
        .iter()
        .map(|stored| {
            let letter = &stored.letter;
            vec![
                letter.id.clone(),
                original_name(letter).to_owned(),
                extension(letter, DEAD_LETTER_GROUP).to_owned(),
                extension(letter, DEAD_LETTER_ATTEMPTS).to_owned(),
                letter.time.clone().unwrap_or_else(|| "-".to_owned()),
                extension(letter, DEAD_LETTER_REASON).to_owned(),
            ]
        })
        .collect();
    let cut = output.terminal.then_some(60);
    output.write(&table(
        &["ID", "EVENT", "GROUP", "ATTEMPTS", "TIME", "REASON"],
        &rows,
        cut,
    ))?;
    eprintln!("{} dead letter(s)", letters.len());
    Ok(())
}

/// `bus dead-letters show`.
async fn show_one(broker: &Broker, show: &Show, output: &Output) -> Result<(), CliError> {
    let select = Select {
        events: ">".to_owned(),
        ids: vec![show.id.clone()],
        group: None,
    };
    let letters = selected(broker, &select).await?;
    for (position, stored) in letters.iter().enumerate() {
        if output.json {
            output.json_line(&event_json(&stored.letter))?;
        } else {
            let separator = if position == 0 { "" } else { "\n" };
            output.write(&format!("{separator}{}", event_text(&stored.letter)))?;
        }
    }
    Ok(())
}

/// A progress bar of `len` steps on the standard error, hidden when that is not a terminal or
/// the output is JSON.
fn progress(len: usize, output: &Output, message: &'static str) -> ProgressBar {
    if output.json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(
        Some(u64::try_from(len).unwrap_or(u64::MAX)),
        ProgressDrawTarget::stderr(),
    );
    let style = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len}")
        .map(|style| style.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(message);
    bar
}

/// `bus dead-letters replay`.
async fn replay_letters(broker: &Broker, replay: &Replay, output: &Output) -> Result<(), CliError> {
    if let Some(queue) = &replay.queue {
        return replay_queue(broker, replay, queue, output).await;
    }
    let letters = selected(broker, &replay.select).await?;
    let bar = progress(letters.len(), output, "replaying");
    let (mut replayed, mut skipped) = (0_u64, Vec::new());
    for stored in &letters {
        let Some(event) = revived(&stored.letter) else {
            skipped.push(stored.letter.id.clone());
            bar.inc(1);
            continue;
        };
        let id = event.id.clone();
        let done = async {
            broker.transport.publish(event).await?;
            broker
                .transport
                .delete_dead_letters(std::slice::from_ref(stored))
                .await?
                .ok_or_else(|| CliError::Unsupported {
                    transport: broker.transport.name().to_owned(),
                    what: "delete the dead letters it keeps",
                })
        };
        if let Err(error) = done.await {
            bar.abandon();
            eprintln!(
                "replayed {replayed} of {} dead letter(s); stopped at `{}`",
                letters.len(),
                stored.letter.id
            );
            return Err(error);
        }
        bar.println(format!(
            "put back `{}` as `{id}`",
            original_name(&stored.letter)
        ));
        replayed += 1;
        bar.inc(1);
    }
    bar.finish_and_clear();
    report_replay(output, replayed, &skipped, &broker.url.to_string())
}

/// Prints what a replay did.
fn report_replay(
    output: &Output,
    replayed: u64,
    skipped: &[String],
    url: &str,
) -> Result<(), CliError> {
    if output.json {
        return output.json_line(&json!({ "replayed": replayed, "skipped": skipped }));
    }
    output.write(&format!("replayed {replayed} dead letter(s) on {url}\n"))?;
    if !skipped.is_empty() {
        eprintln!(
            "skipped {} letter(s) that are not dead letters of a bus (no original id or name): \
             {}; `bus dead-letters purge --id <id>` deletes them",
            skipped.len(),
            skipped.join(", ")
        );
    }
    Ok(())
}

/// `bus dead-letters replay --queue`: through the durable group of a [`DeadLetterQueue`].
async fn replay_queue(
    broker: &Broker,
    replay: &Replay,
    queue: &str,
    output: &Output,
) -> Result<(), CliError> {
    let idle = Duration::try_from_secs_f64(replay.idle)
        .ok()
        .filter(|idle| !idle.is_zero())
        .ok_or_else(|| {
            CliError::usage(
                format!("--idle {} is not a duration", replay.idle),
                "give a number of seconds above 0, such as --idle 1",
            )
        })?;
    // A queue that does not exist yet would be created empty: say so.
    if let Some(groups) = broker.transport.groups().await?
        && !groups.iter().any(|group| group.name == queue)
    {
        eprintln!(
            "note: no group `{queue}` existed: it is created now, and keeps the dead letters \
             written from now on; for those stored already, replay without --queue"
        );
    }
    let spinner = if output.json || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        let spinner = ProgressBar::new_spinner();
        spinner.set_message(format!("replaying what `{queue}` keeps"));
        spinner.enable_steady_tick(Duration::from_millis(100));
        spinner
    };
    let queue_handle =
        DeadLetterQueue::open(broker.transport.clone(), &replay.select.events, queue).await;
    let report = match queue_handle {
        Ok(handle) => handle.replay(idle).await,
        Err(error) => Err(error),
    };
    spinner.finish_and_clear();
    let report = report?;
    if output.json {
        return output.json_line(&json!({
            "replayed": report.replayed,
            "discarded": report.discarded,
        }));
    }
    output.write(&format!(
        "replayed {} dead letter(s) kept by `{queue}` on {}\n",
        report.replayed, broker.url
    ))?;
    if report.discarded > 0 {
        eprintln!(
            "discarded {} letter(s) that are not dead letters of a bus",
            report.discarded
        );
    }
    Ok(())
}

/// Asks on the terminal whether to delete `count` letters; refuses without one.
async fn confirm(count: usize, select: &Select, url: &str) -> Result<(), CliError> {
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return Err(CliError::usage(
            "refusing to purge dead letters without a confirmation, and there is no terminal \
             to ask on",
            "pass --yes to purge without a question",
        ));
    }
    let group = select
        .group
        .as_ref()
        .map(|group| format!(" given up by `{group}`"))
        .unwrap_or_default();
    let question = format!(
        "Delete {count} dead letter(s) of `{}`{group} from {url} for good? [y/N] ",
        select.events
    );
    let answer = tokio::task::spawn_blocking(move || {
        let mut stderr = std::io::stderr();
        let _ = stderr.write_all(question.as_bytes());
        let _ = stderr.flush();
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .map(|_| answer)
    })
    .await
    .map_err(|error| CliError::Io {
        what: "asking for a confirmation".to_owned(),
        source: std::io::Error::other(error.to_string()),
    })?
    .map_err(|source| CliError::Io {
        what: "reading the answer".to_owned(),
        source,
    })?;
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err(CliError::Cancelled(
            "purge cancelled: nothing deleted".to_owned(),
        )),
    }
}

/// `bus dead-letters purge`.
async fn purge_letters(broker: &Broker, purge: &Purge, output: &Output) -> Result<(), CliError> {
    let letters = selected(broker, &purge.select).await?;
    if letters.is_empty() {
        if output.json {
            return output.json_line(&json!({ "deleted": 0 }));
        }
        eprintln!(
            "no dead letter of `{}` on {}",
            purge.select.events, broker.url
        );
        return output.write("deleted 0 dead letter(s)\n");
    }
    if !purge.yes {
        confirm(letters.len(), &purge.select, &broker.url.to_string()).await?;
    }
    let bar = progress(letters.len(), output, "deleting");
    let mut deleted = 0_u64;
    for batch in letters.chunks(DELETE_BATCH) {
        let Some(count) = broker.transport.delete_dead_letters(batch).await? else {
            bar.abandon();
            return Err(CliError::Unsupported {
                transport: broker.transport.name().to_owned(),
                what: "delete the dead letters it keeps",
            });
        };
        deleted += count;
        bar.inc(u64::try_from(batch.len()).unwrap_or(u64::MAX));
    }
    bar.finish_and_clear();
    if output.json {
        return output.json_line(&json!({ "deleted": deleted }));
    }
    output.write(&format!(
        "deleted {deleted} dead letter(s) on {}\n",
        broker.url
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bus_core::transport::{MemoryTransport, SubscribeOptions, Transport};
    use futures_util::StreamExt;

    use super::*;

    /// What this command publishes for a letter is what `DeadLetterQueue::replay` publishes.
    #[tokio::test]
    async fn a_revived_letter_is_the_one_the_queue_replays() {
        let transport = Arc::new(MemoryTransport::new());
        let queue = DeadLetterQueue::open(transport.clone(), "orders.>", "replay")
            .await
            .expect("queue");
        let mut replayed = transport
            .subscribe(SubscribeOptions::new("orders.>"))
            .await
            .expect("subscribed");
        let original = WireEvent::new("e-1", "shop", "orders.placed", r#"{"id":1}"#)
            .content_type("application/json")
            .extension("causationid", "c-0");
        let letter = original.dead_letter("billing", 3, "listener failed: boom");
        transport.publish(letter.clone()).await.expect("letter");
        let report = queue
            .replay(Duration::from_millis(50))
            .await
            .expect("replay");
        assert_eq!(report.replayed, 1);
        let delivery = replayed.next().await.expect("open").expect("replayed");
        assert_eq!(revived(&letter).as_ref(), Some(delivery.event()));
        assert_eq!(original_name(&letter), "orders.placed");
        let plain = WireEvent::new("x", "s", "dead-letter.a", "{}");
        assert_eq!(revived(&plain), None, "no original id");
    }

    #[test]
    fn letters_are_found_by_their_id_or_their_event_s() {
        let letter = WireEvent::new("e-1", "s", "a.b", "{}").dead_letter("g", 1, "r");
        assert!(has_id(&letter, "e-1.dead.g"));
        assert!(has_id(&letter, "e-1"));
        assert!(!has_id(&letter, "e-2"));
        let summary = summary_json(&letter);
        assert_eq!(summary["event"], "a.b");
        assert_eq!(summary["attempts"], 1);
        assert_eq!(summary["group"], "g");
    }
}
