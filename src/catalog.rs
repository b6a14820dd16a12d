//! The catalog: reads and writes of `drip.backfills`, `drip.runs` and `drip.batches` through SPI.
//! Every status change goes through here together with its event, in the same transaction.

use pgrx::prelude::*;
use serde_json::Value;

use crate::error::{DripError, DripResult};
use crate::events::{self, RunInfo};
use crate::status::{BatchStatus, RunStatus};

/// The timestamp put in event payloads.
pub fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The parts of a run row that control and events need.
#[derive(Debug, Clone)]
pub struct RunRow {
    pub id: i64,
    pub backfill: String,
    pub status: RunStatus,
    pub rows_done: i64,
    pub batches_done: i64,
    pub worker_pid: Option<i32>,
}

/// The columns `RunRow::from_tuple` reads, in order; use in `SELECT`/`RETURNING` lists.
pub const RUN_COLUMNS: &str = "id, backfill, status, rows_done, batches_done, worker_pid";

impl RunRow {
    /// Read a row selected with `RUN_COLUMNS` first.
    pub fn from_tuple(r: &pgrx::spi::SpiHeapTupleData) -> DripResult<RunRow> {
        Ok(RunRow {
            id: r.get::<i64>(1)?.unwrap_or_default(),
            backfill: r.get::<String>(2)?.unwrap_or_default(),
            status: RunStatus::parse(&r.get::<String>(3)?.unwrap_or_default())?,
            rows_done: r.get::<i64>(4)?.unwrap_or_default(),
            batches_done: r.get::<i64>(5)?.unwrap_or_default(),
            worker_pid: r.get::<i32>(6)?,
        })
    }
}

/// Every row of a result selected with `RUN_COLUMNS` first.
pub fn runs_from(t: pgrx::spi::SpiTupleTable) -> DripResult<Vec<RunRow>> {
    t.map(|r| RunRow::from_tuple(&r)).collect()
}

fn run_from(t: pgrx::spi::SpiTupleTable) -> DripResult<Option<RunRow>> {
    Ok(runs_from(t)?.into_iter().next())
}

/// Lock a run row for a status change. Errors with `UnknownRun` if it does not exist.
pub fn lock_run(id: i64) -> DripResult<RunRow> {
    Spi::connect_mut(|c| {
        let t = c.update(
            &format!("SELECT {RUN_COLUMNS} FROM drip.runs WHERE id = $1 FOR NO KEY UPDATE"),
            None,
            &[id.into()],
        )?;
        run_from(t)
    })?
    .ok_or(DripError::UnknownRun(id))
}

/// Read a run row without locking it.
pub fn read_run(id: i64) -> DripResult<Option<RunRow>> {
    Spi::connect(|c| {
        let t = c.select(
            &format!("SELECT {RUN_COLUMNS} FROM drip.runs WHERE id = $1"),
            None,
            &[id.into()],
        )?;
        run_from(t)
    })
}

/// Move a run to `to` and send its event. Sets finished_at for finished statuses and clears the
/// error when a run becomes active again.
pub fn set_run_status(run: &RunRow, to: RunStatus, error: Option<&str>) -> DripResult<RunRow> {
    let row = Spi::connect_mut(|c| {
        let t = c.update(
            &format!(
                "UPDATE drip.runs SET status = $2, \
                   finished_at = CASE WHEN $3 THEN now() ELSE NULL END, \
                   error = CASE WHEN $3 THEN coalesce($4, error) ELSE NULL END, \
                   worker_pid = CASE WHEN $2 IN ('running') THEN worker_pid ELSE NULL END \
                 WHERE id = $1 RETURNING {RUN_COLUMNS}"
            ),
            None,
            &[
                run.id.into(),
                to.as_str().into(),
                to.is_finished().into(),
                error.into(),
            ],
        )?;
        run_from(t)
    })?
    .ok_or(DripError::UnknownRun(run.id))?;
    notify_run(&row, error)?;
    if to.is_finished() {
        crate::wait::wake_waiters_on_commit(row.id)?;
    }
    Ok(row)
}

/// Send the `run_<status>` event for a run row.
pub fn notify_run(row: &RunRow, error: Option<&str>) -> DripResult<()> {
    let info = RunInfo {
        run_id: row.id,
        backfill: &row.backfill,
        rows_done: row.rows_done,
        batches_done: row.batches_done,
    };
    events::notify(&events::run_event(
        row.status.as_str(),
        &info,
        error,
        &now_text(),
    ))
}

/// Send `run_throttled`: the run holds (its status stays `running`) for `reason`.
pub fn notify_throttled(row: &RunRow, reason: &str) -> DripResult<()> {
    let info = RunInfo {
        run_id: row.id,
        backfill: &row.backfill,
        rows_done: row.rows_done,
        batches_done: row.batches_done,
    };
    events::notify(&events::throttled_event(&info, reason, &now_text()))
}

/// Send a `batch_<status>` event.
pub fn notify_batch(
    run: &RunRow,
    status: BatchStatus,
    batch_no: i64,
    rows: i64,
    error: Option<&str>,
) -> DripResult<()> {
    events::notify(&events::batch_event(
        status.as_str(),
        run.id,
        &run.backfill,
        batch_no,
        rows,
        error,
        &now_text(),
    ))
}

/// Whether any run needs a scheduler (pending, enqueued or running).
pub fn has_unfinished_runs() -> DripResult<bool> {
    Ok(Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM drip.runs WHERE status IN ('pending', 'enqueued', 'running'))",
    )?
    .unwrap_or(false))
}

/// The owner role of a run (a copy of its backfill's owner when it started).
pub fn run_owner(id: i64) -> DripResult<pg_sys::Oid> {
    Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT owner::oid FROM drip.runs WHERE id = $1",
        &[id.into()],
    )?
    .ok_or(DripError::UnknownRun(id))
}

/// The active run of a backfill, if any.
pub fn active_run(backfill: &str) -> DripResult<Option<(i64, String)>> {
    Spi::connect(|c| {
        let t = c.select(
            "SELECT id, status FROM drip.runs WHERE backfill = $1 \
             AND status IN ('pending', 'enqueued', 'running', 'paused') LIMIT 1",
            None,
            &[backfill.into()],
        )?;
        if let Some(r) = t.into_iter().next() {
            return Ok(Some((
                r.get::<i64>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
            )));
        }
        Ok(None)
    })
}

/// A backfill row as the definition copy runs keep: the row as JSON with the relation's and
/// owner's oids.
const DEFINITION_SQL: &str =
    "SELECT to_jsonb(b) || jsonb_build_object('relation_oid', b.relation::oid::bigint, \
                                                   'owner_oid', b.owner::oid::bigint) \
                              FROM drip.backfills b WHERE b.name = $1";

/// The stored definition of a backfill as JSON, without locking it.
pub fn definition_for_share(name: &str) -> DripResult<Value> {
    let v = Spi::get_one_with_args::<pgrx::JsonB>(DEFINITION_SQL, &[name.into()]);
    match v {
        Ok(Some(j)) => Ok(j.0),
        Ok(None) | Err(pgrx::spi::SpiError::InvalidPosition) => {
            Err(DripError::UnknownBackfill(name.to_string()))
        }
        Err(e) => Err(e.into()),
    }
}

/// The stored definition of a backfill as JSON (the copy a run keeps), locking the row so that
/// concurrent starts and redefinitions serialize.
pub fn definition_for_update(name: &str) -> DripResult<Value> {
    let v = Spi::connect_mut(|c| {
        let t = c.update(
            &format!("{DEFINITION_SQL} FOR UPDATE"),
            None,
            &[name.into()],
        )?;
        if let Some(r) = t.into_iter().next() {
            return Ok::<_, DripError>(r.get::<pgrx::JsonB>(1)?.map(|j| j.0));
        }
        Ok(None)
    })?;
    v.ok_or_else(|| DripError::UnknownBackfill(name.to_string()))
}
