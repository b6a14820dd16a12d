//! The SQL API: `drip.register`, `unregister`, `start`, `pause`, `resume` and `stop`.
//!
//! Each function validates everything before it writes anything; errors are raised with the
//! SQLSTATE chosen in `error.rs`, so a failed call leaves nothing behind.

use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::Value;

use crate::catalog;
use crate::compile::{self, Definition, Source};
use crate::error::{DripError, DripResult, OrRaise};
use crate::params;
use crate::pg::types;
use crate::status::Control;
use crate::worker::launch;

fn check_batch_size(batch_size: i32) -> DripResult<()> {
    if batch_size < 1 {
        return Err(DripError::BadOption(format!(
            "batch_size must be at least 1, got {batch_size}"
        )));
    }
    Ok(())
}

fn check_sleep(sleep: &Interval) -> DripResult<()> {
    let negative = Spi::get_one_with_args::<bool>("SELECT $1 < interval '0'", &[(*sleep).into()])?
        .unwrap_or(false);
    if negative {
        return Err(DripError::BadOption("sleep must not be negative".into()));
    }
    Ok(())
}

/// Validate and store a definition. Called by the SQL function `drip.register`, which returns
/// the stored row.
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe)]
fn register_internal(
    name: &str,
    relation: pg_sys::Oid,
    action: &str,
    scope: Option<&str>,
    params: Option<JsonB>,
    key: Option<Vec<String>>,
    batch_size: i32,
    sleep: Interval,
    max_attempts: i32,
    description: Option<&str>,
    replace: bool,
) {
    register_impl(
        name,
        relation,
        action,
        scope,
        params,
        key,
        batch_size,
        sleep,
        max_attempts,
        description,
        replace,
    )
    .or_raise();
    launch::recover_on_commit().or_raise();
}

#[allow(clippy::too_many_arguments)]
fn register_impl(
    name: &str,
    relation: pg_sys::Oid,
    action: &str,
    scope: Option<&str>,
    params: Option<JsonB>,
    key: Option<Vec<String>>,
    batch_size: i32,
    sleep: Interval,
    max_attempts: i32,
    description: Option<&str>,
    replace: bool,
) -> DripResult<()> {
    if name.is_empty() || name.len() > 63 {
        return Err(DripError::BadOption(
            "name must be 1 to 63 bytes long".into(),
        ));
    }
    check_batch_size(batch_size)?;
    check_sleep(&sleep)?;
    if max_attempts < 1 {
        return Err(DripError::BadOption(format!(
            "max_attempts must be at least 1, got {max_attempts}"
        )));
    }
    let params = params
        .map(|j| j.0)
        .unwrap_or(Value::Object(Default::default()));
    let compiled = compile::compile(&Source {
        relation_oid: relation,
        action,
        scope,
        params: &params,
        key: key.as_deref(),
    })?;
    compiled.validate()?;
    let decls = params::parse_declarations(&params)?;
    let key_names: Vec<String> = compiled.keys.iter().map(|k| k.name.clone()).collect();
    let scope = scope.filter(|s| !s.trim().is_empty());

    let exists = Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM drip.backfills WHERE name = $1)",
        &[name.into()],
    )?
    .unwrap_or(false);
    if exists && !replace {
        return Err(DripError::DuplicateBackfill(name.to_string()));
    }
    Spi::connect_mut(|c| {
        c.update(
            "INSERT INTO drip.backfills AS b (name, relation, action, action_kind, scope, params, key, \
                 batch_size, sleep, max_attempts, description, owner) \
             VALUES ($1, $2::oid::regclass, $3, $4, $5, $6, $7, $8, $9, $10, $11, current_user::regrole) \
             ON CONFLICT (name) DO UPDATE SET relation = excluded.relation, action = excluded.action, \
                 action_kind = excluded.action_kind, scope = excluded.scope, params = excluded.params, \
                 key = excluded.key, batch_size = excluded.batch_size, sleep = excluded.sleep, \
                 max_attempts = excluded.max_attempts, description = excluded.description, \
                 owner = excluded.owner, updated_at = now()",
            None,
            &[
                name.into(),
                relation.into(),
                compiled.action_text.as_str().into(),
                compiled.kind.as_str().into(),
                scope.into(),
                JsonB(params::declarations_to_json(&decls)).into(),
                key_names.into(),
                batch_size.into(),
                sleep.into(),
                max_attempts.into(),
                description.into(),
            ],
        )
        .map(|_| ())
    })?;
    Ok(())
}

/// Forget a backfill and its finished runs. Refused while it has an active run.
#[pg_extern(volatile, parallel_unsafe)]
fn unregister(name: &str) {
    unregister_impl(name).or_raise();
    launch::recover_on_commit().or_raise();
}

fn unregister_impl(name: &str) -> DripResult<()> {
    catalog::definition_for_update(name)?;
    if let Some((run_id, status)) = catalog::active_run(name)? {
        return Err(DripError::ActiveRunExists {
            backfill: name.to_string(),
            run_id,
            status,
        });
    }
    Spi::run_with_args("DELETE FROM drip.backfills WHERE name = $1", &[name.into()])?;
    Ok(())
}

/// Start a run of a backfill with parameter values; returns the run id. The run becomes
/// visible to the worker when the calling transaction commits.
#[pg_extern(volatile, parallel_unsafe)]
fn start(
    name: &str,
    params: default!(Option<JsonB>, "'{}'"),
    batch_size: default!(Option<i32>, "NULL"),
    sleep: default!(Option<Interval>, "NULL"),
    start_at: default!(Option<TimestampWithTimeZone>, "NULL"),
    note: default!(Option<&str>, "NULL"),
) -> i64 {
    let id = start_impl(name, params, batch_size, sleep, start_at, note).or_raise();
    launch::recover_on_commit().or_raise();
    id
}

fn start_impl(
    name: &str,
    values: Option<JsonB>,
    batch_size: Option<i32>,
    sleep: Option<Interval>,
    start_at: Option<TimestampWithTimeZone>,
    note: Option<&str>,
) -> DripResult<i64> {
    let definition = catalog::definition_for_update(name)?;
    if let Some((run_id, status)) = catalog::active_run(name)? {
        return Err(DripError::ActiveRunExists {
            backfill: name.to_string(),
            run_id,
            status,
        });
    }
    if let Some(b) = batch_size {
        check_batch_size(b)?;
    }
    if let Some(s) = &sleep {
        check_sleep(s)?;
    }
    let def = Definition::from_json(&definition)?;
    let compiled = def.compile()?;
    let decls: Vec<params::ParamDecl> = compiled.params.iter().map(|(d, _)| d.clone()).collect();
    let values = values.map(|j| j.0).unwrap_or(Value::Null);
    let effective = params::effective_values(&decls, &values)?;
    // Convert every value now, with its type's input function, so a bad value fails here.
    let mut args = Vec::with_capacity(effective.len());
    for ((decl, ty), v) in compiled.params.iter().zip(&effective) {
        args.push(types::input_datum(
            ty.oid,
            params::input_text(v, ty.is_array).as_deref(),
            &decl.name,
        )?);
    }
    let estimate = estimate_rows(&compiled, &args);

    let row = Spi::connect_mut(|c| {
        let t = c.update(
            &format!(
                "INSERT INTO drip.runs (backfill, status, params, batch_size, sleep, definition, note, \
                 start_at, rows_estimated) \
             SELECT b.name, CASE WHEN $5 > now() THEN 'pending' ELSE 'enqueued' END, $2, \
                    coalesce($3, b.batch_size), coalesce($4, b.sleep), $6, $7, $5, $8 \
             FROM drip.backfills b WHERE b.name = $1 \
             RETURNING {}",
                catalog::RUN_COLUMNS
            ),
            None,
            &[
                name.into(),
                JsonB(params::values_to_json(&decls, &effective)).into(),
                batch_size.into(),
                sleep.into(),
                start_at.into(),
                JsonB(definition.clone()).into(),
                note.into(),
                estimate.into(),
            ],
        )?;
        Ok::<_, DripError>(catalog::runs_from(t)?.pop())
    })?
    .ok_or_else(|| DripError::UnknownBackfill(name.to_string()))?;
    catalog::notify_run(&row, None)?;
    Ok(row.id)
}

/// The planner's estimate of the rows in scope (None if it cannot be had).
fn estimate_rows(compiled: &compile::Compiled, args: &[pgrx::datum::DatumWithOid]) -> Option<i64> {
    let sql = match &compiled.scope_sql {
        Some(s) => format!(
            "EXPLAIN (FORMAT JSON) SELECT 1 FROM {} WHERE (\n{s}\n)",
            compiled.relation
        ),
        None => format!("EXPLAIN (FORMAT JSON) SELECT 1 FROM {}", compiled.relation),
    };
    let plan = Spi::connect(|c| {
        let t = c.select(sql.as_str(), None, args)?;
        if let Some(r) = t.into_iter().next() {
            return r.get::<pgrx::Json>(1).map(|j| j.map(|j| j.0));
        }
        Ok(None)
    })
    .ok()
    .flatten()?;
    plan.get(0)?
        .get("Plan")?
        .get("Plan Rows")?
        .as_f64()
        .map(|f| f.round() as i64)
}

fn control(run_id: i64, what: Control) -> DripResult<String> {
    let run = catalog::lock_run(run_id)?;
    let to = what.apply(run_id, run.status)?;
    let row = catalog::set_run_status(&run, to, None)?;
    Ok(row.status.as_str().to_string())
}

/// Pause an enqueued or running run; a batch in flight finishes first. Returns the new status.
#[pg_extern(volatile, parallel_unsafe)]
fn pause(run_id: i64) -> String {
    let s = control(run_id, Control::Pause).or_raise();
    launch::recover_on_commit().or_raise();
    s
}

/// Resume a paused run from its cursor. Returns the new status.
#[pg_extern(volatile, parallel_unsafe)]
fn resume(run_id: i64) -> String {
    let s = control(run_id, Control::Resume).or_raise();
    launch::recover_on_commit().or_raise();
    s
}

/// Stop an active run for good; a batch in flight finishes first. Returns the new status.
#[pg_extern(volatile, parallel_unsafe)]
fn stop(run_id: i64) -> String {
    let s = control(run_id, Control::Stop).or_raise();
    launch::recover_on_commit().or_raise();
    s
}

extension_sql!(
    r#"
CREATE FUNCTION drip.register(
    name text, relation regclass, action text,
    scope text DEFAULT NULL, params jsonb DEFAULT '{}', key text[] DEFAULT NULL,
    batch_size integer DEFAULT 1000, sleep interval DEFAULT '100 milliseconds',
    max_attempts integer DEFAULT 3, description text DEFAULT NULL,
    replace boolean DEFAULT false) RETURNS drip.backfills
LANGUAGE sql VOLATILE AS $fn$
    SELECT drip.register_internal($1, $2::oid, $3, $4, $5, $6, $7, $8, $9, $10, $11);
    SELECT * FROM drip.backfills WHERE backfills.name = $1;
$fn$;
COMMENT ON FUNCTION drip.register(text, regclass, text, text, jsonb, text[], integer, interval, integer, text, boolean)
    IS 'Define (or with replace => true redefine) a backfill; validates everything up front.';
"#,
    name = "register_wrapper",
    requires = ["bootstrap", register_internal]
);
