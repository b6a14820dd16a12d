//! The runner: executes one run, batch after batch, then exits.
//!
//! A batch has two steps:
//! - *mark*: check the run is still `running`, find the batch's upper key bound, insert the
//!   batch row as `running` and send `batch_running`;
//! - *work*: run the action over the key range, mark the batch `completed` and advance the run's
//!   cursor and counters, all in one commit, and send `batch_completed`.
//!
//! The marker must be durable before the work starts (a crash mid-batch is then recorded as an
//! interrupted attempt, and counted against `max_attempts`). When there is no sleep between
//! batches, the next batch is marked in the same commit as the previous batch's work: one
//! durable commit per batch. With a sleep, the next batch is marked after the sleep, in its own
//! commit, so that a status change or a health signal during the sleep is seen first.
//!
//! An ERROR in the work rolls back only that batch; it is recorded as `failed` and retried with
//! backoff up to `max_attempts`. A batch row left `running` by a dead worker is marked failed
//! (`interrupted`) and done again by the next runner.
//!
//! This file holds the runner's state and its loop. The steps live next to it: `batch` (mark,
//! work, record a failure), `health` (the run row's settings and the signals to hold on),
//! `claim` (take a run, rebuild the runner, recover what a dead worker left) and `foreground`
//! (the same steps driven by `CALL drip.finish`).

use std::time::{Duration, Instant};

use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;

use crate::adaptive::Adaptive;
use crate::catalog;
use crate::compile::Compiled;
use crate::distribution::shard_walk::ShardSub;
use crate::distribution::Placement;
use crate::error::{DripError, OrRaise};
use crate::pg::identity::{self};
use crate::pg::{extension, signals, transaction, wake};
use crate::status::RunStatus;
use crate::worker::claim::{claim, fail_run, fail_unrecordable, release_run, take_next_slice};
use crate::worker::health::announce_throttled;
use crate::worker::launch;
use crate::worker::statements::StatementCache;

/// How often a long sleep between batches looks at the run's status.
pub(super) const STATUS_POLL: Duration = Duration::from_millis(200);
const BACKOFF_BASE_MS: u64 = 500;
/// How long a new runner waits for the previous runner of its run to let go.
pub(super) const CLAIM_WAIT: Duration = Duration::from_secs(3);
const BACKOFF_MAX_MS: u64 = 30_000;

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn drip_runner_main(arg: pg_sys::Datum) {
    let run_id = launch::arg_i64(arg);
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    // SIGTERM (fast shutdown, pg_terminate_backend) must end a long batch promptly; the batch
    // rolls back and is redone later.
    signals::terminate_promptly_on_sigterm();
    let Some(db) = launch::database_from_extra() else {
        warning!("data_drip runner for run {run_id}: missing database");
        return;
    };
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(db), None);
    // Our own SQL runs as superuser: never with a search_path users can create objects in.
    if let Err(e) = transaction::run(pin_search_path) {
        warning!("data_drip runner for run {run_id}: {}", e.message);
        return;
    }

    let slice = launch::slice_from_extra();
    let runner = match transaction::run(|| claim(run_id, slice)) {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            warning!(
                "data_drip runner for run {run_id}: cannot start: {}",
                e.message
            );
            let _ = transaction::run(|| fail_run(run_id, &e.message));
            return;
        }
    };
    runner.main();
}

/// A batch to execute: its number, key range and attempt.
#[derive(Debug, Clone)]
pub(super) struct Batch {
    pub(super) no: i64,
    pub(super) low: Option<Vec<String>>,
    pub(super) high: Vec<String>,
    pub(super) attempts: i32,
    /// Keys in the range (for adaptive sizing); 0 when unknown (a redone batch).
    pub(super) keys: i64,
}

pub(super) struct Runner {
    pub(super) run_id: i64,
    /// The catalog this runner started on; it touches nothing once that one is gone.
    pub(super) instance: extension::Instance,
    /// Set when the work transaction found the catalog dropped or replaced.
    pub(super) gone: bool,
    pub(super) compiled: Compiled,
    /// Where the table lives (this node, or Citus shards): how to plan and commit batches.
    pub(super) placement: Placement,
    /// A sub-run of one shard of a distributed table (None: a key-range walk).
    pub(super) shard: Option<ShardSub>,
    /// Transient failures (an unreachable Citus worker) in a row, for their backoff.
    pub(super) transient_failures: i32,
    /// Text of each parameter value, for the type's input function.
    pub(super) param_texts: Vec<Option<String>>,
    pub(super) max_attempts: i32,
    pub(super) cursor: Option<Vec<String>>,
    /// A batch to do again (after a failure or an interruption).
    pub(super) retry: Option<Batch>,
    /// The backfill's owner: scope, action and the key walk run with its privileges.
    pub(super) owner: pg_sys::Oid,
    /// The owner's search_path at registration.
    pub(super) search_path: String,
    /// Adaptive sizing, while the run has a target_batch_time.
    pub(super) adaptive: Option<Adaptive>,
    pub(super) backfill: String,
    /// The slice of a parallel run this runner walks (None: the whole run).
    pub(super) slice: Option<i32>,
    /// The signal the run is holding on (announced once per kind), and for how many checks.
    pub(super) throttled: Option<&'static str>,
    pub(super) hold_times: u32,
    pub(super) stmts: StatementCache,
    /// Inclusive upper end of the range, if the run has one (frozen or given).
    pub(super) to_key: Option<Vec<String>>,
    /// Element mode, and whether failing rows let the run go on.
    pub(super) row_mode: bool,
    pub(super) skip_row_errors: bool,
    /// Executed by `CALL drip.finish` in a client session rather than a background worker.
    pub(super) foreground: bool,
    /// Foreground: the batch marked by the last step, to be worked by the next.
    pub(super) pending: Option<(Batch, Settings)>,
    /// Foreground: the sleep (or backoff) owed before the next batch, taken at the next step
    /// so no batch's row locks are held while sleeping.
    pub(super) nap: Duration,
}

/// The run's batch settings, read before each batch so changes (drip.alter) apply from the
/// next one.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) batch_size: i32,
    pub(super) sleep: Duration,
    pub(super) lock_timeout_ms: i64,
    pub(super) statement_timeout: Duration,
    /// Adaptive sizing target; None (or zero) keeps batch_size fixed.
    pub(super) target_batch_time: Option<Duration>,
    pub(super) min_batch_size: i32,
    pub(super) max_batch_size: i32,
}

pub(super) enum Step {
    Batch(Batch, Settings),
    /// A health signal tripped: look again after this long.
    Hold(Duration),
    /// This shard sub-run is done and others of the run are not: take one of them.
    Next,
    Exit,
}

impl Runner {
    /// The batch loop: mark the next batch, do it, then sleep (or back off); each helper
    /// returns the pause before the next step, or None when the runner is done.
    fn main(mut self) {
        let mut boundary_failures = 0;
        // The next step when it was already decided (and its batch marked) in the commit of
        // the last batch's work.
        let mut decided: Option<Step> = None;
        loop {
            let step = match decided.take() {
                Some(step) => Ok(step),
                None => transaction::run(|| self.mark_next()),
            };
            let pause = match step {
                Ok(Step::Exit) => None,
                Ok(Step::Next) => match transaction::run(|| take_next_slice(&mut self)) {
                    Ok(true) => Some(Duration::ZERO),
                    _ => {
                        let _ = transaction::run(|| release_run(self.run_id));
                        None
                    }
                },
                Ok(Step::Hold(wait)) => Some(wait),
                Ok(Step::Batch(batch, settings)) => {
                    boundary_failures = 0;
                    let before = self.marking_state();
                    let in_block = self.placement.work_in_block();
                    match transaction::run_maybe_block(in_block, || {
                        self.work_then_mark(&batch, &settings)
                    }) {
                        Ok((failed_rows, next)) => {
                            decided = next;
                            self.batch_done(&batch, failed_rows, &settings)
                        }
                        Err(e) => {
                            self.restore_marking_state(before);
                            self.batch_failed(&batch, &e)
                        }
                    }
                }
                Err(e) if self.placement.is_transient(&e.sqlstate, &e.message) => {
                    self.unreachable(&e)
                }
                Err(e) => {
                    boundary_failures += 1;
                    self.boundary_failed(&e, boundary_failures)
                }
            };
            match pause {
                Some(wait) if self.sleep(wait) => continue,
                _ => return,
            }
        }
    }

    /// The batch committed: advance, and sleep before the next one. Failed rows (element mode,
    /// `on_row_error => 'fail'`) end the run.
    fn batch_done(
        &mut self,
        batch: &Batch,
        failed_rows: i64,
        settings: &Settings,
    ) -> Option<Duration> {
        self.cursor = Some(batch.high.clone());
        self.retry = None;
        self.transient_failures = 0;
        if failed_rows > 0 && !self.skip_row_errors {
            let message = format!(
                "{failed_rows} row(s) of batch {} failed; see drip.row_errors, then drip.retry_rows({}) and drip.retry({})",
                batch.no, self.run_id, self.run_id
            );
            let _ = transaction::run(|| fail_run(self.run_id, &message));
            return None;
        }
        Some(settings.sleep)
    }

    /// The batch rolled back: record the failure (always: if its text cannot be recorded the
    /// run still fails), then retry it after a backoff unless its attempts are used up.
    fn batch_failed(&mut self, batch: &Batch, e: &transaction::TxError) -> Option<Duration> {
        if self.gone {
            log!(
                "data_drip run {}: the extension was dropped; exiting",
                self.run_id
            );
            return None;
        }
        if self.placement.is_transient(&e.sqlstate, &e.message) {
            // Not the batch's fault: it is done again once the node answers, with the same
            // attempt count.
            let _ = transaction::run(|| self.record_failure_of_attempt(batch, e));
            self.retry = Some(Batch {
                keys: 0,
                ..batch.clone()
            });
            return self.unreachable(e);
        }
        let gave_up = transaction::run(|| self.record_failure(batch, e)).unwrap_or_else(|e2| {
            warning!(
                "data_drip run {}: cannot record the failure of batch {}: {} ({})",
                self.run_id,
                batch.no,
                e2.message,
                e2.sqlstate
            );
            let _ = transaction::run(|| {
                fail_unrecordable(self.run_id, batch.no, &e.sqlstate, &e2.sqlstate)
            });
            true
        });
        if gave_up {
            return None;
        }
        self.retry = Some(Batch {
            attempts: batch.attempts + 1,
            keys: 0,
            ..batch.clone()
        });
        Some(backoff(batch.attempts))
    }

    /// A node of the table could not be reached (a Citus worker down or restarting): hold the
    /// run, say why (`drip.runs.throttled`, `run_throttled`), release what a crashed batch left
    /// prepared, and look again after a backoff. Spends no attempt.
    fn unreachable(&mut self, e: &transaction::TxError) -> Option<Duration> {
        self.transient_failures += 1;
        let reason = format!(
            "waiting for a node: {} (SQLSTATE {})",
            e.message, e.sqlstate
        );
        let _ = transaction::run(|| {
            self.placement.release_prepared();
            if self.throttled != Some("node") {
                announce_throttled(self.run_id, &reason);
            }
        });
        self.throttled = Some("node");
        Some(backoff(self.transient_failures))
    }

    /// No batch could be marked (its key range cannot be found: the table was dropped, the
    /// owner lost SELECT or was dropped): retried like a batch, then the run fails.
    fn boundary_failed(&mut self, e: &transaction::TxError, failures: i32) -> Option<Duration> {
        warning!(
            "data_drip run {}: {} ({})",
            self.run_id,
            e.message,
            e.sqlstate
        );
        // On record like a batch's failure: a failed batch row and batch_failed.
        if let Err(e2) = transaction::run(|| self.record_boundary_failure(e, failures)) {
            warning!(
                "data_drip run {}: cannot record the failure: {}",
                self.run_id,
                e2.message
            );
        }
        if failures >= self.max_attempts {
            let message = format!("{} (SQLSTATE {})", e.message, e.sqlstate);
            let _ = transaction::run(|| fail_run(self.run_id, &message));
            return None;
        }
        Some(backoff(failures))
    }

    /// Sleep between batches. Returns false if the worker must exit. A long sleep looks at the
    /// run's status every STATUS_POLL so pause and stop act promptly.
    pub(super) fn sleep(&self, total: Duration) -> bool {
        if self.foreground {
            // A client session: sleep on its latch; a cancel interrupts (and raises).
            let deadline = Instant::now() + total;
            while !deadline.saturating_duration_since(Instant::now()).is_zero() {
                wake::wait_on_latch(
                    deadline
                        .saturating_duration_since(Instant::now())
                        .min(STATUS_POLL),
                );
            }
            return true;
        }
        let deadline = Instant::now() + total;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            if !BackgroundWorker::wait_latch(Some(left.min(STATUS_POLL))) {
                return false;
            }
            if BackgroundWorker::sighup_received() {
                signals::reload_config();
            }
            if left > STATUS_POLL {
                let status = transaction::run(|| {
                    catalog::read_run(self.run_id).or_raise().map(|r| r.status)
                });
                if !matches!(status, Ok(Some(RunStatus::Running))) {
                    return true; // mark_next sees the new status and exits
                }
            }
        }
    }
}

/// Pin this session's search_path to schemas no user can create objects in.
pub fn pin_search_path() {
    Spi::run_with_args(
        "SELECT pg_catalog.set_config('search_path', $1, false)",
        &[identity::SAFE_SEARCH_PATH.into()],
    )
    .or_raise_spi();
    // Our own per-batch statements are primary-key lookups: one generic plan serves all. (The
    // statements over the backfill's table take their plan mode from its placement.)
    Spi::run("SELECT pg_catalog.set_config('plan_cache_mode', 'force_generic_plan', false)")
        .or_raise_spi();
}

/// Exponential backoff with jitter: base * 2^(attempt-1), capped, +-25%.
pub(super) fn backoff(attempt: i32) -> Duration {
    let exp = BACKOFF_BASE_MS.saturating_mul(1u64 << (attempt.clamp(1, 16) - 1) as u64);
    let base = exp.min(BACKOFF_MAX_MS);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    let jitter = base / 4;
    Duration::from_millis(base - jitter + nanos % (2 * jitter + 1))
}

/// `or_raise` for SPI results.
pub(super) trait OrRaiseSpi<T> {
    fn or_raise_spi(self) -> T;
}

impl<T> OrRaiseSpi<T> for Result<T, pgrx::spi::SpiError> {
    fn or_raise_spi(self) -> T {
        self.map_err(DripError::from).or_raise()
    }
}

// ---------------------------------------------------------------------------------------------
// Foreground execution (CALL drip.finish): the same batches, bookkeeping and events, driven by
// a procedure that commits between steps. The session holds the run's lock meanwhile, so no
// background worker touches the run.
// ---------------------------------------------------------------------------------------------
