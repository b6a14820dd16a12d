//! Before each batch: lock the run row, read its settings and the health signals, and decide
//! whether to hold.

use std::time::Duration;

use pgrx::prelude::*;

use crate::adaptive::Adaptive;
use crate::catalog::{self, RunRow};
use crate::error::OrRaise;
use crate::status::RunStatus;
use crate::throttle;
use crate::worker::runner::{OrRaiseSpi, Runner, Settings};

impl Runner {
    /// Lock the run row and read its settings, counters and the health signals, in one
    /// statement. None once the run is no longer running (paused, stopped, gone). A run paused
    /// and resumed while this runner was still alive is `enqueued`: take it back.
    pub(super) fn lock_state(&mut self) -> Option<RunState> {
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
    pub(super) fn health(&mut self, state: &RunState) -> Option<throttle::Hold> {
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
    pub(super) fn sync_adaptive(&mut self, settings: &Settings) {
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
}

/// What mark_next reads under the run row's lock.
pub(super) struct RunState {
    pub(super) run: RunRow,
    pub(super) settings: Settings,
    pub(super) max_replica_lag: Duration,
    pub(super) throttle_query: Option<String>,
    pub(super) in_recovery: bool,
    pub(super) replica_lag: Option<Duration>,
    pub(super) owner_exists: bool,
}

/// Record and announce that a run holds.
pub(super) fn announce_throttled(run_id: i64, reason: &str) {
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
