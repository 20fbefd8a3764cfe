-- Issue 15: notifications. One row per event that notifies (a transition of a run, or a
-- zombie marked), written in the same transaction as that transition (or zombie record), so
-- none is lost and none is made twice. The sender delivers pending rows and records how each
-- target (a configured URL, known by a digest of it: URLs hold secrets) fared.
CREATE TABLE outbox (
    key            TEXT NOT NULL PRIMARY KEY,  -- the idempotency key: RUN_ID:SEQ, or zombie:...
    run_id         TEXT,                       -- NULL for a zombie no run owns
    seq            INTEGER,                    -- the transition's sequence number (run version)
    events         TEXT NOT NULL,              -- comma-separated: crashed,stopped...
    facts_json     TEXT NOT NULL,              -- what the message is made from
    created_at     TEXT NOT NULL,
    state          TEXT NOT NULL,              -- pending | sent | failed
    attempts       INTEGER NOT NULL DEFAULT 0, -- delivery attempts over every target
    last_try_at    TEXT,
    last_error     TEXT,
    sent_at        TEXT,                       -- when the last target was done with
    sender         TEXT,                       -- the replica that last tried it
    deliveries_json TEXT NOT NULL              -- per target digest: state, attempts, error
);
CREATE INDEX outbox_state ON outbox (state, created_at);
