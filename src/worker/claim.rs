//! Claim and recovery: take a run (or slice) for this process, rebuild its runner, and record
//! what a dead worker left behind; end a run that cannot go on.

use std::time::{Duration, Instant};

use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;
use pgrx::JsonB;

use crate::catalog::{self, RunRow, RUN_COLUMNS};
use crate::compile::Definition;
use crate::distribution::shard_walk::{HashRange, ShardSub};
use crate::distribution::{self, Placement};
use crate::error::{DripError, OrRaise};
use crate::params;
use crate::pg::{extension, wake};
use crate::status::{BatchStatus, RunStatus};
use crate::worker::locks::{run_key, runner_lock, SLICE_ALIVE_SQL};
use crate::worker::runner::{Batch, OrRaiseSpi, Runner, CLAIM_WAIT};
use crate::worker::statements::StatementCache;

/// This runner no longer executes the run.
pub(super) fn release_run(run_id: i64) {
    Spi::run_with_args(
        "UPDATE drip.runs SET worker_pid = NULL WHERE id = $1 AND worker_pid = pg_backend_pid()",
        &[run_id.into()],
    )
    .or_raise_spi();
}

/// Mark a run failed (outside the batch loop: it could not even start or go on).
pub(super) fn fail_run(run_id: i64, message: &str) {
    if let Some(run) = catalog::read_run(run_id).or_raise() {
        if matches!(run.status, RunStatus::Running | RunStatus::Enqueued) {
            catalog::set_run_status(&run, RunStatus::Failed, Some(message)).or_raise();
        }
    }
}

/// Last resort when a batch failure could not be recorded: mark the batch and the run failed
/// with texts of our own (the error's text is what could not be stored).
pub(super) fn fail_unrecordable(run_id: i64, batch_no: i64, sqlstate: &str, record_sqlstate: &str) {
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
pub(super) fn claim(run_id: i64, slice: Option<i32>) -> Option<Runner> {
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
pub(super) fn claim_locked(run_id: i64, slice: Option<i32>) -> Option<Runner> {
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
    let mut shard = None;
    if was != "running" {
        catalog::notify_run(&run, None).or_raise();
    }
    if let Some(n) = slice {
        // The slice's own range and cursor.
        let SliceRow {
            low,
            high,
            cursor: slice_cursor,
            done,
            hashes,
        } = read_slice(run_id, n)?;
        if done {
            return None;
        }
        cursor = slice_cursor.or(low);
        to_key = high;
        shard = hashes.map(|(min, max)| ShardSub::new(HashRange { min, max }));
    }

    let def = Definition::from_json(&def).or_raise();
    let compiled = match shard {
        Some(_) => def.compile_shard(to_key.is_some()),
        None => def.compile_capped(to_key.is_some()),
    }
    .or_raise();
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
    let relation = pg_sys::Oid::from(def.relation_oid);
    let placement = Placement::of(relation).or_raise();
    placement.prepare_runner().or_raise();
    if retry.is_some() {
        // Its runner died mid-batch: on Citus the batch may be left prepared on a worker,
        // holding its rows until resolved.
        placement.release_prepared();
    }
    if let (Some(sub), Some(n)) = (&shard, slice) {
        // Where the shard is now (moves, splits): the scheduler's per-node cap reads it.
        let node = distribution::citus::node_of_hash(relation, sub.range.min).or_raise();
        Spi::run_with_args(
            "UPDATE drip.slices SET node_group = $3 WHERE run_id = $1 AND slice = $2",
            &[run_id.into(), n.into(), node.into()],
        )
        .or_raise_spi();
    }
    Some(Runner {
        run_id,
        placement,
        shard,
        transient_failures: 0,
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

pub(super) fn interrupted_batch(run: &RunRow, slice: Option<i32>) -> Option<Batch> {
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

/// A shard sub-run whose shard is done takes another shard of the same run on the same node
/// that no runner holds, instead of exiting: a new runner would cost a worker start, a claim
/// and the planning of its statements (about 0.1 s, as much as thirty batches). Returns false
/// when there is none (the runner then exits). The per-node cap holds: the runner keeps writing
/// to the node it was admitted for.
pub(super) fn take_next_slice(runner: &mut Runner) -> bool {
    let Some(current) = runner.slice else {
        return false;
    };
    if runner.shard.is_none() {
        return false;
    }
    let candidates = Spi::connect(|c| {
        let t = c.select(
            &format!(
                "SELECT s.slice FROM drip.slices s \
                 WHERE s.run_id = $1 AND NOT s.done AND s.hash_min IS NOT NULL AND s.slice <> $2 \
                   AND s.node_group IS NOT DISTINCT FROM \
                       (SELECT o.node_group FROM drip.slices o WHERE o.run_id = $1 AND o.slice = $2) \
                   AND NOT {SLICE_ALIVE_SQL} ORDER BY s.slice"
            ),
            None,
            &[runner.run_id.into(), current.into()],
        )?;
        t.map(|r| r.get::<i32>(1).map(|v| v.unwrap_or_default()))
            .collect::<Result<Vec<i32>, _>>()
    })
    .or_raise_spi();
    for next in candidates {
        let got = Spi::get_one_with_args::<bool>(
            "SELECT pg_catalog.pg_try_advisory_lock($1, $2)",
            &[
                runner_lock(Some(next)).into(),
                run_key(runner.run_id).into(),
            ],
        )
        .or_raise_spi()
        .unwrap_or(false);
        if !got {
            continue;
        }
        let row = read_slice(runner.run_id, next);
        let Some(SliceRow {
            low,
            high,
            cursor,
            done: false,
            hashes: Some((min, max)),
        }) = row
        else {
            // Finished meanwhile (or not a shard): let it go and look at the next one.
            wake::release_session_advisory(runner_lock(Some(next)), run_key(runner.run_id));
            continue;
        };
        wake::release_session_advisory(runner_lock(Some(current)), run_key(runner.run_id));
        runner.slice = Some(next);
        runner.cursor = cursor.or(low);
        runner.to_key = high;
        runner.shard = Some(ShardSub::new(HashRange { min, max }));
        runner.retry = None;
        Spi::run_with_args(
            "SELECT pg_catalog.set_config('application_name', $1, false)",
            &[format!("data_drip runner: run {} slice {next}", runner.run_id).into()],
        )
        .or_raise_spi();
        // A batch its last runner left running is an interrupted attempt, as at a claim.
        if let Some(run) = catalog::read_run(runner.run_id).or_raise() {
            let interrupted = interrupted_batch(&run, Some(next));
            if interrupted
                .as_ref()
                .is_some_and(|b| b.attempts > runner.max_attempts)
            {
                // Its attempts are used up: leave it to a claim, which fails the run.
                runner.retry = None;
                return false;
            }
            runner.retry = interrupted;
        }
        return true;
    }
    false
}

/// A slice's row: its range, cursor, whether it is done, and a shard sub-run's hash range.
struct SliceRow {
    low: Option<Vec<String>>,
    high: Option<Vec<String>>,
    cursor: Option<Vec<String>>,
    done: bool,
    hashes: Option<(i32, i32)>,
}

fn read_slice(run_id: i64, slice: i32) -> Option<SliceRow> {
    Spi::connect(|c| {
        let t = c.select(
            "SELECT low_key, high_key, cursor, done, hash_min, hash_max \
             FROM drip.slices WHERE run_id = $1 AND slice = $2",
            None,
            &[run_id.into(), slice.into()],
        )?;
        match t.into_iter().next() {
            Some(r) => Ok::<_, pgrx::spi::SpiError>(Some(SliceRow {
                low: r.get::<Vec<String>>(1)?,
                high: r.get::<Vec<String>>(2)?,
                cursor: r.get::<Vec<String>>(3)?,
                done: r.get::<bool>(4)?.unwrap_or(false),
                hashes: r.get::<i32>(5)?.zip(r.get::<i32>(6)?),
            })),
            None => Ok(None),
        }
    })
    .or_raise_spi()
}
