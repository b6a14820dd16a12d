//! Where a backfill's table lives, and what that changes for the runner.
//!
//! A table is either on this node (`Placement::Local`) or known to Citus (`Placement::Citus`):
//! hash-distributed over shards on worker nodes, a single-shard (or schema-sharded) table, a
//! reference table copied to every node, or a Citus local table. The runner asks its placement
//! what differs instead of branching on Citus itself:
//!
//! - **plans**: Citus cannot plan a multi-shard query whose parameters are unresolved, so every
//!   statement that reads or writes a Citus table is planned with its values
//!   (`force_custom_plan`);
//! - **the batch transaction**: on Citus it is a transaction block (as a client's
//!   `BEGIN ... COMMIT`), so Citus opens remote transaction blocks for the batch's work and
//!   passes `SET LOCAL` on to the workers; the backfill's `lock_timeout` and
//!   `statement_timeout` are set that way. Each batch also writes a row of a Citus local table
//!   on the coordinator (`drip_citus.commit_anchor`), which makes Citus commit the batch's
//!   remote work with two-phase commit: the coordinator's commit record decides, for the work
//!   on every node and for the batch row alike (see `citus`);
//! - **errors**: a worker that cannot be reached (SQLSTATE class 08, `57P03`) or a transaction
//!   left prepared by a crash is a transient condition, retried with backoff without spending
//!   the batch's attempts;
//! - **estimates**: Citus's planner answers a fixed 100,000 rows for a distributed table; the
//!   estimate is taken from one shard's remote plan times the number of shards.
//!
//! The Citus catalog reads and the SQL sent to Citus live in `citus`; this file is the plain
//! decision logic, reachable from unit tests.

pub mod citus;
pub mod shard_walk;

use pgrx::pg_sys;
use serde_json::Value;

use crate::compile::KeyColumn;
use crate::error::DripResult;

/// How Citus holds a table (`pg_dist_partition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CitusKind {
    /// Hash-distributed over more than one shard.
    Distributed,
    /// One shard on one node: a single-shard table, or a table of a distributed schema.
    SingleShard,
    /// Copied to every node.
    Reference,
    /// A Citus local table: on the coordinator, known to Citus.
    Local,
}

impl CitusKind {
    /// From `pg_dist_partition` (`partmethod`, `repmodel`, `colocationid`) and the shard count.
    /// A Citus local table has no distribution column and no colocation group; a single-shard
    /// table (or a table of a distributed schema) has a colocation group.
    pub fn from_catalog(
        partmethod: &str,
        repmodel: &str,
        colocation: i64,
        shards: i64,
    ) -> CitusKind {
        match partmethod {
            "n" if repmodel == "t" => CitusKind::Reference,
            "n" if colocation == 0 => CitusKind::Local,
            "n" => CitusKind::SingleShard,
            _ if shards <= 1 => CitusKind::SingleShard,
            _ => CitusKind::Distributed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CitusKind::Distributed => "distributed",
            CitusKind::SingleShard => "single-shard",
            CitusKind::Reference => "reference",
            CitusKind::Local => "citus local",
        }
    }
}

/// A table Citus knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CitusTable {
    pub kind: CitusKind,
    /// The distribution column (None for reference, local and single-shard tables).
    pub column: Option<String>,
    pub shards: i64,
    /// Nodes holding at least one placement of the table.
    pub nodes: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    Local,
    Citus(CitusTable),
}

impl Placement {
    pub fn is_citus(&self) -> bool {
        matches!(self, Placement::Citus(_))
    }

    /// plan_cache_mode for data_drip's own key-walk queries over the table.
    pub fn walk_plan_mode(&self) -> &'static str {
        match self {
            Placement::Local => "force_generic_plan",
            Placement::Citus(_) => "force_custom_plan",
        }
    }

    /// plan_cache_mode for the user's batch statement.
    pub fn work_plan_mode(&self) -> &'static str {
        match self {
            Placement::Local => "auto",
            Placement::Citus(_) => "force_custom_plan",
        }
    }

    /// The batch's work must run in a transaction block (see the module comment).
    pub fn work_in_block(&self) -> bool {
        self.is_citus()
    }

    /// Where `relation` lives.
    pub fn of(relation: pg_sys::Oid) -> DripResult<Placement> {
        citus::placement_of(relation)
    }

    /// Before a runner's first batch: what its batches need (the commit anchor).
    pub fn prepare_runner(&self) -> DripResult<()> {
        if self.is_citus() {
            citus::ensure_anchor()?;
        }
        Ok(())
    }

    /// The first statements of a batch's work (in its transaction, inside the GUC nest level
    /// of the work): nothing on this node; on Citus, the timeouts for the workers and the
    /// commit anchor.
    pub fn begin_work(&self, lock_timeout_ms: i64, statement_timeout_ms: i64) -> DripResult<()> {
        match self {
            Placement::Local => Ok(()),
            Placement::Citus(_) => citus::begin_work(lock_timeout_ms, statement_timeout_ms),
        }
    }

    /// The sub-runs a run on this table starts with: one per shard when the table is
    /// hash-distributed over several shards and walked by its distribution column, an integer
    /// (see `shard_walk`); None otherwise (one walk over the key range, routed by Citus).
    pub fn shard_slices(
        &self,
        relation: pg_sys::Oid,
        key: &[KeyColumn],
    ) -> DripResult<Option<Vec<citus::ShardSlice>>> {
        let Placement::Citus(table) = self else {
            return Ok(None);
        };
        let walkable = crate::guc::CITUS_SUB_RUNS.get()
            && table.kind == CitusKind::Distributed
            && matches!(key, [k] if Some(&k.name) == table.column.as_ref()
                && shard_walk::array_type(k.type_oid).is_some());
        if !walkable {
            return Ok(None);
        }
        let shards = citus::shards(relation)?;
        if shards.len() < 2 {
            return Ok(None);
        }
        // Keys too sparse for windows of integers: walk from the coordinator.
        let (rows, span) = citus::rows_and_key_span(relation, &key[0].name)?;
        if !shard_walk::dense_enough(rows, span) {
            pgrx::notice!(
                "data_drip: the keys of this table are too sparse for one sub-run per shard \
                 (about {rows} rows over {span} key values); it is walked from the coordinator"
            );
            return Ok(None);
        }
        Ok(Some(shards))
    }

    /// At the start of a batch's work transaction (outside any GUC nest level, so it holds
    /// until the commit): on Citus, the commit must be durable on the coordinator before the
    /// workers are told to `COMMIT PREPARED` (see `citus::commit_durably`).
    pub fn before_work(&self) -> DripResult<()> {
        match self {
            Placement::Local => Ok(()),
            Placement::Citus(_) => citus::commit_durably(),
        }
    }

    /// Undo data is captured by reading the batch's rows as they were at the start of its own
    /// transaction on this node; a Citus table's rows are read through Citus, on other nodes or
    /// through its executor, where that view does not hold. Refused (0A000) rather than saving
    /// before-images that could be wrong.
    pub fn check_undo(&self, relation: &str) -> DripResult<()> {
        match self {
            Placement::Local => Ok(()),
            Placement::Citus(t) => Err(crate::error::DripError::UndoOnCitus {
                relation: relation.to_string(),
                kind: t.kind.as_str(),
            }),
        }
    }

    /// An error that says "a node could not be reached, try again later".
    pub fn is_transient(&self, sqlstate: &str, message: &str) -> bool {
        self.is_citus() && is_transient(sqlstate, message)
    }

    /// Resolve transactions a crash left prepared (Citus), so their rows are free again.
    pub fn release_prepared(&self) {
        if self.is_citus() {
            citus::recover_prepared();
        }
    }
}

/// An error a batch or a boundary query may meet on Citus that says "try again later", not
/// "this batch is wrong": a worker down or restarting, a connection lost, a row held by a
/// transaction a crash left prepared (released by recovery).
pub fn is_transient(sqlstate: &str, message: &str) -> bool {
    if sqlstate.starts_with("08") || sqlstate == "57P03" {
        return true;
    }
    let m = message.to_ascii_lowercase();
    [
        "connection to the remote node",
        "could not connect to",
        "connection refused",
        "server closed the connection",
        "the database system is starting up",
        "the database system is shutting down",
        "the database system is in recovery mode",
        "terminating connection due to administrator command",
        "could not establish any connections",
        "failure on connection marked as essential",
        "connection not open",
        "lost connection",
    ]
    .iter()
    .any(|needle| m.contains(needle))
}

/// Rows estimated from a distributed EXPLAIN (FORMAT JSON): the rows of the one task shown,
/// times the number of tasks. None when the plan is not a distributed one.
pub fn distributed_estimate(plan: &Value) -> Option<i64> {
    let top = plan.get(0)?.get("Plan")?;
    let job = find_job(top)?;
    let tasks = job.get("Task Count")?.as_i64()?;
    let rows = job
        .get("Tasks")?
        .as_array()?
        .iter()
        .filter_map(|task| {
            let remote = task.get("Remote Plan")?;
            // Remote Plan is the worker's EXPLAIN output: [[{"Plan": ...}]] or [{"Plan": ...}].
            let first = match remote.get(0)? {
                Value::Array(inner) => inner.first()?,
                other => other,
            };
            first.get("Plan")?.get("Plan Rows")?.as_f64()
        })
        .fold(None, |acc: Option<f64>, r| Some(acc.unwrap_or(0.0).max(r)))?;
    Some((rows * tasks as f64).round() as i64)
}

fn find_job(node: &Value) -> Option<&Value> {
    if let Some(job) = node.get("Distributed Query").and_then(|d| d.get("Job")) {
        return Some(job);
    }
    node.get("Plans")?.as_array()?.iter().find_map(find_job)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kinds_from_the_catalog() {
        assert_eq!(
            CitusKind::from_catalog("h", "s", 1, 32),
            CitusKind::Distributed
        );
        assert_eq!(
            CitusKind::from_catalog("h", "s", 2, 1),
            CitusKind::SingleShard
        );
        assert_eq!(
            CitusKind::from_catalog("n", "t", 3, 1),
            CitusKind::Reference
        );
        assert_eq!(
            CitusKind::from_catalog("n", "s", 4, 1),
            CitusKind::SingleShard
        );
        assert_eq!(CitusKind::from_catalog("n", "s", 0, 1), CitusKind::Local);
    }

    #[test]
    fn plan_modes() {
        let citus = Placement::Citus(CitusTable {
            kind: CitusKind::Distributed,
            column: Some("id".into()),
            shards: 32,
            nodes: 2,
        });
        assert_eq!(citus.walk_plan_mode(), "force_custom_plan");
        assert_eq!(citus.work_plan_mode(), "force_custom_plan");
        assert!(citus.work_in_block());
        assert_eq!(Placement::Local.walk_plan_mode(), "force_generic_plan");
        assert_eq!(Placement::Local.work_plan_mode(), "auto");
        assert!(!Placement::Local.work_in_block());
    }

    #[test]
    fn transient_errors() {
        assert!(is_transient("08006", "anything"));
        assert!(is_transient("57P03", "the database system is starting up"));
        assert!(is_transient(
            "XX000",
            "connection to the remote node postgres@127.0.0.1:5433 failed with the following error: Connection refused"
        ));
        assert!(!is_transient(
            "55P03",
            "canceling statement due to lock timeout"
        ));
        assert!(!is_transient(
            "23505",
            "duplicate key value violates unique constraint"
        ));
        assert!(!is_transient("22012", "division by zero"));
    }

    #[test]
    fn estimate_from_a_distributed_plan() {
        let plan = json!([{"Plan": {"Node Type": "Custom Scan", "Plan Rows": 100000,
            "Distributed Query": {"Job": {"Task Count": 32, "Tasks Shown": "One of 32",
                "Tasks": [{"Node": "host=127.0.0.1 port=26001 dbname=postgres",
                    "Remote Plan": [[{"Plan": {"Node Type": "Seq Scan", "Plan Rows": 3125}}]]}]}}}}]);
        assert_eq!(distributed_estimate(&plan), Some(100_000));
        let nested =
            json!([{"Plan": {"Node Type": "Aggregate", "Plans": [plan[0]["Plan"].clone()]}}]);
        assert_eq!(distributed_estimate(&nested), Some(100_000));
        let local = json!([{"Plan": {"Node Type": "Seq Scan", "Plan Rows": 10}}]);
        assert_eq!(distributed_estimate(&local), None);
    }
}
