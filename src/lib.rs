//! data_drip: batched data backfills executed inside PostgreSQL by background workers.
//!
//! Module map:
//! - `api`: the SQL functions (`drip.register`, `start`, `pause`, ...);
//! - `catalog`: reads and writes of the `drip.*` tables, with their events;
//! - `compile`: a definition turned into checked, executable statements;
//! - `action`, `placeholders`, `params`, `keyset`: pure domain logic (no Postgres needed);
//! - `status`, `events`, `error`: lifecycles, NOTIFY payloads, errors and their SQLSTATEs;
//! - `distribution`: where a table lives (this node, or Citus shards) and what that changes;
//! - `worker`: the scheduler and runner background workers;
//! - `pg`: the thin unsafe layer over `pg_sys`;
//! - `guc`: settings.

use pgrx::prelude::*;

pub mod action;
pub mod adaptive;
mod api;
pub mod catalog;
pub mod compile;
pub mod distribution;
pub mod error;
pub mod events;
mod guc;
pub mod keyset;
pub mod params;
pub mod pg;
pub mod placeholders;
mod plan;
mod preview;
mod rows;
pub mod security;
pub mod status;
pub mod throttle;
mod undo;
mod wait;
pub mod worker;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!(
    "../sql/views.sql",
    name = "views",
    requires = ["bootstrap"],
    finalize
);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    let preload = pg::preload::in_shared_preload_libraries();
    guc::define(preload);
    if preload {
        worker::launcher::register();
    }
}

#[cfg(any(test, feature = "pg_test"))]
mod tests;

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["max_worker_processes = 32", "drip.max_runs = 2"]
    }
}
