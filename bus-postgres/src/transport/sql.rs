//! The statements of the transport, written once per table prefix at connect. Each is one
//! statement (data-modifying CTEs where several steps must be atomic), so that every step is
//! one round trip in autocommit and a crash between two steps leaves nothing half done.

use std::sync::Arc;

/// One statement's text, cheap to clone into a query.
pub(crate) type Statement = sqlx::AssertSqlSafe<Arc<str>>;

/// The statements for one prefix.
#[derive(Debug)]
pub(crate) struct Sql {
    /// `$1` name, `$2` source, `$3` id, `$4` time, `$5` content type, `$6` extensions,
    /// `$7` data, `$8` channel → the new `seq`, none for a duplicate (source, id).
    pub(crate) publish: Arc<str>,
    /// `$1` group, `$2` pattern, `$3` regex, `$4` plain, `$5` ttl (s) → the stored pattern.
    pub(crate) register: Arc<str>,
    /// `$1` group → (added, exists): gives the group delivery records for the events whose
    /// transactions are all finished, and moves its horizon.
    pub(crate) materialize: Arc<str>,
    /// `$1` group, `$2` limit, `$3` ack wait (s), `$4` instance → claimed rows with their event.
    pub(crate) claim: Arc<str>,
    /// `$1` group, `$2` seq: the delivery is done.
    pub(crate) ack: Arc<str>,
    /// `$1` group, `$2` seq, `$3` attempts, `$4` delay (s), `$5` channel, `$6` name: available
    /// again after the delay, if this is still the delivery with that attempt.
    pub(crate) retry: Arc<str>,
    /// `$1` group, `$2` seqs, `$3` attempts, `$4` channel: claimed rows never handed out go
    /// back, their claim not counted.
    pub(crate) unclaim: Arc<str>,
    /// `$1` group, `$2` seq, `$3` attempts, `$4`..`$10` the letter (as `publish`), `$11`
    /// channel → (settled, stored): deletes the delivery and stores its dead letter.
    pub(crate) dead_letter: Arc<str>,
    /// `$1` names, `$2` ttl (s): the subscriptions outside any group that are alive.
    pub(crate) heartbeat: Arc<str>,
    /// Removes the subscriptions outside any group that stopped renewing.
    pub(crate) expire: Arc<str>,
    /// `$1` name: a subscription outside any group closes.
    pub(crate) unregister: Arc<str>,
    /// `$1` age (s), `$2` batch: deletes those of the oldest batch of events that are older
    /// than the age (the `seq` index, no index on the time: `seq` follows time closely).
    pub(crate) purge_age: Arc<str>,
    /// `$1` count kept, `$2` batch: deletes up to a batch of the events but the newest ones.
    pub(crate) purge_len: Arc<str>,
}

impl Sql {
    /// The statements on the tables of `p` (a checked prefix).
    pub(crate) fn new(p: &str) -> Sql {
        let text = |sql: String| -> Arc<str> { sql.into() };
        Sql {
            publish: text(format!(
                "WITH ins AS (
                    INSERT INTO {p}events
                        (name, source, event_id, time, content_type, extensions, data)
                    VALUES ($1, $2, $3, $4, $5, $6, $7)
                    ON CONFLICT (source, event_id) DO NOTHING
                    RETURNING seq)
                 SELECT seq, pg_notify($8, $1) FROM ins"
            )),
            register: text(format!(
                "WITH ins AS (
                    INSERT INTO {p}groups (name, pattern, regex, horizon, plain, expires_at)
                    VALUES ($1, $2, $3, pg_current_xact_id(), $4,
                            CASE WHEN $4 THEN now() + make_interval(secs => $5) END)
                    ON CONFLICT (name) DO NOTHING
                    RETURNING pattern)
                 SELECT pattern FROM ins
                 UNION ALL
                 SELECT pattern FROM {p}groups WHERE name = $1"
            )),
            // Every transaction whose id is below the snapshot's xmin has ended: its events are
            // visible now, or never will be. So the horizon may move to xmin and no event is
            // skipped, whatever order the `seq`s were allocated and committed in. The group's
            // row is locked with SKIP LOCKED: one member materializes at a time, the others go
            // on to claim.
            materialize: text(format!(
                "WITH snap AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin),
                 g AS (
                    SELECT name, regex, horizon FROM {p}groups
                    WHERE name = $1 AND horizon < (SELECT xmin FROM snap)
                    FOR UPDATE SKIP LOCKED),
                 ins AS (
                    INSERT INTO {p}deliveries (group_name, seq)
                    SELECT g.name, e.seq FROM g JOIN {p}events e
                        ON e.xid >= g.horizon AND e.xid < (SELECT xmin FROM snap)
                    WHERE e.name ~ g.regex
                    ON CONFLICT DO NOTHING
                    RETURNING 1),
                 upd AS (
                    UPDATE {p}groups SET horizon = (SELECT xmin FROM snap)
                    FROM g WHERE {p}groups.name = g.name
                    RETURNING 1)
                 SELECT (SELECT count(*) FROM ins) AS added,
                        (SELECT count(*) FROM upd) AS moved,
                        EXISTS (SELECT 1 FROM {p}groups WHERE name = $1) AS present"
            )),
            claim: text(format!(
                "WITH c AS (
                    SELECT group_name, seq FROM {p}deliveries
                    WHERE group_name = $1 AND available_at <= now()
                    ORDER BY seq
                    LIMIT $2
                    FOR UPDATE SKIP LOCKED),
                 u AS (
                    UPDATE {p}deliveries d
                    SET attempts = d.attempts + 1,
                        available_at = now() + make_interval(secs => $3),
                        claimed_by = $4
                    FROM c WHERE d.group_name = c.group_name AND d.seq = c.seq
                    RETURNING d.seq, d.attempts)
                 SELECT u.seq, u.attempts, e.name, e.source, e.event_id, e.time,
                        e.content_type, e.extensions, e.data
                 FROM u JOIN {p}events e ON e.seq = u.seq
                 ORDER BY u.seq"
            )),
            ack: text(format!(
                "DELETE FROM {p}deliveries WHERE group_name = $1 AND seq = $2"
            )),
            retry: text(format!(
                "WITH u AS (
                    UPDATE {p}deliveries
                    SET available_at = now() + make_interval(secs => $4), claimed_by = NULL
                    WHERE group_name = $1 AND seq = $2 AND attempts = $3
                    RETURNING 1)
                 SELECT count(*) AS retried,
                        (SELECT count(*) FROM (SELECT pg_notify($5, $6) FROM u) n) AS notified
                 FROM u"
            )),
            unclaim: text(format!(
                "WITH u AS (
                    UPDATE {p}deliveries d
                    SET attempts = d.attempts - 1, available_at = now(), claimed_by = NULL
                    FROM unnest($2::bigint[], $3::integer[]) AS h(seq, attempts)
                    WHERE d.group_name = $1 AND d.seq = h.seq AND d.attempts = h.attempts
                    RETURNING 1)
                 SELECT count(*) AS returned,
                        (SELECT count(*) FROM
                            (SELECT pg_notify($4, '') WHERE EXISTS (SELECT 1 FROM u)) n)
                            AS notified
                 FROM u"
            )),
            dead_letter: text(format!(
                "WITH d AS (
                    DELETE FROM {p}deliveries
                    WHERE group_name = $1 AND seq = $2 AND attempts = $3
                    RETURNING seq),
                 ins AS (
                    INSERT INTO {p}events
                        (name, source, event_id, time, content_type, extensions, data)
                    SELECT $4::text, $5::text, $6::text, $7::text, $8::text, $9::jsonb, $10::bytea
                    FROM d
                    ON CONFLICT (source, event_id) DO NOTHING
                    RETURNING seq)
                 SELECT (SELECT count(*) FROM d) AS settled,
                        (SELECT count(*) FROM ins) AS stored,
                        (SELECT count(*) FROM (SELECT pg_notify($11, $4) FROM ins) n)
                            AS notified"
            )),
            heartbeat: text(format!(
                "UPDATE {p}groups SET expires_at = now() + make_interval(secs => $2)
                 WHERE plain AND name = ANY($1)"
            )),
            expire: text(format!(
                "DELETE FROM {p}groups WHERE plain AND expires_at < now()"
            )),
            unregister: text(format!("DELETE FROM {p}groups WHERE plain AND name = $1")),
            purge_age: text(format!(
                "DELETE FROM {p}events WHERE seq IN (
                    SELECT seq FROM (
                        SELECT seq, published_at FROM {p}events ORDER BY seq LIMIT $2) oldest
                    WHERE published_at < now() - make_interval(secs => $1))"
            )),
            purge_len: text(format!(
                "DELETE FROM {p}events WHERE seq IN (
                    SELECT seq FROM {p}events
                    WHERE seq <= (SELECT seq FROM {p}events ORDER BY seq DESC OFFSET $1 LIMIT 1)
                    ORDER BY seq LIMIT $2)"
            )),
        }
    }
}

/// The query of `text`.
pub(crate) fn statement(text: &Arc<str>) -> Statement {
    sqlx::AssertSqlSafe(Arc::clone(text))
}
