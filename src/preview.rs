//! `drip.preview`: what a run of a backfill would do to the first rows, before it runs.
//!
//! The preview runs the real action, as the backfill's owner with its search_path, lock_timeout
//! and statement_timeout, batch after batch from the start of the key range (or `from_key`),
//! inside a subtransaction that is always rolled back. Around each batch it reads the rows of
//! the batch's key range (as the owner: row-level security and privileges apply) before and
//! after the action, and reports the rows that differ: the changed columns' values before and
//! after, the whole row for a deleted (after NULL) or inserted (before NULL) row. It stops once
//! it has `rows` changed rows or the key range ends. Nothing is committed, the catalog is not written,
//! and the locks the action took end with the subtransaction.
//!
//! Batches start at `rows` keys (or the backfill's batch_size if smaller) and double, up to
//! batch_size, while they change nothing. Row-by-row actions (SET, DELETE, element mode) change
//! the same rows whatever the batch boundaries; a statement action sees smaller `drip_batch`
//! sets than a run would.
//!
//! What it cannot show: a statement action's changes outside the batch's key range or to other
//! tables. What a rollback cannot undo: sequences advance, user functions' non-transactional
//! side effects happen, and the table's statistics count the rolled-back changes (the README
//! lists these).
//!
//! The walk, the snapshots and the diff are plain Rust over SQL built here (unit-tested below);
//! the subtransaction and the nested statement timeout live in `pg::scratch`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{Map, Value};

use crate::catalog;
use crate::compile::{Compiled, Definition};
use crate::error::{required, DripError, DripResult, OrRaise};
use crate::params;
use crate::pg::identity::{self, Restriction};
use crate::pg::{scratch, settings, types};
use crate::security;

/// One changed row: its key (canonical text per key column, as `drip.batches` shows keys) and
/// the values of the columns that changed, before and after (None: the row did not exist
/// before, or no longer exists after).
#[derive(Debug, Clone, PartialEq)]
pub struct RowChange {
    pub key: Vec<String>,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// Show what a run of a backfill would change in its first rows, changing nothing.
#[pg_extern(volatile, parallel_unsafe)]
#[allow(clippy::type_complexity)]
fn preview(
    name: Option<&str>,
    params: default!(Option<JsonB>, "'{}'"),
    rows: default!(Option<i32>, 20),
    from_key: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(key, Vec<String>),
        name!(before, Option<JsonB>),
        name!(after, Option<JsonB>),
    ),
> {
    let changes = required(name, "name")
        .and_then(|n| required(rows, "rows").map(|r| (n, r)))
        .and_then(|(n, r)| preview_impl(n, params, r, from_key))
        .or_raise();
    TableIterator::new(
        changes
            .into_iter()
            .map(|c| (c.key, c.before.map(JsonB), c.after.map(JsonB))),
    )
}

/// The backfill's settings a preview applies.
struct Limits {
    batch_size: i64,
    lock_timeout_ms: i64,
    statement_timeout: Duration,
}

fn preview_impl(
    name: &str,
    values: Option<JsonB>,
    rows: i32,
    from_key: Option<&str>,
) -> DripResult<Vec<RowChange>> {
    if rows < 1 {
        return Err(DripError::BadOption(format!(
            "rows must be at least 1, got {rows}"
        )));
    }
    // The same checks, in the same order, as drip.start: the backfill exists and the caller
    // may control it; then, with the backfill's search_path, the definition compiles, the
    // parameter values fit their declarations and types, and from_key fits the key.
    // Read without locking: a preview writes nothing, not even a row lock on the catalog.
    let caller = identity::current_user();
    let (definition, limits) = security::as_catalog(|| {
        let definition = catalog::definition_for_share(name)?;
        let def = Definition::from_json(&definition)?;
        security::check_control(caller, def.owner(), name)?;
        Ok((definition, limits(name)?))
    })?;
    let def = Definition::from_json(&definition)?;
    if def.owner() == pg_sys::Oid::INVALID {
        return Err(DripError::OwnerGone(name.to_string()));
    }
    let search_path = def.search_path.clone();
    settings::with(&[(c"search_path", search_path.as_str())], || {
        let compiled = def.compile()?;
        let decls: Vec<params::ParamDecl> =
            compiled.params.iter().map(|(d, _)| d.clone()).collect();
        let values = values.map(|j| j.0).unwrap_or(Value::Null);
        let effective = params::effective_values(&decls, &values)?;
        let param_texts: Vec<Option<String>> = compiled
            .params
            .iter()
            .zip(&effective)
            .map(|((_, ty), v)| params::input_text(v, ty.is_array))
            .collect();
        let cursor = from_key
            .map(|t| crate::api::key_values(&compiled, "from_key", t))
            .transpose()?;
        let walk = Walk {
            compiled: &compiled,
            param_texts,
            owner: def.owner(),
            search_path: &search_path,
            row_mode: def.mode == "row",
            batch_size: limits.batch_size.max(1),
            first_batch: preview_batch(limits.batch_size, rows),
            statement_timeout: limits.statement_timeout,
        };
        // Convert every value now, with its type's input function, so a bad value fails here
        // (as in drip.start) and not inside the action.
        walk.param_args()?;
        walk.rolled_back(name, cursor, rows as usize, limits.lock_timeout_ms)
    })
}

/// batch_size, lock_timeout and statement_timeout of a backfill (as the catalog owner).
fn limits(name: &str) -> DripResult<Limits> {
    Spi::connect(|c| {
        let t = c.select(
            "SELECT batch_size::bigint, (extract(epoch FROM lock_timeout) * 1000)::bigint, \
                    (extract(epoch FROM statement_timeout) * 1000)::bigint \
             FROM drip.backfills WHERE name = $1",
            None,
            &[name.into()],
        )?;
        match t.into_iter().next() {
            Some(r) => Ok::<_, pgrx::spi::SpiError>(Some(Limits {
                batch_size: r.get::<i64>(1)?.unwrap_or(1000),
                lock_timeout_ms: r.get::<i64>(2)?.unwrap_or(0),
                statement_timeout: Duration::from_millis(
                    r.get::<i64>(3)?.unwrap_or(0).max(0) as u64
                ),
            })),
            None => Ok(None),
        }
    })?
    .ok_or_else(|| DripError::UnknownBackfill(name.to_string()))
}

/// Keys in the first preview batch: the backfill's batch size, but no more than the rows asked
/// for (a preview of 20 rows need not run the action over 10,000).
pub fn preview_batch(batch_size: i64, rows: i32) -> i64 {
    batch_size.min(i64::from(rows)).max(1)
}

/// Keys in the next preview batch: twice as many after a batch that changed nothing (a scope
/// that matches few rows is crossed in few statements), up to the backfill's batch size.
pub fn next_batch(current: i64, changed: usize, batch_size: i64) -> i64 {
    if changed > 0 {
        current
    } else {
        current
            .saturating_mul(2)
            .min(batch_size)
            .max(current.min(batch_size))
    }
}

/// The key walk of a preview: the runner's boundary and work statements with bound values.
struct Walk<'a> {
    compiled: &'a Compiled,
    /// Text of each parameter value, for its type's input function (None: NULL).
    param_texts: Vec<Option<String>>,
    owner: pg_sys::Oid,
    search_path: &'a str,
    row_mode: bool,
    /// The backfill's batch size, and the keys in the preview's first batch.
    batch_size: i64,
    first_batch: i64,
    statement_timeout: Duration,
}

impl Walk<'_> {
    /// Walk batches from `cursor` until `rows` changes are found, in a subtransaction that is
    /// rolled back, with the backfill's lock_timeout. An ERROR is returned with its SQLSTATE.
    fn rolled_back(
        &self,
        backfill: &str,
        cursor: Option<Vec<String>>,
        rows: usize,
        lock_timeout_ms: i64,
    ) -> DripResult<Vec<RowChange>> {
        let lock_timeout = format!("{}ms", lock_timeout_ms.max(0));
        // Where the walk was when an ERROR came, for the error's detail.
        let mut at: Option<String> = None;
        let outcome = settings::with(&[(c"lock_timeout", lock_timeout.as_str())], || {
            scratch::rolled_back(|| self.walk(cursor, rows, &mut at))
        });
        match outcome {
            Ok(changes) => changes,
            Err(e) => Err(DripError::PreviewFailed {
                backfill: backfill.to_string(),
                message: e.message,
                sqlstate: e.sqlstate,
                detail: e.detail.or(at),
                hint: e.hint,
            }),
        }
    }

    /// Run the user-facing part as the backfill's owner, as a runner does: a security-restricted
    /// operation with the owner's search_path.
    fn as_owner<R>(&self, f: impl FnOnce() -> R) -> R {
        identity::run_as_with(
            self.owner,
            Restriction::Restricted,
            &[
                (c"search_path", self.search_path),
                (c"plan_cache_mode", "auto"),
            ],
            f,
        )
    }

    fn walk(
        &self,
        mut cursor: Option<Vec<String>>,
        rows: usize,
        at: &mut Option<String>,
    ) -> DripResult<Vec<RowChange>> {
        let mut changes = Vec::new();
        let mut batch = self.first_batch;
        while changes.len() < rows {
            let Some(high) = self.as_owner(|| self.boundary(cursor.as_ref(), batch))? else {
                break;
            };
            *at = Some(describe_range(cursor.as_ref(), &high));
            let before = self.as_owner(|| self.snapshot(cursor.as_ref(), &high))?;
            {
                let _limit = scratch::NestedStatementTimeout::arm(self.statement_timeout);
                self.as_owner(|| self.work(cursor.as_ref(), &high, at))?;
            }
            let after = self.as_owner(|| self.snapshot(cursor.as_ref(), &high))?;
            let found = diff_rows(before, after);
            batch = next_batch(batch, found.len(), self.batch_size);
            changes.extend(found);
            cursor = Some(high);
        }
        changes.truncate(rows);
        Ok(changes)
    }

    fn param_args(&self) -> DripResult<Vec<DatumWithOid<'static>>> {
        self.compiled
            .params
            .iter()
            .zip(&self.param_texts)
            .map(|((decl, ty), text)| types::input_datum(ty.oid, text.as_deref(), &decl.name))
            .collect()
    }

    fn key_args(&self, key: &[String]) -> DripResult<Vec<DatumWithOid<'static>>> {
        self.compiled.key_args(key)
    }

    /// The batch's upper key (inclusive), as the runner finds it; None past the last key.
    fn boundary(
        &self,
        cursor: Option<&Vec<String>>,
        batch: i64,
    ) -> DripResult<Option<Vec<String>>> {
        let sql = &self.compiled.sql;
        let (full, last, mut args) = match cursor {
            None => (&sql.full_first, &sql.boundary_first, Vec::new()),
            Some(c) => (&sql.full_next, &sql.boundary_next, self.key_args(c)?),
        };
        args.push(DatumWithOid::from(batch));
        match self.read_keys(full, &args)?.into_iter().next() {
            Some(high) => Ok(Some(high)),
            None => Ok(self.read_keys(last, &args)?.into_iter().next()),
        }
    }

    /// The keys (first K columns, canonical text) a query returns. Through a read-write SPI
    /// call, which takes a new snapshot: the walk must see what the previous batches' actions
    /// did, as a run sees earlier batches' commits.
    fn read_keys(&self, sql: &str, args: &[DatumWithOid]) -> DripResult<Vec<Vec<String>>> {
        let k = self.compiled.keys.len();
        Ok(Spi::connect_mut(|c| {
            let t = c.update(sql, None, args)?;
            t.map(|r| {
                (1..=k)
                    .map(|i| r.get::<String>(i).map(|v| v.unwrap_or_default()))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()
        })?)
    }

    /// Every row of the key range `(low, high]` as (key, row as JSON), in key order.
    fn snapshot(
        &self,
        low: Option<&Vec<String>>,
        high: &[String],
    ) -> DripResult<Vec<(Vec<String>, Value)>> {
        // Read-write SPI for a fresh snapshot that sees the action's changes (see read_keys).
        range_rows(self.compiled, low.map(|v| v.as_slice()), high)
    }

    /// The action over `(low, high]`: one statement, or (element mode) one per row in scope.
    fn work(
        &self,
        low: Option<&Vec<String>>,
        high: &[String],
        at: &mut Option<String>,
    ) -> DripResult<()> {
        let sql = &self.compiled.sql;
        let mut args = self.param_args()?;
        match low {
            Some(low) => args.extend(self.key_args(low)?),
            None => args.extend(
                self.compiled
                    .keys
                    .iter()
                    .map(|k| DatumWithOid::null_oid(k.type_oid)),
            ),
        }
        args.extend(self.key_args(high)?);
        if !self.row_mode {
            let work = if low.is_some() {
                &sql.work_next
            } else {
                &sql.work_first
            };
            Spi::connect_mut(|c| c.update(work.as_str(), None, &args).map(|_| ()))?;
            return Ok(());
        }
        let select = if low.is_some() {
            &sql.rows_next
        } else {
            &sql.rows_first
        };
        for key in self.read_keys(select, &args)? {
            *at = Some(format!("The action failed for the row with key {key:?}."));
            let mut row_args = self.param_args()?;
            row_args.extend(self.key_args(&key)?);
            row_args.extend(self.key_args(&key)?);
            Spi::connect_mut(|c| c.update(sql.work_row.as_str(), None, &row_args).map(|_| ()))?;
        }
        Ok(())
    }
}

/// The error detail naming a batch's key range.
fn describe_range(low: Option<&Vec<String>>, high: &[String]) -> String {
    match low {
        Some(low) => {
            format!("The action failed in the batch of keys after {low:?} up to {high:?}.")
        }
        None => format!("The action failed in the first batch, of keys up to {high:?}."),
    }
}

/// Every row of the key range `(low, high]` of a compiled definition's relation, as (canonical
/// key text, row as JSON), in key order, read with the caller's identity and a new snapshot
/// (which sees this transaction's changes so far).
pub(crate) fn range_rows(
    compiled: &Compiled,
    low: Option<&[String]>,
    high: &[String],
) -> DripResult<Vec<(Vec<String>, Value)>> {
    let (sql, args) = range_query(compiled, low, high)?;
    let k = compiled.keys.len();
    let read = |t: pgrx::spi::SpiTupleTable| {
        t.map(|r| {
            let key = (1..=k)
                .map(|i| r.get::<String>(i).map(|v| v.unwrap_or_default()))
                .collect::<Result<Vec<_>, _>>()?;
            let row = r.get::<JsonB>(k + 1)?.map(|j| j.0).unwrap_or(Value::Null);
            Ok((key, row))
        })
        .collect::<Result<Vec<_>, pgrx::spi::SpiError>>()
    };
    Ok(Spi::connect_mut(|c| read(c.update(&sql, None, &args)?))?)
}

/// The query of `range_rows` and its arguments.
pub(crate) fn range_query(
    compiled: &Compiled,
    low: Option<&[String]>,
    high: &[String],
) -> DripResult<(String, Vec<DatumWithOid<'static>>)> {
    let quoted: Vec<String> = compiled
        .keys
        .iter()
        .map(|k| pgrx::spi::quote_identifier(&k.name))
        .collect();
    let plain: Vec<bool> = compiled
        .keys
        .iter()
        .map(|k| settings::text_is_canonical(k.type_oid))
        .collect();
    let sql = snapshot_sql(&compiled.relation, &quoted, &plain, low.is_some());
    let mut args = Vec::new();
    if let Some(low) = low {
        args.extend(compiled.key_args(low)?);
    }
    args.extend(compiled.key_args(high)?);
    Ok((sql, args))
}

/// The rows of a key range `(low, high]` (`$1..$K` low when `has_low`, then high) with their
/// canonical key text (`drip_k1..`) and the whole row as jsonb (`drip_row`), in key order.
pub fn snapshot_sql(relation: &str, keys: &[String], plain_text: &[bool], has_low: bool) -> String {
    let k = keys.len();
    let row = |items: Vec<String>| {
        if items.len() == 1 {
            items[0].clone()
        } else {
            format!("({})", items.join(", "))
        }
    };
    let cols = row(keys.iter().map(|c| format!("drip_rows.{c}")).collect());
    let params = |from: usize| row((from..from + k).map(|i| format!("${i}")).collect());
    let text = keys
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let n = i + 1;
            if plain_text.get(i).copied().unwrap_or(false) {
                format!("drip_rows.{c}::text AS drip_k{n}")
            } else {
                format!("drip.key_text(drip_rows.{c}) AS drip_k{n}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let range = if has_low {
        format!("{cols} > {} AND {cols} <= {}", params(1), params(k + 1))
    } else {
        format!("{cols} <= {}", params(1))
    };
    let order = keys
        .iter()
        .map(|c| format!("drip_rows.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT {text}, pg_catalog.to_jsonb(drip_rows) AS drip_row FROM {relation} AS drip_rows \
         WHERE {range} ORDER BY {order}"
    )
}

/// The changes between two snapshots of the same key range: rows whose values differ (only
/// the columns that differ), rows gone (the whole row before, nothing after) and rows new (the
/// whole row after). In the order of the first snapshot, rows new at the end.
pub fn diff_rows(
    before: Vec<(Vec<String>, Value)>,
    after: Vec<(Vec<String>, Value)>,
) -> Vec<RowChange> {
    let before_keys: HashSet<Vec<String>> = before.iter().map(|(k, _)| k.clone()).collect();
    let mut new_keys = Vec::new();
    let mut after_by_key: HashMap<Vec<String>, Value> = HashMap::with_capacity(after.len());
    for (key, row) in after {
        if !before_keys.contains(&key) {
            new_keys.push(key.clone());
        }
        after_by_key.insert(key, row);
    }
    let mut out = Vec::new();
    for (key, old) in before {
        match after_by_key.remove(&key) {
            None => out.push(RowChange {
                key,
                before: Some(old),
                after: None,
            }),
            Some(new) => {
                if let Some((b, a)) = changed_columns(&old, &new) {
                    out.push(RowChange {
                        key,
                        before: Some(b),
                        after: Some(a),
                    });
                }
            }
        }
    }
    for key in new_keys {
        if let Some(new) = after_by_key.remove(&key) {
            out.push(RowChange {
                key,
                before: None,
                after: Some(new),
            });
        }
    }
    out
}

/// The columns whose values differ between two row images, as two objects (None if none
/// differ). Values compare by their JSON form: numbers by their exact text.
pub fn changed_columns(before: &Value, after: &Value) -> Option<(Value, Value)> {
    if before == after {
        return None;
    }
    let (b, a) = match (before, after) {
        (Value::Object(b), Value::Object(a)) => (b, a),
        _ => return Some((before.clone(), after.clone())),
    };
    let mut old = Map::new();
    let mut new = Map::new();
    let columns = b.keys().chain(a.keys().filter(|k| !b.contains_key(*k)));
    for col in columns {
        let (x, y) = (b.get(col), a.get(col));
        if x != y {
            old.insert(col.clone(), x.cloned().unwrap_or(Value::Null));
            new.insert(col.clone(), y.cloned().unwrap_or(Value::Null));
        }
    }
    if old.is_empty() {
        return None;
    }
    Some((Value::Object(old), Value::Object(new)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn k(s: &str) -> Vec<String> {
        vec![s.to_string()]
    }

    #[test]
    fn snapshot_sql_for_single_and_composite_keys() {
        assert_eq!(
            snapshot_sql("public.t", &["id".into()], &[true], false),
            "SELECT drip_rows.id::text AS drip_k1, pg_catalog.to_jsonb(drip_rows) AS drip_row \
             FROM public.t AS drip_rows WHERE drip_rows.id <= $1 ORDER BY drip_rows.id"
        );
        assert_eq!(
            snapshot_sql("t", &["a".into(), "\"B\"".into()], &[true, false], true),
            "SELECT drip_rows.a::text AS drip_k1, drip.key_text(drip_rows.\"B\") AS drip_k2, \
             pg_catalog.to_jsonb(drip_rows) AS drip_row FROM t AS drip_rows WHERE (drip_rows.a, drip_rows.\"B\") > ($1, $2) AND \
             (drip_rows.a, drip_rows.\"B\") <= ($3, $4) ORDER BY drip_rows.a, drip_rows.\"B\""
        );
    }

    #[test]
    fn only_changed_columns_are_reported() {
        let before = json!({"id": 1, "email": "A@X", "n": 1});
        let after = json!({"id": 1, "email": "a@x", "n": 1});
        assert_eq!(
            changed_columns(&before, &after),
            Some((json!({"email": "A@X"}), json!({"email": "a@x"})))
        );
        assert_eq!(changed_columns(&before, &before.clone()), None);
    }

    #[test]
    fn numbers_compare_by_their_exact_text() {
        // numeric 1.0 and 1.00 are different values to a user reading the table.
        let before: Value = serde_json::from_str(r#"{"id": 1, "x": 1.0}"#).unwrap();
        let after: Value = serde_json::from_str(r#"{"id": 1, "x": 1.00}"#).unwrap();
        assert!(changed_columns(&before, &after).is_some());
        let big: Value =
            serde_json::from_str(r#"{"x": 12345678901234567890.000000000001}"#).unwrap();
        let big2: Value =
            serde_json::from_str(r#"{"x": 12345678901234567890.000000000002}"#).unwrap();
        assert!(changed_columns(&big, &big2).is_some());
    }

    #[test]
    fn deleted_updated_unchanged_and_inserted_rows() {
        let before = vec![
            (k("1"), json!({"id": 1, "v": 1})),
            (k("2"), json!({"id": 2, "v": 2})),
            (k("3"), json!({"id": 3, "v": 3})),
        ];
        let after = vec![
            (k("2"), json!({"id": 2, "v": 20})),
            (k("3"), json!({"id": 3, "v": 3})),
            (k("4"), json!({"id": 4, "v": 4})),
        ];
        assert_eq!(
            diff_rows(before, after),
            vec![
                RowChange {
                    key: k("1"),
                    before: Some(json!({"id": 1, "v": 1})),
                    after: None
                },
                RowChange {
                    key: k("2"),
                    before: Some(json!({"v": 2})),
                    after: Some(json!({"v": 20}))
                },
                RowChange {
                    key: k("4"),
                    before: None,
                    after: Some(json!({"id": 4, "v": 4}))
                },
            ]
        );
    }

    #[test]
    fn preview_batches_are_no_larger_than_the_rows_asked_for() {
        assert_eq!(preview_batch(1000, 20), 20);
        assert_eq!(preview_batch(5, 20), 5);
        assert_eq!(preview_batch(1000, 1), 1);
        // They grow while they change nothing, up to the backfill's batch size.
        assert_eq!(next_batch(20, 0, 1000), 40);
        assert_eq!(next_batch(20, 3, 1000), 20);
        assert_eq!(next_batch(640, 0, 1000), 1000);
        assert_eq!(next_batch(1000, 0, 1000), 1000);
        assert_eq!(next_batch(5, 0, 5), 5);
    }
}
