-- Issue 4: what a restart must not forget, and files attached to a run.
ALTER TABLE runs ADD COLUMN process_exited INTEGER NOT NULL DEFAULT 0;  -- checkpoint step saw it go
ALTER TABLE runs ADD COLUMN verified_attempt INTEGER;  -- attempt of the newest verified checkpoint
ALTER TABLE runs ADD COLUMN verified_location TEXT;    -- and where it is: s3://.../ (final or early/)
ALTER TABLE runs ADD COLUMN interrupt_deadline TEXT;   -- a spot warning's deadline
-- Before this version only final checkpoints were verified, at the spec's checkpoint location
-- (the NULL location means exactly that).
UPDATE runs SET verified_attempt = attempt WHERE checkpoint = 'verified';

-- Crash reports (found under the run prefix) and, later, files a person attaches.
CREATE TABLE attachments (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id     TEXT NOT NULL REFERENCES runs (run_id),
    kind       TEXT NOT NULL,        -- crash-log | analysis | conversation | other
    uri        TEXT NOT NULL,        -- s3://bucket/key or a link
    size       INTEGER,              -- bytes, when known
    excerpt    TEXT,                 -- the last lines (a crash log's tail), when read
    added_at   TEXT NOT NULL,
    UNIQUE (run_id, kind, uri)
);
CREATE INDEX attachments_run ON attachments (run_id);
