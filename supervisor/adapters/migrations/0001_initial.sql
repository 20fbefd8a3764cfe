-- Runs, their append-only transition log, their instances, and actions taken on instances.
CREATE TABLE runs (
    run_id          TEXT PRIMARY KEY,
    spec_json       TEXT NOT NULL,
    phase           TEXT NOT NULL,
    outcome         TEXT,
    instance_id     TEXT NOT NULL,
    region          TEXT NOT NULL,
    reason          TEXT NOT NULL,
    version         INTEGER NOT NULL,
    phase_since     TEXT NOT NULL,
    grace_until     TEXT,
    action_acked_at TEXT,
    error_code      TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE INDEX runs_phase ON runs (phase);
CREATE INDEX runs_instance ON runs (instance_id);

CREATE TABLE transitions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      TEXT NOT NULL REFERENCES runs (run_id),
    seq         INTEGER NOT NULL,  -- the run's version after this transition: 1, 2, 3...
    from_phase  TEXT,
    to_phase    TEXT NOT NULL,
    at          TEXT NOT NULL,
    reason      TEXT NOT NULL,
    detail_json TEXT NOT NULL DEFAULT '{}',
    UNIQUE (run_id, seq)
);

-- begin sqlite-only: on PostgreSQL, postgresql/0001_initial.sql says this
CREATE TRIGGER transitions_append_only_update BEFORE UPDATE ON transitions
BEGIN SELECT RAISE(ABORT, 'transitions are append-only'); END;
CREATE TRIGGER transitions_append_only_delete BEFORE DELETE ON transitions
BEGIN SELECT RAISE(ABORT, 'transitions are append-only'); END;
-- end sqlite-only

CREATE TABLE instances (
    run_id      TEXT NOT NULL REFERENCES runs (run_id),
    instance_id TEXT NOT NULL,
    region      TEXT NOT NULL,
    attached_at TEXT NOT NULL,
    PRIMARY KEY (run_id, instance_id)
);

CREATE TABLE actions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      TEXT NOT NULL REFERENCES runs (run_id),
    instance_id TEXT NOT NULL,
    action      TEXT NOT NULL,      -- stop | terminate
    at          TEXT NOT NULL,
    attempts    INTEGER NOT NULL,
    outcome     TEXT NOT NULL,      -- accepted | gone | failed | gave-up
    error_code  TEXT,
    message     TEXT
);
CREATE INDEX actions_run ON actions (run_id);
