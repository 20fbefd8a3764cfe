-- Checkpoint safety and resume: what happens after the checkpoint step, whether the final
-- checkpoint was verified, which attempt this is, and how each instance joined the run.
ALTER TABLE runs ADD COLUMN pending_action TEXT;
ALTER TABLE runs ADD COLUMN checkpoint TEXT;          -- verified | unverified | NULL
ALTER TABLE runs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1;
ALTER TABLE runs ADD COLUMN started_at TEXT;          -- when the current attempt's training began
ALTER TABLE instances ADD COLUMN source TEXT NOT NULL DEFAULT 'attached';  -- attached | launched
