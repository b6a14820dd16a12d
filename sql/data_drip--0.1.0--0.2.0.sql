-- data_drip 0.1.0 -> 0.2.0
--
-- Hand-written (pgrx generates only install scripts). Rules for this file:
-- - every catalog change of 0.2.0 lands here in the same commit as in sql/bootstrap.sql or the
--   Rust sources; CI (tests/upgrade.rs) fails when an upgraded catalog differs from a fresh one;
-- - new table columns go at the end of their CREATE TABLE, so both orders agree;
-- - once 0.2.0 is released this file is never edited again.
\echo Use "ALTER EXTENSION data_drip UPDATE TO '0.2.0'" to load this file. \quit

-- Keys: one canonical text form whatever the session's settings (issue: keys must not depend
-- on anyone's session settings). Stored 0.1.0 keys were written in the writer's settings; the
-- default settings (DateStyle ISO, extra_float_digits 1) read integer, text and uuid keys back
-- exactly, which covers what 0.1.0 could do reliably.
CREATE FUNCTION drip.key_text(value anyelement) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' SET TimeZone = 'UTC'
SET extra_float_digits = 3 SET bytea_output = 'hex' SET lc_monetary = 'C'
AS $$ SELECT value::text $$;
COMMENT ON FUNCTION drip.key_text(anyelement) IS 'Canonical text of a key value, independent of the session''s DateStyle, TimeZone, IntervalStyle, extra_float_digits, bytea_output and lc_monetary.';
