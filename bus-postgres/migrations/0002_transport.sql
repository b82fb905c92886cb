-- The tables of PostgresTransport (bus-postgres), for the table prefix `bus_`.
-- Generated from `transport::schema::ddl`: a test checks that they agree.

CREATE TABLE IF NOT EXISTS bus_events (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    name text NOT NULL,
    source text NOT NULL,
    event_id text NOT NULL,
    time text,
    content_type text,
    extensions jsonb NOT NULL DEFAULT '{}',
    data bytea NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT bus_events_source_id UNIQUE (source, event_id)
);

CREATE INDEX IF NOT EXISTS bus_events_xid ON bus_events (xid);

CREATE TABLE IF NOT EXISTS bus_groups (
    name text PRIMARY KEY,
    pattern text NOT NULL,
    regex text NOT NULL,
    horizon xid8 NOT NULL,
    plain boolean NOT NULL DEFAULT false,
    expires_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS bus_deliveries (
    group_name text NOT NULL REFERENCES bus_groups (name) ON DELETE CASCADE,
    seq bigint NOT NULL REFERENCES bus_events (seq) ON DELETE CASCADE,
    attempts integer NOT NULL DEFAULT 0,
    available_at timestamptz NOT NULL DEFAULT now(),
    claimed_by text,
    PRIMARY KEY (group_name, seq)
);

CREATE INDEX IF NOT EXISTS bus_deliveries_seq ON bus_deliveries (seq);

CREATE INDEX IF NOT EXISTS bus_deliveries_due ON bus_deliveries (group_name, available_at, seq);
