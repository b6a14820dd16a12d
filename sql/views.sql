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
       r.cursor,
       '[' || repeat('#', (p.percent / 5)::int) || repeat('.', 20 - (p.percent / 5)::int) || '] '
           || to_char(p.percent, 'FM990.0') || '%' AS progress_bar,
       coalesce(r.error, last_batch_error.error) AS last_error,
       r.started_at,
       r.finished_at,
       coalesce(r.finished_at, now()) - r.started_at AS elapsed
FROM drip.runs r
CROSS JOIN LATERAL (
    SELECT extract(epoch FROM coalesce(r.finished_at, now()) - r.started_at) AS secs
) e
CROSS JOIN LATERAL (
    SELECT CASE WHEN e.secs > 0 THEN round(r.rows_done / e.secs, 1) END AS rows_per_sec
) rate
CROSS JOIN LATERAL (
    SELECT CASE
               WHEN r.status = 'completed' THEN 100.0
               WHEN coalesce(r.rows_estimated, 0) <= 0 THEN 0.0
               ELSE least(99.9, round(100.0 * r.rows_done / r.rows_estimated, 1))
           END::numeric(4, 1) AS percent
) p
LEFT JOIN LATERAL (
    SELECT b.error FROM drip.batches b
    WHERE b.run_id = r.id AND b.error IS NOT NULL
    ORDER BY b.batch_no DESC, b.finished_at DESC LIMIT 1
) last_batch_error ON true;

COMMENT ON VIEW drip.progress IS 'One row per run: status, rows done, estimated rows in scope, percent, rows/s, ETA, cursor, a text progress bar and the last error.';

GRANT SELECT ON drip.progress TO PUBLIC;
