-- Zombie instances (still running after their run ended, or tagged supervisor:run-id with no
-- active run to own them): one row per instance with its current state, and the append-only
-- log of every attempt to terminate (or, under the checkpoint invariant, stop) one.
CREATE TABLE zombies (
    instance_id     TEXT NOT NULL,
    region          TEXT NOT NULL,
    kind            TEXT NOT NULL,       -- run-ended | unowned
    run_id          TEXT,                -- the ended run, or the run the tag names
    run_phase       TEXT,
    run_ended_at    TEXT,
    keep_data       INTEGER NOT NULL DEFAULT 0,  -- checkpoint invariant: stop, never terminate
    state           TEXT NOT NULL,       -- marked | stopping | terminating | confirmed | cleared
    marked_at       TEXT NOT NULL,
    action          TEXT,                -- terminate | stop, once attempted
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_attempt_at TEXT,
    last_error      TEXT,
    resolved_at     TEXT,
    note            TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (instance_id, region)
);
CREATE INDEX zombies_state ON zombies (state);

CREATE TABLE terminations (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    at                   TEXT NOT NULL,
    instance_id          TEXT NOT NULL,
    region               TEXT NOT NULL,
    run_id               TEXT,
    action               TEXT NOT NULL,  -- terminate | stop
    outcome              TEXT NOT NULL,  -- accepted | confirmed | not-found | unauthorized | failed
    calls                INTEGER NOT NULL,  -- AWS calls of the attempt; 0 for a sweep's confirmation
    error_code           TEXT,
    message              TEXT,
    seconds_since_marked REAL NOT NULL
);
CREATE INDEX terminations_at ON terminations (at);

-- begin sqlite-only: on PostgreSQL, postgresql/0005_zombies.sql says this
CREATE TRIGGER terminations_append_only_update BEFORE UPDATE ON terminations
BEGIN SELECT RAISE(ABORT, 'terminations are append-only'); END;
CREATE TRIGGER terminations_append_only_delete BEFORE DELETE ON terminations
BEGIN SELECT RAISE(ABORT, 'terminations are append-only'); END;
-- end sqlite-only
