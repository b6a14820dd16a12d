-- Undo on vs off, and the revert (issue 19). Runs in a database with data_drip and pgbench's
-- tables (pgbench -i -s N), with no other runs active:
--
--   pgbench -i -s 10 bench && psql -X -d bench -c 'CREATE EXTENSION IF NOT EXISTS data_drip'
--   psql -X -d bench -f bench/undo.sql
--
-- Alternates undo off and on at batch 1,000 and 10,000 (two rounds each), then reverts the last
-- run with undo, and prints rows/s per run, the ratio on/off per batch size, and the undo bytes
-- per row. Every run adds 1 to every abalance; the revert takes the last one back.
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

SELECT drip.start('bench_undo_off_1000') AS r \gset
SELECT drip.wait(:r) AS off_1000; INSERT INTO bench_runs (run_id) VALUES (:r);
SELECT drip.start('bench_undo_on_1000') AS r \gset
SELECT drip.wait(:r) AS on_1000; INSERT INTO bench_runs (run_id) VALUES (:r);
SELECT drip.start('bench_undo_off_10000') AS r \gset
SELECT drip.wait(:r) AS off_10000; INSERT INTO bench_runs (run_id) VALUES (:r);
SELECT drip.start('bench_undo_on_10000') AS r \gset
SELECT drip.wait(:r) AS on_10000; INSERT INTO bench_runs (run_id) VALUES (:r);
SELECT drip.start('bench_undo_off_1000') AS r \gset
SELECT drip.wait(:r) AS off_1000; INSERT INTO bench_runs (run_id) VALUES (:r);
SELECT drip.start('bench_undo_on_1000') AS r \gset
SELECT drip.wait(:r) AS on_1000; INSERT INTO bench_runs (run_id) VALUES (:r);
SELECT drip.start('bench_undo_off_10000') AS r \gset
SELECT drip.wait(:r) AS off_10000; INSERT INTO bench_runs (run_id) VALUES (:r);
SELECT drip.start('bench_undo_on_10000') AS r \gset
SELECT drip.wait(:r) AS on_10000; INSERT INTO bench_runs (run_id) VALUES (:r);
SELECT :r AS last_undo_run \gset
SELECT drip.revert(:last_undo_run) AS r \gset
SELECT drip.wait(:r) AS revert; INSERT INTO bench_runs (run_id) VALUES (:r);

SELECT b.seq, r.backfill, r.rows_done, r.batch_size,
       round(extract(epoch FROM r.finished_at - r.started_at)::numeric, 2) AS seconds,
       round(r.rows_done / nullif(extract(epoch FROM r.finished_at - r.started_at), 0)) AS rows_per_s
FROM bench_runs b JOIN drip.runs r ON r.id = b.run_id ORDER BY b.seq;

SELECT size, round(avg(rate) FILTER (WHERE undo) / avg(rate) FILTER (WHERE NOT undo), 2) AS on_over_off
FROM (SELECT substring(r.backfill FROM '[0-9]+$')::int AS size, r.backfill LIKE '%\_on\_%' AS undo,
             r.rows_done / nullif(extract(epoch FROM r.finished_at - r.started_at), 0) AS rate
      FROM bench_runs b JOIN drip.runs r ON r.id = b.run_id WHERE r.backfill LIKE 'bench\_undo\_%') s
GROUP BY size ORDER BY size;

SELECT rows, bytes, round(bytes::numeric / nullif(rows, 0), 1) AS bytes_per_row
FROM drip.undo_size(:last_undo_run);
SELECT count(DISTINCT abalance) AS distinct_abalance_after_revert FROM pgbench_accounts;
