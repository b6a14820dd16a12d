//! `CALL drip.finish(run_id)`: run the rest of a run in the caller's session, in the
//! foreground (online_migrations' finishing, data-migration's foreground run). One transaction
//! per step, the same bookkeeping and events as the background worker, which does not touch
//! the run meanwhile (the session holds the run's lock). If the call is cancelled or fails, the
//! lock is let go and a background worker takes the run over from its cursor.

use pgrx::prelude::*;

use crate::catalog;
use crate::error::{DripError, DripResult, OrRaise};
use crate::pg::identity;
use crate::pg::{subxact, wake};
use crate::security;
use crate::worker::claim::{claim_locked, fail_run};
use crate::worker::locks::{run_key, RUNNER_KEY};
use crate::worker::runner::{backoff, Batch, Runner, Step};
use crate::worker::statements::StatementCache;

/// Take the run for this session (internal; called by drip.finish).
#[pg_extern(volatile, parallel_unsafe)]
fn finish_begin(run_id: Option<i64>) {
    crate::error::required(run_id, "run_id")
        .and_then(begin)
        .or_raise()
}

fn begin(run_id: i64) -> DripResult<()> {
    let caller = identity::current_user();
    security::as_catalog(|| {
        let run = catalog::lock_run(run_id)?;
        security::check_run_control(caller, run_id, catalog::run_owner(run_id)?, &run.backfill)?;
        if !run.status.is_active() {
            return Err(DripError::WrongStatus {
                action: "finish",
                run_id,
                status: run.status.as_str().to_string(),
            });
        }
        let parallel = Spi::get_one_with_args::<i32>(
            "SELECT parallel FROM drip.runs WHERE id = $1",
            &[run_id.into()],
        )?
        .unwrap_or(1);
        // Like the workers, finish honours `after`: the awaited run must have completed.
        let awaited = Spi::get_two_with_args::<i64, String>(
            "SELECT a.id, a.status FROM drip.runs r JOIN drip.runs a ON a.id = r.after_run \
             WHERE r.id = $1 AND r.status = 'pending'",
            &[run_id.into()],
        );
        if let Ok((Some(after), Some(status))) = awaited {
            if status != "completed" {
                return Err(DripError::WaitsForRun {
                    run_id,
                    after,
                    status,
                });
            }
        }
        if parallel > 1 {
            return Err(DripError::BadOption(format!(
                "run {run_id} is a parallel run ({parallel} slices); drip.finish runs only single-worker runs"
            )));
        }
        Ok(())
    })?;
    security::as_catalog(|| fg_begin(run_id))
}

/// Mark the next batch: 'batch', 'hold' or 'done' (internal; called by drip.finish).
#[pg_extern(volatile, parallel_unsafe)]
fn finish_step(run_id: i64) -> String {
    step_name(security::as_catalog(|| fg_step(run_id)).or_raise())
}

/// Do the marked batch: 'batch' to go on, 'done' (internal; called by drip.finish).
#[pg_extern(volatile, parallel_unsafe)]
fn finish_work(run_id: i64) -> String {
    step_name(security::as_catalog(|| fg_work(run_id)).or_raise())
}

fn step_name(s: FgStep) -> String {
    match s {
        FgStep::Batch => "batch",
        FgStep::Hold => "hold",
        FgStep::Done => "done",
    }
    .into()
}

extension_sql!(
    r#"
CREATE PROCEDURE drip.finish(run_id bigint)
LANGUAGE plpgsql AS $proc$
DECLARE
    step text;
BEGIN
    PERFORM drip.finish_begin(run_id);
    COMMIT;
    LOOP
        step := drip.finish_step(run_id);
        COMMIT;  -- the batch row is committed as running before its work starts
        EXIT WHEN step = 'done';
        CONTINUE WHEN step = 'hold';
        step := drip.finish_work(run_id);
        COMMIT;  -- the work, the batch row and the cursor, together
        EXIT WHEN step = 'done';
    END LOOP;
END
$proc$;
COMMENT ON PROCEDURE drip.finish(bigint)
    IS 'Run the rest of a run in this session, one transaction per batch step; the background worker does not touch it meanwhile.';
"#,
    name = "finish_procedure",
    requires = [finish_begin, finish_step, finish_work]
);

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
        // Next: only shard sub-runs, which are parallel runs drip.finish refuses.
        Step::Exit | Step::Next => {
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
