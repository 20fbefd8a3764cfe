-- Issue 14 (replicas): the run inbox and the duty leases.
--
-- inbox: a command (stop, terminate, resume, detach) or an event (an SQS message's fact) for
-- a run that another replica owns. The replica that took it writes a pending row; the owner
-- carries it out through its monitor and writes the answer, which the writer of a command
-- waits for. id is the writer's own (a random hex string), so it knows its row at once.
CREATE TABLE inbox (
    id          TEXT NOT NULL PRIMARY KEY,
    run_id      TEXT NOT NULL,
    kind        TEXT NOT NULL,       -- command | event
    body_json   TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    created_by  TEXT NOT NULL,       -- the replica that wrote it
    state       TEXT NOT NULL,       -- pending | done | failed
    answer_json TEXT,
    answered_at TEXT,
    answered_by TEXT                 -- the replica that answered (or the writer, withdrawing)
);
CREATE INDEX inbox_state ON inbox (state, created_at);

-- duty_leases: fleet-wide duties (the zombie sweep: `leader`) held by one replica at a time.
-- epoch counts the hand-overs: each new holder increments it.
CREATE TABLE duty_leases (
    name        TEXT NOT NULL PRIMARY KEY,
    owner       TEXT NOT NULL,
    epoch       INTEGER NOT NULL,
    lease_until TEXT NOT NULL
);
