//! Advisory-lock keys. A scheduler holds one per database, a runner one per run, for as long as
//! the process lives; Postgres drops them when the process dies, which is how a dead runner is
//! told from a live one.

/// `pg_try_advisory_lock(SCHEDULER_KEY, 0)`: the database's scheduler.
pub const SCHEDULER_KEY: i32 = 0x4452_4950; // "DRIP"
/// `pg_try_advisory_lock(RUNNER_KEY, run_key(id))`: the runner of a run.
pub const RUNNER_KEY: i32 = 0x4452_4951;

/// The second lock key of a run: its id folded into 31 bits.
pub fn run_key(run_id: i64) -> i32 {
    (run_id & 0x7fff_ffff) as i32
}

/// SQL predicate, over `drip.runs r`, that is true while the run's runner is alive.
pub const RUNNER_ALIVE_SQL: &str = "EXISTS (SELECT 1 FROM pg_catalog.pg_locks l \
    WHERE l.locktype = 'advisory' AND l.granted \
      AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = current_database()) \
      AND l.classid = 1146243409::oid AND l.objsubid = 2 \
      AND l.objid = ((r.id & 2147483647)::int4)::oid)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_the_sql() {
        assert_eq!(RUNNER_KEY, 1146243409);
        assert!(RUNNER_ALIVE_SQL.contains(&RUNNER_KEY.to_string()));
        assert_eq!(run_key(5), 5);
        assert_eq!(run_key(0x1_0000_0005), 5);
    }
}
