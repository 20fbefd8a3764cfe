-- Issue 11: a report file the supervisor could not read (not JSON, a shape it does not know,
-- over the size limit) leaves a note on the run that outlives the monitor: `show` and `tail`
-- print it after the run ended. One note per file, the newest; reading a later version of
-- the file removes it.
CREATE TABLE report_problems (
    run_id   TEXT NOT NULL REFERENCES runs (run_id),
    key      TEXT NOT NULL,   -- the report file, relative to the run prefix
    etag     TEXT NOT NULL,   -- the version of it that could not be read
    note     TEXT NOT NULL,   -- the problem, naming the file and where its shapes are documented
    noted_at TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);
