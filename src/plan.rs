//! `drip.plan`: a dry run. Shows what a run of a backfill would do (the estimated rows in
//! scope and batches, the boundary query and the batch statement, and their EXPLAIN plans)
//! and warns when the boundary query would not be an index scan. It changes nothing.

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::Value;

use crate::catalog;
use crate::compile::{Compiled, Definition};
use crate::distribution::shard_walk::{next_window, HashRange};
use crate::distribution::{CitusKind, Placement};
use crate::error::{DripResult, OrRaise};
use crate::params;
use crate::pg::{identity, types};
use crate::security;

/// rows_in_scope, batches, boundary_sql, batch_sql, boundary_plan, batch_plan, warning,
/// distribution.
type PlanRow = (
    Option<i64>,
    Option<i64>,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
);

/// Dry run of a backfill with parameter values.
#[pg_extern(volatile, parallel_unsafe)]
#[allow(clippy::type_complexity)]
fn plan(
    name: Option<&str>,
    params: default!(Option<JsonB>, "'{}'"),
) -> TableIterator<
    'static,
    (
        name!(rows_in_scope, Option<i64>),
        name!(batches, Option<i64>),
        name!(boundary_sql, String),
        name!(batch_sql, String),
        name!(boundary_plan, String),
        name!(batch_plan, String),
        name!(warning, Option<String>),
        name!(distribution, Option<String>),
    ),
> {
    TableIterator::once(
        crate::error::required(name, "name")
            .and_then(|n| plan_impl(n, params))
            .or_raise(),
    )
}

fn plan_impl(name: &str, values: Option<JsonB>) -> DripResult<PlanRow> {
    let caller = identity::current_user();
    let definition = security::as_catalog(|| {
        let definition = catalog::definition_for_update(name)?;
        let def = Definition::from_json(&definition)?;
        security::check_control(caller, def.owner(), name)?;
        Ok(definition)
    })?;
    let def = Definition::from_json(&definition)?;
    // Resolved with the backfill's registered search_path, as the runner does.
    let search_path = def.search_path.clone();
    crate::pg::settings::with(&[(c"search_path", search_path.as_str())], || {
        plan_definition(&definition, &def, values)
    })
}

fn plan_definition(
    definition: &Value,
    def: &Definition,
    values: Option<JsonB>,
) -> DripResult<PlanRow> {
    let batch_size = definition
        .get("batch_size")
        .and_then(Value::as_i64)
        .unwrap_or(1000);
    let compiled = def.compile()?;
    let decls: Vec<params::ParamDecl> = compiled.params.iter().map(|(d, _)| d.clone()).collect();
    let effective = params::effective_values(&decls, &values.map(|j| j.0).unwrap_or(Value::Null))?;
    let texts: Vec<Option<String>> = compiled
        .params
        .iter()
        .zip(&effective)
        .map(|((_, t), v)| params::input_text(v, t.is_array))
        .collect();
    let param_args = |c: &Compiled| -> DripResult<Vec<DatumWithOid<'static>>> {
        c.params
            .iter()
            .zip(&texts)
            .map(|((d, t), v)| types::input_datum(t.oid, v.as_deref(), &d.name))
            .collect()
    };
    let rows_in_scope = crate::api::estimate_rows(&compiled, &param_args(&compiled)?);
    let all_rows = estimate_all(&compiled);
    let batches = all_rows.map(|n| (n + batch_size - 1) / batch_size.max(1));

    // Sample bounds: the first key and the end of the first batch after it, so the plans show
    // what a real batch in the middle of the table gets.
    let first = sample_key(&compiled, None, 1)?;
    let high = match &first {
        Some(k) => sample_key(&compiled, Some(k), batch_size)?,
        None => None,
    };
    let key_args = |vals: Option<&Vec<String>>| -> DripResult<Vec<DatumWithOid<'static>>> {
        match vals {
            Some(v) => compiled.key_args(v),
            None => Ok(compiled
                .keys
                .iter()
                .map(|k| DatumWithOid::null_oid(k.type_oid))
                .collect()),
        }
    };
    let mut boundary_args = key_args(first.as_ref())?;
    boundary_args.push(DatumWithOid::from(batch_size));
    let boundary_plan = explain(&compiled.sql.full_next, &boundary_args)?;
    let mut batch_args = param_args(&compiled)?;
    batch_args.extend(key_args(first.as_ref())?);
    batch_args.extend(key_args(high.as_ref().or(first.as_ref()))?);
    let batch_plan = explain(&compiled.sql.work_next, &batch_args)?;
    let warning =
        (!boundary_plan.contains("Index")).then(|| {
            format!(
            "the boundary query is not an index scan; check that an index leads with the key ({})",
            compiled.keys.iter().map(|k| k.name.as_str()).collect::<Vec<_>>().join(", ")
        )
        });
    let row = (
        rows_in_scope,
        batches,
        compiled.sql.full_next.clone(),
        compiled.sql.work_next.clone(),
        boundary_plan,
        batch_plan,
        warning,
        None,
    );
    distributed_plan(def, &compiled, row, first.as_ref(), batch_size, &param_args)
}

/// On a Citus table: what runs where. A table walked per shard gets the sub-run's batch
/// statement and its plan for the first shard's first window (one task, one node); a table
/// walked as one range gets a warning that every batch fans out to its shards.
fn distributed_plan(
    def: &Definition,
    compiled: &Compiled,
    mut row: PlanRow,
    first: Option<&Vec<String>>,
    batch_size: i64,
    param_args: &dyn Fn(&Compiled) -> DripResult<Vec<DatumWithOid<'static>>>,
) -> DripResult<PlanRow> {
    let relation = pg_sys::Oid::from(def.relation_oid);
    let placement = Placement::of(relation)?;
    let Placement::Citus(table) = &placement else {
        return Ok(row);
    };
    let shards = placement.shard_slices(relation, &compiled.keys)?;
    let mut text = format!(
        "Citus {} table: {} shard(s) on {} node(s)",
        table.kind.as_str(),
        table.shards,
        table.nodes
    );
    match shards {
        Some(shards) => {
            text.push_str(&format!(
                "; one sub-run per shard ({}), at most drip.max_runs_per_node ({}) writing to one node at once; \
                 each batch lists the keys of one shard in a key window and is routed to that shard alone, \
                 committed with two-phase commit",
                shards.len(),
                crate::guc::MAX_RUNS_PER_NODE.get()
            ));
            let shard = def.compile_shard(false)?;
            let start = first
                .and_then(|k| k.first())
                .and_then(|v| v.parse::<i64>().ok());
            if let (Some(start), Some(s)) = (start, shards.first()) {
                let range = HashRange {
                    min: s.hash_min,
                    max: s.hash_max,
                };
                let after = start.checked_sub(1);
                if let Some(w) = next_window(range, after, i64::MIN, i64::MAX, batch_size as usize)
                {
                    let mut args = param_args(&shard)?;
                    args.push(DatumWithOid::from(after.unwrap_or(i64::MIN)));
                    args.push(DatumWithOid::from(w.high));
                    args.push(w.candidates.into());
                    row.3 = shard.sql.work_next.clone();
                    row.5 = explain(&shard.sql.work_next, &args)?;
                }
            }
            row.2 = String::new();
            row.4 = "none: a sub-run computes the keys of its shard in each key window".into();
            row.6 = None;
        }
        None => {
            text.push_str("; walked as one key range from the coordinator");
            if table.kind == CitusKind::Distributed {
                row.6 = Some(format!(
                    "every batch reaches all {} shards (the boundary query reads up to batch_size keys from each): \
                     per-shard sub-runs need a single integer key that is the distribution column{}, with at least one key value in 16 a row",
                    table.shards,
                    table
                        .column
                        .as_deref()
                        .map(|c| format!(" ({c})"))
                        .unwrap_or_default()
                ));
            }
        }
    }
    row.7 = Some(text);
    Ok(row)
}

/// Planner estimate of all rows of the relation (keys to walk); a distributed table's comes
/// from its shards' own plans (Citus's top-level estimate is a constant).
fn estimate_all(compiled: &Compiled) -> Option<i64> {
    let plan = Spi::explain(&format!("SELECT 1 FROM {}", compiled.relation)).ok()?;
    if let Some(rows) = crate::distribution::distributed_estimate(&plan.0) {
        return Some(rows);
    }
    plan.0
        .get(0)?
        .get("Plan")?
        .get("Plan Rows")?
        .as_f64()
        .map(|f| f.round() as i64)
}

/// The key `n` keys after `after` (or the `n`-th key), as text per column.
fn sample_key(
    compiled: &Compiled,
    after: Option<&Vec<String>>,
    n: i64,
) -> DripResult<Option<Vec<String>>> {
    let (sql, mut args) = match after {
        None => (&compiled.sql.boundary_first, Vec::new()),
        Some(k) => (&compiled.sql.boundary_next, compiled.key_args(k)?),
    };
    args.push(DatumWithOid::from(n));
    crate::api::read_key(sql, &args, compiled.keys.len())
}

/// EXPLAIN (no ANALYZE: nothing runs) as text.
fn explain(sql: &str, args: &[DatumWithOid]) -> DripResult<String> {
    let lines = Spi::connect_mut(|c| {
        let t = c.update(&format!("EXPLAIN {sql}"), None, args)?;
        t.map(|r| r.get::<String>(1).map(|s| s.unwrap_or_default()))
            .collect::<Result<Vec<_>, _>>()
    })?;
    Ok(lines.join("\n"))
}
