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
       coalesce(r.finished_at, now()) - r.started_at AS elapsed,
       shards.sub_runs,
       shards.sub_runs_done
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
      -- a failure to find the next batch is over once a later batch of its slice completed
      AND NOT (b.rows = 0 AND b.high_key IS NOT DISTINCT FROM coalesce(b.low_key, '{}')
               AND EXISTS (SELECT 1 FROM drip.batches c
                           WHERE c.run_id = b.run_id AND c.batch_no > b.batch_no
                             AND c.status = 'completed' AND c.slice IS NOT DISTINCT FROM b.slice))
    ORDER BY b.batch_no DESC, b.finished_at DESC LIMIT 1
) last_batch_error ON true
-- A run on a Citus distributed table: its sub-runs (one per shard), and how many are done.
LEFT JOIN LATERAL (
    SELECT nullif(count(*), 0)::integer AS sub_runs,
           CASE WHEN count(*) > 0 THEN (count(*) FILTER (WHERE s.done))::integer END AS sub_runs_done
    FROM drip.slices s WHERE s.run_id = r.id AND s.hash_min IS NOT NULL
) shards ON true;

COMMENT ON VIEW drip.progress IS 'One row per run: status, rows done, estimated rows in scope, percent, rows/s and ETA (over the last 20 batches, sleeps included), cursor (for parallel runs the last completed batch''s upper key), a text progress bar and the error of a batch still failed.';

GRANT SELECT ON drip.progress TO PUBLIC;

-- drip.shard_progress: one row per sub-run of a run on a Citus distributed table (one per shard).
CREATE VIEW drip.shard_progress WITH (security_invoker = true) AS
SELECT s.run_id,
       r.backfill,
       s.slice AS sub_run,
       s.hash_min,
       s.hash_max,
       s.node_group,
       CASE WHEN s.done THEN 'done'
            WHEN r.status <> 'running' THEN r.status
            WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_locks l
                         WHERE l.locktype = 'advisory' AND l.granted
                           AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = current_database())
                           AND l.classid = (1146290176 + s.slice)::oid
                           AND l.objsubid = 2 AND l.objid = ((s.run_id & 2147483647)::int4)::oid)
            THEN 'running'
            ELSE 'waiting' END AS status,
       s.rows_done,
       s.rows_failed,
       s.batches_done,
       s.cursor
FROM drip.slices s
JOIN drip.runs r ON r.id = s.run_id
WHERE s.hash_min IS NOT NULL;

COMMENT ON VIEW drip.shard_progress IS 'One row per sub-run of a run on a Citus distributed table (one per shard hash range): its node group, status (done, running, waiting for its node, or the run''s status), rows and batches done and cursor.';

GRANT SELECT ON drip.shard_progress TO PUBLIC;
