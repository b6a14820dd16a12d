//! `CALL drip.finish(run_id)`: run the rest of a run in the caller's session, in the
//! foreground (online_migrations' finishing, data-migration's foreground run). One transaction
//! per step, the same bookkeeping and events as the background worker, which does not touch
//! the run meanwhile (the session holds the run's lock). If the call is cancelled or fails, the
//! lock is let go and a background worker takes the run over from its cursor.

use pgrx::prelude::*;

use crate::catalog;
use crate::error::{DripError, DripResult, OrRaise};
use crate::pg::identity;
use crate::security;
use crate::worker::runner::{self, FgStep};

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
        security::check_control(caller, catalog::run_owner(run_id)?, &run.backfill)?;
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
    security::as_catalog(|| runner::fg_begin(run_id))
}

/// Mark the next batch: 'batch', 'hold' or 'done' (internal; called by drip.finish).
#[pg_extern(volatile, parallel_unsafe)]
fn finish_step(run_id: i64) -> String {
    step_name(security::as_catalog(|| runner::fg_step(run_id)).or_raise())
}

/// Do the marked batch: 'batch' to go on, 'done' (internal; called by drip.finish).
#[pg_extern(volatile, parallel_unsafe)]
fn finish_work(run_id: i64) -> String {
    step_name(security::as_catalog(|| runner::fg_work(run_id)).or_raise())
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
