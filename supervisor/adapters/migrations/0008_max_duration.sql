-- Issue 13: a run's max_duration counts its running time over its attempts; the earlier
-- attempts' share is kept here (0 for every run so far: its attempts count from now on).
ALTER TABLE runs ADD COLUMN running_s_before REAL NOT NULL DEFAULT 0;
