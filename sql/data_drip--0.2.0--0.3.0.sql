-- data_drip 0.2.0 -> 0.3.0
--
-- Hand-written (pgrx generates only install scripts). Same rules as data_drip--0.1.0--0.2.0.sql:
-- every catalog change of 0.3.0 lands here in the same commit as in sql/bootstrap.sql or the
-- Rust sources; CI (tests/upgrade.rs) fails when an upgraded catalog differs from a fresh one;
-- new table columns go at the end of their CREATE TABLE.
\echo Use "ALTER EXTENSION data_drip UPDATE TO '0.3.0'" to load this file. \quit

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
