-- data_drip 0.1.0 -> 0.2.0
--
-- Hand-written (pgrx generates only install scripts). Rules for this file:
-- - every catalog change of 0.2.0 lands here in the same commit as in sql/bootstrap.sql or the
--   Rust sources; CI (tests/upgrade.rs) fails when an upgraded catalog differs from a fresh one;
-- - new table columns go at the end of their CREATE TABLE, so both orders agree;
-- - once 0.2.0 is released this file is never edited again.
\echo Use "ALTER EXTENSION data_drip UPDATE TO '0.2.0'" to load this file. \quit
