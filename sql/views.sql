-- drip.progress: one row per run, for humans and dashboards.
-- security_invoker: the view shows what the querying role may see of drip.runs (RLS applies).
CREATE VIEW drip.progress WITH (security_invoker = true) AS
SELECT r.id AS run_id,
       r.backfill,
       r.status,
       r.rows_done,
       r.rows_failed,
       r.rows_estimated,
       p.percent,
       rate.rows_per_sec,
       CASE WHEN r.status IN ('running', 'enqueued', 'paused') AND rate.rows_per_sec > 0
                 AND r.rows_estimated > r.rows_done
            THEN make_interval(secs => round((r.rows_estimated - r.rows_done) / rate.rows_per_sec))
       END AS eta,
       r.batches_done,
       coalesce(r.cursor, recent.last_high_key) AS cursor,
       '[' || repeat('#', (p.percent / 5)::int) || repeat('.', 20 - (p.percent / 5)::int) || '] '
           || to_char(p.percent, 'FM990.0') || '%' AS progress_bar,
       coalesce(r.error, last_batch_error.error) AS last_error,
       r.started_at,
       r.finished_at,
       coalesce(r.finished_at, now()) - r.started_at AS elapsed
FROM drip.runs r
-- Throughput over the last 20 completed batches, sleeps included (one per batch), so time spent
-- paused or failed long ago does not dilute it and the ETA accounts for the sleep. Read through
-- the batches' primary key: cheap however many batches a run has.
LEFT JOIN LATERAL (
    SELECT sum(w.rows) AS rows,
           extract(epoch FROM max(w.finished_at) - min(w.started_at) + r.sleep) AS secs,
           (SELECT b.high_key FROM drip.batches b
             WHERE b.run_id = r.id AND b.status = 'completed'
             ORDER BY b.batch_no DESC LIMIT 1) AS last_high_key
    FROM (SELECT b.rows, b.started_at, b.finished_at
          FROM drip.batches b
          WHERE b.run_id = r.id AND b.status = 'completed'
          ORDER BY b.batch_no DESC LIMIT 20) w
) recent ON true
CROSS JOIN LATERAL (
    SELECT CASE WHEN recent.secs > 0 THEN round(recent.rows / recent.secs, 1) END AS rows_per_sec
) rate
CROSS JOIN LATERAL (
    SELECT CASE
               WHEN r.status = 'completed' THEN 100.0
               WHEN coalesce(r.rows_estimated, 0) <= 0 THEN 0.0
               ELSE least(99.9, round(100.0 * r.rows_done / r.rows_estimated, 1))
           END::numeric(4, 1) AS percent
) p
-- The error of a batch that is still failed (a batch that succeeded on retry no longer counts).
LEFT JOIN LATERAL (
    SELECT b.error FROM drip.batches b
    WHERE b.run_id = r.id AND b.status = 'failed' AND b.error IS NOT NULL
    ORDER BY b.batch_no DESC, b.finished_at DESC LIMIT 1
) last_batch_error ON true;

COMMENT ON VIEW drip.progress IS 'One row per run: status, rows done, estimated rows in scope, percent, rows/s and ETA (over the last 20 batches, sleeps included), cursor (for parallel runs the last completed batch''s upper key), a text progress bar and the error of a batch still failed.';

GRANT SELECT ON drip.progress TO PUBLIC;
