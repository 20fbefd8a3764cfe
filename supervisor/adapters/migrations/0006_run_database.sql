-- Issue 5: the run database. What the job reported through its run prefix, read once per
-- change of the object's ETag (the ETags seen are kept on the run, so a restart re-reads
-- nothing). A run's config, tags and objectives are in runs.spec_json.
ALTER TABLE runs ADD COLUMN report_etags TEXT NOT NULL DEFAULT '{}';  -- {key: etag} ingested

CREATE TABLE run_data (
    run_id             TEXT PRIMARY KEY REFERENCES runs (run_id),
    status_json        TEXT,     -- the newest status.json (heartbeat) as reported
    status_at          TEXT,     -- when the supervisor read it
    step               INTEGER,  -- the step it reported
    wandb_run_id       TEXT,
    wandb_url          TEXT,
    final_metrics_json TEXT,     -- final_metrics.json: {"metrics": {...}, "wandb": {...}}
    history_json       TEXT,     -- history.json: [{"step": N, "metric": value, ...}, ...]
    total_steps        INTEGER,  -- steps at completion (from the final metrics or history)
    updated_at         TEXT NOT NULL
);
