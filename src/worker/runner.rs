//! The runner: executes one run, batch after batch, then exits.
//!
//! Per batch, two transactions:
//! - *mark*: check the run is still `running`, find the batch's upper key bound, insert the
//!   batch row as `running` and send `batch_running`;
//! - *work*: run the action over the key range, mark the batch `completed` and advance the run's
//!   cursor and counters, all in one commit, and send `batch_completed`.
//!
//! An ERROR in the work rolls back only that batch; it is recorded as `failed` and retried with
//! backoff up to `max_attempts`. A batch row left `running` by a dead worker is marked failed
//! (`interrupted`) and done again by the next runner.

use std::time::{Duration, Instant};

use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::JsonB;

use crate::adaptive::Adaptive;
use crate::catalog::{self, RunRow, RUN_COLUMNS};
use crate::compile::{Compiled, Definition};
use crate::error::{DripError, DripResult, OrRaise};
use crate::params;
use crate::pg::identity::{self, Restriction};
use crate::pg::{signals, timeout, transaction, types};
use crate::status::{BatchStatus, RunStatus};
use crate::throttle;
use crate::worker::launch;
use crate::worker::locks::{run_key, RUNNER_KEY};

/// How often a long sleep between batches looks at the run's status.
const STATUS_POLL: Duration = Duration::from_millis(200);
const BACKOFF_BASE_MS: u64 = 500;
/// How long a new runner waits for the previous runner of its run to let go.
const CLAIM_WAIT: Duration = Duration::from_secs(3);
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

    let runner = match transaction::run(|| claim(run_id)) {
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
struct Batch {
    no: i64,
    low: Option<Vec<String>>,
    high: Vec<String>,
    attempts: i32,
    /// Keys in the range (for adaptive sizing); 0 when unknown (a redone batch).
    keys: i64,
}

struct Runner {
    run_id: i64,
    compiled: Compiled,
    /// Text of each parameter value, for the type's input function.
    param_texts: Vec<Option<String>>,
    max_attempts: i32,
    cursor: Option<Vec<String>>,
    /// A batch to do again (after a failure or an interruption).
    retry: Option<Batch>,
    /// The backfill's owner: scope, action and the key walk run with its privileges.
    owner: pg_sys::Oid,
    /// The owner's search_path at registration.
    search_path: String,
    /// Adaptive sizing, while the run has a target_batch_time.
    adaptive: Option<Adaptive>,
}

/// The run's batch settings, read before each batch so changes (drip.alter) apply from the
/// next one.
#[derive(Debug, Clone)]
struct Settings {
    batch_size: i32,
    sleep: Duration,
    lock_timeout_ms: i64,
    statement_timeout: Duration,
    /// Adaptive sizing target; None (or zero) keeps batch_size fixed.
    target_batch_time: Option<Duration>,
    min_batch_size: i32,
    max_batch_size: i32,
}

enum Step {
    Batch(Batch, Settings),
    Exit,
}

impl Runner {
    fn main(mut self) {
        // Failures before a batch exists (its key range cannot be found: the table was dropped,
        // the owner lost SELECT or was dropped): retried like batches, then the run fails.
        let mut boundary_failures = 0;
        loop {
            if !self.hold_while_unhealthy() {
                return;
            }
            let step = transaction::run(|| self.mark_next());
            let (batch, settings) = match step {
                Ok(Step::Batch(b, settings)) => (b, settings),
                Ok(Step::Exit) => return,
                Err(e) => {
                    boundary_failures += 1;
                    warning!(
                        "data_drip run {}: {} ({})",
                        self.run_id,
                        e.message,
                        e.sqlstate
                    );
                    if boundary_failures >= self.max_attempts {
                        let message = format!("{} (SQLSTATE {})", e.message, e.sqlstate);
                        let _ = transaction::run(|| fail_run(self.run_id, &message));
                        return;
                    }
                    if !self.sleep(backoff(boundary_failures)) {
                        return;
                    }
                    continue;
                }
            };
            boundary_failures = 0;
            match transaction::run(|| self.work(&batch, &settings)) {
                Ok(()) => {
                    self.cursor = Some(batch.high.clone());
                    self.retry = None;
                    if !self.sleep(settings.sleep) {
                        return;
                    }
                }
                Err(e) => {
                    let gave_up = transaction::run(|| self.record_failure(&batch, &e))
                        .unwrap_or_else(|e2| {
                            warning!(
                                "data_drip run {}: cannot record failure: {}",
                                self.run_id,
                                e2.message
                            );
                            true
                        });
                    if gave_up {
                        return;
                    }
                    self.retry = Some(Batch {
                        attempts: batch.attempts + 1,
                        keys: 0,
                        ..batch.clone()
                    });
                    if !self.sleep(backoff(batch.attempts)) {
                        return;
                    }
                }
            }
        }
    }

    /// Transaction 1 of a batch: decide what to do next and mark the batch running.
    fn mark_next(&mut self) -> Step {
        // The marker commits synchronously: once batch_running was announced, the row must
        // survive a crash so the catalog can say the attempt was interrupted.
        let Some((run, settings)) = lock_running(self.run_id) else {
            release_run(self.run_id);
            return Step::Exit;
        };

        if let Some(b) = self.retry.clone() {
            Spi::run_with_args(
                "UPDATE drip.batches SET status = 'running', attempts = $3, started_at = clock_timestamp(), \
                 finished_at = NULL, rows = NULL \
                 WHERE run_id = $1 AND batch_no = $2",
                &[self.run_id.into(), b.no.into(), b.attempts.into()],
            )
            .or_raise_spi();
            catalog::notify_batch(&run, BatchStatus::Running, b.no, 0, None).or_raise();
            return Step::Batch(b, settings);
        }

        self.sync_adaptive(&settings);
        let Some((high, keys)) = self.boundary(settings.batch_size) else {
            let done = catalog::set_run_status(&run, RunStatus::Completed, None).or_raise();
            log!(
                "data_drip run {} completed: {} rows in {} batches",
                done.id,
                done.rows_done,
                done.batches_done
            );
            return Step::Exit;
        };
        let no = Spi::get_one_with_args::<i64>(
            "SELECT coalesce(max(batch_no), 0) + 1 FROM drip.batches WHERE run_id = $1",
            &[self.run_id.into()],
        )
        .or_raise_spi()
        .unwrap_or(1);
        Spi::run_with_args(
            "INSERT INTO drip.batches (run_id, batch_no, low_key, high_key, status, batch_size) \
             VALUES ($1, $2, $3, $4, 'running', $5)",
            &[
                self.run_id.into(),
                no.into(),
                self.cursor.clone().into(),
                high.clone().into(),
                settings.batch_size.into(),
            ],
        )
        .or_raise_spi();
        catalog::notify_batch(&run, BatchStatus::Running, no, keys, None).or_raise();
        Step::Batch(
            Batch {
                no,
                low: self.cursor.clone(),
                high,
                attempts: 1,
                keys,
            },
            settings,
        )
    }

    /// Keep the adaptive controller in step with the run's settings (drip.alter may change
    /// them between batches).
    fn sync_adaptive(&mut self, settings: &Settings) {
        match settings.target_batch_time {
            None => self.adaptive = None,
            Some(target) => {
                let (min, max) = (
                    settings.min_batch_size as i64,
                    settings.max_batch_size as i64,
                );
                let same = self
                    .adaptive
                    .as_ref()
                    .is_some_and(|a| a.target == target && a.min == min && a.max == max);
                if !same {
                    self.adaptive = Some(Adaptive::new(target, min, max));
                }
            }
        }
    }

    /// Before a batch: hold while a health signal trips, announcing it once per reason with
    /// `run_throttled`. Returns false if the worker must exit.
    fn hold_while_unhealthy(&self) -> bool {
        let mut times = 0;
        let mut announced: Option<&'static str> = None;
        loop {
            let hold = match transaction::run(|| self.health()) {
                Ok(Health::NotRunning) => return true, // mark_next sees why and exits
                Ok(Health::Fine) => None,
                Ok(Health::Hold(h)) => Some((h.kind(), h.reason())),
                Err(e) => Some((
                    "error",
                    format!("throttle check failed: {} ({})", e.message, e.sqlstate),
                )),
            };
            let Some((kind, reason)) = hold else {
                if announced.is_some() {
                    let _ = transaction::run(|| {
                        Spi::run_with_args(
                            "UPDATE drip.runs SET throttled = NULL WHERE id = $1",
                            &[self.run_id.into()],
                        )
                        .or_raise_spi()
                    });
                }
                return true;
            };
            times += 1;
            if announced != Some(kind) {
                let _ = transaction::run(|| announce_throttled(self.run_id, &reason));
                announced = Some(kind);
            }
            if !self.sleep(throttle::recheck_after(times)) {
                return false;
            }
        }
    }

    /// Read the health signals and the run's status, in the caller's transaction.
    fn health(&self) -> Health {
        let row = Spi::connect(|c| {
            let t = c.select(
                "SELECT r.status, (extract(epoch FROM r.max_replica_lag) * 1000)::bigint, r.throttle_query, \
                        pg_is_in_recovery(), \
                        (SELECT (extract(epoch FROM max(greatest(write_lag, flush_lag, replay_lag))) * 1000)::bigint \
                           FROM pg_catalog.pg_stat_replication) \
                 FROM drip.runs r WHERE r.id = $1",
                None,
                &[self.run_id.into()],
            )?;
            let r = t.first();
            Ok::<_, pgrx::spi::SpiError>((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<i64>(2)?.unwrap_or(0).max(0),
                r.get::<String>(3)?,
                r.get::<bool>(4)?.unwrap_or(false),
                r.get::<i64>(5)?,
            ))
        })
        .or_raise_spi();
        let (status, max_lag_ms, query, in_recovery, lag_ms) = row;
        if status != "running" && status != "enqueued" {
            return Health::NotRunning;
        }
        let mut signals = throttle::Signals {
            in_recovery,
            replica_lag: lag_ms.map(|ms| Duration::from_millis(ms.max(0) as u64)),
            throttle_query: false,
        };
        if !in_recovery {
            if let Some(q) = query.filter(|q| !q.trim().is_empty()) {
                signals.throttle_query = self
                    .as_owner(|| {
                        Spi::connect(|c| {
                            c.select(q.as_str(), Some(1), &[])?
                                .first()
                                .get_one::<bool>()
                        })
                    })
                    .or_raise_spi()
                    .unwrap_or(false);
            }
        }
        match throttle::decide(&signals, Duration::from_millis(max_lag_ms as u64)) {
            Some(h) => Health::Hold(h),
            None => Health::Fine,
        }
    }

    /// The next batch's upper bound (inclusive) and how many keys it holds; None when done.
    fn boundary(&self, batch_size: i32) -> Option<(Vec<String>, i64)> {
        let k = self.compiled.keys.len();
        let mut args = Vec::with_capacity(k + 1);
        let sql = match &self.cursor {
            None => &self.compiled.sql.boundary_first,
            Some(cursor) => {
                args.extend(self.key_args(cursor));
                &self.compiled.sql.boundary_next
            }
        };
        args.push(DatumWithOid::from(batch_size as i64));
        // As the owner: RLS and privileges decide which keys the walk sees.
        self.as_owner(|| {
            Spi::connect(|c| {
                let t = c.select(sql.as_str(), None, &args)?;
                if let Some(r) = t.into_iter().next() {
                    let mut high = Vec::with_capacity(k);
                    for i in 1..=k {
                        high.push(r.get::<String>(i)?.unwrap_or_default());
                    }
                    let n = r.get::<i64>(k + 1)?.unwrap_or(0);
                    return Ok(Some((high, n)));
                }
                Ok::<_, pgrx::spi::SpiError>(None)
            })
        })
        .or_raise_spi()
    }

    /// Run user-facing SQL as the backfill's owner, in a security-restricted operation with
    /// the owner's search_path. Fails with 42501 if the owner role was dropped.
    fn as_owner<R>(&self, f: impl FnOnce() -> R) -> R {
        let exists = Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE oid = $1)",
            &[self.owner.into()],
        )
        .or_raise_spi()
        .unwrap_or(false);
        if !exists {
            DripError::OwnerGone(self.backfill_name()).raise();
        }
        identity::run_as(self.owner, Restriction::Restricted, &self.search_path, f)
    }

    fn backfill_name(&self) -> String {
        catalog::read_run(self.run_id)
            .ok()
            .flatten()
            .map(|r| r.backfill)
            .unwrap_or_default()
    }

    fn key_args<'a>(&self, values: &[String]) -> Vec<DatumWithOid<'a>> {
        self.compiled
            .keys
            .iter()
            .zip(values)
            .map(|(k, v)| types::input_datum(k.type_oid, Some(v), &k.name).or_raise())
            .collect()
    }

    /// Transaction 2 of a batch: the work, the batch row and the cursor, committed together.
    fn work(&mut self, b: &Batch, settings: &Settings) {
        // A batch must lose a lock fight with live traffic, not win it.
        Spi::run_with_args(
            "SELECT pg_catalog.set_config('lock_timeout', $1, true)",
            &[format!("{}ms", settings.lock_timeout_ms).into()],
        )
        .or_raise_spi();
        let mut args: Vec<DatumWithOid> = Vec::new();
        for ((decl, ty), text) in self.compiled.params.iter().zip(&self.param_texts) {
            args.push(types::input_datum(ty.oid, text.as_deref(), &decl.name).or_raise());
        }
        match &b.low {
            Some(low) => args.extend(self.key_args(low)),
            None => args.extend(
                self.compiled
                    .keys
                    .iter()
                    .map(|k| DatumWithOid::null_oid(k.type_oid)),
            ),
        }
        args.extend(self.key_args(&b.high));
        let sql = if b.low.is_some() {
            &self.compiled.sql.work_next
        } else {
            &self.compiled.sql.work_first
        };
        let rows = {
            // Only the user's statement is limited; our bookkeeping below is not.
            let _limit = timeout::StatementTimeout::arm(settings.statement_timeout);
            let started = Instant::now();
            let rows = self
                .as_owner(|| {
                    Spi::connect_mut(|c| {
                        c.update(sql.as_str(), None, &args).map(|t| t.len() as i64)
                    })
                })
                .or_raise_spi();
            if let Some(a) = self.adaptive.as_mut() {
                a.observe(b.keys, started.elapsed());
            }
            rows
        };
        // Our own bookkeeping waits for locks as long as it must (pause/stop hold the run row
        // only briefly).
        Spi::run("SELECT pg_catalog.set_config('lock_timeout', '0', true)").or_raise_spi();

        Spi::run_with_args(
            "UPDATE drip.batches SET status = 'completed', rows = $3, finished_at = clock_timestamp() \
             WHERE run_id = $1 AND batch_no = $2",
            &[self.run_id.into(), b.no.into(), rows.into()],
        )
        .or_raise_spi();
        let next_size = self
            .adaptive
            .as_ref()
            .map(|a| a.next_size(settings.batch_size as i64) as i32);
        let run = advance(self.run_id, &b.high, rows, next_size);
        catalog::notify_batch(&run, BatchStatus::Completed, b.no, rows, None).or_raise();
    }

    /// Record a failed attempt. Returns true when the run failed for good.
    fn record_failure(&self, b: &Batch, e: &transaction::TxError) -> bool {
        let message = format!("{} (SQLSTATE {})", e.message, e.sqlstate);
        Spi::run_with_args(
            "UPDATE drip.batches SET status = 'failed', error = $3, sqlstate = $4, \
             finished_at = clock_timestamp() WHERE run_id = $1 AND batch_no = $2",
            &[
                self.run_id.into(),
                b.no.into(),
                e.message.as_str().into(),
                e.sqlstate.as_str().into(),
            ],
        )
        .or_raise_spi();
        let Some(run) = catalog::read_run(self.run_id).or_raise() else {
            return true;
        };
        catalog::notify_batch(&run, BatchStatus::Failed, b.no, 0, Some(&message)).or_raise();
        if b.attempts >= self.max_attempts
            && matches!(run.status, RunStatus::Running | RunStatus::Paused)
        {
            let error = format!("batch {} failed {} times: {message}", b.no, b.attempts);
            catalog::set_run_status(&run, RunStatus::Failed, Some(&error)).or_raise();
            return true;
        }
        false
    }

    /// Sleep between batches. Returns false if the worker must exit. A long sleep looks at the
    /// run's status every STATUS_POLL so pause and stop act promptly.
    fn sleep(&self, total: Duration) -> bool {
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

/// What the health check found.
enum Health {
    Fine,
    Hold(throttle::Hold),
    /// The run was paused or stopped meanwhile.
    NotRunning,
}

/// Record and announce that a run holds.
fn announce_throttled(run_id: i64, reason: &str) {
    Spi::run_with_args(
        "UPDATE drip.runs SET throttled = $2 WHERE id = $1",
        &[run_id.into(), reason.into()],
    )
    .or_raise_spi();
    if let Some(run) = catalog::read_run(run_id).or_raise() {
        catalog::notify_throttled(&run, reason).or_raise();
    }
    log!("data_drip run {run_id} holds: {reason}");
}

/// Pin this session's search_path to schemas no user can create objects in.
pub fn pin_search_path() {
    Spi::run_with_args(
        "SELECT pg_catalog.set_config('search_path', $1, false)",
        &[identity::SAFE_SEARCH_PATH.into()],
    )
    .or_raise_spi();
}

/// Exponential backoff with jitter: base * 2^(attempt-1), capped, +-25%.
fn backoff(attempt: i32) -> Duration {
    let exp = BACKOFF_BASE_MS.saturating_mul(1u64 << (attempt.clamp(1, 16) - 1) as u64);
    let base = exp.min(BACKOFF_MAX_MS);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    let jitter = base / 4;
    Duration::from_millis(base - jitter + nanos % (2 * jitter + 1))
}

/// Lock the run row; Some only while it is `running`. A run paused and resumed while this
/// runner was still alive (sleeping or finishing a batch) is `enqueued`: take it back.
fn lock_running(run_id: i64) -> Option<(RunRow, Settings)> {
    let mut run = catalog::lock_run(run_id).or_raise();
    match run.status {
        RunStatus::Running => {}
        RunStatus::Enqueued => {
            Spi::run_with_args(
                "UPDATE drip.runs SET worker_pid = pg_backend_pid() WHERE id = $1",
                &[run_id.into()],
            )
            .or_raise_spi();
            run = catalog::set_run_status(&run, RunStatus::Running, None).or_raise();
        }
        _ => return None,
    }
    let settings = Spi::connect(|c| {
        let t = c.select(
            "SELECT batch_size, (extract(epoch FROM sleep) * 1000)::bigint, \
                    (extract(epoch FROM lock_timeout) * 1000)::bigint, \
                    (extract(epoch FROM statement_timeout) * 1000)::bigint, \
                    (extract(epoch FROM target_batch_time) * 1000)::bigint, \
                    min_batch_size, max_batch_size \
             FROM drip.runs WHERE id = $1",
            None,
            &[run_id.into()],
        )?;
        let r = t.first();
        let ms = |i: usize| -> Result<Duration, pgrx::spi::SpiError> {
            Ok(Duration::from_millis(
                r.get::<i64>(i)?.unwrap_or(0).max(0) as u64
            ))
        };
        Ok::<_, pgrx::spi::SpiError>(Settings {
            batch_size: r.get::<i32>(1)?.unwrap_or(1000),
            sleep: ms(2)?,
            lock_timeout_ms: r.get::<i64>(3)?.unwrap_or(0).max(0),
            statement_timeout: ms(4)?,
            target_batch_time: r
                .get::<i64>(5)?
                .filter(|ms| *ms > 0)
                .map(|ms| Duration::from_millis(ms as u64)),
            min_batch_size: r.get::<i32>(6)?.unwrap_or(1),
            max_batch_size: r.get::<i32>(7)?.unwrap_or(i32::MAX),
        })
    })
    .or_raise_spi();
    Some((run, settings))
}

/// This runner no longer executes the run.
fn release_run(run_id: i64) {
    Spi::run_with_args(
        "UPDATE drip.runs SET worker_pid = NULL WHERE id = $1 AND worker_pid = pg_backend_pid()",
        &[run_id.into()],
    )
    .or_raise_spi();
}

/// Advance the cursor and counters after a batch.
fn advance(run_id: i64, high: &[String], rows: i64, next_size: Option<i32>) -> RunRow {
    Spi::connect_mut(|c| {
        let t = c.update(
            &format!(
                "UPDATE drip.runs SET cursor = $2, rows_done = rows_done + $3, \
                 batches_done = batches_done + 1, batch_size = coalesce($4, batch_size) \
                 WHERE id = $1 RETURNING {RUN_COLUMNS}"
            ),
            None,
            &[
                run_id.into(),
                high.to_vec().into(),
                rows.into(),
                next_size.into(),
            ],
        )?;
        catalog::runs_from(t)?
            .pop()
            .ok_or(DripError::UnknownRun(run_id))
    })
    .or_raise()
}

/// Mark a run failed (outside the batch loop: it could not even start or go on).
fn fail_run(run_id: i64, message: &str) {
    if let Some(run) = catalog::read_run(run_id).or_raise() {
        if matches!(run.status, RunStatus::Running | RunStatus::Enqueued) {
            catalog::set_run_status(&run, RunStatus::Failed, Some(message)).or_raise();
        }
    }
}

/// Take the run's lock and move it from enqueued to running. None if another runner has it or
/// it is no longer enqueued.
fn claim(run_id: i64) -> Option<Runner> {
    // The previous runner of a resumed run may still be finishing; give it a moment.
    let deadline = Instant::now() + CLAIM_WAIT;
    loop {
        let got = Spi::get_one_with_args::<bool>(
            "SELECT pg_catalog.pg_try_advisory_lock($1, $2)",
            &[RUNNER_KEY.into(), run_key(run_id).into()],
        )
        .or_raise_spi()
        .unwrap_or(false);
        if got {
            break;
        }
        if Instant::now() >= deadline {
            return None;
        }
        if !BackgroundWorker::wait_latch(Some(Duration::from_millis(50))) {
            return None;
        }
    }
    Spi::run_with_args(
        "SELECT pg_catalog.set_config('application_name', $1, false)",
        &[format!("data_drip runner: run {run_id}").into()],
    )
    .or_raise_spi();
    let claimed = Spi::connect_mut(|c| {
        let t = c.update(
            &format!(
                "UPDATE drip.runs SET status = 'running', worker_pid = pg_backend_pid(), \
                     started_at = coalesce(started_at, now()), error = NULL \
                 WHERE id = $1 AND status = 'enqueued' \
                 RETURNING {RUN_COLUMNS}, definition, params, cursor"
            ),
            None,
            &[run_id.into()],
        )?;
        if let Some(r) = t.into_iter().next() {
            let row = RunRow::from_tuple(&r)?;
            let def = r.get::<JsonB>(7)?.map(|j| j.0).unwrap_or_default();
            let values = r.get::<JsonB>(8)?.map(|j| j.0).unwrap_or_default();
            let cursor = r.get::<Vec<String>>(9)?;
            return Ok::<_, DripError>(Some((row, def, values, cursor)));
        }
        Ok(None)
    })
    .or_raise()?;
    let (run, def, values, cursor) = claimed;
    catalog::notify_run(&run, None).or_raise();

    let def = Definition::from_json(&def).or_raise();
    let compiled = def.compile().or_raise();
    let param_texts = compiled
        .params
        .iter()
        .map(|(d, t)| {
            params::input_text(
                values.get(&d.name).unwrap_or(&serde_json::Value::Null),
                t.is_array,
            )
        })
        .collect();

    // A batch left running by a worker that died: record it as interrupted and do it again.
    let retry = interrupted_batch(&run);
    Some(Runner {
        run_id,
        compiled,
        param_texts,
        max_attempts: def.max_attempts,
        cursor,
        retry,
        owner: def.owner(),
        search_path: def.search_path.clone(),
        adaptive: None,
    })
}

fn interrupted_batch(run: &RunRow) -> Option<Batch> {
    let found = Spi::connect_mut(|c| {
        let t = c.update(
            "UPDATE drip.batches SET status = 'failed', error = 'interrupted', finished_at = clock_timestamp() \
             WHERE run_id = $1 AND status = 'running' RETURNING batch_no, low_key, high_key, attempts",
            None,
            &[run.id.into()],
        )?;
        let mut out = None;
        for r in t {
            out = Some(Batch {
                no: r.get::<i64>(1)?.unwrap_or_default(),
                low: r.get::<Vec<String>>(2)?,
                high: r.get::<Vec<String>>(3)?.unwrap_or_default(),
                attempts: r.get::<i32>(4)?.unwrap_or(1) + 1,
                keys: 0,
            });
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    })
    .or_raise_spi();
    if let Some(b) = &found {
        catalog::notify_batch(run, BatchStatus::Failed, b.no, 0, Some("interrupted")).or_raise();
    }
    found
}

/// `or_raise` for SPI results.
trait OrRaiseSpi<T> {
    fn or_raise_spi(self) -> T;
}

impl<T> OrRaiseSpi<T> for Result<T, pgrx::spi::SpiError> {
    fn or_raise_spi(self) -> T {
        self.map_err(DripError::from).or_raise()
    }
}

#[allow(dead_code)]
fn _assert_result(_: DripResult<()>) {}
