-- Issue 14: replicas. Each non-terminal run is owned by one replica at a time through a lease:
-- its owner (a replica id; NULL: nobody), its epoch (+1 at each claim: the fencing token every
-- write of the owner's monitor is conditioned on) and the lease's expiry (ISO 8601 UTC text;
-- past it, any replica may claim the run). Runs so far are unowned at epoch 0.
ALTER TABLE runs ADD COLUMN owner TEXT;
ALTER TABLE runs ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN lease_until TEXT;
CREATE INDEX runs_owner ON runs (owner);

-- One row per replica that ever ran against this database: its heartbeat (renewed with its
-- leases) and its state, for `supervisord status` and for each replica's fair share.
CREATE TABLE replicas (
    replica_id   TEXT NOT NULL PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    started_at   TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL,
    state        TEXT NOT NULL,          -- running | stopping | stopped
    lease_ttl_s  REAL NOT NULL           -- its leases' time to live: alive while heartbeat_at + this is ahead
);
CREATE INDEX replicas_heartbeat ON replicas (heartbeat_at);
