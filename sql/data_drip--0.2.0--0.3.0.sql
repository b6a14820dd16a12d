-- data_drip 0.2.0 -> 0.3.0
--
-- Hand-written (pgrx generates only install scripts). Same rules as data_drip--0.1.0--0.2.0.sql:
-- every catalog change of 0.3.0 lands here in the same commit as in sql/bootstrap.sql or the
-- Rust sources; CI (tests/upgrade.rs) fails when an upgraded catalog differs from a fresh one;
-- new table columns go at the end of their CREATE TABLE.
\echo Use "ALTER EXTENSION data_drip UPDATE TO '0.3.0'" to load this file. \quit

-- Citus: one sub-run per shard. A slice of a run on a hash-distributed table owns a hash range
-- of the distribution column, and the scheduler caps the sub-runs per node by node_group.
ALTER TABLE drip.slices ADD COLUMN hash_min integer;
ALTER TABLE drip.slices ADD COLUMN hash_max integer;
ALTER TABLE drip.slices ADD COLUMN node_group integer;
ALTER TABLE drip.slices ADD COLUMN rows_done bigint NOT NULL DEFAULT 0;
ALTER TABLE drip.slices ADD COLUMN rows_failed bigint NOT NULL DEFAULT 0;
ALTER TABLE drip.slices ADD COLUMN batches_done bigint NOT NULL DEFAULT 0;
COMMENT ON TABLE drip.slices IS 'Slices of parallel runs (start(..., parallel => N)): contiguous key ranges, one worker and one cursor each; on a Citus distributed table, one sub-run per shard (hash_min..hash_max), at most drip.max_runs_per_node of them per node at once.';
