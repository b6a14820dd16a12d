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
-- drip.preview (issue 19): the first rows a run would change, before and after, rolled back.
CREATE OR REPLACE FUNCTION drip."preview"(
	"name" TEXT, /* Option < & str > */
	"params" jsonb DEFAULT '{}', /* Option < JsonB > */
	"rows" INT DEFAULT 20, /* Option < i32 > */
	"from_key" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS TABLE (
	"key" TEXT[],  /* Vec < String > */
	"before" jsonb,  /* Option < JsonB > */
	"after" jsonb  /* Option < JsonB > */
)
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'preview_wrapper';

-- Undo data and drip.revert (issue 19): new columns at the end of their tables, as in
-- bootstrap.sql; register and start gain an undo argument (dropped and created again, as pgrx
-- generates them).
ALTER TABLE drip.backfills ADD COLUMN undo boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN drip.backfills.undo IS 'Runs keep undo data (drip.undo) by default, so drip.revert can take them back.';
ALTER TABLE drip.runs ADD COLUMN undo boolean NOT NULL DEFAULT false,
    ADD COLUMN reverts bigint, ADD COLUMN reverted_by bigint, ADD COLUMN undo_purged_at timestamptz;
COMMENT ON COLUMN drip.runs.undo IS 'Each batch saves the before-image of what it changes in drip.undo, in its own commit.';
COMMENT ON COLUMN drip.runs.reverts IS 'A revert run (drip.revert): the run whose changes it takes back.';
COMMENT ON COLUMN drip.runs.reverted_by IS 'The revert run started for this run by drip.revert.';
COMMENT ON COLUMN drip.runs.undo_purged_at IS 'When drip.purge_undo or drip.undo_retention removed the run''s undo data; it can no longer be reverted.';

-- Undo data: what each batch of a run with undo changed, saved in the batch's own commit.
CREATE TABLE drip.undo (
    run_id    bigint NOT NULL,
    batch_no  bigint NOT NULL,
    op        text NOT NULL CHECK (op IN ('update', 'delete')),
    rows      integer NOT NULL,
    items     jsonb NOT NULL,
    PRIMARY KEY (run_id, batch_no)
);
COMMENT ON TABLE drip.undo IS 'Before-images saved by runs with undo, one row per batch that changed rows, for drip.revert (drip.undo_rows, drip.undo_size, drip.purge_undo).';
COMMENT ON COLUMN drip.undo.rows IS 'The rows this batch changed (elements of items).';
COMMENT ON COLUMN drip.undo.items IS 'Columnar: k, the keys (text per key column); update: b, per key and assigned column its values before, and w, per assigned column its values as the run wrote them (a revert restores a row only while it still holds them); delete: r, the whole rows. drip.undo_rows shows them one row per changed row.';

-- One row per changed row, as the revert sees them (the caller''s own runs only).
-- (x takes the parts out of items once per batch: items is stored compressed.)
CREATE VIEW drip.undo_rows WITH (security_invoker = true) AS
    SELECT u.run_id, u.batch_no,
           ARRAY(SELECT pg_catalog.jsonb_array_elements_text(k.v)) AS key, u.op,
           CASE WHEN u.op = 'delete' THEN x.r -> (k.n::integer - 1)
                ELSE (SELECT pg_catalog.jsonb_object_agg(c.key, c.value -> (k.n::integer - 1))
                      FROM pg_catalog.jsonb_each(x.b) AS c) END AS before,
           (SELECT pg_catalog.jsonb_object_agg(c.key, c.value -> (k.n::integer - 1))
            FROM pg_catalog.jsonb_each(x.w) AS c) AS written
    FROM drip.undo u
    CROSS JOIN LATERAL (SELECT u.items -> 'k' AS k, u.items -> 'b' AS b, u.items -> 'w' AS w,
                               u.items -> 'r' AS r OFFSET 0) AS x
    CROSS JOIN LATERAL pg_catalog.jsonb_array_elements(x.k) WITH ORDINALITY AS k(v, n);
COMMENT ON VIEW drip.undo_rows IS 'drip.undo one row per changed row: key (text per key column), op, before, written.';

CREATE TABLE drip.revert_conflicts (
    run_id    bigint NOT NULL,
    key       text[] NOT NULL,
    reason    text NOT NULL CHECK (reason IN ('changed', 'deleted', 'key taken')),
    current   jsonb,
    expected  jsonb NOT NULL,
    at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (run_id, key)
);
COMMENT ON TABLE drip.revert_conflicts IS 'Rows a revert run left alone: changed or deleted since the original run wrote them, or (a deleted row) its key taken again. run_id is the revert run.';

ALTER TABLE drip.undo ENABLE ROW LEVEL SECURITY;
CREATE POLICY undo_visible ON drip.undo FOR SELECT
    USING (EXISTS (SELECT 1 FROM drip.runs r WHERE r.id = run_id));
ALTER TABLE drip.revert_conflicts ENABLE ROW LEVEL SECURITY;
CREATE POLICY revert_conflicts_visible ON drip.revert_conflicts FOR SELECT
    USING (EXISTS (SELECT 1 FROM drip.runs r WHERE r.id = run_id));
-- A revert run's statement runs as the run's owner and records its conflicts itself: only for
-- runs that owner can see (its own).
CREATE POLICY revert_conflicts_insert ON drip.revert_conflicts FOR INSERT
    WITH CHECK (EXISTS (SELECT 1 FROM drip.runs r WHERE r.id = run_id AND r.reverts IS NOT NULL));
GRANT SELECT ON drip.undo, drip.undo_rows, drip.revert_conflicts TO PUBLIC;
GRANT INSERT ON drip.revert_conflicts TO PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('drip.undo', '');
SELECT pg_catalog.pg_extension_config_dump('drip.revert_conflicts', '');

DROP FUNCTION drip.register(text, regclass, text, text, jsonb, text[], integer, interval, integer, text, boolean, interval, interval, interval, integer, integer, interval, text, text, text);
DROP FUNCTION drip.register_internal(text, oid, text, text, jsonb, text[], integer, interval, integer, text, boolean, interval, interval, interval, integer, integer, interval, text, text, text);
CREATE FUNCTION drip."register_internal"(
	"name" TEXT, /* Option < & str > */
	"relation" oid, /* Option < pg_sys :: Oid > */
	"action" TEXT, /* Option < & str > */
	"scope" TEXT, /* Option < & str > */
	"params" jsonb, /* Option < JsonB > */
	"key" TEXT[], /* :: std :: option :: Option < Vec < String > > */
	"batch_size" INT, /* Option < i32 > */
	"sleep" interval, /* Option < Interval > */
	"max_attempts" INT, /* Option < i32 > */
	"description" TEXT, /* Option < & str > */
	"replace" bool, /* Option < bool > */
	"lock_timeout" interval, /* Option < Interval > */
	"statement_timeout" interval, /* Option < Interval > */
	"target_batch_time" interval, /* Option < Interval > */
	"min_batch_size" INT, /* Option < i32 > */
	"max_batch_size" INT, /* Option < i32 > */
	"max_replica_lag" interval, /* Option < Interval > */
	"throttle_query" TEXT, /* Option < & str > */
	"mode" TEXT, /* Option < & str > */
	"on_row_error" TEXT, /* Option < & str > */
	"undo" bool /* Option < bool > */
) RETURNS void
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'register_internal_wrapper';

CREATE FUNCTION drip.register(
    name text, relation regclass, action text,
    scope text DEFAULT NULL, params jsonb DEFAULT '{}', key text[] DEFAULT NULL,
    batch_size integer DEFAULT 1000, sleep interval DEFAULT '100 milliseconds',
    max_attempts integer DEFAULT 3, description text DEFAULT NULL,
    replace boolean DEFAULT false,
    lock_timeout interval DEFAULT '1 second', statement_timeout interval DEFAULT '1 minute',
    target_batch_time interval DEFAULT NULL, min_batch_size integer DEFAULT 10,
    max_batch_size integer DEFAULT 100000, max_replica_lag interval DEFAULT '10 seconds',
    throttle_query text DEFAULT NULL, mode text DEFAULT 'batch', on_row_error text DEFAULT 'fail',
    undo boolean DEFAULT false)
    RETURNS drip.backfills
LANGUAGE sql VOLATILE AS $fn$
    SELECT drip.register_internal($1, $2::oid, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
                                  $14, $15, $16, $17, $18, $19, $20, $21);
    SELECT * FROM drip.backfills WHERE backfills.name = $1;
$fn$;
COMMENT ON FUNCTION drip.register(text, regclass, text, text, jsonb, text[], integer, interval, integer, text, boolean, interval, interval, interval, integer, integer, interval, text, text, text, boolean)
    IS 'Define (or with replace => true redefine) a backfill; validates everything up front.';

DROP FUNCTION drip.start(text, jsonb, integer, interval, timestamp with time zone, text, interval, interval, interval, integer, integer, interval, text, text, text, boolean, bigint, integer);
CREATE FUNCTION drip."start"(
	"name" TEXT, /* Option < & str > */
	"params" jsonb DEFAULT '{}', /* Option < JsonB > */
	"batch_size" INT DEFAULT NULL, /* Option < i32 > */
	"sleep" interval DEFAULT NULL, /* Option < Interval > */
	"start_at" timestamp with time zone DEFAULT NULL, /* Option < TimestampWithTimeZone > */
	"note" TEXT DEFAULT NULL, /* Option < & str > */
	"lock_timeout" interval DEFAULT NULL, /* Option < Interval > */
	"statement_timeout" interval DEFAULT NULL, /* Option < Interval > */
	"target_batch_time" interval DEFAULT NULL, /* Option < Interval > */
	"min_batch_size" INT DEFAULT NULL, /* Option < i32 > */
	"max_batch_size" INT DEFAULT NULL, /* Option < i32 > */
	"max_replica_lag" interval DEFAULT NULL, /* Option < Interval > */
	"throttle_query" TEXT DEFAULT NULL, /* Option < & str > */
	"from_key" TEXT DEFAULT NULL, /* Option < & str > */
	"to_key" TEXT DEFAULT NULL, /* Option < & str > */
	"follow_inserts" bool DEFAULT false, /* Option < bool > */
	"after" bigint DEFAULT NULL, /* Option < i64 > */
	"parallel" INT DEFAULT 1, /* Option < i32 > */
	"undo" bool DEFAULT NULL /* Option < bool > */
) RETURNS bigint /* i64 */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'start_wrapper';

CREATE FUNCTION drip."revert"(
	"run_id" bigint, /* Option < i64 > */
	"note" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS bigint /* i64 */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'revert_wrapper';

CREATE FUNCTION drip."undo_size"(
	"run_id" bigint /* Option < i64 > */
) RETURNS TABLE (
	"rows" bigint,  /* i64 */
	"bytes" bigint  /* i64 */
)
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'undo_size_wrapper';

CREATE FUNCTION drip."purge_undo"(
	"run_id" bigint /* Option < i64 > */
) RETURNS bigint /* i64 */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'purge_undo_wrapper';

-- Citus: per-shard progress. drip.progress gains sub_runs and sub_runs_done (at its end), and
-- drip.shard_progress shows each sub-run. Same definitions as sql/views.sql.
CREATE OR REPLACE VIEW drip.progress WITH (security_invoker = true) AS
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

-- drip.plan gains a distribution column (Citus: kind, shards, nodes, sub-runs). Its result type
-- changes, so it is dropped and created again, as pgrx generates it.
DROP FUNCTION drip."plan"(TEXT, jsonb);
CREATE FUNCTION drip."plan"(
	"name" TEXT, /* Option < & str > */
	"params" jsonb DEFAULT '{}' /* Option < JsonB > */
) RETURNS TABLE (
	"rows_in_scope" bigint,  /* Option < i64 > */
	"batches" bigint,  /* Option < i64 > */
	"boundary_sql" TEXT,  /* String */
	"batch_sql" TEXT,  /* String */
	"boundary_plan" TEXT,  /* String */
	"batch_plan" TEXT,  /* String */
	"warning" TEXT,  /* Option < String > */
	"distribution" TEXT  /* Option < String > */
)
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'plan_wrapper';
