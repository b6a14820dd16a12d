//! Advisory-lock keys. A scheduler holds one per database, a runner one per run, for as long as
//! the process lives; Postgres drops them when the process dies, which is how a dead runner is
//! told from a live one.

/// `pg_try_advisory_lock(SCHEDULER_KEY, 0)`: the database's scheduler.
pub const SCHEDULER_KEY: i32 = 0x4452_4950; // "DRIP"
/// `pg_try_advisory_lock(RUNNER_KEY, run_key(id))`: the runner of a run.
pub const RUNNER_KEY: i32 = 0x4452_4951;

/// First key of the lock of slice `n` of a parallel run (second key: `run_key`).
pub const SLICE_KEY_BASE: i32 = 0x4453_0000;

/// The first lock key of the worker of a run (slice None) or of one slice of it.
pub fn runner_lock(slice: Option<i32>) -> i32 {
    match slice {
        None => RUNNER_KEY,
        Some(n) => SLICE_KEY_BASE + n,
    }
}

/// The second lock key of a run: its id folded into 31 bits.
pub fn run_key(run_id: i64) -> i32 {
    (run_id & 0x7fff_ffff) as i32
}

/// SQL predicate, over `drip.runs r`, that is true while any worker of the run is alive.
pub const RUNNER_ALIVE_SQL: &str = "EXISTS (SELECT 1 FROM pg_catalog.pg_locks l \
    WHERE l.locktype = 'advisory' AND l.granted \
      AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = current_database()) \
      AND (l.classid = 1146243409::oid OR l.classid BETWEEN 1146290176::oid AND 1146355711::oid) \
      AND l.objsubid = 2 AND l.objid = ((r.id & 2147483647)::int4)::oid)";

/// SQL predicate, over `drip.slices s`, that is true while the slice's worker is alive.
pub const SLICE_ALIVE_SQL: &str = "EXISTS (SELECT 1 FROM pg_catalog.pg_locks l \
    WHERE l.locktype = 'advisory' AND l.granted \
      AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = current_database()) \
      AND l.classid = (1146290176 + s.slice)::oid \
      AND l.objsubid = 2 AND l.objid = ((s.run_id & 2147483647)::int4)::oid)";

/// SQL counting the live workers of this database (for drip.max_runs).
pub const LIVE_WORKERS_SQL: &str = "SELECT count(*) FROM pg_catalog.pg_locks l \
    WHERE l.locktype = 'advisory' AND l.granted \
      AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = current_database()) \
      AND (l.classid = 1146243409::oid OR l.classid BETWEEN 1146290176::oid AND 1146355711::oid) \
      AND l.objsubid = 2";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_the_sql() {
        assert_eq!(RUNNER_KEY, 1146243409);
        assert!(RUNNER_ALIVE_SQL.contains(&RUNNER_KEY.to_string()));
        assert_eq!(SLICE_KEY_BASE, 1146290176);
        assert!(RUNNER_ALIVE_SQL.contains(&(SLICE_KEY_BASE + 65535).to_string()));
        assert!(SLICE_ALIVE_SQL.contains(&SLICE_KEY_BASE.to_string()));
        assert_eq!(runner_lock(None), RUNNER_KEY);
        assert_eq!(runner_lock(Some(3)), SLICE_KEY_BASE + 3);
        assert_eq!(run_key(5), 5);
        assert_eq!(run_key(0x1_0000_0005), 5);
    }
}
