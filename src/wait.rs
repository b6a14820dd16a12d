//! Waiting and gating: `drip.wait(run_id, timeout)` blocks until a run finishes, sleeping on
//! its latch until the run's worker (or whoever stops it) wakes it; `drip.assert_completed(name)`
//! is the gate a schema migration calls before dropping an old column.
//!
//! A waiter announces itself with a transaction-level shared advisory lock on the run (visible
//! in pg_locks at once, gone when its transaction ends, even by a cancel). Whatever moves a run
//! to completed, failed or stopped sets those waiters' latches once its transaction commits.

use std::time::{Duration, Instant};

use pgrx::datum::Interval;
use pgrx::prelude::*;
use pgrx::{register_xact_callback, PgXactCallbackEvent};

use crate::catalog;
use crate::error::{required, DripError, DripResult, OrRaise};
use crate::pg::{client, identity, wake};
use crate::security;
use crate::status::RunStatus;
use crate::worker::launch;
use crate::worker::locks::run_key;

/// First key of a waiter's advisory lock.
pub const WAIT_KEY: i32 = 0x4452_4957;

/// Longest single sleep: a missed wake-up costs at most this much.
const MAX_NAP: Duration = Duration::from_secs(1);

/// Block until the run is completed, failed or stopped, and return that status.
#[pg_extern(volatile, parallel_unsafe)]
fn wait(run_id: Option<i64>, timeout: default!(Option<Interval>, "NULL")) -> String {
    required(run_id, "run_id")
        .and_then(|id| wait_impl(id, timeout))
        .or_raise()
}

fn wait_impl(run_id: i64, timeout: Option<Interval>) -> DripResult<String> {
    let caller = identity::current_user();
    let isolation = Spi::get_one::<String>("SELECT current_setting('transaction_isolation')")?
        .unwrap_or_default();
    if isolation != "read committed" {
        return Err(DripError::BadOption(format!(
            "drip.wait needs READ COMMITTED to see the run change, not {isolation}"
        )));
    }
    let limit = match timeout {
        Some(t) => Some(Duration::from_millis(
            Spi::get_one_with_args::<i64>(
                "SELECT greatest(0, (extract(epoch FROM $1) * 1000))::bigint",
                &[t.into()],
            )?
            .unwrap_or(0) as u64,
        )),
        None => None,
    };
    security::as_catalog(|| {
        let run = catalog::read_run(run_id)?.ok_or(DripError::UnknownRun(run_id))?;
        security::check_run_control(caller, run_id, catalog::run_owner(run_id)?, &run.backfill)?;
        // A run this transaction created (or changed) cannot make progress before it commits:
        // waiting here would block for ever.
        let xmin = Spi::get_one_with_args::<i64>(
            "SELECT r.xmin::text::bigint FROM drip.runs r WHERE r.id = $1",
            &[run_id.into()],
        )?
        .unwrap_or(0);
        if client::written_by_this_transaction(xmin as u32) {
            return Err(DripError::WaitInOwnTransaction(run_id));
        }
        Ok(())
    })?;
    // After a restart without shared_preload_libraries nobody may be executing the run yet:
    // start the recovery now rather than at the end of this statement.
    launch::recover_now()?;
    Spi::run_with_args(
        "SELECT pg_catalog.pg_advisory_xact_lock_shared($1, $2)",
        &[WAIT_KEY.into(), run_key(run_id).into()],
    )?;
    let started = Instant::now();
    loop {
        // A writable SPI call takes a new snapshot each time: it sees the latest commit.
        let status = security::as_catalog(|| {
            Ok(Spi::connect_mut(|c| {
                c.update(
                    "SELECT status FROM drip.runs WHERE id = $1",
                    None,
                    &[run_id.into()],
                )?
                .first()
                .get_one::<String>()
            })?)
        })?
        .ok_or(DripError::UnknownRun(run_id))?;
        if RunStatus::parse(&status)?.is_finished() {
            return Ok(status);
        }
        let nap = match limit {
            Some(l) => {
                let left = l.saturating_sub(started.elapsed());
                if left.is_zero() {
                    return Err(DripError::WaitTimedOut { run_id, status });
                }
                left.min(MAX_NAP)
            }
            None => MAX_NAP,
        };
        wake::wait_on_latch(nap);
        client::end_session_if_client_gone();
    }
}

/// Raise unless the backfill's latest run completed.
#[pg_extern(volatile, parallel_unsafe)]
fn assert_completed(name: Option<&str>) {
    required(name, "name")
        .and_then(assert_completed_impl)
        .or_raise()
}

fn assert_completed_impl(name: &str) -> DripResult<()> {
    let caller = identity::current_user();
    security::as_catalog(|| {
        let def = crate::compile::Definition::from_json(&catalog::definition_for_share(name)?)?;
        security::check_control(caller, def.owner(), name)?;
        let latest = Spi::get_two_with_args::<i64, String>(
            "SELECT id, status FROM drip.runs WHERE backfill = $1 ORDER BY id DESC LIMIT 1",
            &[name.into()],
        );
        match latest {
            Ok((Some(_), Some(status))) if status == "completed" => Ok(()),
            Ok((Some(id), Some(status))) => Err(DripError::NotCompleted {
                backfill: name.to_string(),
                detail: format!("its latest run {id} is {status}"),
            }),
            Ok(_) | Err(pgrx::spi::SpiError::InvalidPosition) => Err(DripError::NotCompleted {
                backfill: name.to_string(),
                detail: "it has never run".into(),
            }),
            Err(e) => Err(e.into()),
        }
    })
}

/// Wake the sessions waiting on `run_id` once the current transaction commits.
pub fn wake_waiters_on_commit(run_id: i64) -> DripResult<()> {
    let pids: Vec<i32> = Spi::connect(|c| {
        let t = c.select(
            "SELECT pid FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND granted \
               AND classid = $1::int4::oid AND objid = $2::int4::oid AND objsubid = 2",
            None,
            &[WAIT_KEY.into(), run_key(run_id).into()],
        )?;
        t.map(|r| r.get::<i32>(1).map(|p| p.unwrap_or(0)))
            .collect::<Result<Vec<_>, _>>()
    })?;
    if !pids.is_empty() {
        register_xact_callback(PgXactCallbackEvent::Commit, move || {
            for pid in pids {
                wake::wake_pid(pid);
            }
        });
    }
    Ok(())
}
