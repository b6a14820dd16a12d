-- drip.preview (the first rows a run would change, rolled back) and undo + drip.revert, as a
-- user runs them in psql. Runs are executed in the foreground (CALL drip.finish) so the output
-- does not depend on timing.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS data_drip CASCADE;
DROP SCHEMA IF EXISTS t_preview CASCADE;
CREATE EXTENSION data_drip;
CREATE SCHEMA t_preview;
SET search_path = t_preview, public;

CREATE FUNCTION try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL, age int NOT NULL, seen int NOT NULL DEFAULT 0);
INSERT INTO users (id, email, age) SELECT g, 'User' || g || '@Example.COM', 20 + g % 3 FROM generate_series(1, 12) g;
SELECT name FROM drip.register('fix', 'users', 'SET email = lower(email), seen = seen + 1',
    scope => 'age = $age', params => '{"age": "integer"}', batch_size => 4, sleep => '0');

-- Only the changed columns, before and after; nothing changes.
SELECT * FROM drip.preview('fix', '{"age": 21}');
SELECT * FROM drip.preview('fix', '{"age": 21}', rows => 1, from_key => '1');
SELECT count(*) AS still_upper, sum(seen) AS seen FROM users WHERE email <> lower(email);
SELECT count(*) AS runs FROM drip.runs;

-- The same refusals as drip.start, and the action's own errors.
SELECT try($$SELECT * FROM drip.preview('nosuch')$$) AS unknown_backfill;
SELECT try($$SELECT * FROM drip.preview('fix', '{"age": "thirty"}')$$) AS wrong_type;
SELECT try($$SELECT * FROM drip.preview('fix', '{"agee": 30}')$$) AS unknown_param;
SELECT try($$SELECT * FROM drip.preview('fix', '{"age": 21}', from_key => 'x')$$) AS bad_from_key;
SELECT try($$SELECT * FROM drip.preview('fix', '{"age": 21}', rows => 0)$$) AS no_rows;
SELECT name FROM drip.register('divide', 'users', 'SET seen = 1 / (id - 5)', batch_size => 4, sleep => '0');
SELECT try($$SELECT * FROM drip.preview('divide')$$) AS failing_action;

-- DELETE: the whole row before, nothing after. A statement: what it changed in the table.
SELECT name FROM drip.register('purge', 'users', 'DELETE', scope => 'age = 20', sleep => '0');
SELECT * FROM drip.preview('purge', rows => 2);
SELECT name FROM drip.register('bump', 'users',
    'UPDATE users u SET seen = u.seen + 100 FROM drip_batch b WHERE u.id = b.id AND b.id % 4 = 0');
SELECT * FROM drip.preview('bump');
SELECT count(*) AS rows_now FROM users;

-- Undo: a run that keeps its before-images, then its revert; a row edited in between is left
-- alone and reported.
SELECT drip.start('fix', '{"age": 21}', undo => true, start_at => now() + interval '1 hour') AS run \gset
CALL drip.finish(:run);
SELECT id, email, seen FROM users WHERE age = 21 ORDER BY id;
SELECT rows FROM drip.undo_size(:run);
SELECT key, op, before, written FROM drip.undo_rows WHERE run_id = :run ORDER BY key[1]::int LIMIT 2;
UPDATE users SET email = 'edited@example.com' WHERE id = 7;
-- (Paused in the transaction that starts it, so no background worker takes it first.)
BEGIN;
SELECT drip.revert(:run, note => 'wrong fix') AS revert \gset
SELECT drip.pause(:revert);
COMMIT;
CALL drip.finish(:revert);
SELECT status, rows_done, reverts = :run AS reverts_the_run, note FROM drip.runs WHERE id = :revert;
SELECT reverted_by = :revert AS reverted_by_the_revert FROM drip.runs WHERE id = :run;
SELECT id, email, seen FROM users WHERE age = 21 ORDER BY id;
SELECT key, reason, current->>'email' AS email_now FROM drip.revert_conflicts WHERE run_id = :revert;

-- Refusals: again, a revert of the revert, a statement action with undo.
SELECT try(format('SELECT drip.revert(%s)', :run)) AS again;
SELECT try(format('SELECT drip.revert(%s)', :revert)) AS revert_of_revert;
SELECT try($$SELECT drip.start('bump', undo => true)$$) AS statement_with_undo;

DROP SCHEMA t_preview CASCADE;
DROP EXTENSION data_drip CASCADE;
