-- The audit log: queue messages that caused nothing (malformed, unknown instance, test events),
-- so they are acknowledged without being lost.
CREATE TABLE audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          TEXT NOT NULL,
    source      TEXT NOT NULL,       -- e.g. sqs
    kind        TEXT NOT NULL,       -- unrecognized | unowned | test-event | ...
    subject     TEXT,                -- an instance id, an S3 key, a message id
    detail_json TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_at ON audit (at);
