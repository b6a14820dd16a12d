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
use crate::events;
use crate::params;
use crate::pg::identity::{self, Restriction};
use crate::pg::{extension, signals, subxact, timeout, transaction, types, wake};
use crate::status::{BatchStatus, RunStatus};
use crate::throttle;
use crate::worker::launch;
use crate::worker::locks::{run_key, runner_lock, RUNNER_KEY};
use crate::worker::statements::StatementCache;

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
    /// The catalog this runner started on; it touches nothing once that one is gone.
    instance: extension::Instance,
    /// Set when the work transaction found the catalog dropped or replaced.
    gone: bool,
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
    backfill: String,
    /// The slice of a parallel run this runner walks (None: the whole run).
    slice: Option<i32>,
    /// The signal the run is holding on (announced once per kind), and for how many checks.
    throttled: Option<&'static str>,
    hold_times: u32,
    stmts: StatementCache,
    /// Inclusive upper end of the range, if the run has one (frozen or given).
    to_key: Option<Vec<String>>,
    /// Element mode, and whether failing rows let the run go on.
    row_mode: bool,
    skip_row_errors: bool,
    /// Executed by `CALL drip.finish` in a client session rather than a background worker.
    foreground: bool,
    /// Foreground: the batch marked by the last step, to be worked by the next.
    pending: Option<(Batch, Settings)>,
    /// Foreground: the sleep (or backoff) owed before the next batch, taken at the next step
    /// so no batch's row locks are held while sleeping.
    nap: Duration,
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
    /// A health signal tripped: look again after this long.
    Hold(Duration),
    Exit,
}

impl Runner {
    fn main(mut self) {
        // Failures before a batch exists (its key range cannot be found: the table was dropped,
        // the owner lost SELECT or was dropped): retried like batches, then the run fails.
        let mut boundary_failures = 0;
        loop {
            let step = transaction::run(|| self.mark_next());
            let (batch, settings) = match step {
                Ok(Step::Batch(b, settings)) => (b, settings),
                Ok(Step::Exit) => return,
                Ok(Step::Hold(wait)) => {
                    if !self.sleep(wait) {
                        return;
                    }
                    continue;
                }
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
                Ok(failed_rows) => {
                    self.cursor = Some(batch.high.clone());
                    self.retry = None;
                    if failed_rows > 0 && !self.skip_row_errors {
                        let message = format!(
                            "{failed_rows} row(s) of batch {} failed; see drip.row_errors, then drip.retry_rows({}) and drip.retry({})",
                            batch.no, self.run_id, self.run_id
                        );
                        let _ = transaction::run(|| fail_run(self.run_id, &message));
                        return;
                    }
                    if !self.sleep(settings.sleep) {
                        return;
                    }
                }
                Err(_) if self.gone => {
                    log!(
                        "data_drip run {}: the extension was dropped; exiting",
                        self.run_id
                    );
                    return;
                }
                Err(e) => {
                    let gave_up = transaction::run(|| self.record_failure(&batch, &e))
                        .unwrap_or_else(|e2| {
                            // The failure must end the run even when its text cannot be
                            // recorded; otherwise the run would be requeued for ever.
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

    /// Transaction 1 of a batch: check the run and its health, decide what to do next and mark
    /// the batch running. The marker commits synchronously: once batch_running was announced,
    /// the row must survive a crash so the catalog can say the attempt was interrupted.
    fn mark_next(&mut self) -> Step {
        if !extension::still_current(&self.instance) {
            log!(
                "data_drip run {}: the extension was dropped; exiting",
                self.run_id
            );
            return Step::Exit;
        }
        let Some(state) = self.lock_state() else {
            release_run(self.run_id);
            return Step::Exit;
        };
        if !state.owner_exists {
            DripError::OwnerGone(self.backfill.clone()).raise();
        }
        if let Some(hold) = self.health(&state) {
            self.hold_times += 1;
            if self.throttled != Some(hold.kind()) {
                announce_throttled(self.run_id, &hold.reason());
                self.throttled = Some(hold.kind());
            }
            return Step::Hold(throttle::recheck_after(self.hold_times));
        }
        self.hold_times = 0;
        if self.throttled.take().is_some() {
            self.stmts
                .exec(
                    "UPDATE drip.runs SET throttled = NULL WHERE id = $1",
                    &[self.run_id.into()],
                )
                .or_raise_spi();
        }
        let run = state.run;
        let settings = state.settings;

        if let Some(b) = self.retry.clone() {
            let payload = self.batch_payload(BatchStatus::Running, b.no, 0);
            self.stmts
                .exec(
                    "WITH u AS (UPDATE drip.batches SET status = 'running', attempts = $3, \
                         started_at = clock_timestamp(), finished_at = NULL, rows = NULL \
                         WHERE run_id = $1 AND batch_no = $2) \
                     SELECT drip.emit($4)",
                    &[
                        self.run_id.into(),
                        b.no.into(),
                        b.attempts.into(),
                        payload.into(),
                    ],
                )
                .or_raise_spi();
            return Step::Batch(b, settings);
        }

        self.sync_adaptive(&settings);
        let Some((high, keys)) = self.boundary(settings.batch_size) else {
            if let Some(n) = self.slice {
                // This slice is done; the run completes with its last slice.
                let left = self
                    .stmts
                    .run(
                        "WITH d AS (UPDATE drip.slices SET done = true WHERE run_id = $1 AND slice = $2) \
                         SELECT count(*) FROM drip.slices WHERE run_id = $1 AND slice <> $2 AND NOT done",
                        &[self.run_id.into(), n.into()],
                        |t| t.first().get_one::<i64>(),
                    )
                    .or_raise_spi()
                    .unwrap_or(0);
                if left > 0 {
                    release_run(self.run_id);
                    return Step::Exit;
                }
            }
            let done = catalog::set_run_status(&run, RunStatus::Completed, None).or_raise();
            log!(
                "data_drip run {} completed: {} rows in {} batches",
                done.id,
                done.rows_done,
                done.batches_done
            );
            return Step::Exit;
        };
        // Batch numbers are per run (slices share them): taken from the run row we hold locked.
        let no = self
            .stmts
            .run(
                "UPDATE drip.runs SET next_batch_no = next_batch_no + 1 WHERE id = $1 \
                 RETURNING next_batch_no - 1",
                &[self.run_id.into()],
                |t| t.first().get_one::<i64>(),
            )
            .or_raise_spi()
            .unwrap_or(1);
        let payload = self.batch_payload(BatchStatus::Running, no, keys);
        self.stmts
            .exec(
                "WITH i AS (INSERT INTO drip.batches (run_id, batch_no, low_key, high_key, status, batch_size, slice) \
                     VALUES ($1, $2, $3, $4, 'running', $5, $7)) \
                 SELECT drip.emit($6)",
                &[
                    self.run_id.into(),
                    no.into(),
                    self.cursor.clone().into(),
                    high.clone().into(),
                    settings.batch_size.into(),
                    payload.into(),
                    self.slice.into(),
                ],
            )
            .or_raise_spi();
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

    fn batch_payload(&self, status: BatchStatus, no: i64, rows: i64) -> String {
        events::batch_event(
            status.as_str(),
            self.run_id,
            &self.backfill,
            no,
            rows,
            None,
            &catalog::now_text(),
        )
    }

    /// Lock the run row and read its settings, counters and the health signals, in one
    /// statement. None once the run is no longer running (paused, stopped, gone). A run paused
    /// and resumed while this runner was still alive is `enqueued`: take it back.
    fn lock_state(&mut self) -> Option<RunState> {
        let row = self
            .stmts
            .run(
                "SELECT r.status, r.batch_size, (extract(epoch FROM r.sleep) * 1000)::bigint, \
                        (extract(epoch FROM r.lock_timeout) * 1000)::bigint, \
                        (extract(epoch FROM r.statement_timeout) * 1000)::bigint, \
                        (extract(epoch FROM r.target_batch_time) * 1000)::bigint, \
                        r.min_batch_size, r.max_batch_size, \
                        (extract(epoch FROM r.max_replica_lag) * 1000)::bigint, r.throttle_query, \
                        pg_catalog.pg_is_in_recovery(), \
                        CASE WHEN r.max_replica_lag > interval '0' THEN \
                          (SELECT (extract(epoch FROM max(greatest(w.write_lag, w.flush_lag, w.replay_lag))) * 1000)::bigint \
                             FROM pg_catalog.pg_stat_get_wal_senders() w) END, \
                        EXISTS (SELECT 1 FROM pg_catalog.pg_roles o WHERE o.oid = r.owner), \
                        r.rows_done, r.batches_done, r.worker_pid \
                 FROM drip.runs r WHERE r.id = $1 FOR NO KEY UPDATE OF r",
                &[self.run_id.into()],
                |t| {
                    let Some(r) = t.into_iter().next() else {
                        return Ok(None);
                    };
                    let ms = |v: Option<i64>| Duration::from_millis(v.unwrap_or(0).max(0) as u64);
                    Ok(Some((
                        r.get::<String>(1)?.unwrap_or_default(),
                        Settings {
                            batch_size: r.get::<i32>(2)?.unwrap_or(1000),
                            sleep: ms(r.get::<i64>(3)?),
                            lock_timeout_ms: r.get::<i64>(4)?.unwrap_or(0).max(0),
                            statement_timeout: ms(r.get::<i64>(5)?),
                            target_batch_time: r
                                .get::<i64>(6)?
                                .filter(|v| *v > 0)
                                .map(|v| Duration::from_millis(v as u64)),
                            min_batch_size: r.get::<i32>(7)?.unwrap_or(1),
                            max_batch_size: r.get::<i32>(8)?.unwrap_or(i32::MAX),
                        },
                        r.get::<i64>(9)?.unwrap_or(0).max(0),
                        r.get::<String>(10)?,
                        r.get::<bool>(11)?.unwrap_or(false),
                        r.get::<i64>(12)?,
                        r.get::<bool>(13)?.unwrap_or(false),
                        (r.get::<i64>(14)?.unwrap_or(0), r.get::<i64>(15)?.unwrap_or(0), r.get::<i32>(16)?),
                    )))
                },
            )
            .or_raise_spi()?;
        let (
            status,
            settings,
            max_lag_ms,
            throttle_query,
            in_recovery,
            lag_ms,
            owner_exists,
            counters,
        ) = row;
        let mut run = RunRow {
            id: self.run_id,
            backfill: self.backfill.clone(),
            status: RunStatus::parse(&status).or_raise(),
            rows_done: counters.0,
            batches_done: counters.1,
            worker_pid: counters.2,
        };
        match run.status {
            RunStatus::Running => {}
            RunStatus::Enqueued => {
                Spi::run_with_args(
                    "UPDATE drip.runs SET worker_pid = pg_backend_pid() WHERE id = $1",
                    &[self.run_id.into()],
                )
                .or_raise_spi();
                run = catalog::set_run_status(&run, RunStatus::Running, None).or_raise();
            }
            _ => return None,
        }
        Some(RunState {
            run,
            settings,
            max_replica_lag: Duration::from_millis(max_lag_ms as u64),
            throttle_query,
            in_recovery,
            replica_lag: lag_ms.map(|v| Duration::from_millis(v.max(0) as u64)),
            owner_exists,
        })
    }

    /// Whether to hold before this batch; the throttle query runs as the owner.
    fn health(&mut self, state: &RunState) -> Option<throttle::Hold> {
        let mut signals = throttle::Signals {
            in_recovery: state.in_recovery,
            replica_lag: state.replica_lag,
            throttle_query: false,
        };
        if !state.in_recovery {
            if let Some(q) = state
                .throttle_query
                .as_deref()
                .filter(|q| !q.trim().is_empty())
            {
                // No row, or NULL, means "do not hold".
                signals.throttle_query = self
                    .as_owner(|stmts| {
                        stmts.run(q, &[], |t| match t.into_iter().next() {
                            Some(r) => r.get::<bool>(1),
                            None => Ok(None),
                        })
                    })
                    .or_raise_spi()
                    .unwrap_or(false);
            }
        }
        throttle::decide(&signals, state.max_replica_lag)
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

    /// The next batch's upper bound (inclusive) and how many keys it holds; None when done.
    /// Runs as the owner: RLS and privileges decide which keys the walk sees.
    fn boundary(&mut self, batch_size: i32) -> Option<(Vec<String>, i64)> {
        let k = self.compiled.keys.len();
        let mut args = Vec::with_capacity(k + 1);
        let (full, last) = match &self.cursor {
            None => (
                self.compiled.sql.full_first.clone(),
                self.compiled.sql.boundary_first.clone(),
            ),
            Some(cursor) => {
                args.extend(self.key_args(cursor));
                (
                    self.compiled.sql.full_next.clone(),
                    self.compiled.sql.boundary_next.clone(),
                )
            }
        };
        args.push(DatumWithOid::from(batch_size as i64));
        if let Some(cap) = self.to_key.clone() {
            args.extend(self.key_args(&cap));
        }
        let read_key = move |r: &pgrx::spi::SpiHeapTupleData| -> pgrx::spi::SpiResult<Vec<String>> {
            (1..=k)
                .map(|i| r.get::<String>(i).map(|v| v.unwrap_or_default()))
                .collect()
        };
        self.as_owner_with("force_generic_plan", |stmts| {
            // A full batch: skip along the index to its last key.
            let high = stmts.run(&full, &args, |t| match t.into_iter().next() {
                Some(r) => read_key(&r).map(Some),
                None => Ok(None),
            })?;
            if let Some(high) = high {
                return Ok(Some((high, batch_size as i64)));
            }
            // Fewer keys left: the last one, and how many.
            stmts.run(&last, &args, |t| match t.into_iter().next() {
                Some(r) => Ok(Some((read_key(&r)?, r.get::<i64>(k + 1)?.unwrap_or(0)))),
                None => Ok(None),
            })
        })
        .or_raise_spi()
    }

    fn key_args<'a>(&self, values: &[String]) -> Vec<DatumWithOid<'a>> {
        self.compiled
            .keys
            .iter()
            .zip(values)
            .map(|(k, v)| types::key_datum(k.type_oid, v, &k.name).or_raise())
            .collect()
    }

    /// Run user-facing SQL as the backfill's owner, in a security-restricted operation with
    /// the owner's search_path (the owner's existence is checked by mark_next).
    fn as_owner<R>(&mut self, f: impl FnOnce(&mut StatementCache) -> R) -> R {
        self.as_owner_with("auto", f)
    }

    /// `as_owner` with a plan_cache_mode: our own key-walk queries have the same best plan for
    /// any bounds, so they skip re-planning (force_generic_plan); the user's batch statement
    /// keeps Postgres's choice (auto).
    fn as_owner_with<R>(
        &mut self,
        plan_cache_mode: &str,
        f: impl FnOnce(&mut StatementCache) -> R,
    ) -> R {
        let stmts = &mut self.stmts;
        identity::run_as_with(
            self.owner,
            Restriction::Restricted,
            &[
                (c"search_path", self.search_path.as_str()),
                (c"plan_cache_mode", plan_cache_mode),
            ],
            || f(stmts),
        )
    }

    /// Transaction 2 of a batch: the work, the batch row and the cursor, committed together.
    /// Returns the number of rows that failed (element mode; 0 otherwise).
    fn work(&mut self, b: &Batch, settings: &Settings) -> i64 {
        if !extension::still_current(&self.instance) {
            self.gone = true;
            DripError::Internal("the data_drip extension was dropped".into()).raise();
        }
        const SET_LOCK_TIMEOUT: &str = "SELECT pg_catalog.set_config('lock_timeout', $1, true)";
        // A batch must lose a lock fight with live traffic, not win it.
        self.stmts
            .exec(
                SET_LOCK_TIMEOUT,
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
            self.compiled.sql.work_next.clone()
        } else {
            self.compiled.sql.work_first.clone()
        };
        let (rows, failed) = {
            // Only the user's SQL is limited; our bookkeeping below is not.
            let _limit = timeout::StatementTimeout::arm(settings.statement_timeout);
            let started = Instant::now();
            let counts = if self.row_mode {
                self.rows_one_by_one(b, &args)
            } else {
                let rows = self
                    .as_owner(|stmts| stmts.exec(&sql, &args))
                    .or_raise_spi();
                (rows, 0)
            };
            if let Some(a) = self.adaptive.as_mut() {
                a.observe(b.keys, started.elapsed());
            }
            counts
        };
        // Our own bookkeeping waits for locks as long as it must (pause/stop hold the run row
        // only briefly).
        self.stmts
            .exec(SET_LOCK_TIMEOUT, &["0".into()])
            .or_raise_spi();

        // The batch row, the cursor and the counters, with the event: one statement, in the
        // batch's transaction.
        let next_size = self
            .adaptive
            .as_ref()
            .map(|a| a.next_size(settings.batch_size as i64) as i32);
        let payload = self.batch_payload(BatchStatus::Completed, b.no, rows);
        self.stmts
            .exec(
                "WITH b AS (UPDATE drip.batches SET status = 'completed', rows = $3, \
                              finished_at = clock_timestamp() WHERE run_id = $1 AND batch_no = $2), \
                      s AS (UPDATE drip.slices SET cursor = $4 WHERE run_id = $1 AND slice = $8), \
                      r AS (UPDATE drip.runs SET cursor = CASE WHEN $8::int IS NULL THEN $4 ELSE cursor END, \
                              rows_done = rows_done + $3, rows_failed = rows_failed + $7, \
                              batches_done = batches_done + 1, batch_size = coalesce($5, batch_size) \
                            WHERE id = $1) \
                 SELECT drip.emit($6)",
                &[
                    self.run_id.into(),
                    b.no.into(),
                    rows.into(),
                    b.high.clone().into(),
                    next_size.into(),
                    payload.into(),
                    failed.into(),
                    self.slice.into(),
                ],
            )
            .or_raise_spi();
        failed
    }

    /// Element mode: the action once per row of the batch in scope, each in its own
    /// subtransaction. A failing row is rolled back alone and recorded in drip.row_errors; the
    /// rest of the batch goes on. Returns (rows processed, rows failed).
    fn rows_one_by_one(&mut self, b: &Batch, args: &[DatumWithOid]) -> (i64, i64) {
        let k = self.compiled.keys.len();
        let n_params = self.compiled.params.len();
        let select = if b.low.is_some() {
            self.compiled.sql.rows_next.clone()
        } else {
            self.compiled.sql.rows_first.clone()
        };
        let keys: Vec<Vec<String>> = self
            .as_owner(|stmts| {
                stmts.run(&select, args, |t| {
                    t.map(|r| {
                        (1..=k)
                            .map(|i| r.get::<String>(i).map(|v| v.unwrap_or_default()))
                            .collect()
                    })
                    .collect::<Result<Vec<Vec<String>>, _>>()
                })
            })
            .or_raise_spi();
        let work_row = self.compiled.sql.work_row.clone();
        let (mut done, mut failed) = (0, 0);
        for key in keys {
            // The user's parameters, then the row's key as the low bound (and, unused, high).
            let mut row_args: Vec<DatumWithOid> = Vec::with_capacity(n_params + 2 * k);
            for ((decl, ty), text) in self.compiled.params.iter().zip(&self.param_texts) {
                row_args.push(types::input_datum(ty.oid, text.as_deref(), &decl.name).or_raise());
            }
            row_args.extend(self.key_args(&key));
            row_args.extend(self.key_args(&key));
            let result = subxact::try_in_subtransaction(|| {
                self.as_owner(|stmts| stmts.exec(&work_row, &row_args))
                    .or_raise_spi()
            });
            match result {
                Ok(n) => done += n,
                Err(e) => {
                    failed += 1;
                    self.stmts
                        .exec(
                            "INSERT INTO drip.row_errors (run_id, batch_no, key, error, sqlstate) \
                             VALUES ($1, $2, $3, $4, $5) \
                             ON CONFLICT (run_id, key) DO UPDATE SET batch_no = excluded.batch_no, \
                                 error = excluded.error, sqlstate = excluded.sqlstate, \
                                 at = excluded.at, resolved_at = NULL",
                            &[
                                self.run_id.into(),
                                b.no.into(),
                                key.clone().into(),
                                e.message.as_str().into(),
                                e.sqlstate.as_str().into(),
                            ],
                        )
                        .or_raise_spi();
                }
            }
        }
        (done, failed)
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

/// What mark_next reads under the run row's lock.
struct RunState {
    run: RunRow,
    settings: Settings,
    max_replica_lag: Duration,
    throttle_query: Option<String>,
    in_recovery: bool,
    replica_lag: Option<Duration>,
    owner_exists: bool,
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
    // Our own per-batch statements are primary-key lookups: one generic plan serves all.
    Spi::run("SELECT pg_catalog.set_config('plan_cache_mode', 'force_generic_plan', false)")
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

/// This runner no longer executes the run.
fn release_run(run_id: i64) {
    Spi::run_with_args(
        "UPDATE drip.runs SET worker_pid = NULL WHERE id = $1 AND worker_pid = pg_backend_pid()",
        &[run_id.into()],
    )
    .or_raise_spi();
}

/// Mark a run failed (outside the batch loop: it could not even start or go on).
fn fail_run(run_id: i64, message: &str) {
    if let Some(run) = catalog::read_run(run_id).or_raise() {
        if matches!(run.status, RunStatus::Running | RunStatus::Enqueued) {
            catalog::set_run_status(&run, RunStatus::Failed, Some(message)).or_raise();
        }
    }
}

/// Last resort when a batch failure could not be recorded: mark the batch and the run failed
/// with texts of our own (the error's text is what could not be stored).
fn fail_unrecordable(run_id: i64, batch_no: i64, sqlstate: &str, record_sqlstate: &str) {
    let message = format!(
        "batch {batch_no} failed with SQLSTATE {sqlstate}; its error text could not be recorded \
         (SQLSTATE {record_sqlstate}), see the server log"
    );
    Spi::run_with_args(
        "UPDATE drip.batches SET status = 'failed', error = $3, sqlstate = $4, \
         finished_at = clock_timestamp() WHERE run_id = $1 AND batch_no = $2",
        &[
            run_id.into(),
            batch_no.into(),
            message.as_str().into(),
            sqlstate.into(),
        ],
    )
    .or_raise_spi();
    if let Some(run) = catalog::read_run(run_id).or_raise() {
        if run.status.is_active() {
            catalog::set_run_status(&run, RunStatus::Failed, Some(&message)).or_raise();
        }
    }
}

/// Take the run's lock and move it from enqueued to running. None if another runner has it or
/// it is no longer enqueued.
fn claim(run_id: i64, slice: Option<i32>) -> Option<Runner> {
    if !extension::catalog_matches_library() {
        log!(
            "data_drip runner for run {run_id}: the catalog is not version {}; waiting for ALTER EXTENSION data_drip UPDATE",
            extension::LIBRARY_VERSION
        );
        return None;
    }
    // The previous runner of a resumed run may still be finishing; give it a moment.
    let deadline = Instant::now() + CLAIM_WAIT;
    loop {
        let got = Spi::get_one_with_args::<bool>(
            "SELECT pg_catalog.pg_try_advisory_lock($1, $2)",
            &[runner_lock(slice).into(), run_key(run_id).into()],
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
        &[match slice {
            None => format!("data_drip runner: run {run_id}"),
            Some(n) => format!("data_drip runner: run {run_id} slice {n}"),
        }
        .into()],
    )
    .or_raise_spi();
    claim_locked(run_id, slice)
}

/// Move an enqueued run to running for this process, which holds the run's lock, and build its
/// runner. None if the run is no longer enqueued.
fn claim_locked(run_id: i64, slice: Option<i32>) -> Option<Runner> {
    // A whole run is claimed when enqueued; a slice also joins a run its siblings already run.
    let claimable = if slice.is_some() {
        "status IN ('enqueued', 'running')"
    } else {
        "status = 'enqueued'"
    };
    let claimed = Spi::connect_mut(|c| {
        let t = c.update(
            &format!(
                "WITH old AS (SELECT status FROM drip.runs WHERE id = $1 FOR NO KEY UPDATE) \
                 UPDATE drip.runs r SET status = 'running', \
                     worker_pid = CASE WHEN old.status = 'running' THEN r.worker_pid ELSE pg_backend_pid() END, \
                     started_at = coalesce(started_at, now()), error = NULL \
                 FROM old WHERE r.id = $1 AND r.{claimable} \
                 RETURNING {}, r.definition, r.params, r.cursor, r.to_key, old.status",
                RUN_COLUMNS.split(", ").map(|c| format!("r.{c}")).collect::<Vec<_>>().join(", ")
            ),
            None,
            &[run_id.into()],
        )?;
        if let Some(r) = t.into_iter().next() {
            let row = RunRow::from_tuple(&r)?;
            let def = r.get::<JsonB>(7)?.map(|j| j.0).unwrap_or_default();
            let values = r.get::<JsonB>(8)?.map(|j| j.0).unwrap_or_default();
            let cursor = r.get::<Vec<String>>(9)?;
            let to_key = r.get::<Vec<String>>(10)?;
            let was = r.get::<String>(11)?.unwrap_or_default();
            return Ok::<_, DripError>(Some((row, def, values, cursor, to_key, was)));
        }
        Ok(None)
    })
    .or_raise()?;
    let (run, def, values, mut cursor, mut to_key, was) = claimed;
    if was != "running" {
        catalog::notify_run(&run, None).or_raise();
    }
    if let Some(n) = slice {
        // The slice's own range and cursor.
        let row = Spi::connect(|c| {
            let t = c.select(
                "SELECT low_key, high_key, cursor, done FROM drip.slices WHERE run_id = $1 AND slice = $2",
                None,
                &[run_id.into(), n.into()],
            )?;
            match t.into_iter().next() {
                Some(r) => Ok::<_, pgrx::spi::SpiError>(Some((
                    r.get::<Vec<String>>(1)?,
                    r.get::<Vec<String>>(2)?,
                    r.get::<Vec<String>>(3)?,
                    r.get::<bool>(4)?.unwrap_or(false),
                ))),
                None => Ok(None),
            }
        })
        .or_raise_spi();
        let (low, high, slice_cursor, done) = row?;
        if done {
            return None;
        }
        cursor = slice_cursor.or(low);
        to_key = high;
    }

    let def = Definition::from_json(&def).or_raise();
    let compiled = def.compile_capped(to_key.is_some()).or_raise();
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

    // A batch left running by a worker that died: record it as interrupted and do it again,
    // unless its attempts are used up (a batch that keeps killing its worker must not loop).
    let retry = interrupted_batch(&run, slice);
    if let Some(b) = retry.as_ref().filter(|b| b.attempts > def.max_attempts) {
        let message = format!(
            "batch {} was interrupted {} times (its worker died each time); max_attempts is {}",
            b.no,
            b.attempts - 1,
            def.max_attempts
        );
        catalog::set_run_status(&run, RunStatus::Failed, Some(&message)).or_raise();
        release_run(run_id);
        return None;
    }
    Some(Runner {
        run_id,
        instance: extension::current()?,
        gone: false,
        compiled,
        param_texts,
        max_attempts: def.max_attempts,
        cursor,
        retry,
        owner: def.owner(),
        search_path: def.search_path.clone(),
        adaptive: None,
        backfill: run.backfill.clone(),
        slice,
        throttled: None,
        hold_times: 0,
        stmts: StatementCache::default(),
        to_key,
        row_mode: def.mode == "row",
        skip_row_errors: def.on_row_error == "skip",
        foreground: false,
        pending: None,
        nap: Duration::ZERO,
    })
}

fn interrupted_batch(run: &RunRow, slice: Option<i32>) -> Option<Batch> {
    let found = Spi::connect_mut(|c| {
        let t = c.update(
            "UPDATE drip.batches SET status = 'failed', error = 'interrupted', finished_at = clock_timestamp() \
             WHERE run_id = $1 AND status = 'running' AND slice IS NOT DISTINCT FROM $2 \
             RETURNING batch_no, low_key, high_key, attempts",
            None,
            &[run.id.into(), slice.into()],
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

// ---------------------------------------------------------------------------------------------
// Foreground execution (CALL drip.finish): the same batches, bookkeeping and events, driven by
// a procedure that commits between steps. The session holds the run's lock meanwhile, so no
// background worker touches the run.
// ---------------------------------------------------------------------------------------------

thread_local! {
    static FOREGROUND: std::cell::RefCell<Option<Runner>> = const { std::cell::RefCell::new(None) };
}

/// What a foreground step did.
pub(crate) enum FgStep {
    /// A batch is marked running (committed by the caller); `fg_work` does it next.
    Batch,
    /// A health signal tripped; the step slept; call again.
    Hold,
    /// The run is finished, paused or stopped; the session let go of it.
    Done,
}

/// Take a run for this session: it must be active and not executed by a worker.
pub(crate) fn fg_begin(run_id: i64) -> DripResult<()> {
    let got = Spi::get_one_with_args::<bool>(
        "SELECT pg_catalog.pg_try_advisory_lock($1, $2)",
        &[RUNNER_KEY.into(), run_key(run_id).into()],
    )?
    .unwrap_or(false);
    if !got {
        return Err(DripError::RunBusy(run_id));
    }
    // If anything below fails, or a later step is cancelled, let go of the lock so a
    // background worker can take the run over.
    release_on_abort(run_id);
    Spi::run_with_args(
        "UPDATE drip.runs SET status = 'enqueued' WHERE id = $1 AND status IN ('pending', 'paused', 'running')",
        &[run_id.into()],
    )?;
    let mut runner = claim_locked(run_id, None).ok_or_else(|| DripError::WrongStatus {
        action: "finish",
        run_id,
        status: "finished".into(),
    })?;
    runner.foreground = true;
    runner.stmts = StatementCache::default();
    FOREGROUND.with(|f| *f.borrow_mut() = Some(runner));
    Ok(())
}

fn fg_release(run_id: i64) {
    FOREGROUND.with(|f| f.borrow_mut().take());
    wake::release_session_advisory(RUNNER_KEY, run_key(run_id));
}

fn with_runner<R>(run_id: i64, f: impl FnOnce(&mut Runner) -> R) -> DripResult<R> {
    FOREGROUND.with(|cell| {
        let mut guard = cell.borrow_mut();
        match guard.as_mut() {
            Some(r) if r.run_id == run_id => Ok(f(r)),
            _ => Err(DripError::BadOption(format!(
                "run {run_id} is not being finished in this session"
            ))),
        }
    })
}

/// Each step transaction lets go of the run if it is cancelled or fails.
fn release_on_abort(run_id: i64) {
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Abort, move || {
        // Inside an abort: keep clear of SPI (freeing the runner's kept plans); leak them.
        if let Some(r) = FOREGROUND.with(|f| f.borrow_mut().take()) {
            std::mem::forget(r);
        }
        wake::release_session_advisory(RUNNER_KEY, run_key(run_id));
    });
}

/// Mark the next batch (or finish, or hold).
pub(crate) fn fg_step(run_id: i64) -> DripResult<FgStep> {
    release_on_abort(run_id);
    with_runner(run_id, |r| {
        let nap = std::mem::take(&mut r.nap);
        r.sleep(nap);
    })?;
    let step = with_runner(run_id, |r| r.mark_next())?;
    Ok(match step {
        Step::Batch(b, settings) => {
            with_runner(run_id, |r| r.pending = Some((b, settings)))?;
            FgStep::Batch
        }
        Step::Hold(wait) => {
            with_runner(run_id, |r| r.sleep(wait))?;
            FgStep::Hold
        }
        Step::Exit => {
            fg_release(run_id);
            FgStep::Done
        }
    })
}

/// Do the marked batch. An ERROR in it rolls back only the batch (a subtransaction); it is
/// recorded and retried like in the background, or fails the run.
pub(crate) fn fg_work(run_id: i64) -> DripResult<FgStep> {
    release_on_abort(run_id);
    let finished = with_runner(run_id, |r| {
        let Some((batch, settings)) = r.pending.take() else {
            return false;
        };
        match subxact::try_in_subtransaction(|| r.work(&batch, &settings)) {
            Ok(failed_rows) => {
                r.cursor = Some(batch.high.clone());
                r.retry = None;
                if failed_rows > 0 && !r.skip_row_errors {
                    let message = format!(
                        "{failed_rows} row(s) of batch {} failed; see drip.row_errors",
                        batch.no
                    );
                    fail_run(r.run_id, &message);
                    return true;
                }
                r.nap = settings.sleep;
                false
            }
            Err(e) => {
                if r.record_failure(&batch, &e) {
                    return true;
                }
                r.retry = Some(Batch {
                    attempts: batch.attempts + 1,
                    keys: 0,
                    ..batch.clone()
                });
                r.nap = backoff(batch.attempts);
                false
            }
        }
    })?;
    if finished {
        fg_release(run_id);
        return Ok(FgStep::Done);
    }
    Ok(FgStep::Batch)
}
