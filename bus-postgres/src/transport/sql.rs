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
    /// `$1` group, `$2` limit, `$3` ack wait (s), `$4` instance → claimed rows with their
    /// event, those due first.
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
    /// `$1` group → (lag, pending), no row for a group that does not exist: the events of its
    /// pattern past its horizon plus its records never claimed, and its records claimed.
    pub(crate) group_stats: Arc<str>,
    /// → (name, pattern, lag, pending) of every group (not the subscriptions outside any
    /// group), by name: as `group_stats`.
    pub(crate) groups: Arc<str>,
    /// `$1` regex of the letters' names → every event whose name matches, by `seq`.
    pub(crate) dead_letters: Arc<str>,
    /// `$1` seqs, `$2` event ids: deletes the dead letters among those rows (their delivery
    /// records go with them) → how many.
    pub(crate) delete_dead_letters: Arc<str>,
}

impl Sql {
    /// The statements on the tables of `p` (a checked prefix). Unless `ack_sync`, the fill,
    /// the claim and the ack set `synchronous_commit = off` for their own transaction (in a
    /// condition that is always true, evaluated once): see
    /// [`ack_sync`](super::PostgresTransportBuilder::ack_sync).
    pub(crate) fn new(p: &str, ack_sync: bool) -> Sql {
        let text = |sql: String| -> Arc<str> { sql.into() };
        let no_flush = if ack_sync {
            "true"
        } else {
            "(SELECT set_config('synchronous_commit', 'off', true) = 'off')"
        };
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
                    WHERE name = $1 AND horizon < (SELECT xmin FROM snap) AND {no_flush}
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
            // Due records first (`available_at`), in `seq` order among those due together
            // (every record of one fill is due at the same instant), through the index
            // `(group_name, available_at, seq)`, whose order is the claim's: its scan stops at
            // the `LIMIT` whatever the table's statistics say. (Ordered by `seq` alone, a
            // table analyzed while empty, or while its records were claimed, made the planner
            // scan the whole backlog and sort it on every claim.)
            claim: text(format!(
                "WITH c AS (
                    SELECT group_name, seq, available_at FROM {p}deliveries
                    WHERE group_name = $1 AND available_at <= now() AND {no_flush}
                    ORDER BY available_at, seq
                    LIMIT $2
                    FOR UPDATE SKIP LOCKED),
                 u AS (
                    UPDATE {p}deliveries d
                    SET attempts = d.attempts + 1,
                        available_at = now() + make_interval(secs => $3),
                        claimed_by = $4
                    FROM c WHERE d.group_name = c.group_name AND d.seq = c.seq
                    RETURNING d.seq, d.attempts, c.available_at AS due)
                 SELECT u.seq, u.attempts, e.name, e.source, e.event_id, e.time,
                        e.content_type, e.extensions, e.data
                 FROM u JOIN {p}events e ON e.seq = u.seq
                 ORDER BY u.due, u.seq"
            )),
            ack: text(format!(
                "DELETE FROM {p}deliveries WHERE group_name = $1 AND seq = $2 AND {no_flush}"
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
            // In one snapshot, so that a fill running meanwhile counts either before or after:
            // an event is past the horizon (no record yet) or has a record, never both. A
            // record never claimed (`attempts` 0: filled, or a claim handed back unused) is
            // lag; one claimed (`attempts` > 0: held, past its ack wait, nacked and waiting for
            // its delay, or released) is pending until its ack or dead letter deletes it.
            group_stats: text(format!(
                "SELECT (SELECT count(*) FROM {p}events e
                         WHERE e.xid >= g.horizon AND e.name ~ g.regex) + d.fresh AS lag,
                        d.held AS pending
                 FROM {p}groups g,
                      LATERAL (SELECT count(*) FILTER (WHERE attempts = 0) AS fresh,
                                      count(*) FILTER (WHERE attempts > 0) AS held
                               FROM {p}deliveries WHERE group_name = g.name) d
                 WHERE g.name = $1 AND NOT g.plain"
            )),
            groups: text(format!(
                "SELECT g.name, g.pattern,
                        (SELECT count(*) FROM {p}events e
                         WHERE e.xid >= g.horizon AND e.name ~ g.regex) + d.fresh AS lag,
                        d.held AS pending
                 FROM {p}groups g,
                      LATERAL (SELECT count(*) FILTER (WHERE attempts = 0) AS fresh,
                                      count(*) FILTER (WHERE attempts > 0) AS held
                               FROM {p}deliveries WHERE group_name = g.name) d
                 WHERE NOT g.plain
                 ORDER BY g.name"
            )),
            dead_letters: text(format!(
                "SELECT seq, name, source, event_id, time, content_type, extensions, data
                 FROM {p}events WHERE name ~ $1 ORDER BY seq"
            )),
            // `^dead-letter\.`: never an event that is not a dead letter, whatever is asked.
            delete_dead_letters: text(format!(
                "DELETE FROM {p}events e
                 USING unnest($1::bigint[], $2::text[]) AS l(seq, event_id)
                 WHERE e.seq = l.seq AND e.event_id = l.event_id
                   AND e.name ~ '^dead-letter\\.'"
            )),
        }
    }
}

/// The query of `text`.
pub(crate) fn statement(text: &Arc<str>) -> Statement {
    sqlx::AssertSqlSafe(Arc::clone(text))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bus_conformance::checks::{ci, skip, unique};
    use sqlx::postgres::PgPoolOptions;
    use sqlx::{AssertSqlSafe, Connection as _, Executor as _, PgConnection, PgPool};

    use super::{Sql, statement};
    use crate::transport::schema;

    /// The shared server of the machine (and of CI).
    const URL: &str = "postgres://postgres@127.0.0.1:5432/test";

    /// Tables under a fresh prefix, dropped by [`Tables::drop`]: a group `g` and 5,000 events
    /// with a delivery record each, the table of records analyzed while it held twenty, all
    /// claimed (due in 30 s). `None` when the server is down outside CI.
    struct Tables {
        pool: PgPool,
        p: String,
    }

    /// A pool on the shared server; `None` when it is down outside CI.
    async fn connect(test: &str) -> Option<PgPool> {
        match PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect(URL)
            .await
        {
            Ok(pool) => Some(pool),
            Err(error) if !ci() => {
                skip(
                    test,
                    format_args!("PostgreSQL is not reachable at {URL}: {error}"),
                );
                None
            }
            Err(error) => panic!("cannot connect to PostgreSQL at {URL}: {error}"),
        }
    }

    impl Tables {
        /// The tables of a fresh prefix, empty.
        async fn empty(test: &str) -> Option<Tables> {
            let pool = connect(test).await?;
            let p = format!("sql{}_", unique());
            schema::create_schema(&pool, &p).await.expect("the tables");
            Some(Tables { pool, p })
        }

        async fn create(test: &str) -> Option<Tables> {
            let Tables { pool, p } = Tables::empty(test).await?;
            let events = |from: u32, to: u32| {
                format!(
                    "INSERT INTO {p}events (name, source, event_id, data) \
                     SELECT 'plan.e', 's', i::text, '' FROM generate_series({from}, {to}) i"
                )
            };
            let setup = [
                format!(
                    "INSERT INTO {p}groups (name, pattern, regex, horizon) \
                     VALUES ('g', 'plan.>', '^plan\\..+$', '0')"
                ),
                events(1, 20),
                format!(
                    "INSERT INTO {p}deliveries (group_name, seq, available_at) \
                     SELECT 'g', seq, now() + interval '30 s' FROM {p}events"
                ),
                format!("ANALYZE {p}events, {p}groups, {p}deliveries"),
                events(21, 5000),
                format!(
                    "INSERT INTO {p}deliveries (group_name, seq) \
                     SELECT 'g', seq FROM {p}events ON CONFLICT DO NOTHING"
                ),
            ];
            for statement in setup {
                pool.execute(AssertSqlSafe(statement)).await.expect("setup");
            }
            Some(Tables { pool, p })
        }

        async fn drop(self) {
            let p = &self.p;
            self.pool
                .execute(AssertSqlSafe(format!(
                    "DROP TABLE {p}deliveries, {p}groups, {p}events"
                )))
                .await
                .expect("dropping the tables");
            self.pool.close().await;
        }
    }

    /// The plan PostgreSQL keeps for `text` once prepared (the generic one, which a pooled
    /// connection ends up using), for the parameters `args` (SQL literals).
    async fn generic_plan(connection: &mut PgConnection, text: &str, args: &str) -> String {
        connection
            .execute("SET plan_cache_mode = force_generic_plan")
            .await
            .expect("SET");
        connection
            .execute(AssertSqlSafe(format!("PREPARE probe AS {text}")))
            .await
            .expect("PREPARE");
        let lines: Vec<String> =
            sqlx::query_scalar(AssertSqlSafe(format!("EXPLAIN EXECUTE probe({args})")))
                .fetch_all(&mut *connection)
                .await
                .expect("EXPLAIN");
        connection
            .execute("DEALLOCATE probe; RESET plan_cache_mode")
            .await
            .expect("DEALLOCATE");
        lines.join("\n")
    }

    /// A queue table is often analyzed while it holds few records, or only claimed ones (due
    /// later). With those statistics and a backlog of thousands due now, the claim must still
    /// walk its index and stop at its `LIMIT` (not scan the whole backlog and sort it), and
    /// the fill must reach the events through the `xid` index (not scan them all).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn consumer_statements_use_the_indexes_whatever_the_statistics() {
        let Some(tables) = Tables::create("plans").await else {
            return;
        };
        let p = tables.p.clone();
        let sql = Sql::new(&p, false);
        let mut connection = tables.pool.acquire().await.expect("a connection");
        let claim = generic_plan(&mut connection, &sql.claim, "'g', 16, 30.0, 'me'").await;
        let materialize = generic_plan(&mut connection, &sql.materialize, "'g'").await;
        drop(connection);
        tables.drop().await;

        assert!(
            claim.contains(&format!("Index Scan using {p}deliveries_due")),
            "claim:\n{claim}"
        );
        assert!(
            !claim.contains(&format!("Scan on {p}deliveries ")),
            "claim:\n{claim}"
        );
        assert!(
            !claim.contains(&format!("Sort Key: {p}deliveries")),
            "claim:\n{claim}"
        );
        assert!(
            !materialize.contains(&format!("Seq Scan on {p}events")),
            "materialize:\n{materialize}"
        );
        assert!(
            materialize.contains(&format!("{p}events_xid")),
            "materialize:\n{materialize}"
        );
    }

    /// A group's stats: the events of its pattern past its horizon and its records never
    /// claimed are lag; its records claimed (held, or nacked and waiting for their delay) are
    /// pending; events of other names, a subscription outside any group and an unknown group
    /// count nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_stats_count_what_is_not_filled_not_claimed_and_claimed() {
        let Some(tables) = Tables::empty("group_stats").await else {
            return;
        };
        let p = tables.p.clone();
        let regex = crate::transport::pattern::Matcher::new("st.>").regex();
        let events = |rows: &str| {
            format!("INSERT INTO {p}events (name, source, event_id, data) VALUES {rows}")
        };
        // Each statement is a transaction of its own: the horizon, set by the third, is past
        // the events of the second and before those of the fifth.
        let setup = [
            format!(
                "INSERT INTO {p}groups (name, pattern, regex, horizon) \
                 VALUES ('g', 'st.>', '{regex}', '0')"
            ),
            events(
                "('st.a', 's', '1', ''), ('st.a', 's', '2', ''), ('st.a', 's', '3', ''), \
                    ('zz.x', 's', '4', '')",
            ),
            format!(
                "INSERT INTO {p}groups (name, pattern, regex, horizon, plain) \
                 VALUES ('p', '>', '^.+$', pg_current_xact_id(), true), \
                        ('idle', 'st.>', '{regex}', pg_current_xact_id(), false); \
                 UPDATE {p}groups SET horizon = pg_current_xact_id() WHERE name = 'g'"
            ),
            // Filled and never claimed; claimed and held; claimed, nacked, due in a minute.
            format!(
                "INSERT INTO {p}deliveries (group_name, seq, attempts, available_at, claimed_by) \
                 SELECT 'g', seq, \
                        CASE event_id WHEN '1' THEN 0 WHEN '2' THEN 1 ELSE 2 END, \
                        CASE event_id WHEN '1' THEN now() ELSE now() + interval '1 min' END, \
                        CASE event_id WHEN '2' THEN 'me' END \
                 FROM {p}events WHERE event_id IN ('1', '2', '3')"
            ),
            events(
                "('st.b', 's', '5', ''), ('st.c.d', 's', '6', ''), ('zz.y', 's', '7', ''), \
                    ('st', 's', '8', '')",
            ),
        ];
        for statement in setup {
            tables
                .pool
                .execute(AssertSqlSafe(statement))
                .await
                .expect("setup");
        }
        let sql = Sql::new(&p, false);
        let mut seen = Vec::new();
        for group in ["g", "idle", "p", "nobody"] {
            let row: Option<(i64, i64)> = sqlx::query_as(statement(&sql.group_stats))
                .bind(group)
                .fetch_optional(&tables.pool)
                .await
                .expect("group_stats");
            seen.push(row);
        }
        tables.drop().await;

        // `g`: st.b and st.c.d past the horizon, plus record 1; records 2 and 3.
        assert_eq!(seen[0], Some((3, 2)), "g");
        // `idle`: no record yet; st.b and st.c.d were published after it was registered.
        assert_eq!(seen[1], Some((2, 0)), "idle");
        assert_eq!(seen[2], None, "a subscription outside any group");
        assert_eq!(seen[3], None, "an unknown group");
    }

    /// The fill, the claim and the ack turn `synchronous_commit` off for their transaction,
    /// and for it only; with `ack_sync` they leave it as it is.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acks_skip_the_flush_for_their_own_transaction_unless_ack_sync() {
        let Some(tables) = Tables::create("no_flush").await else {
            return;
        };
        let mut connection = tables.pool.acquire().await.expect("a connection");
        let show = "SHOW synchronous_commit";
        let server: String = sqlx::query_scalar(show)
            .fetch_one(&mut *connection)
            .await
            .expect("SHOW");
        let mut seen = Vec::new();
        for ack_sync in [false, true] {
            let sql = Sql::new(&tables.p, ack_sync);
            for (what, text) in [
                ("fill", &sql.materialize),
                ("claim", &sql.claim),
                ("ack", &sql.ack),
            ] {
                let mut transaction = connection.begin().await.expect("BEGIN");
                let query = sqlx::query(statement(text)).bind("g");
                let query = match what {
                    "claim" => query.bind(16_i64).bind(30.0_f64).bind("me"),
                    "ack" => query.bind(25_i64),
                    _ => query,
                };
                query.execute(&mut *transaction).await.expect(what);
                let inside: String = sqlx::query_scalar(show)
                    .fetch_one(&mut *transaction)
                    .await
                    .expect("SHOW");
                transaction.rollback().await.expect("ROLLBACK");
                let after: String = sqlx::query_scalar(show)
                    .fetch_one(&mut *connection)
                    .await
                    .expect("SHOW");
                seen.push((ack_sync, what, inside, after));
            }
        }
        drop(connection);
        tables.drop().await;

        for (ack_sync, what, inside, after) in seen {
            let expected = if ack_sync { server.as_str() } else { "off" };
            assert_eq!(inside, expected, "{what} with ack_sync({ack_sync})");
            assert_eq!(after, server, "after the {what}: the session's own setting");
        }
    }
}
