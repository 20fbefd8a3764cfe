-- Issue 13: when a run's job ended (its completion or failure marker's LastModified), so that
-- `show` and `report` can count the idle instance-seconds from then until the stop was
-- accepted (action_acked_at). NULL for every run so far: their end was not recorded.
ALTER TABLE runs ADD COLUMN job_ended_at TEXT;
