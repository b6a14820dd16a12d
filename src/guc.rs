//! Settings (GUCs) of data_drip.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};

/// Most runs executing at once in one database; more wait as `enqueued`.
pub static MAX_RUNS: GucSetting<i32> = GucSetting::<i32>::new(2);

pub fn define() {
    GucRegistry::define_int_guc(
        c"drip.max_runs",
        c"Maximum number of backfill runs executing at once per database.",
        c"Each executing run uses one background worker; further runs wait as enqueued. Raise max_worker_processes along with it.",
        &MAX_RUNS,
        0,
        1024,
        GucContext::Sighup,
        GucFlags::default(),
    );
}
