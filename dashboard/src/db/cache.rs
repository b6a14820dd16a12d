//! The two run-page views that read all of a run's batches (the timeline and the errors by
//! SQLSTATE), kept for big runs so a page with hundreds of thousands of batches is read once,
//! not on every live refresh.
//!
//! Only consulted after the viewer's own query found the run (row-level security said yes),
//! and the cached figures are about that run only.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::db::queries::{ErrorGroup, TimelineMark};

/// Runs with more batches than this are cached; smaller ones are read fresh every time.
pub const BIG_RUN: i64 = 5_000;
/// An active big run's figures are reused for at most this long.
const MAX_AGE: Duration = Duration::from_secs(10);
const MAX_ENTRIES: usize = 256;

/// What makes cached figures stale: a new batch, a status change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    pub status: String,
    pub batches_done: i64,
    pub next_batch_no: i64,
}

impl Fingerprint {
    fn finished(&self) -> bool {
        matches!(self.status.as_str(), "completed" | "failed" | "stopped")
    }
}

#[derive(Clone)]
pub struct RunStats {
    pub marks: Vec<TimelineMark>,
    pub errors: Vec<ErrorGroup>,
}

struct Entry {
    fp: Fingerprint,
    at: Instant,
    stats: RunStats,
}

#[derive(Default)]
pub struct RunStatsCache {
    map: Mutex<HashMap<i64, Entry>>,
}

impl RunStatsCache {
    /// Cached figures still good for `fp`: the same fingerprint, or an active run's figures
    /// younger than MAX_AGE.
    pub fn get(&self, run_id: i64, fp: &Fingerprint) -> Option<RunStats> {
        let map = self.map.lock().ok()?;
        let e = map.get(&run_id)?;
        let fresh = e.fp == *fp || (!fp.finished() && e.at.elapsed() < MAX_AGE);
        fresh.then(|| e.stats.clone())
    }

    pub fn put(&self, run_id: i64, fp: Fingerprint, stats: RunStats) {
        if let Ok(mut map) = self.map.lock() {
            if map.len() >= MAX_ENTRIES && !map.contains_key(&run_id) {
                if let Some(oldest) = map.iter().min_by_key(|(_, e)| e.at).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
            map.insert(
                run_id,
                Entry {
                    fp,
                    at: Instant::now(),
                    stats,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(status: &str, done: i64) -> Fingerprint {
        Fingerprint {
            status: status.into(),
            batches_done: done,
            next_batch_no: done + 1,
        }
    }

    #[test]
    fn finished_runs_stay_cached_until_they_change() {
        let c = RunStatsCache::default();
        let stats = RunStats {
            marks: vec![],
            errors: vec![],
        };
        c.put(1, fp("completed", 10), stats.clone());
        assert!(c.get(1, &fp("completed", 10)).is_some());
        assert!(
            c.get(1, &fp("failed", 10)).is_none(),
            "a finished run that changed"
        );
        assert!(c.get(2, &fp("completed", 10)).is_none());
        c.put(3, fp("running", 10), stats);
        assert!(
            c.get(3, &fp("running", 11)).is_some(),
            "an active run within MAX_AGE"
        );
    }
}
