-- drip.register: what is stored, and how bad input is refused (SQLSTATE: message).
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS data_drip CASCADE;
DROP SCHEMA IF EXISTS t_register CASCADE;
CREATE EXTENSION data_drip;
CREATE SCHEMA t_register;
SET search_path = t_register, public;

CREATE FUNCTION try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL, age int NOT NULL);
CREATE TABLE events (tenant int NOT NULL, at timestamptz NOT NULL, payload text, PRIMARY KEY (tenant, at));
CREATE TABLE nokey (k int, v int);

-- The quick-start example; the row comes back with the canonical parameter declaration.
SELECT name, relation, action, action_kind, scope, params, key, batch_size, sleep, max_attempts
FROM drip.register('fix_emails', 'users', action => 'SET email = lower(email)',
                   scope => 'age = $age', params => '{"age": "integer"}');

-- Composite primary key, parameters of several kinds, a drip_batch statement.
-- events_archive does not exist yet: the statement is checked at register.
SELECT try($$SELECT drip.register('archive', 'events', action => 'INSERT INTO events_archive SELECT * FROM drip_batch')$$);
CREATE TABLE events_archive (LIKE events);
SELECT name, key, action_kind, params
FROM drip.register('archive', 'events',
                   action => 'INSERT INTO events_archive SELECT * FROM drip_batch',
                   scope => 'tenant = ANY($tenants) AND at < $before',
                   params => '{"tenants": "int[]", "before": {"type": "timestamptz", "required": true}}');

-- $name inside literals, quoted identifiers, comments and dollar quotes is not a parameter.
SELECT name, scope FROM drip.register('literal', 'users', 'SET email = email || ''$age''',
    scope => $s$email <> '$nope' /* $nope */ AND "age" >= 0 -- $nope
$s$);

-- Bad input.
SELECT try($$SELECT drip.register('fix_emails', 'users', 'SET age = 1')$$) AS duplicate;
SELECT try($$SELECT drip.register('x', 'nosuch', 'SET age = 1')$$) AS missing_relation;
SELECT try($$SELECT drip.register('x', 'nokey', 'SET v = 1')$$) AS no_primary_key;
SELECT try($$SELECT drip.register('x', 'nokey', 'SET v = 1', key => '{k}')$$) AS key_not_indexed;
SELECT try($$SELECT drip.register('x', 'users', 'SET age = 1', key => '{nope}')$$) AS unknown_key_column;
SELECT try($$SELECT drip.register('x', 'users', 'SET age = 1', scope => 'age >')$$) AS scope_syntax;
SELECT try($$SELECT drip.register('x', 'users', 'SET age = 1', scope => 'agee = 1')$$) AS scope_column;
SELECT try($$SELECT drip.register('x', 'users', 'SET agee = 1')$$) AS action_column;
SELECT try($$SELECT drip.register('x', 'users', 'SET age = $a')$$) AS undeclared;
SELECT try($$SELECT drip.register('x', 'users', 'SET age = $1')$$) AS positional;
SELECT try($$SELECT drip.register('x', 'users', 'SET age = 1; DELETE FROM users')$$) AS two_statements;
SELECT try($$SELECT drip.register('x', 'users', 'TRUNCATE users')$$) AS utility;
SELECT try($$SELECT drip.register('x', 'users', 'SET age = $a', params => '"integer"')$$) AS params_not_object;
SELECT try($$SELECT drip.register('x', 'users', 'SET age = $a', params => '{"a": "integr"}')$$) AS unknown_type;
SELECT try($$SELECT drip.register('x', 'users', 'SET age = 1', batch_size => 0)$$) AS batch_size;
SELECT try($$SELECT drip.register('x', 'users', 'SET age = 1', sleep => '-1s')$$) AS negative_sleep;

-- Nothing was written by the refused calls.
SELECT name FROM drip.backfills ORDER BY name;

-- replace => true redefines; unregister forgets.
SELECT action FROM drip.register('fix_emails', 'users', 'SET email = upper(email)', replace => true);
SELECT drip.unregister('literal');
SELECT try($$SELECT drip.unregister('literal')$$) AS unknown_backfill;
SELECT name FROM drip.backfills ORDER BY name;
