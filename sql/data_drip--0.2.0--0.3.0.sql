-- data_drip 0.2.0 -> 0.3.0
--
-- Hand-written (pgrx generates only install scripts). Same rules as data_drip--0.1.0--0.2.0.sql:
-- every catalog change of 0.3.0 lands here in the same commit as in sql/bootstrap.sql or the
-- Rust sources; CI (tests/upgrade.rs) fails when an upgraded catalog differs from a fresh one;
-- new table columns go at the end of their CREATE TABLE.
\echo Use "ALTER EXTENSION data_drip UPDATE TO '0.3.0'" to load this file. \quit
