-- A run from start to completed, then pause, resume and stop of a slow run.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS data_drip CASCADE;
DROP SCHEMA IF EXISTS t_lifecycle CASCADE;
CREATE EXTENSION data_drip;
CREATE SCHEMA t_lifecycle;
SET search_path = t_lifecycle, public;

CREATE FUNCTION try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

-- Wait (up to 30 s) until a run reaches one of the given statuses; each loop sees new commits.
CREATE FUNCTION wait_status(run bigint, wanted text[]) RETURNS text LANGUAGE plpgsql AS $$
DECLARE s text;
BEGIN
    FOR i IN 1..600 LOOP
        SELECT status INTO s FROM drip.runs WHERE id = run;
        IF s = ANY (wanted) THEN RETURN s; END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RETURN 'timeout: ' || s;
END $$;

CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL, age int NOT NULL);
INSERT INTO users (email, age) SELECT 'User' || g || '@Example.COM', g % 80 FROM generate_series(1, 10000) g;
ANALYZE users;

SELECT name FROM drip.register('fix_emails', 'users', action => 'SET email = lower(email)',
    scope => 'age = $age', params => '{"age": "integer"}', batch_size => 1000, sleep => '0');

-- Bad values are refused before anything is written.
SELECT try($$SELECT drip.start('fix_emails', '{"age": "thirty"}')$$) AS wrong_type;
SELECT try($$SELECT drip.start('fix_emails', '{"agee": 30}')$$) AS unknown_param;
SELECT try($$SELECT drip.start('fix_emails', '30')$$) AS not_an_object;
SELECT try($$SELECT drip.start('nosuch')$$) AS unknown_backfill;
SELECT count(*) AS runs FROM drip.runs;

SELECT drip.start('fix_emails', '{"age": 30}', note => 'regression') AS run \gset
SELECT wait_status(:run, '{completed,failed}');
SELECT status, params, rows_done, batches_done, cursor, note, error FROM drip.runs WHERE id = :run;
SELECT batch_no, low_key, high_key, rows, status, attempts FROM drip.batches WHERE run_id = :run ORDER BY batch_no;
SELECT status, rows_done, percent, progress_bar, last_error FROM drip.progress WHERE run_id = :run;
SELECT count(*) AS still_mixed_case FROM users WHERE age = 30 AND email <> lower(email);
SELECT count(*) AS changed_outside_scope FROM users WHERE age <> 30 AND email = lower(email);

-- A second start is fine once the first run finished; a third is refused while one is active.
SELECT drip.start('fix_emails', '{"age": 31}', sleep => '10 seconds', batch_size => 100) AS run2 \gset
SELECT regexp_replace(regexp_replace(try($$SELECT drip.start('fix_emails', '{"age": 32}')$$),
       'run \d+', 'run N'), '\((enqueued|running)\)', '(active)') AS second_active;
SELECT wait_status(:run2, '{running}');
SELECT drip.pause(:run2);
SELECT regexp_replace(try(format('SELECT drip.pause(%s)', :run2)), 'run \d+', 'run N') AS pause_twice;
SELECT drip.resume(:run2);
SELECT drip.stop(:run2);
SELECT regexp_replace(try(format('SELECT drip.resume(%s)', :run2)), 'run \d+', 'run N') AS resume_stopped;
SELECT status, finished_at IS NOT NULL AS finished FROM drip.runs WHERE id = :run2;
SELECT try($$SELECT drip.pause(123456789)$$) AS unknown_run;
