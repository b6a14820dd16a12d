//! Undo data and revert runs (issue 19).
//!
//! A run started with `undo => true` saves, in each batch's own commit, the before-image of
//! every row the batch changed: for a row it updated, the key columns and the changed columns
//! as they were plus the values it wrote; for a row it deleted, the whole row (`drip.undo`).
//! `capture` does this after the action, from the rows' old versions (see `pg::before_image`),
//! so it covers SET and DELETE actions in batch and element mode alike, whatever triggers did
//! to the batch's rows. Statement actions are refused with undo: what they change is not
//! confined to the batch's rows.
//!
//! `drip.revert(run_id)` starts a revert run: an ordinary run (batches, pause, resume, stop,
//! crash safety, events, progress) of a backfill named `revert:<run_id>` over `drip.undo`,
//! owned by the original run's owner, whose statement restores each saved row only while it
//! still holds the values the original run wrote, re-inserts a deleted row while its key is
//! free, and records every other row in `drip.revert_conflicts` with its current values.

use std::cell::RefCell;
use std::collections::HashMap;

use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{json, Value};

use crate::action::ActionKind;
use crate::catalog;
use crate::compile::{Compiled, Definition};
use crate::error::{required, DripError, DripResult, OrRaise};
use crate::pg::before_image;
use crate::pg::identity::{self, Restriction, SAFE_SEARCH_PATH};
use crate::preview;
use crate::security;
use crate::status::RunStatus;

/// One batch of a run, as `capture` needs it.
pub struct BatchRange<'a> {
    pub run_id: i64,
    pub batch_no: i64,
    pub low: Option<&'a [String]>,
    pub high: &'a [String],
    pub compiled: &'a Compiled,
    pub owner: pg_sys::Oid,
    pub search_path: &'a str,
}

/// Refuse undo for a statement action (22023): the engine cannot know what it changed.
pub fn check_supported(compiled: &Compiled, undo: bool) -> DripResult<()> {
    if undo && matches!(compiled.kind, ActionKind::Statement { .. }) {
        return Err(DripError::UndoUnsupported);
    }
    Ok(())
}

thread_local! {
    /// Whether a run keeps undo data, per run id (fixed at start; a process runs few runs).
    static KEEPS_UNDO: RefCell<HashMap<i64, bool>> = RefCell::new(HashMap::new());
}

fn keeps_undo(run_id: i64) -> DripResult<bool> {
    if let Some(v) = KEEPS_UNDO.with(|m| m.borrow().get(&run_id).copied()) {
        return Ok(v);
    }
    let v = Spi::get_one_with_args::<bool>(
        "SELECT undo FROM drip.runs WHERE id = $1",
        &[run_id.into()],
    )?
    .unwrap_or(false);
    KEEPS_UNDO.with(|m| m.borrow_mut().insert(run_id, v));
    Ok(v)
}

/// Save the before-images of what the batch's action changed. Called in the batch's
/// transaction, after the action and before the batch's bookkeeping, so undo data, the
/// changes and the cursor commit together. Does nothing for runs without undo.
pub fn capture(b: &BatchRange) {
    capture_batch(b).or_raise()
}

fn capture_batch(b: &BatchRange) -> DripResult<()> {
    if !keeps_undo(b.run_id)? {
        return Ok(());
    }
    // The batch's key range as it was, read as the owner (the same rows, under the same
    // privileges, as the action), in one jsonb array of [key, row] pairs.
    let before = identity::run_as(b.owner, Restriction::Restricted, b.search_path, || {
        let (sql, args) = preview::range_query(b.compiled, b.low, b.high)?;
        let sql = before_sql(&sql, b.compiled.keys.len());
        let rows = before_image::select_text_before_changes(&sql, &args)?;
        Ok::<_, DripError>(rows.into_iter().next().and_then(|mut r| r.pop().flatten()))
    })?;
    let Some(before) = before.filter(|t| t != "[]") else {
        return Ok(());
    };
    // Compared with the rows now and saved in one statement. Looked up by the keys the owner
    // could read, so our own identity reveals no other rows.
    let keys: Vec<String> = b
        .compiled
        .keys
        .iter()
        .map(|k| pgrx::spi::quote_identifier(&k.name))
        .collect();
    let names: Vec<String> = b.compiled.keys.iter().map(|k| k.name.clone()).collect();
    Spi::run_with_args(
        &capture_sql(&b.compiled.relation, &keys),
        &[
            b.run_id.into(),
            b.batch_no.into(),
            before.as_str().into(),
            names.into(),
        ],
    )?;
    Ok(())
}

/// The range query (`preview::snapshot_sql`) folded into one jsonb array of `[key, row]`.
pub fn before_sql(range_sql: &str, k: usize) -> String {
    let keys = (1..=k)
        .map(|i| format!("s.drip_k{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array(ARRAY[{keys}], s.drip_row)), '[]')::text \
         FROM ({range_sql}) AS s"
    )
}

/// Save the undo rows of a batch: `$3` holds the range's rows before the action (`before_sql`),
/// compared here with the rows now: a row gone was deleted (its whole row is saved), a row whose
/// values differ was updated (its key columns `$4` and changed columns before, and the values
/// written). Rows the action inserted are not undo data. `c` is MATERIALIZED so each row's
/// `to_jsonb` is computed once, not once per reference (a third of the statement's time).
pub fn capture_sql(relation: &str, keys: &[String]) -> String {
    let row = |items: Vec<String>| format!("({})", items.join(", "));
    let t_keys = row(keys.iter().map(|k| format!("t.{k}")).collect());
    let p_keys = row(keys.iter().map(|k| format!("p.{k}")).collect());
    format!(
        "WITH b AS (SELECT ARRAY(SELECT pg_catalog.jsonb_array_elements_text(e -> 0)) AS drip_key, \
                           e -> 1 AS drip_old \
                    FROM pg_catalog.jsonb_array_elements($3::text::jsonb) AS e), \
              c AS MATERIALIZED (SELECT b.drip_key, b.drip_old, pg_catalog.to_jsonb(t) AS drip_now \
                    FROM b CROSS JOIN LATERAL pg_catalog.jsonb_populate_record(NULL::{relation}, b.drip_old) AS p \
                    LEFT JOIN {relation} AS t ON {t_keys} = {p_keys}) \
         INSERT INTO drip.undo (run_id, key, batch_no, op, before, written) \
         SELECT $1, c.drip_key, $2, \
                CASE WHEN c.drip_now IS NULL THEN 'delete' ELSE 'update' END, \
                CASE WHEN c.drip_now IS NULL THEN c.drip_old ELSE d.drip_before END, \
                CASE WHEN c.drip_now IS NULL THEN NULL ELSE d.drip_written END \
         FROM c CROSS JOIN LATERAL ( \
             SELECT pg_catalog.jsonb_object_agg(o.key, o.value) FILTER (WHERE o.key = ANY ($4::text[]) \
                        OR c.drip_now -> o.key IS DISTINCT FROM o.value) AS drip_before, \
                    pg_catalog.jsonb_object_agg(o.key, c.drip_now -> o.key) \
                        FILTER (WHERE c.drip_now -> o.key IS DISTINCT FROM o.value) AS drip_written \
             FROM pg_catalog.jsonb_each(c.drip_old) AS o) AS d \
         WHERE c.drip_now IS NULL OR d.drip_written IS NOT NULL"
    )
}

/// A column of the reverted table: quoted name, and whether a revert may write it.
#[derive(Debug, Clone)]
pub struct Column {
    pub quoted: String,
    /// Stored generated columns are computed; identity ALWAYS columns are only inserted.
    pub generated: bool,
    pub identity_always: bool,
}

/// The statement a revert run executes per batch of `drip.undo` rows (`drip_batch`, scope
/// `run_id = $run`): restore each updated row that still holds the written values, re-insert
/// each deleted row whose key is free (only when `deletes`), record the rest as conflicts
/// of the revert run, and return one row per row restored.
pub fn revert_statement(
    relation: &str,
    keys: &[String],
    columns: &[Column],
    deletes: bool,
) -> String {
    let key_alias: Vec<String> = (1..=keys.len()).map(|i| format!("drip_k{i}")).collect();
    let row = |items: Vec<String>| format!("({})", items.join(", "));
    let u_keys = keys
        .iter()
        .zip(&key_alias)
        .map(|(k, a)| format!("p.{k} AS {a}"))
        .collect::<Vec<_>>()
        .join(", ");
    let t_keys = row(keys.iter().map(|k| format!("t.{k}")).collect());
    let c_keys = row(key_alias.iter().map(|a| format!("c.{a}")).collect());
    let settable: Vec<&Column> = columns
        .iter()
        .filter(|c| !c.generated && !c.identity_always && !keys.contains(&c.quoted))
        .collect();
    let insertable: Vec<&Column> = columns.iter().filter(|c| !c.generated).collect();
    let mut ctes = vec![
        format!(
            "drip_u AS (SELECT b.key AS drip_key, b.op AS drip_op, b.before AS drip_before, \
             b.written AS drip_written, {u_keys} FROM drip_batch AS b \
             CROSS JOIN LATERAL pg_catalog.jsonb_populate_record(NULL::{relation}, b.before) AS p \
             WHERE b.run_id = $run)"
        ),
        format!(
            "drip_c AS (SELECT u.*, pg_catalog.to_jsonb(t) AS drip_now, t.{} IS NOT NULL AS drip_found \
             FROM drip_u AS u LEFT JOIN {relation} AS t ON {t_keys} = {})",
            keys[0],
            row(key_alias.iter().map(|a| format!("u.{a}")).collect())
        ),
        "drip_v AS (SELECT c.*, CASE \
             WHEN c.drip_op = 'update' AND NOT c.drip_found THEN 'deleted' \
             WHEN c.drip_op = 'update' AND EXISTS (SELECT 1 FROM pg_catalog.jsonb_each(c.drip_written) AS w \
                  WHERE c.drip_now -> w.key IS DISTINCT FROM w.value) THEN 'changed' \
             WHEN c.drip_op = 'delete' AND c.drip_found THEN 'key taken' END AS drip_conflict \
             FROM drip_c AS c)"
            .to_string(),
        "drip_x AS (INSERT INTO drip.revert_conflicts (run_id, key, reason, current, expected) \
             SELECT (SELECT r.id FROM drip.runs AS r WHERE r.reverts = $run ORDER BY r.id DESC LIMIT 1), \
                    v.drip_key, v.drip_conflict, v.drip_now, coalesce(v.drip_written, v.drip_before) \
             FROM drip_v AS v WHERE v.drip_conflict IS NOT NULL)"
            .to_string(),
    ];
    let mut restored = Vec::new();
    if !settable.is_empty() {
        let set_cols = settable
            .iter()
            .map(|c| c.quoted.clone())
            .collect::<Vec<_>>();
        let from_rec = settable
            .iter()
            .map(|c| format!("r.{}", c.quoted))
            .collect::<Vec<_>>()
            .join(", ");
        ctes.push(format!(
            "drip_r AS (UPDATE {relation} AS t SET {} = (SELECT {from_rec} FROM \
             pg_catalog.jsonb_populate_record(t, c.drip_before) AS r) \
             FROM drip_v AS c WHERE c.drip_op = 'update' AND c.drip_conflict IS NULL \
             AND {t_keys} = {c_keys} RETURNING 1)",
            row(set_cols)
        ));
        restored.push("SELECT 1 FROM drip_r");
    }
    if deletes {
        let cols = insertable
            .iter()
            .map(|c| c.quoted.clone())
            .collect::<Vec<_>>()
            .join(", ");
        let from_rec = insertable
            .iter()
            .map(|c| format!("r.{}", c.quoted))
            .collect::<Vec<_>>()
            .join(", ");
        ctes.push(format!(
            "drip_i AS (INSERT INTO {relation} ({cols}) OVERRIDING SYSTEM VALUE \
             SELECT {from_rec} FROM drip_v AS c \
             CROSS JOIN LATERAL pg_catalog.jsonb_populate_record(NULL::{relation}, c.drip_before) AS r \
             WHERE c.drip_op = 'delete' AND c.drip_conflict IS NULL RETURNING 1)"
        ));
        restored.push("SELECT 1 FROM drip_i");
    }
    if restored.is_empty() {
        restored.push("SELECT 1 WHERE false");
    }
    format!(
        "WITH {}\n{}",
        ctes.join(",\n"),
        restored.join(" UNION ALL ")
    )
}

/// The columns of a table, in order.
fn table_columns(relation: pg_sys::Oid) -> DripResult<Vec<Column>> {
    Ok(Spi::connect(|c| {
        let t = c.select(
            "SELECT pg_catalog.quote_ident(a.attname), a.attgenerated <> '', \
                    a.attidentity = 'a' \
             FROM pg_catalog.pg_attribute a \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            None,
            &[relation.into()],
        )?;
        t.map(|r| {
            Ok(Column {
                quoted: r.get::<String>(1)?.unwrap_or_default(),
                generated: r.get::<bool>(2)?.unwrap_or(false),
                identity_always: r.get::<bool>(3)?.unwrap_or(false),
            })
        })
        .collect::<Result<Vec<_>, pgrx::spi::SpiError>>()
    })?)
}

/// What `revert` reads of the run to revert.
struct Original {
    definition: Value,
    owner: pg_sys::Oid,
    batch_size: i32,
    sleep_ms: i64,
    last_key: Option<Vec<String>>,
}

/// Start a revert run of a finished, failed or stopped run that kept undo data.
#[pg_extern(volatile, parallel_unsafe)]
fn revert(run_id: Option<i64>, note: default!(Option<&str>, "NULL")) -> i64 {
    // drip.start, called inside, makes sure a scheduler picks the run up after commit.
    required(run_id, "run_id")
        .and_then(|id| revert_impl(id, note))
        .or_raise()
}

fn revert_impl(run_id: i64, note: Option<&str>) -> DripResult<i64> {
    let caller = identity::current_user();
    let original = security::as_catalog(|| {
        let run = catalog::lock_run(run_id)?;
        let owner = catalog::run_owner(run_id)?;
        security::check_run_control(caller, run_id, owner, &run.backfill)?;
        let (undo, reverts, reverted_by, definition, batch_size, sleep_ms) = Spi::connect(|c| {
            let t = c.select(
                "SELECT undo, reverts, reverted_by, definition, batch_size, \
                        (extract(epoch FROM sleep) * 1000)::bigint \
                 FROM drip.runs WHERE id = $1",
                None,
                &[run_id.into()],
            )?;
            let r = t.first();
            Ok::<_, pgrx::spi::SpiError>((
                r.get::<bool>(1)?.unwrap_or(false),
                r.get::<i64>(2)?,
                r.get::<i64>(3)?,
                r.get::<JsonB>(4)?.map(|j| j.0).unwrap_or(Value::Null),
                r.get::<i32>(5)?.unwrap_or(1000),
                r.get::<i64>(6)?.unwrap_or(0),
            ))
        })?;
        if let Some(of) = reverts {
            return Err(DripError::RevertOfRevert { run_id, of });
        }
        if let Some(by) = reverted_by {
            let status = catalog::read_run(by)?
                .map(|r| r.status.as_str().to_string())
                .unwrap_or_else(|| "gone".into());
            return Err(DripError::AlreadyReverted { run_id, by, status });
        }
        if !matches!(
            run.status,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Stopped
        ) {
            return Err(DripError::WrongStatus {
                action: "revert",
                run_id,
                status: run.status.as_str().to_string(),
            });
        }
        if !undo {
            return Err(DripError::NoUndoData(run_id));
        }
        let last_key = Spi::get_one_with_args::<Vec<String>>(
            "SELECT key FROM drip.undo WHERE run_id = $1 ORDER BY key DESC LIMIT 1",
            &[run_id.into()],
        )
        .or_else(|e| match e {
            pgrx::spi::SpiError::InvalidPosition => Ok(None),
            e => Err(e),
        })?;
        Ok(Original {
            definition,
            owner,
            batch_size,
            sleep_ms,
            last_key,
        })
    })?;
    let def = Definition::from_json(&original.definition)?;
    if original.owner == pg_sys::Oid::INVALID || def.owner() == pg_sys::Oid::INVALID {
        return Err(DripError::OwnerGone(def.name.clone()));
    }
    if def.relation_oid == 0 {
        return Err(DripError::BadSql {
            what: "relation",
            message: format!("relation {} of run {run_id} no longer exists", def.relation),
            sqlstate: pgrx::PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
        });
    }
    let compiled =
        crate::pg::settings::with(&[(c"search_path", def.search_path.as_str())], || {
            def.compile()
        })?;
    let keys: Vec<String> = compiled
        .keys
        .iter()
        .map(|k| pgrx::spi::quote_identifier(&k.name))
        .collect();
    let columns = table_columns(pg_sys::Oid::from(def.relation_oid))?;
    let statement = revert_statement(
        &compiled.relation,
        &keys,
        &columns,
        matches!(compiled.kind, ActionKind::Delete),
    );
    let name = format!("revert:{run_id}");
    // Key range of the walk over drip.undo: (run_id, '{}') exclusive (every key has at least
    // one element, so sorts after it) to this run's last key.
    let from_key = json!([run_id.to_string(), "{}"]).to_string();
    let to_key = json!([
        run_id.to_string(),
        array_literal(original.last_key.as_deref().unwrap_or(&[]))
    ])
    .to_string();
    let sleep = format!("{} milliseconds", original.sleep_ms.max(0));
    let description = format!("Revert of run {run_id} (drip.revert)");
    // Registered and started as the original run's owner: the revert runs with exactly its
    // privileges, and its rows are visible to the same roles.
    let revert_id = identity::run_as(def.owner(), Restriction::Local, SAFE_SEARCH_PATH, || {
        Spi::run_with_args(
            "SELECT drip.register($1, 'drip.undo'::regclass, $2, scope => 'run_id = $run', \
                 params => '{\"run\": \"bigint\"}', key => ARRAY['run_id', 'key'], \
                 batch_size => $3, sleep => $4::interval, description => $5, replace => true)",
            &[
                name.as_str().into(),
                statement.as_str().into(),
                original.batch_size.max(1).into(),
                sleep.as_str().into(),
                description.as_str().into(),
            ],
        )?;
        Spi::get_one_with_args::<i64>(
            "SELECT drip.start($1, params => pg_catalog.jsonb_build_object('run', $2), \
                 from_key => $3, to_key => $4, note => $5)",
            &[
                name.as_str().into(),
                run_id.into(),
                from_key.as_str().into(),
                to_key.as_str().into(),
                note.into(),
            ],
        )?
        .ok_or_else(|| DripError::Internal("drip.start returned NULL".into()))
    })?;
    let started_by = security::role_name(caller)?;
    security::as_catalog(|| {
        Spi::run_with_args(
            "UPDATE drip.runs SET reverts = $2, started_by = $3 WHERE id = $1",
            &[revert_id.into(), run_id.into(), started_by.as_str().into()],
        )?;
        Spi::run_with_args(
            "UPDATE drip.runs SET reverted_by = $2 WHERE id = $1",
            &[run_id.into(), revert_id.into()],
        )?;
        Ok(())
    })?;
    Ok(revert_id)
}

/// A text[] literal for stored key text (each element quoted).
fn array_literal(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("{{{}}}", quoted.join(","))
}

/// The undo data a run keeps: rows and bytes.
#[pg_extern(volatile, parallel_unsafe)]
fn undo_size(run_id: Option<i64>) -> TableIterator<'static, (name!(rows, i64), name!(bytes, i64))> {
    let r = required(run_id, "run_id")
        .and_then(undo_size_impl)
        .or_raise();
    TableIterator::once(r)
}

/// A run the caller may control (42704 for one it may not see); `lock` takes its row lock.
fn visible_run(run_id: i64, caller: pg_sys::Oid, lock: bool) -> DripResult<catalog::RunRow> {
    let run = if lock {
        catalog::lock_run(run_id)?
    } else {
        catalog::read_run(run_id)?.ok_or(DripError::UnknownRun(run_id))?
    };
    security::check_run_control(caller, run_id, catalog::run_owner(run_id)?, &run.backfill)?;
    Ok(run)
}

fn undo_size_impl(run_id: i64) -> DripResult<(i64, i64)> {
    let caller = identity::current_user();
    security::as_catalog(|| {
        visible_run(run_id, caller, false)?;
        let (rows, bytes) = Spi::get_two_with_args::<i64, i64>(
            "SELECT count(*), coalesce(sum(pg_catalog.pg_column_size(u.*)), 0)::bigint \
             FROM drip.undo u WHERE run_id = $1",
            &[run_id.into()],
        )?;
        Ok((rows.unwrap_or(0), bytes.unwrap_or(0)))
    })
}

/// Delete a run's undo data (it can no longer be reverted). Refused while the run or its
/// revert is active. Returns the number of rows deleted.
#[pg_extern(volatile, parallel_unsafe)]
fn purge_undo(run_id: Option<i64>) -> i64 {
    required(run_id, "run_id").and_then(purge_impl).or_raise()
}

fn purge_impl(run_id: i64) -> DripResult<i64> {
    let caller = identity::current_user();
    security::as_catalog(|| {
        let run = visible_run(run_id, caller, true)?;
        if run.status.is_active() {
            return Err(DripError::WrongStatus {
                action: "purge the undo data of",
                run_id,
                status: run.status.as_str().to_string(),
            });
        }
        let reverting = Spi::get_one_with_args::<i64>(
            "SELECT r.id FROM drip.runs r JOIN drip.runs o ON o.reverted_by = r.id \
             WHERE o.id = $1 AND r.status IN ('pending', 'enqueued', 'running', 'paused')",
            &[run_id.into()],
        )
        .or_else(|e| match e {
            pgrx::spi::SpiError::InvalidPosition => Ok(None),
            e => Err(e),
        })?;
        if let Some(by) = reverting {
            return Err(DripError::AlreadyReverted {
                run_id,
                by,
                status: "active".into(),
            });
        }
        let n = Spi::connect_mut(|c| {
            let t = c.update(
                "DELETE FROM drip.undo WHERE run_id = $1",
                None,
                &[run_id.into()],
            )?;
            Ok::<_, pgrx::spi::SpiError>(t.len() as i64)
        })?;
        Spi::run_with_args(
            "UPDATE drip.runs SET undo = false WHERE id = $1",
            &[run_id.into()],
        )?;
        Ok(n)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_compares_before_images_with_the_rows_now() {
        let sql = capture_sql("public.t", &["a".into(), "\"B\"".into()]);
        assert!(
            sql.contains("LEFT JOIN public.t AS t ON (t.a, t.\"B\") = (p.a, p.\"B\")"),
            "{sql}"
        );
        assert!(sql.contains("INSERT INTO drip.undo"), "{sql}");
        assert_eq!(
            before_sql("SELECT 1", 2),
            "SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array(ARRAY[s.drip_k1, s.drip_k2], \
             s.drip_row)), '[]')::text FROM (SELECT 1) AS s"
        );
    }

    #[test]
    fn revert_statement_restores_reinserts_and_records_conflicts() {
        let cols = vec![
            Column {
                quoted: "id".into(),
                generated: false,
                identity_always: false,
            },
            Column {
                quoted: "\"Email\"".into(),
                generated: false,
                identity_always: false,
            },
            Column {
                quoted: "g".into(),
                generated: true,
                identity_always: false,
            },
        ];
        let sql = revert_statement("public.t", &["id".into()], &cols, true);
        assert!(sql.starts_with("WITH drip_u AS ("), "{sql}");
        assert!(sql.contains(
            "UPDATE public.t AS t SET (\"Email\") = (SELECT r.\"Email\" FROM pg_catalog.jsonb_populate_record(t, c.drip_before) AS r)"
        ), "{sql}");
        assert!(
            sql.contains("INSERT INTO public.t (id, \"Email\") OVERRIDING SYSTEM VALUE"),
            "{sql}"
        );
        assert!(
            sql.contains("LEFT JOIN public.t AS t ON (t.id) = (u.drip_k1)"),
            "{sql}"
        );
        assert!(sql.ends_with("SELECT 1 FROM drip_r UNION ALL SELECT 1 FROM drip_i"));
        // A SET run's revert inserts nothing (its owner may lack INSERT).
        let sql = revert_statement("public.t", &["id".into()], &cols, false);
        assert!(!sql.contains("INSERT INTO public.t"));
    }

    #[test]
    fn array_literals_quote_every_element() {
        assert_eq!(array_literal(&[]), "{}");
        assert_eq!(
            array_literal(&["a,b".into(), "q\"\\".into()]),
            "{\"a,b\",\"q\\\"\\\\\"}"
        );
    }
}
