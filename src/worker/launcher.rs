//! The launcher: only with `shared_preload_libraries = 'data_drip'`. It starts with the server
//! (and again after a crash restart), lists the databases that accept connections and are not
//! templates, and every `drip.launcher_interval` starts a probing scheduler in each: the probe
//! exits at once where the extension is missing or nothing waits, and otherwise stays to resume
//! the runs a restart interrupted. Databases created or dropped later are noticed on the next
//! pass.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, DynamicBackgroundWorker,
    SignalWakeFlags,
};
use pgrx::prelude::*;

use crate::guc;
use crate::pg::{signals, transaction};
use crate::worker::launch;

/// Register the launcher. Only effective while shared_preload_libraries is processed.
pub fn register() {
    BackgroundWorkerBuilder::new("data_drip launcher")
        .set_type("data_drip launcher")
        .set_library("data_drip")
        .set_function("drip_launcher_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn drip_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let dbname = guc::launcher_database();
    BackgroundWorker::connect_worker_to_spi(Some(&dbname), None);
    log!("data_drip launcher started (listing databases through \"{dbname}\")");
    let mut probes: HashMap<pg_sys::Oid, (Instant, DynamicBackgroundWorker)> = HashMap::new();
    loop {
        if BackgroundWorker::sighup_received() {
            signals::reload_config();
        }
        let interval = Duration::from_secs(guc::LAUNCHER_INTERVAL.get().max(1) as u64);
        match transaction::run(databases) {
            Ok(dbs) => {
                probes.retain(|db, _| dbs.contains(db));
                for db in dbs {
                    let due = match probes.get(&db) {
                        None => true,
                        Some((at, worker)) => {
                            launch::has_exited(worker) && at.elapsed() >= interval
                        }
                    };
                    if due {
                        if let Some(worker) = launch::launch_scheduler_tracked(db) {
                            probes.insert(db, (Instant::now(), worker));
                        }
                    }
                }
            }
            Err(e) => warning!("data_drip launcher: {}", e.message),
        }
        if !BackgroundWorker::wait_latch(Some(interval.min(Duration::from_secs(1)))) {
            return;
        }
    }
}

fn databases() -> Vec<pg_sys::Oid> {
    Spi::connect(|c| {
        let t = c.select(
            "SELECT oid FROM pg_catalog.pg_database WHERE datallowconn AND NOT datistemplate ORDER BY oid",
            None,
            &[],
        )?;
        t.map(|r| r.get::<pg_sys::Oid>(1).map(|o| o.unwrap_or(pg_sys::Oid::INVALID)))
            .collect::<Result<Vec<_>, _>>()
    })
    .unwrap_or_default()
}
