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

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{json, Value};

use crate::action::ActionKind;
use crate::catalog;
use crate::compile::{Compiled, Definition};
use crate::error::{required, DripError, DripResult, OrRaise};
use crate::pg::before_image;
use crate::pg::identity::{self, Restriction, SAFE_SEARCH_PATH};
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

/// Refuse undo for a statement action (22023): the engine cannot know what it changed. (A table
/// Citus holds is refused by `distribution::Placement::check_undo`.)
pub fn check_supported(compiled: &Compiled, undo: bool) -> DripResult<()> {
    if undo && matches!(compiled.kind, ActionKind::Statement { .. }) {
        return Err(DripError::UndoUnsupported);
    }
    Ok(())
}

thread_local! {
    /// Per run id: whether it keeps undo data, and then its capture statements (fixed at
    /// start; a process runs few runs).
    static PLANS: RefCell<HashMap<i64, Option<std::rc::Rc<CapturePlan>>>> = RefCell::new(HashMap::new());
}

/// The statements that capture a batch's undo data, built once per run.
pub struct CapturePlan {
    /// Read the range's rows as they were (`before_sql`), without and with a low bound.
    before_first: String,
    before_next: String,
    /// Compare them with the rows now and write the batch's undo row (`capture_sql`).
    save: String,
    /// The type of an array of the relation's rows (`$3` of `save`).
    rows_type: pg_sys::Oid,
}

fn plan_for(b: &BatchRange) -> DripResult<Option<std::rc::Rc<CapturePlan>>> {
    if let Some(p) = PLANS.with(|m| m.borrow().get(&b.run_id).cloned()) {
        return Ok(p);
    }
    let undo = Spi::get_one_with_args::<bool>(
        "SELECT undo FROM drip.runs WHERE id = $1",
        &[b.run_id.into()],
    )?
    .unwrap_or(false);
    let plan = if undo {
        Some(std::rc::Rc::new(CapturePlan::new(b.compiled)?))
    } else {
        None
    };
    PLANS.with(|m| m.borrow_mut().insert(b.run_id, plan.clone()));
    Ok(plan)
}

impl CapturePlan {
    fn new(c: &Compiled) -> DripResult<Self> {
        let keys: Vec<String> = c
            .keys
            .iter()
            .map(|k| pgrx::spi::quote_identifier(&k.name))
            .collect();
        let plain: Vec<bool> = c
            .keys
            .iter()
            .map(|k| crate::pg::settings::text_is_canonical(k.type_oid))
            .collect();
        let delete = matches!(c.kind, ActionKind::Delete);
        // A SET saves the key columns and the columns it assigns; a DELETE the whole row.
        let assigned: Vec<(String, String)> = if delete {
            Vec::new()
        } else {
            crate::pg::parse::update_target_columns(&c.sql.work_first)
                .into_iter()
                .map(|n| {
                    let q = pgrx::spi::quote_identifier(&n);
                    (n, q)
                })
                .collect()
        };
        let rows_type = Spi::get_one_with_args::<pg_sys::Oid>(
            "SELECT t.typarray FROM pg_catalog.pg_class c JOIN pg_catalog.pg_type t ON t.oid = c.reltype \
             WHERE c.oid = $1::text::regclass",
            &[c.relation.as_str().into()],
        )?
        .filter(|o| *o != pg_sys::Oid::INVALID)
        .ok_or_else(|| DripError::Internal(format!("no array type for {}", c.relation)))?;
        let array_like: Vec<String> = Spi::connect(|client| {
            client
                .select(
                    "SELECT a.attname::text FROM pg_catalog.pg_attribute a \
                     JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
                     WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
                       AND (t.typcategory = 'A' OR t.typtype = 'd')",
                    None,
                    &[c.relation.as_str().into()],
                )?
                .map(|r| Ok(r.get::<String>(1)?.unwrap_or_default()))
                .collect::<Result<Vec<_>, pgrx::spi::SpiError>>()
        })?;
        let shape = Shape {
            relation: &c.relation,
            keys: &keys,
            plain: &plain,
            assigned: &assigned,
            delete,
            array_like: &array_like,
        };
        Ok(CapturePlan {
            before_first: before_sql(&shape, false),
            before_next: before_sql(&shape, true),
            save: capture_sql(&shape),
            rows_type,
        })
    }
}

/// Save the before-images of what the batch's action changed, as one `drip.undo` row for the
/// batch. Called in the batch's transaction, after the action and before the batch's
/// bookkeeping, so undo data, the changes and the cursor commit together. Does nothing for
/// runs without undo.
pub fn capture(b: &BatchRange) {
    capture_batch(b).or_raise()
}

fn capture_batch(b: &BatchRange) -> DripResult<()> {
    let Some(plan) = plan_for(b)? else {
        return Ok(());
    };
    let mut args = Vec::new();
    if let Some(low) = b.low {
        args.extend(b.compiled.key_args(low)?);
    }
    args.extend(b.compiled.key_args(b.high)?);
    // The batch's key range as it was, read as the owner (the same rows, under the same
    // privileges, as the action): one array of the relation's rows, kept in binary form.
    let before_sql = if b.low.is_some() {
        &plan.before_next
    } else {
        &plan.before_first
    };
    let before = identity::run_as(b.owner, Restriction::Restricted, b.search_path, || {
        before_image::select_datum_before_changes(before_sql, &args)
    })?;
    let Some(before) = before else {
        return Ok(());
    };
    // Compared with the rows now and saved in one statement, as one row for the batch. Only
    // keys the owner could read are looked up, so our own identity reveals no other rows.
    // SAFETY: `before` is an array of the relation's row type (`before_sql`), of type
    // `rows_type`, alive in this memory context for the statement.
    let rows = unsafe { DatumWithOid::new(before, plan.rows_type) };
    Spi::run_with_args(&plan.save, &[b.run_id.into(), b.batch_no.into(), rows])?;
    Ok(())
}

/// What the capture statements are built from.
pub struct Shape<'a> {
    pub relation: &'a str,
    /// Quoted key columns.
    pub keys: &'a [String],
    /// Per key column: its `::text` is canonical (else `drip.key_text`).
    pub plain: &'a [bool],
    /// The columns a SET assigns: name and quoted name.
    pub assigned: &'a [(String, String)],
    pub delete: bool,
    /// Columns whose values are arrays (or of a domain type): aggregated with `jsonb_agg`,
    /// since `array_agg` of arrays needs equal dimensions.
    pub array_like: &'a [String],
}

impl Shape<'_> {
    /// The key as a text[] (the text `drip.batches` shows), of the row `drip_rows`.
    fn key_array(&self) -> String {
        let items: Vec<String> = self
            .keys
            .iter()
            .zip(self.plain)
            .map(|(c, plain)| {
                if *plain {
                    format!("drip_rows.{c}::text")
                } else {
                    format!("drip.key_text(drip_rows.{c})")
                }
            })
            .collect();
        format!("ARRAY[{}]::text[]", items.join(", "))
    }

    fn key_columns(&self) -> Vec<(String, String)> {
        self.keys.iter().map(|k| (unquote(k), k.clone())).collect()
    }

    /// `(alias.k1, alias.k2)`.
    fn key_row(&self, alias: &str) -> String {
        let items: Vec<String> = self.keys.iter().map(|k| format!("{alias}.{k}")).collect();
        format!("({})", items.join(", "))
    }

    /// The range `(low, high]` of the key (`$1..`), or `<= high`.
    fn range(&self, has_low: bool) -> String {
        let k = self.keys.len();
        let row = |items: Vec<String>| format!("({})", items.join(", "));
        let cols = self.key_row("drip_rows");
        let params = |from: usize| row((from..from + k).map(|i| format!("${i}")).collect());
        if has_low {
            format!("{cols} > {} AND {cols} <= {}", params(1), params(1 + k))
        } else {
            format!("{cols} <= {}", params(1))
        }
    }
}

/// A string literal (E'' when it holds a backslash), without asking Postgres.
fn literal(s: &str) -> String {
    let body = s.replace('\'', "''");
    if s.contains('\\') {
        format!("E'{}'", body.replace('\\', "\\\\"))
    } else {
        format!("'{body}'")
    }
}

/// Undo an identifier's quoting (`"A""b"` to `A"b`).
fn unquote(q: &str) -> String {
    match q.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => q.to_string(),
    }
}

/// The batch's range as it was (run with `before_image`): one array of the relation's rows.
/// Binary all the way to `capture_sql` (no jsonb, no text): most rows of a range are
/// changed, and building images for them here would cost as much as the action.
pub fn before_sql(s: &Shape, has_low: bool) -> String {
    format!(
        "SELECT pg_catalog.array_agg(drip_rows) FROM {} AS drip_rows WHERE {}",
        s.relation,
        s.range(has_low)
    )
}

/// `jsonb_build_object` of (name literal, value expression) pairs, in chunks joined with `||`
/// (a function takes at most 100 arguments).
fn build_object(pairs: &[(String, String)]) -> String {
    if pairs.is_empty() {
        return "'{}'::jsonb".to_string();
    }
    pairs
        .chunks(40)
        .map(|chunk| {
            let items: Vec<String> = chunk
                .iter()
                .map(|(n, v)| format!("{}, {v}", literal(n)))
                .collect();
            format!("pg_catalog.jsonb_build_object({})", items.join(", "))
        })
        .collect::<Vec<_>>()
        .join(" OPERATOR(pg_catalog.||) ")
}

/// Save a batch's undo row: `$3` holds the range's rows before the action (`before_sql`),
/// each looked up by its key now. Only rows that changed are saved: for a SET, rows whose
/// assigned columns differ (compared as text: exact, and defined for every type); for a DELETE,
/// rows gone. The batch's `items` are columnar, aggregated once per column rather than built
/// per row (several times cheaper): `k`, the keys (text per key column); for a SET `b`, per key
/// and assigned column its values before, and `w`, per assigned column its values written; for
/// a DELETE `r`, the whole rows. Nothing when nothing changed.
pub fn capture_sql(s: &Shape) -> String {
    let old = format!(
        "drip_old AS (SELECT * FROM pg_catalog.unnest($3::{}[]) AS o)",
        s.relation
    );
    let agg = |alias: &str, name: &str, quoted: &str| {
        if s.array_like.iter().any(|a| a == name) {
            format!("pg_catalog.jsonb_agg({alias}.{quoted})")
        } else {
            format!("pg_catalog.to_jsonb(pg_catalog.array_agg({alias}.{quoted}))")
        }
    };
    let keys = format!(
        "pg_catalog.to_jsonb(pg_catalog.array_agg({}))",
        s.key_array()
    );
    let (op, items, from) = if s.delete {
        (
            "delete",
            format!(
                "pg_catalog.jsonb_build_object('k', {keys}, 'r', pg_catalog.jsonb_agg(drip_rows))"
            ),
            format!(
                "drip_old AS drip_rows WHERE NOT EXISTS (SELECT 1 FROM {rel} AS t WHERE {tk} = {ok})",
                rel = s.relation,
                tk = s.key_row("t"),
                ok = s.key_row("drip_rows"),
            ),
        )
    } else {
        let mut before = s.key_columns();
        let extra: Vec<(String, String)> = s
            .assigned
            .iter()
            .filter(|a| !before.iter().any(|k| k.0 == a.0))
            .cloned()
            .collect();
        before.extend(extra);
        let b: Vec<(String, String)> = before
            .iter()
            .map(|(n, q)| (n.clone(), agg("drip_rows", n, q)))
            .collect();
        let w: Vec<(String, String)> = s
            .assigned
            .iter()
            .map(|(n, q)| (n.clone(), agg("t", n, q)))
            .collect();
        let text = |alias: &str| {
            let items: Vec<String> = s
                .assigned
                .iter()
                .map(|(_, q)| format!("{alias}.{q}::text"))
                .collect();
            format!("({})", items.join(", "))
        };
        (
            "update",
            format!(
                "pg_catalog.jsonb_build_object('k', {keys}, 'b', {}, 'w', {})",
                build_object(&b),
                build_object(&w)
            ),
            format!(
                "drip_old AS drip_rows JOIN {rel} AS t ON {tk} = {ok} \
                 WHERE {old_text} IS DISTINCT FROM {new_text}",
                rel = s.relation,
                tk = s.key_row("t"),
                ok = s.key_row("drip_rows"),
                old_text = text("drip_rows"),
                new_text = text("t"),
            ),
        )
    };
    format!(
        "WITH {old} \
         INSERT INTO drip.undo (run_id, batch_no, op, rows, items) \
         SELECT $1, $2, '{op}', count(*), {items} FROM {from} HAVING count(*) > 0"
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
    assigned: &[(String, String)],
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
    // A SET run's revert writes back only the columns the SET assigned (the ones saved).
    let settable: Vec<&Column> = columns
        .iter()
        .filter(|c| !c.generated && !c.identity_always && !keys.contains(&c.quoted))
        .filter(|c| assigned.is_empty() || assigned.iter().any(|(_, q)| *q == c.quoted))
        .collect();
    // Whether a row still holds what the run wrote: its assigned columns now, built as the
    // capture built `written`, equal to it (else each written column against the whole row).
    let changed = if assigned.is_empty() {
        "EXISTS (SELECT 1 FROM pg_catalog.jsonb_each(u.drip_written) AS w \
         WHERE pg_catalog.to_jsonb(t) -> w.key IS DISTINCT FROM w.value)"
            .to_string()
    } else {
        let items: Vec<String> = assigned
            .iter()
            .map(|(n, q)| format!("{}, t.{q}", literal(n)))
            .collect();
        format!(
            "pg_catalog.jsonb_build_object({}) IS DISTINCT FROM u.drip_written",
            items.join(", ")
        )
    };
    let insertable: Vec<&Column> = columns.iter().filter(|c| !c.generated).collect();
    // Element `n` (1-based) of each column's values in the items. Each column's values are
    // taken out of `items` once per undo row (`x`, kept from being flattened by OFFSET 0):
    // `items` is stored compressed and out of line, and each `->` on it, or on a part of it,
    // would copy all of that again for every row.
    let mut parts: Vec<String> = vec!["b.items -> 'k' AS k".to_string()];
    let (before, written) = if deletes {
        parts.push("b.items -> 'r' AS r".to_string());
        (
            "x.r -> (k.n::integer - 1)".to_string(),
            "NULL::jsonb".to_string(),
        )
    } else if assigned.is_empty() {
        parts.push("b.items -> 'b' AS b".to_string());
        parts.push("b.items -> 'w' AS w".to_string());
        let generic = |part: &str| {
            format!(
                "(SELECT pg_catalog.jsonb_object_agg(c.key, c.value -> (k.n::integer - 1)) \
                 FROM pg_catalog.jsonb_each(x.{part}) AS c)"
            )
        };
        (generic("b"), generic("w"))
    } else {
        let mut names: Vec<String> = keys.iter().map(|k| unquote(k)).collect();
        for (n, _) in assigned {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        let mut column = |part: &str, i: usize, name: &str| {
            parts.push(format!(
                "b.items -> '{part}' -> {} AS {part}{i}",
                literal(name)
            ));
            format!("x.{part}{i} -> (k.n::integer - 1)")
        };
        let b: Vec<(String, String)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), column("b", i, n)))
            .collect();
        let w: Vec<(String, String)> = assigned
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.clone(), column("w", i, n)))
            .collect();
        (build_object(&b), build_object(&w))
    };
    let parts = parts.join(", ");
    let mut ctes = vec![
        // One row per saved row out of the batch's columnar items (`capture_sql`).
        format!(
            "drip_u AS (SELECT k.v AS drip_key, b.op AS drip_op, i.drip_before, i.drip_written, {u_keys} \
             FROM drip_batch AS b \
             CROSS JOIN LATERAL (SELECT {parts} OFFSET 0) AS x \
             CROSS JOIN LATERAL pg_catalog.jsonb_array_elements(x.k) WITH ORDINALITY AS k(v, n) \
             CROSS JOIN LATERAL (SELECT {before} AS drip_before, {written} AS drip_written) AS i \
             CROSS JOIN LATERAL pg_catalog.jsonb_populate_record(NULL::{relation}, i.drip_before) AS p \
             WHERE b.run_id = $run)"
        ),
        // The row now as jsonb only for conflicts (it is recorded with them).
        format!(
            "drip_c AS (SELECT u.*, t.{k0} IS NOT NULL AS drip_found, \
                    CASE WHEN t.{k0} IS NULL THEN NULL \
                         WHEN u.drip_op = 'delete' THEN 'key taken' \
                         WHEN {changed} THEN 'changed' END AS drip_conflict_now, \
                    t AS drip_t \
             FROM drip_u AS u LEFT JOIN {relation} AS t ON {t_keys} = {u_keys_row})",
            k0 = keys[0],
            u_keys_row = row(key_alias.iter().map(|a| format!("u.{a}")).collect())
        ),
        "drip_v AS (SELECT c.*, CASE WHEN c.drip_op = 'update' AND NOT c.drip_found THEN 'deleted' \
             ELSE c.drip_conflict_now END AS drip_conflict, \
             CASE WHEN c.drip_conflict_now IS NOT NULL THEN pg_catalog.to_jsonb(c.drip_t) END AS drip_now \
             FROM drip_c AS c)"
            .to_string(),
        "drip_x AS (INSERT INTO drip.revert_conflicts (run_id, key, reason, current, expected) \
             SELECT (SELECT r.id FROM drip.runs AS r WHERE r.reverts = $run ORDER BY r.id DESC LIMIT 1), \
                    ARRAY(SELECT pg_catalog.jsonb_array_elements_text(v.drip_key)), v.drip_conflict, v.drip_now, coalesce(v.drip_written, v.drip_before) \
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
    sleep_ms: i64,
    last_batch: Option<i64>,
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
        let (undo, reverts, reverted_by, definition, purged_at, sleep_ms) = Spi::connect(|c| {
            let t = c.select(
                "SELECT undo, reverts, reverted_by, definition, \
                        pg_catalog.to_char(undo_purged_at, 'YYYY-MM-DD HH24:MI:SS TZ'), \
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
                r.get::<String>(5)?,
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
        // Purged (drip.purge_undo or drip.undo_retention): said so, with when.
        if let Some(at) = purged_at {
            return Err(DripError::UndoPurged { run_id, at });
        }
        if !undo {
            return Err(DripError::NoUndoData(run_id));
        }
        let last_batch = Spi::get_one_with_args::<i64>(
            "SELECT max(batch_no) FROM drip.undo WHERE run_id = $1",
            &[run_id.into()],
        )
        .or_else(|e| match e {
            pgrx::spi::SpiError::InvalidPosition => Ok(None),
            e => Err(e),
        })?;
        Ok(Original {
            definition,
            owner,
            sleep_ms,
            last_batch,
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
    let assigned: Vec<(String, String)> = if matches!(compiled.kind, ActionKind::Set) {
        crate::pg::parse::update_target_columns(&compiled.sql.work_first)
            .into_iter()
            .map(|n| {
                let q = pgrx::spi::quote_identifier(&n);
                (n, q)
            })
            .collect()
    } else {
        Vec::new()
    };
    let statement = revert_statement(
        &compiled.relation,
        &keys,
        &columns,
        matches!(compiled.kind, ActionKind::Delete),
        &assigned,
    );
    let name = format!("revert:{run_id}");
    // Key range of the walk over drip.undo: (run_id, 0) exclusive (batches count from 1) to
    // this run's last batch. One undo row (a batch of the original run) per revert batch.
    let from_key = json!([run_id.to_string(), "0"]).to_string();
    let to_key = json!([
        run_id.to_string(),
        original.last_batch.unwrap_or(0).to_string()
    ])
    .to_string();
    let sleep = format!("{} milliseconds", original.sleep_ms.max(0));
    let description = format!("Revert of run {run_id} (drip.revert)");
    // Registered and started as the original run's owner: the revert runs with exactly its
    // privileges, and its rows are visible to the same roles.
    let revert_id = identity::run_as(def.owner(), Restriction::Local, SAFE_SEARCH_PATH, || {
        Spi::run_with_args(
            "SELECT drip.register($1, 'drip.undo'::regclass, $2, scope => 'run_id = $run', \
                 params => '{\"run\": \"bigint\"}', key => ARRAY['run_id', 'batch_no'], \
                 batch_size => $3, sleep => $4::interval, description => $5, replace => true)",
            &[
                name.as_str().into(),
                statement.as_str().into(),
                1i32.into(),
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
            "SELECT coalesce(sum(u.rows), 0)::bigint, \
                    coalesce(sum(pg_catalog.pg_column_size(u.*)), 0)::bigint \
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
        let n = Spi::get_one_with_args::<i64>(
            "WITH d AS (DELETE FROM drip.undo WHERE run_id = $1 RETURNING rows) \
             SELECT coalesce(sum(rows), 0)::bigint FROM d",
            &[run_id.into()],
        )?
        .unwrap_or(0);
        Spi::run_with_args(
            "UPDATE drip.runs SET undo = false, undo_purged_at = now() WHERE id = $1",
            &[run_id.into()],
        )?;
        Ok(n)
    })
}

/// Undo rows removed per retention pass (each holds up to a batch of rows).
const PURGE_UNDO_ROWS: i64 = 200;

/// Retention (`drip.undo_retention`, seconds; 0 keeps): delete the undo data of runs finished
/// longer ago, a small delete at a time, and record in `drip.runs.undo_purged_at` that a run's
/// undo data is gone once all of it is. The undo data of a run whose revert is active is kept.
/// Called by the scheduler's purge, in its transaction; returns the rows removed.
pub fn purge_expired_undo(retention_secs: i32) -> i64 {
    if retention_secs <= 0 {
        return 0;
    }
    const EXPIRED: &str = "r.finished_at < now() - make_interval(secs => $1) \
         AND r.status IN ('completed', 'failed', 'stopped') \
         AND NOT EXISTS (SELECT 1 FROM drip.runs v WHERE v.id = r.reverted_by \
                         AND v.status IN ('pending', 'enqueued', 'running', 'paused'))";
    let secs = f64::from(retention_secs);
    Spi::connect_mut(|c| {
        let deleted = c
            .update(
                &format!(
                    "DELETE FROM drip.undo WHERE (run_id, batch_no) IN ( \
                       SELECT u.run_id, u.batch_no FROM drip.undo u JOIN drip.runs r ON r.id = u.run_id \
                       WHERE {EXPIRED} LIMIT $2)"
                ),
                None,
                &[secs.into(), PURGE_UNDO_ROWS.into()],
            )?
            .len() as i64;
        let marked = c
            .update(
                &format!(
                    "UPDATE drip.runs r SET undo = false, undo_purged_at = now() \
                     WHERE r.undo AND r.undo_purged_at IS NULL AND {EXPIRED} \
                       AND NOT EXISTS (SELECT 1 FROM drip.undo u WHERE u.run_id = r.id)"
                ),
                None,
                &[secs.into()],
            )?
            .len() as i64;
        Ok::<_, pgrx::spi::SpiError>(deleted + marked)
    })
    .map_err(DripError::from)
    .or_raise()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_reads_the_range_before_and_now_and_saves_one_row_per_batch() {
        let keys = vec!["a".to_string(), "\"B\"".to_string()];
        let assigned = vec![
            ("email".to_string(), "email".to_string()),
            ("tags".to_string(), "tags".to_string()),
        ];
        let array_like = vec!["tags".to_string()];
        let set = Shape {
            relation: "public.t",
            keys: &keys,
            plain: &[true, false],
            assigned: &assigned,
            delete: false,
            array_like: &array_like,
        };
        assert_eq!(
            before_sql(&set, true),
            "SELECT pg_catalog.array_agg(drip_rows) FROM public.t AS drip_rows \
             WHERE (drip_rows.a, drip_rows.\"B\") > ($1, $2) AND (drip_rows.a, drip_rows.\"B\") <= ($3, $4)"
        );
        assert_eq!(
            before_sql(&set, false),
            "SELECT pg_catalog.array_agg(drip_rows) FROM public.t AS drip_rows \
             WHERE (drip_rows.a, drip_rows.\"B\") <= ($1, $2)"
        );
        let sql = capture_sql(&set);
        assert!(
            sql.starts_with(
                "WITH drip_old AS (SELECT * FROM pg_catalog.unnest($3::public.t[]) AS o)"
            ),
            "{sql}"
        );
        assert!(sql.contains(
            "'k', pg_catalog.to_jsonb(pg_catalog.array_agg(ARRAY[drip_rows.a::text, drip.key_text(drip_rows.\"B\")]::text[]))"
        ), "{sql}");
        // Columnar: one aggregate per column; arrays with jsonb_agg (any dimensions).
        assert!(sql.contains(
            "'b', pg_catalog.jsonb_build_object('a', pg_catalog.to_jsonb(pg_catalog.array_agg(drip_rows.a)), \
             'B', pg_catalog.to_jsonb(pg_catalog.array_agg(drip_rows.\"B\")), \
             'email', pg_catalog.to_jsonb(pg_catalog.array_agg(drip_rows.email)), \
             'tags', pg_catalog.jsonb_agg(drip_rows.tags))"
        ), "{sql}");
        assert!(sql.contains(
            "'w', pg_catalog.jsonb_build_object('email', pg_catalog.to_jsonb(pg_catalog.array_agg(t.email)), \
             'tags', pg_catalog.jsonb_agg(t.tags))"
        ), "{sql}");
        assert!(
            sql.contains("JOIN public.t AS t ON (t.a, t.\"B\") = (drip_rows.a, drip_rows.\"B\")"),
            "{sql}"
        );
        assert!(sql.contains("WHERE (drip_rows.email::text, drip_rows.tags::text) IS DISTINCT FROM (t.email::text, t.tags::text)"), "{sql}");
        assert!(sql.contains("SELECT $1, $2, 'update', count(*), "), "{sql}");
        assert!(sql.ends_with("HAVING count(*) > 0"), "{sql}");
        let delete = Shape {
            delete: true,
            assigned: &[],
            ..set
        };
        let sql = capture_sql(&delete);
        assert!(
            sql.contains("'r', pg_catalog.jsonb_agg(drip_rows))"),
            "{sql}"
        );
        assert!(sql.contains("WHERE NOT EXISTS (SELECT 1 FROM public.t AS t WHERE (t.a, t.\"B\") = (drip_rows.a, drip_rows.\"B\"))"), "{sql}");
        assert!(sql.contains("'delete', count(*)"), "{sql}");
        assert_eq!(unquote("\"A\"\"b\""), "A\"b");
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal("a\\b"), "E'a\\\\b'");
        let many: Vec<(String, String)> = (0..45)
            .map(|i| (format!("c{i}"), "1".to_string()))
            .collect();
        assert_eq!(
            build_object(&many).matches("jsonb_build_object(").count(),
            2
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
        let sql = revert_statement("public.t", &["id".into()], &cols, true, &[]);
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
        let sql = revert_statement("public.t", &["id".into()], &cols, false, &[]);
        assert!(!sql.contains("INSERT INTO public.t"));
        // A SET run's revert compares and writes back only the assigned columns.
        let assigned = vec![("Email".to_string(), "\"Email\"".to_string())];
        let sql = revert_statement("public.t", &["id".into()], &cols, false, &assigned);
        assert!(
            sql.contains("WHEN pg_catalog.jsonb_build_object('Email', t.\"Email\") IS DISTINCT FROM u.drip_written THEN 'changed'"),
            "{sql}"
        );
        assert!(
            sql.contains(
                "SELECT pg_catalog.jsonb_build_object('id', x.b0 -> (k.n::integer - 1), \
             'Email', x.b1 -> (k.n::integer - 1)) AS drip_before, \
             pg_catalog.jsonb_build_object('Email', x.w0 -> (k.n::integer - 1)) AS drip_written"
            ),
            "{sql}"
        );
        assert!(sql.contains(
            "(SELECT b.items -> 'k' AS k, b.items -> 'b' -> 'id' AS b0, b.items -> 'b' -> 'Email' AS b1, \
             b.items -> 'w' -> 'Email' AS w0 OFFSET 0) AS x"
        ), "{sql}");
        assert!(!sql.contains("jsonb_each"), "{sql}");
    }
}
