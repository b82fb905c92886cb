//! The command line, as clap reads it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The examples of `bus --help`.
const EXAMPLES: &str = "\
Examples:
  export BUS_URL=nats://127.0.0.1:4222          # or redis://…, postgres://…
  bus tail 'orders.>'                           # follow every orders.… event
  bus tail 'orders.>' --json | jq .data         # one JSON object per event
  bus publish orders.placed '{\"id\":7}'          # prints the new event's id
  bus publish orders.placed --file orders.jsonl # one event per line
  bus dead-letters list                         # every dead letter kept
  bus dead-letters show 0b9c…-1.dead.billing    # one, with its payload
  bus dead-letters replay --group billing       # put billing's letters back
  bus dead-letters purge orders.placed --yes    # delete them for good
  bus groups                                    # lag, pending, consumers

Exit codes: 0 ok, 1 error, 2 usage, 3 broker unreachable, 4 not found.";

/// The operator's command line of the `bus` event bus: follow, publish and inspect events,
/// dead letters and consumer groups on NATS JetStream, Redis Streams or PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "bus", version, after_help = EXAMPLES, propagate_version = true)]
pub(crate) struct Cli {
    /// Where and how to connect.
    #[command(flatten)]
    pub(crate) connection: Connection,

    /// Print one JSON object per line, for scripts, instead of text for people (and no
    /// progress bar).
    #[arg(long, global = true)]
    pub(crate) json: bool,

    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Where and how to connect: the URL picks the transport by its scheme; the other settings are
/// those of the transport's builder, with its defaults.
#[derive(Debug, Args)]
pub(crate) struct Connection {
    /// The broker's URL, whose scheme picks the transport.
    #[arg(
        long,
        env = "BUS_URL",
        hide_env_values = true,
        global = true,
        value_name = "URL",
        help = "The broker: nats://[user:password@]host:4222 (or tls://, or a comma-separated \
                list), redis://[user:password@]host:6379[/db] (rediss:// for TLS), \
                postgres://user[:password]@host:5432/database, or \
                amqp://user:password@host:5672/vhost. Credentials never show in the output"
    )]
    pub(crate) url: Option<String>,

    /// NATS: the subject prefix of the events (event `a.b` is subject `<prefix>.a.b`)
    /// (default: bus).
    #[arg(long, global = true, value_name = "PREFIX")]
    pub(crate) subject_prefix: Option<String>,

    /// NATS: the events' stream (default: the subject prefix in capitals, `BUS`).
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) stream: Option<String>,

    /// Redis: the key prefix (event `a.b` is stream `<prefix>:stream:a.b`) (default: bus).
    #[arg(long, global = true, value_name = "PREFIX")]
    pub(crate) key_prefix: Option<String>,

    /// PostgreSQL: the prefix of the transport's tables (`<prefix>events`, ...)
    /// (default: bus_).
    #[arg(long, global = true, value_name = "PREFIX")]
    pub(crate) table_prefix: Option<String>,

    /// RabbitMQ: the topic exchange the events are published to (default: bus).
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) exchange: Option<String>,

    /// NATS and Redis over TLS: trust the CA certificates of this PEM file for the server's
    /// certificate.
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) tls_ca: Option<PathBuf>,
}

/// A command.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Follow the events published from now on whose name matches a pattern, and print each
    /// (its CloudEvents attributes and its payload).
    #[command(after_help = "\
Examples:
  bus tail '>'                        # every event (and every dead letter)
  bus tail 'orders.*' --count 1       # the next orders.<x> event, then exit
  bus tail 'dead-letter.>' --json     # dead letters as they are written

Each event is acknowledged once printed. The subscription is outside any group: it sees every
event published after it started and takes nothing from the services' groups.")]
    Tail(Tail),

    /// Publish one event as a bus would (CloudEvents: a new id, `source` bus-cli, `time` now,
    /// `datacontenttype` application/json), or one per line of a file; print their ids.
    #[command(after_help = "\
Examples:
  bus publish orders.placed '{\"id\":7,\"total\":4200}'
  bus publish orders.placed '{\"id\":7}' --id order-7 --source checkout
  bus publish orders.placed --file orders.jsonl     # one JSON object per line
  producer | bus publish orders.placed --file -     # from the standard input

Every line is checked before anything is published: a file with one bad line publishes
nothing. An event published again with the same source and id is stored once by a broker that
deduplicates (NATS within its duplicate window, PostgreSQL).")]
    Publish(Publish),

    /// Dead letters: the events a group gave up on, kept as `dead-letter.<name>`: list, show,
    /// replay (publish again under their names), purge (delete).
    #[command(
        subcommand,
        name = "dead-letters",
        after_help = "\
Examples:
  bus dead-letters list
  bus dead-letters show <id>
  bus dead-letters replay --group billing
  bus dead-letters purge orders.placed --yes

The letters are read from the broker as it stores them (every one still kept, whether or not a
group read it); replay and purge delete them there, for every reader."
    )]
    DeadLetters(DeadLetters),

    /// The consumer groups the broker knows: the pattern each subscribes to, its lag (events
    /// not handed out yet), pending (handed out, not settled) and consumers.
    #[command(after_help = "\
Examples:
  bus groups                      # every group
  bus groups orders.placed        # the groups an orders.placed event reaches
  bus groups --json | jq 'select(.lag > 100)'

Consumers: NATS, pull requests waiting (about one per idle subscription); Redis, the group's
consumers (the most on one of its streams); PostgreSQL does not know them (`-`).")]
    Groups(Groups),
}

/// `bus tail`.
#[derive(Debug, Args)]
pub(crate) struct Tail {
    /// The event names to follow: a name or a pattern (`*` one token, a last `>` one or more).
    #[arg(value_name = "PATTERN")]
    pub(crate) pattern: String,

    /// Exit after this many events.
    #[arg(long, value_name = "N")]
    pub(crate) count: Option<u64>,
}

/// `bus publish`.
#[derive(Debug, Args)]
pub(crate) struct Publish {
    /// The event name (`orders.placed`).
    #[arg(value_name = "NAME")]
    pub(crate) name: String,

    /// The payload: one JSON value.
    #[arg(
        value_name = "JSON",
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    pub(crate) payload: Option<String>,

    /// Publish one event per line of this file (`-`: the standard input), each line one JSON
    /// value; blank lines are skipped.
    #[arg(long, value_name = "PATH")]
    pub(crate) file: Option<PathBuf>,

    /// The event's id (default: a new one).
    #[arg(long, value_name = "ID", conflicts_with = "file")]
    pub(crate) id: Option<String>,

    /// The event's source: the service it comes from.
    #[arg(long, value_name = "SOURCE", default_value = "bus-cli")]
    pub(crate) source: String,
}

/// `bus dead-letters`.
#[derive(Debug, Subcommand)]
pub(crate) enum DeadLetters {
    /// List the dead letters kept: id, event, group, attempts, time and reason.
    #[command(after_help = "\
Examples:
  bus dead-letters list                    # all of them
  bus dead-letters list 'orders.>'         # those of orders.… events
  bus dead-letters list --group billing    # those the group billing gave up on
  bus dead-letters list --json | jq -r .id")]
    List(Select),

    /// Show one dead letter (by its id, or by the id of the event it is the letter of), with
    /// every attribute and its payload.
    #[command(after_help = "\
Examples:
  bus dead-letters show 0b9c4a1e-…-1.dead.billing   # a letter's id
  bus dead-letters show order-7                    # every letter of event order-7

Exit code 4 when no dead letter has that id.")]
    Show(Show),

    /// Publish dead letters again under their original names (with the id
    /// `<letter id>.replay` and the extension `replayof`), then delete them: once the failing
    /// listener is fixed.
    #[command(after_help = "\
Examples:
  bus dead-letters replay                       # every dead letter
  bus dead-letters replay 'orders.>'            # those of orders.… events
  bus dead-letters replay --group billing       # those billing gave up on
  bus dead-letters replay --id e-1.dead.billing # one
  bus dead-letters replay 'orders.>' --queue orders-replay
                                                # through a DeadLetterQueue group

A replayed event reaches every group subscribed to its name again, not only the one that gave
up on it. A letter is deleted once its event is stored; a replay cut short and run again
publishes the same ids (stored once where the broker deduplicates). With `--queue`, the letters
are those kept by the durable group of a `DeadLetterQueue` the services opened (a group sees
only the letters written after it was created), and the queue acknowledges them.")]
    Replay(Replay),

    /// Delete dead letters for good (after a confirmation).
    #[command(after_help = "\
Examples:
  bus dead-letters purge                         # every dead letter, after a confirmation
  bus dead-letters purge orders.placed --yes     # no question asked (scripts)
  bus dead-letters purge --group billing --yes

Without a terminal to ask on, `--yes` is required. The letters are deleted from the broker
(NATS: from the dead letters' stream; Redis: acknowledged in every group of their stream, then
XDEL; PostgreSQL: their rows): no group, DeadLetterQueue or later list sees them again.")]
    Purge(Purge),
}

/// Which dead letters.
#[derive(Debug, Args)]
pub(crate) struct Select {
    /// Those of the events matching this name or pattern (default: every one, `>`).
    #[arg(value_name = "EVENTS", default_value = ">")]
    pub(crate) events: String,

    /// Only those of this dead letter id (or original event id); may be repeated.
    #[arg(long = "id", value_name = "ID")]
    pub(crate) ids: Vec<String>,

    /// Only those this group (the listener's group) gave up on.
    #[arg(long, value_name = "GROUP")]
    pub(crate) group: Option<String>,
}

/// `bus dead-letters show`.
#[derive(Debug, Args)]
pub(crate) struct Show {
    /// The dead letter's id (`<event id>.dead.<group>`), or the original event's id.
    #[arg(value_name = "ID")]
    pub(crate) id: String,
}

/// `bus dead-letters replay`.
#[derive(Debug, Args)]
pub(crate) struct Replay {
    /// Which letters.
    #[command(flatten)]
    pub(crate) select: Select,

    /// Replay what the durable group GROUP of a `DeadLetterQueue` keeps, through it (the
    /// letters stay stored, the queue acknowledges them).
    #[arg(long, value_name = "GROUP", conflicts_with_all = ["ids", "group"])]
    pub(crate) queue: Option<String>,

    /// With `--queue`: how long to wait for the next letter before the replay ends, in
    /// seconds.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 1.0,
        requires = "queue"
    )]
    pub(crate) idle: f64,
}

/// `bus dead-letters purge`.
#[derive(Debug, Args)]
pub(crate) struct Purge {
    /// Which letters.
    #[command(flatten)]
    pub(crate) select: Select,

    /// Do not ask for a confirmation.
    #[arg(long, short = 'y')]
    pub(crate) yes: bool,
}

/// `bus groups`.
#[derive(Debug, Args)]
pub(crate) struct Groups {
    /// Only the groups whose pattern matches this event name.
    #[arg(value_name = "EVENT")]
    pub(crate) event: Option<String>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn commands_parse() {
        let cli = Cli::try_parse_from([
            "bus",
            "--url",
            "nats://h",
            "dead-letters",
            "replay",
            "orders.>",
            "--group",
            "billing",
        ])
        .expect("parses");
        let Command::DeadLetters(DeadLetters::Replay(replay)) = cli.command else {
            panic!("not a replay: {cli:?}");
        };
        assert_eq!(replay.select.events, "orders.>");
        assert_eq!(replay.select.group.as_deref(), Some("billing"));
        let both = Cli::try_parse_from(["bus", "publish", "a.b", "{}", "--file", "x"]);
        assert!(both.is_err(), "a payload and a file");
        let neither = Cli::try_parse_from(["bus", "publish", "a.b"]);
        assert!(neither.is_err(), "no payload");
        let json_after = Cli::try_parse_from(["bus", "groups", "--json"]).expect("global");
        assert!(json_after.json);
        let publish = Cli::try_parse_from(["bus", "publish", "a.b", "{}", "--json"]).expect("ok");
        assert!(publish.json);
        let Command::Publish(publish) = publish.command else {
            panic!("not a publish");
        };
        assert_eq!(publish.payload.as_deref(), Some("{}"));
    }
}
