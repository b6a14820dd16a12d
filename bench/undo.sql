-- Undo on vs off, and the revert (issue 19). Runs in a database with data_drip and pgbench's
-- tables (pgbench -i -s N), with no other runs active; bench/undo.sh sets one up:
--
--   pgbench -i -s 10 bench && psql -X -d bench -c 'CREATE EXTENSION IF NOT EXISTS data_drip'
--   psql -X -d bench -f bench/undo.sql
--
-- Alternates undo off and on at batch 1,000 and 10,000 (two rounds each, VACUUM before every
-- run so no run pays for the previous one's dead rows), reverts the last run (batch 10,000),
-- then runs undo on at batch 1,000 once more and reverts it. Prints rows/s per run, the ratio
-- on/off per batch size, the revert's rate against the run it reverts, and the undo bytes per
-- row. Every run adds 1 to every abalance; each revert takes the last one back.
\set ON_ERROR_STOP on
\pset footer off
SET client_min_messages = warning;
SELECT drip.unregister(name) FROM drip.backfills WHERE name LIKE 'bench\_undo\_%' OR name LIKE 'revert:%';
VACUUM ANALYZE pgbench_accounts;
SELECT name FROM drip.register('bench_undo_off_1000', 'pgbench_accounts', 'SET abalance = abalance + 1', batch_size => 1000, sleep => '0');
SELECT name FROM drip.register('bench_undo_on_1000', 'pgbench_accounts', 'SET abalance = abalance + 1', batch_size => 1000, sleep => '0', undo => true);
SELECT name FROM drip.register('bench_undo_off_10000', 'pgbench_accounts', 'SET abalance = abalance + 1', batch_size => 10000, sleep => '0');
SELECT name FROM drip.register('bench_undo_on_10000', 'pgbench_accounts', 'SET abalance = abalance + 1', batch_size => 10000, sleep => '0', undo => true);
CREATE TEMP TABLE bench_runs (seq serial, run_id bigint);

VACUUM pgbench_accounts;
SELECT drip.start('bench_undo_off_1000') AS r \gset
SELECT drip.wait(:r) AS off_1000; INSERT INTO bench_runs (run_id) VALUES (:r);
VACUUM pgbench_accounts;
SELECT drip.start('bench_undo_on_1000') AS r \gset
SELECT drip.wait(:r) AS on_1000; INSERT INTO bench_runs (run_id) VALUES (:r);
VACUUM pgbench_accounts;
SELECT drip.start('bench_undo_off_10000') AS r \gset
SELECT drip.wait(:r) AS off_10000; INSERT INTO bench_runs (run_id) VALUES (:r);
VACUUM pgbench_accounts;
SELECT drip.start('bench_undo_on_10000') AS r \gset
SELECT drip.wait(:r) AS on_10000; INSERT INTO bench_runs (run_id) VALUES (:r);
VACUUM pgbench_accounts;
SELECT drip.start('bench_undo_off_1000') AS r \gset
SELECT drip.wait(:r) AS off_1000; INSERT INTO bench_runs (run_id) VALUES (:r);
VACUUM pgbench_accounts;
SELECT drip.start('bench_undo_on_1000') AS r \gset
SELECT drip.wait(:r) AS on_1000; INSERT INTO bench_runs (run_id) VALUES (:r);
VACUUM pgbench_accounts;
SELECT drip.start('bench_undo_off_10000') AS r \gset
SELECT drip.wait(:r) AS off_10000; INSERT INTO bench_runs (run_id) VALUES (:r);
VACUUM pgbench_accounts;
SELECT drip.start('bench_undo_on_10000') AS r \gset
SELECT drip.wait(:r) AS on_10000; INSERT INTO bench_runs (run_id) VALUES (:r);

SELECT :r AS last_undo_run \gset
VACUUM pgbench_accounts;
SELECT drip.revert(:last_undo_run) AS r \gset
SELECT drip.wait(:r) AS revert_10000; INSERT INTO bench_runs (run_id) VALUES (:r);
SELECT * FROM drip.undo_size(:last_undo_run) \gset undo_
VACUUM pgbench_accounts;
SELECT drip.start('bench_undo_on_1000') AS r \gset
SELECT drip.wait(:r) AS on_1000; INSERT INTO bench_runs (run_id) VALUES (:r);
SELECT :r AS last_undo_run_1000 \gset
VACUUM pgbench_accounts;
SELECT drip.revert(:last_undo_run_1000) AS r \gset
SELECT drip.wait(:r) AS revert_1000; INSERT INTO bench_runs (run_id) VALUES (:r);

SELECT b.seq, r.backfill, r.rows_done, coalesce(o.batch_size, r.batch_size) AS batch_size,
       round(extract(epoch FROM r.finished_at - r.started_at)::numeric, 2) AS seconds,
       round(r.rows_done / nullif(extract(epoch FROM r.finished_at - r.started_at), 0)) AS rows_per_s
FROM bench_runs b JOIN drip.runs r ON r.id = b.run_id LEFT JOIN drip.runs o ON o.id = r.reverts
ORDER BY b.seq;

SELECT size, round(avg(rate) FILTER (WHERE undo) / avg(rate) FILTER (WHERE NOT undo), 2) AS on_over_off
FROM (SELECT substring(r.backfill FROM '[0-9]+$')::int AS size, r.backfill LIKE '%\_on\_%' AS undo,
             r.rows_done / nullif(extract(epoch FROM r.finished_at - r.started_at), 0) AS rate
      FROM bench_runs b JOIN drip.runs r ON r.id = b.run_id WHERE r.backfill LIKE 'bench\_undo\_%') s
GROUP BY size ORDER BY size;

-- The revert against the run it reverts (and against the undo-off runs of that batch size).
SELECT o.batch_size AS batch, v.rows_done AS reverted,
       round(v.rows_done / extract(epoch FROM v.finished_at - v.started_at)) AS revert_rows_per_s,
       round(o.rows_done / extract(epoch FROM o.finished_at - o.started_at)) AS run_rows_per_s,
       round((v.rows_done / extract(epoch FROM v.finished_at - v.started_at))
             / (o.rows_done / extract(epoch FROM o.finished_at - o.started_at)), 2) AS revert_over_run
FROM bench_runs b JOIN drip.runs v ON v.id = b.run_id JOIN drip.runs o ON o.id = v.reverts
ORDER BY b.seq;

-- Undo data per changed row: drip.undo_size (the rows' stored size, compressed) of the runs
-- kept, and the table with its index and TOAST.
SELECT :undo_rows AS rows_10000, :undo_bytes AS bytes_10000,
       round(:undo_bytes::numeric / nullif(:undo_rows, 0), 1) AS bytes_per_row_10000;
SELECT rows, bytes, round(bytes::numeric / nullif(rows, 0), 1) AS bytes_per_row_1000
FROM drip.undo_size(:last_undo_run_1000);
SELECT sum(u.rows) AS rows_all_runs, pg_total_relation_size('drip.undo') AS table_bytes,
       round(pg_total_relation_size('drip.undo')::numeric / nullif(sum(u.rows), 0), 1) AS table_bytes_per_row
FROM drip.undo u;
SELECT count(DISTINCT abalance) AS distinct_abalance_after_revert FROM pgbench_accounts;
