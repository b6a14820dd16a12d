//! Starting workers, and waking the scheduler when a transaction that made a run startable
//! commits.

use std::cell::Cell;

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, DynamicBackgroundWorker,
};
use pgrx::prelude::*;
use pgrx::{register_xact_callback, PgXactCallbackEvent};

use crate::catalog;
use crate::error::DripResult;
use crate::pg::wake;

fn scheduler_builder(db: pg_sys::Oid) -> BackgroundWorkerBuilder {
    BackgroundWorkerBuilder::new(&format!("data_drip scheduler for database {}", db.to_u32()))
        .set_type("data_drip scheduler")
        .set_library("data_drip")
        .set_function("drip_scheduler_main")
        .enable_spi_access()
        .set_argument(db.into_datum())
        .set_restart_time(None)
}

/// Marker in a scheduler's extra bytes: started by the launcher to look for work; it exits at
/// once if there is none.
pub const PROBE: &str = "probe";

/// Start the scheduler of database `db`. A second scheduler notices the first (by its lock),
/// wakes it and exits. Returns false when no worker slot is free.
pub fn launch_scheduler(db: pg_sys::Oid) -> bool {
    let ok = scheduler_builder(db).load_dynamic().is_ok();
    if !ok {
        warning!(
            "data_drip: no background worker slot free for the scheduler; raise max_worker_processes"
        );
    }
    ok
}

/// Start a probing scheduler for the launcher, which tracks it through the handle.
pub fn launch_scheduler_tracked(db: pg_sys::Oid) -> Option<DynamicBackgroundWorker> {
    scheduler_builder(db)
        .set_extra(PROBE)
        .set_notify_pid(wake::my_pid())
        .load_dynamic()
        .ok()
}

/// Start a runner for `run_id`; the scheduler (`notify_pid`) is woken when it starts and stops.
/// The handle tells whether it is still alive.
pub fn launch_runner(
    db: pg_sys::Oid,
    run_id: i64,
    slice: Option<i32>,
) -> Option<DynamicBackgroundWorker> {
    let extra = match slice {
        None => db.to_u32().to_string(),
        Some(n) => format!("{}:{n}", db.to_u32()),
    };
    BackgroundWorkerBuilder::new(&format!("data_drip runner for run {run_id}"))
        .set_type("data_drip runner")
        .set_library("data_drip")
        .set_function("drip_runner_main")
        .enable_spi_access()
        .set_argument(run_id.into_datum())
        .set_extra(&extra)
        .set_notify_pid(wake::my_pid())
        .set_restart_time(None)
        .load_dynamic()
        .ok()
}

/// Whether a launched worker has exited (or could never start).
pub fn has_exited(worker: &DynamicBackgroundWorker) -> bool {
    matches!(
        worker.pid(),
        Err(BackgroundWorkerStatus::Stopped | BackgroundWorkerStatus::PostmasterDied)
    )
}

thread_local! {
    static KICK_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// If any run needs a scheduler, start one now (for callers that block in this transaction,
/// such as `drip.wait`, and so cannot wait for its commit).
pub fn recover_now() -> DripResult<()> {
    if crate::security::as_catalog(catalog::has_unfinished_runs)? {
        launch_scheduler(wake::my_database_oid());
    }
    Ok(())
}

/// If any run needs a scheduler, start one when the current transaction commits (nothing
/// happens if it rolls back). Called by every `drip.*` function, which is also how runs left
/// behind by a restart are picked up without `shared_preload_libraries`.
pub fn recover_on_commit() -> DripResult<()> {
    if KICK_REGISTERED.with(|k| k.get())
        || !crate::security::as_catalog(catalog::has_unfinished_runs)?
    {
        return Ok(());
    }
    KICK_REGISTERED.with(|k| k.set(true));
    let db = wake::my_database_oid();
    register_xact_callback(PgXactCallbackEvent::Commit, move || {
        KICK_REGISTERED.with(|k| k.set(false));
        // Post-commit: launch_scheduler never raises (slot exhaustion is a warning).
        launch_scheduler(db);
    });
    register_xact_callback(PgXactCallbackEvent::Abort, || {
        KICK_REGISTERED.with(|k| k.set(false));
    });
    Ok(())
}

/// The worker's own database oid from its extra bytes ("db" or "db:slice", see
/// `launch_runner`).
pub fn database_from_extra() -> Option<pg_sys::Oid> {
    BackgroundWorker::get_extra()
        .split(':')
        .next()
        .and_then(|d| d.trim().parse::<u32>().ok())
        .map(pg_sys::Oid::from)
}

/// The slice a runner walks, if it was started for one slice of a parallel run.
pub fn slice_from_extra() -> Option<i32> {
    BackgroundWorker::get_extra()
        .split(':')
        .nth(1)
        .and_then(|s| s.trim().parse().ok())
}

/// Decode a worker's main argument (see `pg::worker_args`).
pub use crate::pg::worker_args::{arg_i64, arg_oid};
