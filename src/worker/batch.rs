//! One batch: mark it (its key range, the batch row, `batch_running`), then do it (the action,
//! the batch row, the cursor and `batch_completed`, in one commit), or record its failure.

use std::time::Instant;

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;

use crate::adaptive::Adaptive;
use crate::catalog::{self};
use crate::error::{DripError, OrRaise};
use crate::events;
use crate::pg::identity::{self, Restriction};
use crate::pg::{extension, subxact, timeout, transaction, types};
use crate::status::{BatchStatus, RunStatus};
use crate::throttle;
use crate::worker::claim::release_run;
use crate::worker::health::announce_throttled;
use crate::worker::runner::{Batch, OrRaiseSpi, Runner, Settings, Step};

/// The runner state that marking a batch changes (see `Runner::marking_state`).
pub(super) struct MarkingState {
    cursor: Option<Vec<String>>,
    retry: Option<Batch>,
    throttled: Option<&'static str>,
    hold_times: u32,
    adaptive: Option<Adaptive>,
}
use crate::worker::statements::StatementCache;

impl Runner {
    /// Step 1 of a batch: check the run and its health, decide what to do next and mark the
    /// batch running, in a transaction of its own (after a sleep, a hold or a failure) or at the
    /// end of the previous batch's work (`work_then_mark`). Either way the marker commits
    /// synchronously before the work starts: once batch_running was announced, the row must
    /// survive a crash so the catalog can say the attempt was interrupted.
    pub(super) fn mark_next(&mut self) -> Step {
        if !extension::still_current(&self.instance) {
            log!(
                "data_drip run {}: the extension was dropped; exiting",
                self.run_id
            );
            return Step::Exit;
        }
        self.mark_next_on_current()
    }

    /// `mark_next` in a transaction that already found the catalog current (and holds the
    /// lock that keeps it so).
    fn mark_next_on_current(&mut self) -> Step {
        if self.shard.is_some() {
            self.sync_sub_run_counters();
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
                    if self.shard.is_some() {
                        // A shard sub-run goes on with another shard of its node.
                        return Step::Next;
                    }
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
        // Batch numbers are per run (slices share them), taken in the statement that inserts
        // the batch row and sends batch_running: one past the run's highest, a backward index
        // probe. Safe with slices: every runner inserts only while it holds the run row's lock
        // (lock_state, above), and this statement's snapshot is taken after that lock was
        // granted, so it sees every batch another slice committed. (drip.runs.next_batch_no,
        // the counter 0.1.0 kept in the run row, is no longer used: updating the run row a
        // second time per batch was a fifth of a batch's bookkeeping.)
        let sql = "WITH n AS (SELECT coalesce(max(batch_no), 0) + 1 AS no FROM drip.batches WHERE run_id = $1), \
                        i AS (INSERT INTO drip.batches (run_id, batch_no, low_key, high_key, status, batch_size, slice) \
                              SELECT $1, n.no, $2, $3, 'running', $4, $6 FROM n) \
                   SELECT n.no, drip.emit(pg_catalog.jsonb_set($5::jsonb, '{batch}', pg_catalog.to_jsonb(n.no))::text) \
                   FROM n";
        let payload = self.batch_payload(BatchStatus::Running, 0, keys);
        let no = self
            .stmts
            .run(
                sql,
                &[
                    self.run_id.into(),
                    self.cursor.clone().into(),
                    high.clone().into(),
                    settings.batch_size.into(),
                    payload.into(),
                    self.slice.into(),
                ],
                |t| t.first().get_one::<i64>(),
            )
            .or_raise_spi()
            .ok_or_else(|| DripError::Internal(format!("run {} has no row", self.run_id)))
            .or_raise();
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

    /// A run of shard sub-runs counts in its slice rows, each committed with its batch: the run
    /// row's counters are their sums, brought up to date here (under the run row's lock, before
    /// the run's state is read), so they are exact at every mark and when the run completes,
    /// whatever crashed in between.
    fn sync_sub_run_counters(&mut self) {
        self.stmts
            .exec(
                "UPDATE drip.runs r SET rows_done = s.rows_done, rows_failed = s.rows_failed, \
                        batches_done = s.batches_done \
                 FROM (SELECT coalesce(sum(rows_done), 0)::bigint AS rows_done, \
                              coalesce(sum(rows_failed), 0)::bigint AS rows_failed, \
                              coalesce(sum(batches_done), 0)::bigint AS batches_done \
                       FROM drip.slices WHERE run_id = $1) s \
                 WHERE r.id = $1 AND (r.rows_done, r.rows_failed, r.batches_done) \
                       IS DISTINCT FROM (s.rows_done, s.rows_failed, s.batches_done)",
                &[self.run_id.into()],
            )
            .or_raise_spi();
    }

    pub(super) fn batch_payload(&self, status: BatchStatus, no: i64, rows: i64) -> String {
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

    /// The next batch's upper bound (inclusive) and how many keys it holds; None when done.
    /// Runs as the owner: RLS and privileges decide which keys the walk sees.
    pub(super) fn boundary(&mut self, batch_size: i32) -> Option<(Vec<String>, i64)> {
        if self.shard.is_some() {
            return self.shard_boundary(batch_size);
        }
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
        let walk_mode = self.placement.walk_plan_mode();
        self.as_owner_with(walk_mode, |stmts| {
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

    /// The next window of a shard sub-run (see `distribution::shard_walk`): computed here, no
    /// query, except after a batch that changed nothing (or before the first), when the next
    /// key of the table is looked up so a gap is jumped, not scanned.
    fn shard_boundary(&mut self, batch_size: i32) -> Option<(Vec<String>, i64)> {
        let int = |k: &Vec<String>| -> i64 {
            k.first()
                .and_then(|v| v.parse::<i64>().ok())
                .ok_or_else(|| {
                    DripError::Internal(format!("shard sub-run key {k:?} is not an integer"))
                })
                .or_raise()
        };
        let last = self.to_key.as_ref().map(int).unwrap_or(i64::MAX);
        let mut after = self.cursor.as_ref().map(int);
        let sub = self.shard.as_ref()?;
        if sub.skip {
            let next = self.next_key_after(after)?;
            if next > last {
                return None;
            }
            if next > i64::MIN {
                after = Some(next - 1);
                self.cursor = Some(vec![(next - 1).to_string()]);
            }
        }
        let sub = self.shard.as_mut()?;
        sub.skip = false;
        let w = sub.next(after, last, batch_size as i64)?;
        Some((vec![w.high.to_string()], w.candidates.len() as i64))
    }

    /// The smallest key of the table above `after` (as the owner); None when there is none.
    fn next_key_after(&mut self, after: Option<i64>) -> Option<i64> {
        let sql = self.compiled.next_key_sql(after.is_some());
        let args: Vec<DatumWithOid> = after.into_iter().map(DatumWithOid::from).collect();
        let walk_mode = self.placement.walk_plan_mode();
        self.as_owner_with(walk_mode, |stmts| {
            stmts.run(&sql, &args, |t| t.first().get_one::<i64>())
        })
        .or_raise_spi()
    }

    pub(super) fn key_args(&self, values: &[String]) -> Vec<DatumWithOid<'static>> {
        self.compiled.key_args(values).or_raise()
    }

    /// Run user-facing SQL as the backfill's owner, in a security-restricted operation with
    /// the owner's search_path (the owner's existence is checked by mark_next).
    pub(super) fn as_owner<R>(&mut self, f: impl FnOnce(&mut StatementCache) -> R) -> R {
        let mode = self.placement.work_plan_mode();
        self.as_owner_with(mode, f)
    }

    /// `as_owner` with a plan_cache_mode: our own key-walk queries have the same best plan for
    /// any bounds, so they skip re-planning (force_generic_plan); the user's batch statement
    /// keeps Postgres's choice (auto).
    pub(super) fn as_owner_with<R>(
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
    pub(super) fn work(&mut self, b: &Batch, settings: &Settings) -> i64 {
        if !extension::still_current(&self.instance) {
            self.gone = true;
            DripError::Internal("the data_drip extension was dropped".into()).raise();
        }
        self.placement.before_work().or_raise();
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
        // A shard sub-run lists the batch's keys, rebuilt from its bounds.
        let listed = self.shard.as_ref().map(|sub| {
            let int = |k: &[String]| k.first().and_then(|v| v.parse::<i64>().ok());
            let high = int(&b.high).unwrap_or(i64::MIN);
            sub.candidates(b.low.as_deref().and_then(int), high)
        });
        let listed_count = listed.as_ref().map_or(0, Vec::len);
        if let Some(keys) = listed {
            args.push(keys.into());
        }
        let sql = if b.low.is_some() {
            self.compiled.sql.work_next.clone()
        } else {
            self.compiled.sql.work_first.clone()
        };
        // A batch must lose a lock fight with live traffic, not win it. Only the user's SQL is
        // limited (lock and statement timeouts); our bookkeeping below waits for locks as long
        // as it must (pause and stop hold the run row only briefly).
        let lock_timeout = format!("{}ms", settings.lock_timeout_ms);
        let (rows, failed) =
            crate::pg::settings::with(&[(c"lock_timeout", lock_timeout.as_str())], || {
                // Inside this nest level: undone for the bookkeeping below.
                self.placement
                    .begin_work(
                        settings.lock_timeout_ms,
                        settings.statement_timeout.as_millis() as i64,
                    )
                    .or_raise();
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
                if let Some(sub) = self.shard.as_mut() {
                    sub.observe(listed_count, counts.0 + counts.1);
                }
                counts
            });

        // Undo data (runs with undo): the before-images of what the action changed.
        crate::undo::capture(&crate::undo::BatchRange {
            run_id: self.run_id,
            batch_no: b.no,
            low: b.low.as_deref(),
            high: &b.high,
            compiled: &self.compiled,
            owner: self.owner,
            search_path: &self.search_path,
        });

        // The batch row, the cursor and the counters, with the event: one statement, in the
        // batch's transaction.
        let next_size = self
            .adaptive
            .as_ref()
            .map(|a| a.next_size(settings.batch_size as i64) as i32);
        let payload = self.batch_payload(BatchStatus::Completed, b.no, rows);
        // A slice advances its own cursor; a whole run, the run's. A shard sub-run leaves the
        // run row alone: it counts in its slice row (no two sub-runs wait on each other's
        // commits for the run row), and the run's counters are summed from its slices when the
        // next batch is marked (`sync_sub_run_counters`).
        let sql = if self.shard.is_some() {
            "WITH b AS (UPDATE drip.batches SET status = 'completed', rows = $3, \
                          finished_at = clock_timestamp() WHERE run_id = $1 AND batch_no = $2), \
                  s AS (UPDATE drip.slices SET cursor = $4, rows_done = rows_done + $3, \
                          rows_failed = rows_failed + $7, batches_done = batches_done + 1 \
                        WHERE run_id = $1 AND slice = $8) \
             SELECT drip.emit($6)"
        } else if self.slice.is_some() {
            "WITH b AS (UPDATE drip.batches SET status = 'completed', rows = $3, \
                          finished_at = clock_timestamp() WHERE run_id = $1 AND batch_no = $2), \
                  s AS (UPDATE drip.slices SET cursor = $4 WHERE run_id = $1 AND slice = $8), \
                  r AS (UPDATE drip.runs SET rows_done = rows_done + $3, rows_failed = rows_failed + $7, \
                          batches_done = batches_done + 1, batch_size = coalesce($5, batch_size) \
                        WHERE id = $1) \
             SELECT drip.emit($6)"
        } else {
            "WITH b AS (UPDATE drip.batches SET status = 'completed', rows = $3, \
                          finished_at = clock_timestamp() WHERE run_id = $1 AND batch_no = $2), \
                  r AS (UPDATE drip.runs SET cursor = $4, \
                          rows_done = rows_done + $3, rows_failed = rows_failed + $7, \
                          batches_done = batches_done + 1, batch_size = coalesce($5, batch_size) \
                        WHERE id = $1) \
             SELECT drip.emit($6)"
        };
        self.stmts
            .exec(
                sql,
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

    /// The work of a batch and, when no sleep is owed before the next one, the next step
    /// decided and its batch marked in the same transaction, so one commit per batch makes
    /// both durable. The marking runs in a subtransaction: if it raises (the boundary query
    /// fails, say), only the marking is undone, the batch still commits, and the next step is
    /// decided again in its own transaction (where the error is handled as usual). Used by the
    /// background runner's loop; `CALL drip.finish` drives its own steps (`foreground`).
    pub(super) fn work_then_mark(&mut self, b: &Batch, settings: &Settings) -> (i64, Option<Step>) {
        let failed = self.work(b, settings);
        let run_fails = failed > 0 && !self.skip_row_errors;
        // A shard sub-run marks in a transaction of its own: marking locks the run row, which
        // its sibling sub-runs mark under too, and this transaction ends in a two-phase commit.
        if !settings.sleep.is_zero() || run_fails || self.shard.is_some() {
            return (failed, None);
        }
        let before = self.marking_state();
        self.cursor = Some(b.high.clone());
        self.retry = None;
        match subxact::try_in_subtransaction(|| self.mark_next_on_current()) {
            Ok(step) => (failed, Some(step)),
            Err(_) => {
                self.restore_marking_state(before);
                (failed, None)
            }
        }
    }

    /// What marking changes in the runner, to put back when the transaction that marked rolls
    /// back.
    pub(super) fn marking_state(&self) -> MarkingState {
        MarkingState {
            cursor: self.cursor.clone(),
            retry: self.retry.clone(),
            throttled: self.throttled,
            hold_times: self.hold_times,
            adaptive: self.adaptive.clone(),
        }
    }

    pub(super) fn restore_marking_state(&mut self, s: MarkingState) {
        self.cursor = s.cursor;
        self.retry = s.retry;
        self.throttled = s.throttled;
        self.hold_times = s.hold_times;
        self.adaptive = s.adaptive;
    }

    /// Element mode: the action once per row of the batch in scope, each in its own
    /// subtransaction. A failing row is rolled back alone and recorded in drip.row_errors; the
    /// rest of the batch goes on. Returns (rows processed, rows failed).
    pub(super) fn rows_one_by_one(&mut self, b: &Batch, args: &[DatumWithOid]) -> (i64, i64) {
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

    /// Record an attempt that failed for a reason outside the batch (a node that could not be
    /// reached): the batch row and `batch_failed` say so; the run goes on.
    pub(super) fn record_failure_of_attempt(&self, b: &Batch, e: &transaction::TxError) {
        self.mark_failed(b, e);
    }

    /// The batch row `failed` with the error, and `batch_failed`; the run row as it is now
    /// (None once it is gone).
    fn mark_failed(&self, b: &Batch, e: &transaction::TxError) -> Option<catalog::RunRow> {
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
        let run = catalog::read_run(self.run_id).or_raise()?;
        let message = format!("{} (SQLSTATE {})", e.message, e.sqlstate);
        catalog::notify_batch(&run, BatchStatus::Failed, b.no, 0, Some(&message)).or_raise();
        Some(run)
    }

    /// No next batch could be found (its key range could not be read): a batch row, `failed`
    /// with the error and the attempt, covering no keys (`high_key` = `low_key`, the cursor),
    /// and `batch_failed`. The next attempt that finds its range marks a new batch.
    pub(super) fn record_boundary_failure(&self, e: &transaction::TxError, attempt: i32) {
        let Some(run) = catalog::read_run(self.run_id).or_raise() else {
            return;
        };
        if !matches!(run.status, RunStatus::Running) {
            return;
        }
        let message = format!("finding the next batch failed: {}", e.message);
        // Numbered like any batch: under the run row's lock, one past the run's highest.
        let no = Spi::connect_mut(|c| {
            c.update(
                "SELECT 1 FROM drip.runs WHERE id = $1 FOR NO KEY UPDATE",
                None,
                &[self.run_id.into()],
            )?;
            let t = c.update(
                "WITH n AS (SELECT coalesce(max(batch_no), 0) + 1 AS no FROM drip.batches WHERE run_id = $1) \
                 INSERT INTO drip.batches (run_id, batch_no, low_key, high_key, status, attempts, \
                                           finished_at, error, sqlstate, slice, rows) \
                 SELECT $1, n.no, $2, coalesce($2, '{}'::text[]), 'failed', $3, clock_timestamp(), $4, $5, $6, 0 \
                 FROM n RETURNING batch_no",
                None,
                &[
                    self.run_id.into(),
                    self.cursor.clone().into(),
                    attempt.into(),
                    message.as_str().into(),
                    e.sqlstate.as_str().into(),
                    self.slice.into(),
                ],
            )?;
            t.first().get_one::<i64>()
        })
        .or_raise_spi()
        .unwrap_or(0);
        let text = format!("{message} (SQLSTATE {})", e.sqlstate);
        catalog::notify_batch(&run, BatchStatus::Failed, no, 0, Some(&text)).or_raise();
    }

    /// Record a failed attempt. Returns true when the run failed for good.
    pub(super) fn record_failure(&self, b: &Batch, e: &transaction::TxError) -> bool {
        let message = format!("{} (SQLSTATE {})", e.message, e.sqlstate);
        let Some(run) = self.mark_failed(b, e) else {
            return true;
        };
        if b.attempts >= self.max_attempts
            && matches!(run.status, RunStatus::Running | RunStatus::Paused)
        {
            let error = format!("batch {} failed {} times: {message}", b.no, b.attempts);
            catalog::set_run_status(&run, RunStatus::Failed, Some(&error)).or_raise();
            return true;
        }
        false
    }
}
