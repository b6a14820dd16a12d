//! What data_drip reads from Citus's catalogs and sends to Citus. Everything here runs as the
//! runner's (or the caller's) own role, through SPI; nothing is assembled from user values.
//!
//! The commit anchor: Citus commits a transaction's remote work with one-phase commit when it
//! touched one worker connection, sending `COMMIT` to the worker before the coordinator writes
//! its own commit record. A crash between the two leaves the batch's work committed on the
//! worker and the batch (and its cursor advance) rolled back on the coordinator: the batch would
//! be done twice. Citus switches to two-phase commit as soon as the transaction also writes a
//! shard placed on the coordinator (local execution). So every batch on a Citus table writes its
//! runner's row in `drip_citus.commit_anchor` (one row per runner process), a Citus local table: the workers `PREPARE`, the
//! coordinator commits (recording the prepared transactions in `pg_dist_transaction`), then the
//! workers `COMMIT PREPARED`. Whatever crashes when, Citus's recovery commits or rolls back the
//! prepared work as the coordinator's commit record says, and the batch row follows the same
//! record. `recover_prepared_transactions()` runs when a runner starts (after a crash) and when a
//! batch met a transient error, so rows held by a dead batch's prepared transaction are released
//! at once rather than at Citus's next recovery pass.
//!
//! The anchor is not a member of the extension: Citus re-creates a table it converts to a Citus
//! local table, which ends its membership. It is created on first use in its own schema, owned
//! by the superuser the runners run as; `DROP EXTENSION data_drip` leaves it (drop it with
//! `DROP SCHEMA drip_citus CASCADE`).

use pgrx::prelude::*;

use super::{CitusKind, CitusTable, Placement};
use crate::error::{DripError, DripResult};
use crate::pg::subxact;

/// Advisory lock key (first half) that serialises creating the anchor.
const ANCHOR_LOCK: i64 = 0x6472_6970_0c17;

/// Whether the Citus extension is installed in this database.
pub fn installed() -> DripResult<bool> {
    Ok(Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus')",
    )?
    .unwrap_or(false))
}

/// Where the relation lives.
pub fn placement_of(relation: pg_sys::Oid) -> DripResult<Placement> {
    if !installed()? {
        return Ok(Placement::Local);
    }
    let row = Spi::connect(|c| {
        let t = c.select(
            "SELECT p.partmethod::text, p.repmodel::text, p.colocationid::bigint, \
                    CASE WHEN p.partkey IS NULL THEN NULL \
                         ELSE pg_catalog.column_to_column_name(p.logicalrelid, p.partkey) END, \
                    (SELECT count(*) FROM pg_catalog.pg_dist_shard s WHERE s.logicalrelid = p.logicalrelid), \
                    (SELECT count(DISTINCT pl.groupid) FROM pg_catalog.pg_dist_shard s \
                       JOIN pg_catalog.pg_dist_placement pl ON pl.shardid = s.shardid \
                      WHERE s.logicalrelid = p.logicalrelid) \
             FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid = $1",
            None,
            &[relation.into()],
        )?;
        match t.into_iter().next() {
            Some(r) => Ok::<_, pgrx::spi::SpiError>(Some((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<i64>(3)?.unwrap_or(0),
                r.get::<String>(4)?,
                r.get::<i64>(5)?.unwrap_or(0),
                r.get::<i64>(6)?.unwrap_or(0),
            ))),
            None => Ok(None),
        }
    })?;
    Ok(match row {
        None => Placement::Local,
        Some((method, repmodel, colocation, column, shards, nodes)) => {
            Placement::Citus(CitusTable {
                kind: CitusKind::from_catalog(&method, &repmodel, colocation, shards),
                column: column.filter(|c| !c.is_empty()),
                shards,
                nodes,
            })
        }
    })
}

/// Create the commit anchor if it is missing (idempotent; concurrent runners serialise on an
/// advisory lock). Needs the coordinator in Citus's metadata, as every Citus local table does.
pub fn ensure_anchor() -> DripResult<()> {
    let ready = || -> DripResult<bool> {
        Ok(Spi::get_one::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition \
                             WHERE logicalrelid = pg_catalog.to_regclass('drip_citus.commit_anchor'))",
        )?
        .unwrap_or(false))
    };
    if ready()? {
        return Ok(());
    }
    Spi::run_with_args(
        "SELECT pg_catalog.pg_advisory_xact_lock($1)",
        &[ANCHOR_LOCK.into()],
    )?;
    if ready()? {
        return Ok(());
    }
    Spi::run(
        "CREATE SCHEMA IF NOT EXISTS drip_citus; \
         REVOKE ALL ON SCHEMA drip_citus FROM PUBLIC; \
         CREATE TABLE IF NOT EXISTS drip_citus.commit_anchor ( \
             pid integer PRIMARY KEY, \
             batches bigint NOT NULL DEFAULT 0); \
         COMMENT ON TABLE drip_citus.commit_anchor IS \
             'data_drip: written by every batch on a Citus table so that Citus commits the batch with two-phase commit'",
    )?;
    // In a subtransaction: Citus's refusal (no coordinator in its metadata) becomes our error
    // with a hint, and the transaction stays usable.
    subxact::try_in_subtransaction(|| {
        Spi::run("SELECT pg_catalog.citus_add_local_table_to_metadata('drip_citus.commit_anchor')")
    })
    .map_err(|e| DripError::CitusSetup(e.message))?
    .map_err(DripError::from)
}

/// The batch's first statements on a Citus table, inside the batch's transaction block and
/// inside the GUC nest level of its work (so they are undone for the bookkeeping that follows):
/// the backfill's timeouts as `SET LOCAL` (Citus sends them to every worker connection of the
/// transaction), and the run's anchor row (two-phase commit, see the module comment).
pub fn begin_work(lock_timeout_ms: i64, statement_timeout_ms: i64) -> DripResult<()> {
    // Integers the engine formats itself: SET takes no parameters.
    Spi::run(&format!(
        "SET LOCAL citus.propagate_set_commands = 'local'; \
         SET LOCAL lock_timeout = {}; \
         SET LOCAL statement_timeout = {}",
        lock_timeout_ms.max(0),
        statement_timeout_ms.max(0)
    ))?;
    // Keyed by the runner's process: concurrent runners (the sub-runs of one run among them)
    // never wait for each other's commits on an anchor row.
    Spi::run(
        "INSERT INTO drip_citus.commit_anchor AS a (pid, batches) VALUES (pg_catalog.pg_backend_pid(), 1) \
         ON CONFLICT (pid) DO UPDATE SET batches = a.batches + 1",
    )?;
    Ok(())
}

/// With two-phase commit Citus sends `COMMIT PREPARED` to the workers once the coordinator's
/// commit returns. Under `synchronous_commit = off` that commit may still be in the WAL buffers:
/// a crash of the coordinator then loses it (the batch row says `running`, the batch is done
/// again) while the workers have committed the batch's work: done twice. So a batch's
/// transaction on a Citus table commits at least with `synchronous_commit = local` (a
/// stronger setting, such as `on` or `remote_apply` for a standby, is kept).
pub fn commit_durably() -> DripResult<()> {
    Spi::run(
        "SELECT pg_catalog.set_config('synchronous_commit', 'local', true) \
         WHERE pg_catalog.current_setting('synchronous_commit') = 'off'",
    )?;
    Ok(())
}

/// Resolve transactions that a crash left prepared on the workers (Citus would do it at its next
/// recovery pass, by default within a minute). Returns how many were resolved; errors are
/// -1 when it failed: recovery only shortens a wait, so a failure is not the caller's error.
pub fn recover_prepared() -> i64 {
    subxact::try_in_subtransaction(|| {
        Spi::get_one::<i32>("SELECT pg_catalog.recover_prepared_transactions()")
    })
    .ok()
    .and_then(|r| r.ok())
    .flatten()
    .map_or(-1, i64::from)
}

/// A shard of a hash-distributed table, as a sub-run starts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSlice {
    pub hash_min: i32,
    pub hash_max: i32,
    /// The node group holding the shard's (first) placement.
    pub node_group: Option<i32>,
}

/// The shards of a hash-distributed table in hash order, with their nodes.
pub fn shards(relation: pg_sys::Oid) -> DripResult<Vec<ShardSlice>> {
    Ok(Spi::connect(|c| {
        let t = c.select(
            "SELECT s.shardminvalue::integer, s.shardmaxvalue::integer, \
                    (SELECT min(pl.groupid) FROM pg_catalog.pg_dist_placement pl WHERE pl.shardid = s.shardid) \
             FROM pg_catalog.pg_dist_shard s WHERE s.logicalrelid = $1 \
             ORDER BY s.shardminvalue::integer",
            None,
            &[relation.into()],
        )?;
        t.map(|r| {
            Ok(ShardSlice {
                hash_min: r.get::<i32>(1)?.unwrap_or(i32::MIN),
                hash_max: r.get::<i32>(2)?.unwrap_or(i32::MAX),
                node_group: r.get::<i32>(3)?,
            })
        })
        .collect::<Result<Vec<_>, pgrx::spi::SpiError>>()
    })?)
}

/// The node group holding the shard that holds `hash` now (after moves and splits).
pub fn node_of_hash(relation: pg_sys::Oid, hash: i32) -> DripResult<Option<i32>> {
    Ok(Spi::get_one_with_args::<i32>(
        "SELECT min(pl.groupid) FROM pg_catalog.pg_dist_shard s \
           JOIN pg_catalog.pg_dist_placement pl ON pl.shardid = s.shardid \
          WHERE s.logicalrelid = $1 AND $2 BETWEEN s.shardminvalue::integer AND s.shardmaxvalue::integer",
        &[relation.into(), hash.into()],
    )?)
}

/// About how many rows the table has (its shards' own estimates) and how many values its
/// integer key spans (max - min + 1, from the key's index on every shard).
pub fn rows_and_key_span(relation: pg_sys::Oid, key: &str) -> DripResult<(i64, i64)> {
    let rel = Spi::get_one_with_args::<String>("SELECT $1::regclass::text", &[relation.into()])?
        .unwrap_or_default();
    let column = Spi::get_one_with_args::<String>("SELECT quote_ident($1)", &[key.into()])?
        .unwrap_or_default();
    let plan = Spi::explain(&format!("SELECT 1 FROM {rel}"))?;
    let rows = super::distributed_estimate(&plan.0).unwrap_or(0);
    // numeric: the span of a bigint key can exceed bigint.
    let span = Spi::get_one::<i64>(&format!(
        "SELECT least(max({column})::numeric - min({column})::numeric + 1, \
                      9223372036854775807)::bigint FROM {rel}"
    ))?
    .unwrap_or(0);
    Ok((rows, span))
}
