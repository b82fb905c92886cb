-- The tables of bus-postgres (the outbox and the inbox) for the default table prefix `bus_`:
-- the DDL that `Schema::new().create(&pool)` runs. For another prefix, call `Schema::create`.
CREATE TABLE IF NOT EXISTS bus_outbox (
    position        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid             XID8 NOT NULL DEFAULT pg_current_xact_id(),
    id              TEXT NOT NULL,
    source          TEXT NOT NULL,
    type            TEXT NOT NULL,
    time            TEXT,
    datacontenttype TEXT,
    extensions      JSONB NOT NULL DEFAULT '{}',
    data            BYTEA NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ,
    last_error      TEXT,
    published_at    TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS bus_outbox_pending ON bus_outbox (position)
    WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS bus_outbox_published ON bus_outbox (published_at)
    WHERE published_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS bus_inbox (
    consumer_group TEXT NOT NULL,
    source         TEXT NOT NULL,
    id             TEXT NOT NULL,
    handled_at     TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (consumer_group, source, id)
);
CREATE INDEX IF NOT EXISTS bus_inbox_handled_at ON bus_inbox (handled_at);
