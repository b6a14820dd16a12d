-- NULL in every argument of every user-facing drip.* function: either a documented meaning
-- (the call works) or 22004 naming the argument. Never XX000, never a silent NULL result.
-- The calls are generated from pg_proc, so a new function or argument is covered automatically.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS data_drip CASCADE;
DROP SCHEMA IF EXISTS t_nulls CASCADE;
CREATE EXTENSION data_drip;
CREATE SCHEMA t_nulls;
SET search_path = t_nulls, public;

-- Run a call and undo whatever it did (each call starts from the same state).
CREATE FUNCTION try(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    result text;
BEGIN
    EXECUTE sql INTO result;
    RAISE EXCEPTION USING ERRCODE = 'P0099', MESSAGE = CASE WHEN result IS NULL THEN 'NULL result' ELSE 'ok' END;
EXCEPTION
    WHEN SQLSTATE 'P0099' THEN RETURN SQLERRM;
    WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

CREATE TABLE nt (id int PRIMARY KEY, v int, w int, parent int);
CREATE TABLE np (id int PRIMARY KEY);
SELECT name FROM drip.register('nb', 'nt', 'SET v = 1', sleep => '0');
-- A finished run to point run_id arguments at.
SELECT drip.stop(drip.start('nb')) AS stopped;
-- A pending run, which alter accepts.
SELECT name FROM drip.register('nb_later', 'nt', 'SET w = 1');
SELECT drip.start('nb_later', start_at => now() + interval '1 day') > 0 AS pending;

-- A plausible value per argument: its declared default, else one per type; each call gets NULL
-- in exactly one argument.
CREATE TABLE samples (typ regtype PRIMARY KEY, val text);
INSERT INTO samples VALUES
    ('text', quote_literal('nb')), ('regclass', quote_literal('t_nulls.nt')), ('name', quote_literal('v')),
    ('bigint', '(SELECT min(id) FROM drip.runs)'), ('integer', '1'), ('boolean', 'false'),
    ('interval', quote_literal('1 second')), ('jsonb', quote_literal('{}')),
    ('timestamptz', 'now()'), ('text[]', 'NULL');

CREATE TABLE arg_samples (proname name, argname text, val text);
INSERT INTO arg_samples VALUES (NULL, 'name', quote_literal('nb')), ('register', 'name', quote_literal('nb_new')),
    ('alter', 'run_id', '(SELECT id FROM drip.runs WHERE status = ''pending'')'),
    ('wait', 'run_id', '(SELECT id FROM drip.runs WHERE status = ''stopped'')'), (NULL, 'action', quote_literal('SET v = 1')),
    (NULL, 'value', quote_literal('1')), (NULL, 'column_name', quote_literal('v')),
    (NULL, 'from_column', quote_literal('v')), (NULL, 'to_column', quote_literal('w')),
    (NULL, 'fk_column', quote_literal('parent')), (NULL, 'counter_column', quote_literal('v')),
    (NULL, 'parent', quote_literal('t_nulls.np')), (NULL, 'child', quote_literal('t_nulls.nt'));

CREATE TABLE calls AS
SELECT p.oid::regprocedure AS fn, a.i AS arg, p.proargnames[a.i] AS argname,
       format('SELECT (drip.%I(%s))::text', p.proname,
              (SELECT string_agg(CASE WHEN j = a.i THEN format('NULL::%s', t::regtype)
                                      ELSE format('(%s)::%s',
                                                  coalesce(pg_get_function_arg_default(p.oid, j::int),
                                                           (SELECT val FROM arg_samples WHERE argname = p.proargnames[j]
                                                             AND (proname = p.proname OR proname IS NULL)
                                                            ORDER BY proname NULLS LAST LIMIT 1),
                                                           s.val),
                                                  t::regtype) END, ', ' ORDER BY j)
               FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY AS x(t, j)
               LEFT JOIN samples s ON s.typ = x.t)) AS sql
FROM pg_proc p
CROSS JOIN LATERAL generate_series(1, p.pronargs) AS a(i)
WHERE p.pronamespace = 'drip'::regnamespace AND p.prokind = 'f'
  AND p.proname NOT LIKE '%\_internal' AND p.proname NOT LIKE '\_%'
  AND p.proname NOT IN ('emit', 'may_control', 'key_text', 'finish_step', 'finish_work', 'purge_expired');

-- Every call's outcome. 'ok' and 'NULL result' are allowed only for arguments whose NULL has a
-- documented meaning (README reference); everything else must be 22004 naming the argument.
SELECT fn, argname, CASE WHEN r LIKE '22004:%' THEN '22004' ELSE r END AS outcome
FROM (SELECT fn, arg, argname, try(sql) AS r FROM calls) s
ORDER BY fn::text, arg;

-- The gate: no internal errors, and every 22004 names its argument.
SELECT count(*) AS internal_errors FROM calls WHERE try(sql) LIKE 'XX000%';
SELECT fn, argname FROM calls c WHERE try(sql) LIKE '22004%' AND try(sql) NOT LIKE format('%%"%s"%%', argname);

-- Procedures and the assertion gate.
SELECT try('SELECT drip.assert_completed(NULL)') AS assert_completed_null;
DO $$ BEGIN CALL drip.finish(NULL); EXCEPTION WHEN OTHERS THEN RAISE WARNING 'finish(NULL): %: %', SQLSTATE, SQLERRM; END $$;

DROP SCHEMA t_nulls CASCADE;
DROP EXTENSION data_drip CASCADE;
