//! The scheduler: one per database, while runs need it. Each tick it re-enqueues runs whose
//! runner died, promotes pending runs whose `start_at` has come, and starts runners for
//! enqueued runs while fewer than `drip.max_runs` execute.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{BackgroundWorker, DynamicBackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;

use crate::catalog::{self, RunRow, RUN_COLUMNS};
use crate::error::OrRaise;
use crate::guc;
use crate::pg::{extension, signals, subxact, transaction, wake};
use crate::worker::launch;
use crate::worker::locks::{LIVE_WORKERS_SQL, RUNNER_ALIVE_SQL, SCHEDULER_KEY, SLICE_ALIVE_SQL};

/// Longest sleep between ticks when nothing wakes us.
const TICK: Duration = Duration::from_millis(1000);
/// Exit after this long without pending, enqueued or running runs.
const IDLE_EXIT: Duration = Duration::from_secs(5);
/// How often old events and batch rows are purged, and how many rows per delete.
const PURGE_EVERY: Duration = Duration::from_secs(60);
const PURGE_ROWS: i64 = 1000;
/// A launched runner that has not claimed its run by then is presumed lost.
const LAUNCH_GRACE: Duration = Duration::from_secs(10);

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn drip_scheduler_main(arg: pg_sys::Datum) {
    let db = launch::arg_oid(arg);
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(db), None);
    let probe = BackgroundWorker::get_extra() == launch::PROBE;
    // The catalog this scheduler serves: it exits when that one is dropped or replaced, and
    // does nothing on a catalog of another version (a package upgrade waiting for ALTER
    // EXTENSION UPDATE).
    let instance = transaction::run(|| {
        let instance = extension::current()?;
        if !extension::catalog_matches_library() {
            if !probe {
                log!(
                    "data_drip scheduler: the catalog is not version {}; waiting for ALTER EXTENSION data_drip UPDATE",
                    extension::LIBRARY_VERSION
                );
            }
            return None;
        }
        Some(instance)
    });
    let Ok(Some(instance)) = instance else {
        return;
    };
    Scheduler {
        db,
        instance,
        launching: HashMap::new(),
        probe,
    }
    .main();
}

struct Scheduler {
    db: pg_sys::Oid,
    instance: extension::Instance,
    /// Runners started but not yet seen running: run id -> (launch time, worker handle).
    launching: HashMap<(i64, Option<i32>), (Instant, DynamicBackgroundWorker)>,
    /// Started by the launcher: leave at once if the first look finds nothing to do.
    probe: bool,
}

/// What one tick found.
struct Tick {
    extension_gone: bool,
    has_work: bool,
    running: usize,
    /// Work waiting for a worker: a run (slice None) or one slice of a parallel run.
    enqueued: Vec<(i64, Option<i32>)>,
    /// The node group of slices that are sub-runs of a Citus shard, and how many such
    /// sub-runs execute per node group now (for drip.max_runs_per_node).
    node_of: HashMap<(i64, Option<i32>), i32>,
    live_per_node: HashMap<i32, usize>,
    next_start_in: Option<Duration>,
}

impl Scheduler {
    fn main(mut self) {
        if !self.take_lock() {
            return;
        }
        if let Err(e) = transaction::run(crate::worker::runner::pin_search_path) {
            warning!("data_drip scheduler: {}", e.message);
            return;
        }
        let _ = transaction::run(|| {
            Spi::run(
                "SELECT pg_catalog.set_config('application_name', 'data_drip scheduler', false)",
            )
        });
        let mut idle_since: Option<Instant> = None;
        let mut purged_at: Option<Instant> = None;
        loop {
            if BackgroundWorker::sighup_received() {
                signals::reload_config();
            }
            let instance = self.instance;
            let tick = match transaction::run(|| tick(&instance)) {
                Ok(t) => t,
                Err(e) => {
                    warning!("data_drip scheduler: {} ({})", e.message, e.sqlstate);
                    if !BackgroundWorker::wait_latch(Some(TICK)) {
                        return;
                    }
                    continue;
                }
            };
            if tick.extension_gone {
                if !self.probe {
                    log!("data_drip scheduler: extension dropped, exiting");
                }
                self.hand_over();
                return;
            }
            if self.probe && !tick.has_work {
                return;
            }
            self.probe = false;
            self.launch_runners(&tick);
            if purged_at.is_none_or(|t| t.elapsed() >= PURGE_EVERY) {
                if let Err(e) = transaction::run(|| {
                    purge();
                }) {
                    warning!("data_drip scheduler: purge: {}", e.message);
                }
                purged_at = Some(Instant::now());
            }

            if tick.has_work {
                idle_since = None;
            } else if idle_since.get_or_insert_with(Instant::now).elapsed() >= IDLE_EXIT {
                if self.release_or_continue() {
                    idle_since = None;
                } else {
                    return;
                }
            }
            let wait = tick.next_start_in.map_or(TICK, |d| d.min(TICK));
            if !BackgroundWorker::wait_latch(Some(wait.max(Duration::from_millis(10)))) {
                return;
            }
        }
    }

    /// Become this database's scheduler, or wake the one that is and return false.
    fn take_lock(&self) -> bool {
        let got = transaction::run(|| {
            Spi::get_one_with_args::<bool>(
                "SELECT pg_catalog.pg_try_advisory_lock($1, 0)",
                &[SCHEDULER_KEY.into()],
            )
            .map_err(crate::error::DripError::from)
            .or_raise()
            .unwrap_or(false)
        });
        match got {
            Ok(true) => true,
            Ok(false) => {
                if let Ok(Some(pid)) = transaction::run(|| {
                    Spi::get_one_with_args::<i32>(
                        "SELECT pid FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND granted \
                         AND database = $1 AND classid = $2::int4::oid AND objid = 0 AND objsubid = 2",
                        &[self.db.into(), SCHEDULER_KEY.into()],
                    )
                    .ok()
                    .flatten()
                }) {
                    wake::wake_pid(pid);
                }
                false
            }
            Err(e) => {
                warning!("data_drip scheduler: {}", e.message);
                false
            }
        }
    }

    /// Our catalog is gone. If it was replaced (DROP and CREATE EXTENSION in one transaction), a
    /// scheduler started for the new catalog may have found our lock and left: let go of the
    /// lock and start one that serves the new catalog.
    fn hand_over(&self) {
        let _ = transaction::run(|| {
            Spi::run_with_args(
                "SELECT pg_catalog.pg_advisory_unlock($1, 0)",
                &[SCHEDULER_KEY.into()],
            )
        });
        let replaced = transaction::run(|| extension::current().is_some()).unwrap_or(false);
        if replaced {
            launch::launch_scheduler(self.db);
        }
    }

    /// Idle: give up the lock, then look once more, so a run committed just before we let go
    /// is not stranded. Returns true to keep going.
    fn release_or_continue(&self) -> bool {
        let _ = transaction::run(|| {
            Spi::run_with_args(
                "SELECT pg_catalog.pg_advisory_unlock($1, 0)",
                &[SCHEDULER_KEY.into()],
            )
        });
        let work = transaction::run(|| catalog::has_unfinished_runs().or_raise()).unwrap_or(false);
        work && self.take_lock()
    }

    fn launch_runners(&mut self, tick: &Tick) {
        // Forget launches that claimed their run, exited without claiming it (for example
        // because the previous runner still held the run), or never showed up.
        self.launching.retain(|id, (at, worker)| {
            tick.enqueued.contains(id) && at.elapsed() < LAUNCH_GRACE && !launch::has_exited(worker)
        });
        let max = guc::MAX_RUNS.get().max(0) as usize;
        let mut free = max.saturating_sub(tick.running + self.launching.len());
        // Shard sub-runs per node: those executing plus those launched and not yet claimed.
        let per_node_cap = guc::MAX_RUNS_PER_NODE.get().max(1) as usize;
        let mut per_node = tick.live_per_node.clone();
        for unit in self.launching.keys() {
            if let Some(g) = tick.node_of.get(unit) {
                *per_node.entry(*g).or_default() += 1;
            }
        }
        for &unit in &tick.enqueued {
            if free == 0 {
                break;
            }
            if self.launching.contains_key(&unit) {
                continue;
            }
            let node = tick.node_of.get(&unit).copied();
            if let Some(g) = node {
                // Waits, enqueued, until a sub-run on its node ends.
                if per_node.get(&g).copied().unwrap_or(0) >= per_node_cap {
                    continue;
                }
                *per_node.entry(g).or_default() += 1;
            }
            let (id, slice) = unit;
            let Some(worker) = launch::launch_runner(self.db, id, slice) else {
                warning!(
                    "data_drip: no background worker slot free for run {id}; it stays enqueued"
                );
                break;
            };
            self.launching.insert(unit, (Instant::now(), worker));
            free -= 1;
        }
    }
}

/// Retention: remove old events and the batch rows of long-finished runs, a small delete at a
/// time so no long lock or big transaction hits live traffic. Returns the rows removed.
pub fn purge() -> i64 {
    let mut removed = 0;
    let events = guc::EVENT_RETENTION.get();
    if events > 0 {
        removed += Spi::connect_mut(|c| {
            c.update(
                "DELETE FROM drip.events WHERE id IN (SELECT id FROM drip.events \
                 WHERE at < now() - make_interval(secs => $1) ORDER BY id LIMIT $2)",
                None,
                &[(events as f64).into(), PURGE_ROWS.into()],
            )
            .map(|t| t.len() as i64)
        })
        .map_err(crate::error::DripError::from)
        .or_raise();
    }
    let batches = guc::BATCH_RETENTION.get();
    if batches > 0 {
        removed += Spi::connect_mut(|c| {
            c.update(
                "DELETE FROM drip.batches WHERE (run_id, batch_no) IN ( \
                   SELECT b.run_id, b.batch_no FROM drip.batches b JOIN drip.runs r ON r.id = b.run_id \
                   WHERE r.finished_at < now() - make_interval(secs => $1) LIMIT $2)",
                None,
                &[(batches as f64).into(), PURGE_ROWS.into()],
            )
            .map(|t| t.len() as i64)
        })
        .map_err(crate::error::DripError::from)
        .or_raise();
    }
    removed + crate::undo::purge_expired_undo(guc::UNDO_RETENTION.get())
}

/// Run one retention pass now (the scheduler does it every minute while it runs); returns the
/// number of rows removed. Only superusers may call it.
#[pg_extern(volatile, parallel_unsafe)]
fn purge_expired() -> i64 {
    crate::security::as_catalog(|| Ok(purge())).or_raise()
}

extension_sql!(
    "REVOKE ALL ON FUNCTION drip.purge_expired() FROM PUBLIC;",
    name = "purge_grants",
    requires = [purge_expired]
);

fn run_rows(sql: &str) -> Vec<RunRow> {
    Spi::connect_mut(|c| catalog::runs_from(c.update(sql, None, &[])?)).or_raise()
}

/// One pass over the runs, in the caller's transaction.
fn tick(instance: &extension::Instance) -> Tick {
    if !extension::still_current(instance) {
        return Tick {
            extension_gone: true,
            has_work: false,
            running: 0,
            enqueued: vec![],
            node_of: HashMap::new(),
            live_per_node: HashMap::new(),
            next_start_in: None,
        };
    }
    // Each step runs in its own subtransaction: whatever one run's data does to a step, the
    // other steps (and launching runners for the other runs) go on.
    isolated("requeue", requeue_lost);
    isolated("fail dependents", fail_dependents);
    isolated("promote", promote_pending);
    launchable()
}

/// Run one step of a tick in a subtransaction; an error is logged and rolled back alone.
fn isolated(step: &str, f: fn()) {
    if let Err(e) = subxact::try_in_subtransaction(f) {
        warning!(
            "data_drip scheduler: {step}: {} ({})",
            e.message,
            e.sqlstate
        );
    }
}

/// Runs marked running whose runner is gone (killed, crashed, server restarted): queue them
/// again; the next runner resumes from the cursor.
fn requeue_lost() {
    for row in run_rows(&format!(
        "UPDATE drip.runs r SET status = 'enqueued', worker_pid = NULL \
         WHERE r.status = 'running' AND NOT {RUNNER_ALIVE_SQL} \
         RETURNING {RUN_COLUMNS}"
    )) {
        log!("data_drip: run {} lost its worker; enqueued again", row.id);
        catalog::notify_run(&row, None).or_raise();
    }
}

/// Pending runs that wait for another run which failed or was stopped: they fail too.
fn fail_dependents() {
    let failed = Spi::connect_mut(|c| {
        let t = c.update(
            &format!(
                "UPDATE drip.runs r SET status = 'failed', finished_at = now(), \
                     error = format('run %s, which this run waits for, ended %s', r.after_run, a.status) \
                 FROM drip.runs a \
                 WHERE r.status = 'pending' AND a.id = r.after_run AND a.status IN ('failed', 'stopped') \
                 RETURNING {}, r.error",
                RUN_COLUMNS.split(", ").map(|c| format!("r.{c}")).collect::<Vec<_>>().join(", ")
            ),
            None,
            &[],
        )?;
        t.map(|r| Ok((RunRow::from_tuple(&r)?, r.get::<String>(7)?.unwrap_or_default())))
            .collect::<Result<Vec<_>, crate::error::DripError>>()
    })
    .or_raise();
    for (row, error) in failed {
        catalog::notify_run(&row, Some(&error)).or_raise();
    }
}

/// Pending runs whose time has come and whose awaited run (if any) completed.
fn promote_pending() {
    for row in run_rows(&format!(
        "UPDATE drip.runs r SET status = 'enqueued' \
         WHERE r.status = 'pending' AND coalesce(r.start_at, '-infinity') <= now() \
           AND (r.after_run IS NULL OR EXISTS (SELECT 1 FROM drip.runs a \
                                               WHERE a.id = r.after_run AND a.status = 'completed')) \
         RETURNING {RUN_COLUMNS}"
    )) {
        catalog::notify_run(&row, None).or_raise();
    }
}

/// What can run now, and when the next pending run is due.
fn launchable() -> Tick {
    let (running, enqueued, node_of, live_per_node, next_ms) = Spi::connect(|c| {
        // Workers alive now (one per run, or one per slice of a parallel run).
        let running = c.select(LIVE_WORKERS_SQL, None, &[])?.first().get_one::<i64>()?.unwrap_or(0);
        let mut enqueued: Vec<(i64, Option<i32>)> = Vec::new();
        for r in c.select(
            "SELECT id FROM drip.runs WHERE status = 'enqueued' AND parallel = 1 ORDER BY id",
            None,
            &[],
        )? {
            enqueued.push((r.get::<i64>(1)?.unwrap_or_default(), None));
        }
        // Slices of parallel runs without a live worker (with the node of a shard sub-run).
        let mut node_of = HashMap::new();
        for r in c.select(
            &format!(
                "SELECT s.run_id, s.slice, s.node_group FROM drip.slices s JOIN drip.runs r ON r.id = s.run_id \
                 WHERE r.status IN ('enqueued', 'running') AND NOT s.done AND NOT {SLICE_ALIVE_SQL} \
                 ORDER BY s.run_id, s.slice"
            ),
            None,
            &[],
        )? {
            let unit = (r.get::<i64>(1)?.unwrap_or_default(), r.get::<i32>(2)?);
            if let Some(g) = r.get::<i32>(3)? {
                node_of.insert(unit, g);
            }
            enqueued.push(unit);
        }
        let mut live_per_node: HashMap<i32, usize> = HashMap::new();
        for r in c.select(
            &format!(
                "SELECT s.node_group, count(*) FROM drip.slices s JOIN drip.runs r ON r.id = s.run_id \
                 WHERE r.status IN ('enqueued', 'running') AND s.node_group IS NOT NULL \
                   AND NOT s.done AND {SLICE_ALIVE_SQL} GROUP BY s.node_group"
            ),
            None,
            &[],
        )? {
            if let Some(g) = r.get::<i32>(1)? {
                live_per_node.insert(g, r.get::<i64>(2)?.unwrap_or(0) as usize);
            }
        }
        let next_ms = c
            .select(
                // Capped at an hour, and only finite times: a far or infinite start_at never
                // overflows the arithmetic.
                "SELECT ceil(least(extract(epoch FROM min(start_at) - clock_timestamp()), 3600) * 1000)::bigint \
                 FROM drip.runs WHERE status = 'pending' AND isfinite(start_at)",
                None,
                &[],
            )?
            .first()
            .get_one::<i64>()?;
        Ok::<_, pgrx::spi::SpiError>((running, enqueued, node_of, live_per_node, next_ms))
    })
    .map_err(crate::error::DripError::from)
    .or_raise();
    Tick {
        extension_gone: false,
        has_work: running > 0 || !enqueued.is_empty() || next_ms.is_some(),
        running: running as usize,
        enqueued,
        node_of,
        live_per_node,
        next_start_in: next_ms.map(|ms| Duration::from_millis(ms.max(0) as u64)),
    }
}
