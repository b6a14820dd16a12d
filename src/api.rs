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
use crate::distribution::Placement;
use crate::error::{required, DripError, DripResult, OrRaise};
use crate::params;
use crate::pg::{identity, types};
use crate::security;
use crate::status::Control;
use crate::worker::launch;

/// Finish a SQL API call: raise its error, or else make sure a scheduler will pick up whatever
/// waits once the transaction commits (this is also how runs resume after a restart without
/// shared_preload_libraries).
fn finish_call<T>(result: DripResult<T>) -> T {
    let value = result.or_raise();
    launch::recover_on_commit().or_raise();
    value
}

fn check_batch_size(batch_size: i32) -> DripResult<()> {
    if batch_size < 1 {
        return Err(DripError::BadOption(format!(
            "batch_size must be at least 1, got {batch_size}"
        )));
    }
    Ok(())
}

/// Postgres keeps lock_timeout and statement_timeout in milliseconds in an int: longer values
/// would be refused by every batch, so they are refused once, up front.
const TIMEOUT_MAX_MS: i64 = i32::MAX as i64;

fn check_interval(what: &str, value: &Interval) -> DripResult<()> {
    check_interval_at_most(what, value, None)
}

fn check_timeout(what: &str, value: &Interval) -> DripResult<()> {
    check_interval_at_most(what, value, Some(TIMEOUT_MAX_MS))
}

fn check_interval_at_most(what: &str, value: &Interval, max_ms: Option<i64>) -> DripResult<()> {
    let (negative, too_long) = Spi::get_two_with_args::<bool, bool>(
        "SELECT $1 < interval '0', extract(epoch FROM $1) * 1000 > $2",
        &[(*value).into(), max_ms.into()],
    )?;
    if negative.unwrap_or(false) {
        return Err(DripError::BadOption(format!("{what} must not be negative")));
    }
    if let (Some(max), Some(true)) = (max_ms, too_long) {
        return Err(DripError::BadOption(format!(
            "{what} must be at most {max} milliseconds (about 24 days); use 0 for no limit"
        )));
    }
    Ok(())
}

/// The batch settings shared by `register` (defaults of the backfill) and `start` (overrides).
struct BatchOptions {
    batch_size: i32,
    sleep: Interval,
    lock_timeout: Interval,
    statement_timeout: Interval,
    target_batch_time: Option<Interval>,
    min_batch_size: i32,
    max_batch_size: i32,
    max_replica_lag: Interval,
}

fn check_bounds(min: i32, max: i32) -> DripResult<()> {
    if min < 1 || max < min {
        return Err(DripError::BadOption(format!(
            "min_batch_size must be at least 1 and max_batch_size at least min_batch_size, got {min} and {max}"
        )));
    }
    Ok(())
}

impl BatchOptions {
    fn check(&self) -> DripResult<()> {
        check_batch_size(self.batch_size)?;
        check_interval("sleep", &self.sleep)?;
        check_timeout("lock_timeout", &self.lock_timeout)?;
        check_timeout("statement_timeout", &self.statement_timeout)?;
        if let Some(t) = &self.target_batch_time {
            check_interval("target_batch_time", t)?;
        }
        check_bounds(self.min_batch_size, self.max_batch_size)?;
        check_interval("max_replica_lag", &self.max_replica_lag)
    }
}

/// Validate and store a definition. Called by the SQL function `drip.register`, which returns
/// the stored row.
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe)]
fn register_internal(
    name: Option<&str>,
    relation: Option<pg_sys::Oid>,
    action: Option<&str>,
    scope: Option<&str>,
    params: Option<JsonB>,
    key: Option<Vec<String>>,
    batch_size: Option<i32>,
    sleep: Option<Interval>,
    max_attempts: Option<i32>,
    description: Option<&str>,
    replace: Option<bool>,
    lock_timeout: Option<Interval>,
    statement_timeout: Option<Interval>,
    target_batch_time: Option<Interval>,
    min_batch_size: Option<i32>,
    max_batch_size: Option<i32>,
    max_replica_lag: Option<Interval>,
    throttle_query: Option<&str>,
    mode: Option<&str>,
    on_row_error: Option<&str>,
    undo: Option<bool>,
) {
    let call = || -> DripResult<()> {
        let definition = NewBackfill {
            name: required(name, "name")?,
            relation: required(relation, "relation")?,
            action: required(action, "action")?,
            scope: scope.filter(|s| !s.trim().is_empty()),
            params: params
                .map(|j| j.0)
                .unwrap_or(Value::Object(Default::default())),
            key,
            max_attempts: required(max_attempts, "max_attempts")?,
            description,
            throttle_query: throttle_query.filter(|q| !q.trim().is_empty()),
            mode: required(mode, "mode")?,
            on_row_error: required(on_row_error, "on_row_error")?,
            undo: required(undo, "undo")?,
        };
        let options = BatchOptions {
            batch_size: required(batch_size, "batch_size")?,
            sleep: required(sleep, "sleep")?,
            lock_timeout: required(lock_timeout, "lock_timeout")?,
            statement_timeout: required(statement_timeout, "statement_timeout")?,
            target_batch_time,
            min_batch_size: required(min_batch_size, "min_batch_size")?,
            max_batch_size: required(max_batch_size, "max_batch_size")?,
            max_replica_lag: required(max_replica_lag, "max_replica_lag")?,
        };
        register_impl(&definition, &options, required(replace, "replace")?)
    };
    finish_call(call())
}

/// What `register` is asked to store.
struct NewBackfill<'a> {
    name: &'a str,
    relation: pg_sys::Oid,
    action: &'a str,
    scope: Option<&'a str>,
    params: Value,
    key: Option<Vec<String>>,
    max_attempts: i32,
    description: Option<&'a str>,
    throttle_query: Option<&'a str>,
    mode: &'a str,
    on_row_error: &'a str,
    /// Runs keep undo data by default (drip.revert).
    undo: bool,
}

fn register_impl(def: &NewBackfill, options: &BatchOptions, replace: bool) -> DripResult<()> {
    let name = def.name;
    if name.is_empty() || name.len() > 63 {
        return Err(DripError::BadOption(
            "name must be 1 to 63 bytes long".into(),
        ));
    }
    if name.trim().is_empty() || name.chars().any(char::is_control) {
        return Err(DripError::BadOption(format!(
            "name {name:?} must contain a visible character and no control characters"
        )));
    }
    security::check_visible_name("backfill", name)?;
    options.check()?;
    if !matches!(def.mode, "batch" | "row") {
        return Err(DripError::BadOption(format!(
            "mode must be 'batch' or 'row', not '{}'",
            def.mode
        )));
    }
    if !matches!(def.on_row_error, "fail" | "skip") {
        return Err(DripError::BadOption(format!(
            "on_row_error must be 'fail' or 'skip', not '{}'",
            def.on_row_error
        )));
    }
    if def.max_attempts < 1 {
        return Err(DripError::BadOption(format!(
            "max_attempts must be at least 1, got {}",
            def.max_attempts
        )));
    }
    let compiled = compile::compile(&Source {
        relation_oid: def.relation,
        action: def.action,
        scope: def.scope,
        params: &def.params,
        key: def.key.as_deref(),
        capped: false,
        sharded: false,
    })?;
    // Parsed, analyzed and planned as the caller: Postgres checks the caller's privileges for
    // every object the scope and action touch (UPDATE for SET, DELETE for DELETE, ...).
    compiled.validate(def.mode == "row")?;
    crate::undo::check_supported(&compiled, def.undo)?;
    if def.undo {
        Placement::of(def.relation)?.check_undo(&compiled.relation)?;
    }
    let throttle_query = def
        .throttle_query
        .map(compile::throttle_query)
        .transpose()?;
    let decls = params::parse_declarations(&def.params)?;
    let key_names: Vec<String> = compiled.keys.iter().map(|k| k.name.clone()).collect();
    let caller = identity::current_user();
    let search_path = Spi::get_one::<String>("SELECT pg_catalog.current_setting('search_path')")?
        .unwrap_or_default();

    security::as_catalog(|| {
        let existing = Spi::get_one_with_args::<pg_sys::Oid>(
            "SELECT owner::oid FROM drip.backfills WHERE name = $1 FOR UPDATE",
            &[name.into()],
        );
        match existing {
            Ok(Some(owner)) if replace => security::check_control(caller, owner, name)?,
            Ok(Some(_)) => return Err(DripError::DuplicateBackfill(name.to_string())),
            Ok(None) | Err(pgrx::spi::SpiError::InvalidPosition) => {}
            Err(e) => return Err(e.into()),
        }
        let stored = StoredExtras {
            owner: caller,
            search_path: &search_path,
            throttle_query: throttle_query.as_deref(),
        };
        insert_backfill(def, options, &compiled, &decls, key_names, &stored)
    })
}

/// What register stores besides the definition and options.
struct StoredExtras<'a> {
    owner: pg_sys::Oid,
    search_path: &'a str,
    throttle_query: Option<&'a str>,
}

fn insert_backfill(
    def: &NewBackfill,
    options: &BatchOptions,
    compiled: &compile::Compiled,
    decls: &[params::ParamDecl],
    key_names: Vec<String>,
    extras: &StoredExtras,
) -> DripResult<()> {
    let name = def.name;
    Spi::connect_mut(|c| {
        c.update(
            "INSERT INTO drip.backfills AS b (name, relation, action, action_kind, scope, params, key, \
                 batch_size, sleep, max_attempts, description, owner, lock_timeout, statement_timeout, \
                 search_path, target_batch_time, min_batch_size, max_batch_size, max_replica_lag, \
                 throttle_query, mode, on_row_error, undo) \
             VALUES ($1, $2::oid::regclass, $3, $4, $5, $6, $7, $8, $9, $10, $11, $14::oid::regrole, \
                 $12, $13, $15, $16, $17, $18, $19, $20, $21, $22, $23) \
             ON CONFLICT (name) DO UPDATE SET relation = excluded.relation, action = excluded.action, \
                 action_kind = excluded.action_kind, scope = excluded.scope, params = excluded.params, \
                 key = excluded.key, batch_size = excluded.batch_size, sleep = excluded.sleep, \
                 max_attempts = excluded.max_attempts, description = excluded.description, \
                 owner = excluded.owner, lock_timeout = excluded.lock_timeout, \
                 statement_timeout = excluded.statement_timeout, search_path = excluded.search_path, \
                 target_batch_time = excluded.target_batch_time, min_batch_size = excluded.min_batch_size, \
                 max_batch_size = excluded.max_batch_size, max_replica_lag = excluded.max_replica_lag, \
                 throttle_query = excluded.throttle_query, mode = excluded.mode, \
                 on_row_error = excluded.on_row_error, undo = excluded.undo, \
                 updated_at = now()",
            None,
            &[
                name.into(),
                def.relation.into(),
                compiled.action_text.as_str().into(),
                compiled.kind.as_str().into(),
                def.scope.into(),
                JsonB(params::declarations_to_json(decls)).into(),
                key_names.into(),
                options.batch_size.into(),
                options.sleep.into(),
                def.max_attempts.into(),
                def.description.into(),
                options.lock_timeout.into(),
                options.statement_timeout.into(),
                extras.owner.into(),
                extras.search_path.into(),
                options.target_batch_time.into(),
                options.min_batch_size.into(),
                options.max_batch_size.into(),
                options.max_replica_lag.into(),
                extras.throttle_query.into(),
                def.mode.into(),
                def.on_row_error.into(),
                def.undo.into(),
            ],
        )
        .map(|_| ())
    })?;
    Ok(())
}

/// Forget a backfill and its finished runs. Refused while it has an active run.
#[pg_extern(volatile, parallel_unsafe)]
fn unregister(name: Option<&str>) {
    finish_call(required(name, "name").and_then(unregister_impl))
}

fn unregister_impl(name: &str) -> DripResult<()> {
    let caller = identity::current_user();
    security::as_catalog(|| {
        let def = Definition::from_json(&catalog::definition_for_update(name)?)?;
        security::check_control(caller, def.owner(), name)?;
        if let Some((run_id, status)) = catalog::active_run(name)? {
            return Err(DripError::ActiveRunExists {
                backfill: name.to_string(),
                run_id,
                status,
            });
        }
        Spi::run_with_args(
            "DELETE FROM drip.batches WHERE run_id IN (SELECT id FROM drip.runs WHERE backfill = $1)",
            &[name.into()],
        )?;
        // Undo data and revert conflicts of its runs go with them.
        Spi::run_with_args(
            "DELETE FROM drip.undo WHERE run_id IN (SELECT id FROM drip.runs WHERE backfill = $1)",
            &[name.into()],
        )?;
        Spi::run_with_args(
            "DELETE FROM drip.revert_conflicts WHERE run_id IN (SELECT id FROM drip.runs WHERE backfill = $1)",
            &[name.into()],
        )?;
        Spi::run_with_args("DELETE FROM drip.backfills WHERE name = $1", &[name.into()])?;
        Ok(())
    })
}

/// Start a run of a backfill with parameter values; returns the run id. The run becomes
/// visible to the worker when the calling transaction commits.
#[pg_extern(volatile, parallel_unsafe)]
#[allow(clippy::too_many_arguments)]
fn start(
    name: Option<&str>,
    params: default!(Option<JsonB>, "'{}'"),
    batch_size: default!(Option<i32>, "NULL"),
    sleep: default!(Option<Interval>, "NULL"),
    start_at: default!(Option<TimestampWithTimeZone>, "NULL"),
    note: default!(Option<&str>, "NULL"),
    lock_timeout: default!(Option<Interval>, "NULL"),
    statement_timeout: default!(Option<Interval>, "NULL"),
    target_batch_time: default!(Option<Interval>, "NULL"),
    min_batch_size: default!(Option<i32>, "NULL"),
    max_batch_size: default!(Option<i32>, "NULL"),
    max_replica_lag: default!(Option<Interval>, "NULL"),
    throttle_query: default!(Option<&str>, "NULL"),
    from_key: default!(Option<&str>, "NULL"),
    to_key: default!(Option<&str>, "NULL"),
    follow_inserts: default!(Option<bool>, false),
    after: default!(Option<i64>, "NULL"),
    parallel: default!(Option<i32>, 1),
    undo: default!(Option<bool>, "NULL"),
) -> i64 {
    let (name, follow_inserts, parallel) = match (
        required(name, "name"),
        required(follow_inserts, "follow_inserts"),
        required(parallel, "parallel"),
    ) {
        (Ok(n), Ok(f), Ok(p)) => (n, f, p),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => e.raise(),
    };
    let range = RunRange {
        from_key,
        to_key,
        follow_inserts,
        after,
        parallel,
    };
    let overrides = RunOverrides {
        batch_size,
        sleep,
        lock_timeout,
        statement_timeout,
        target_batch_time,
        min_batch_size,
        max_batch_size,
        max_replica_lag,
        throttle_query: throttle_query.filter(|q| !q.trim().is_empty()),
        undo,
    };
    finish_call(start_impl(name, params, &overrides, &range, start_at, note))
}

/// Which part of the key range a run walks, and what it waits for.
struct RunRange<'a> {
    /// Exclusive lower end (text, or a JSON array for a composite key).
    from_key: Option<&'a str>,
    /// Inclusive upper end; by default the largest key at start (frozen).
    to_key: Option<&'a str>,
    /// No frozen upper end: keep going until caught up with inserts.
    follow_inserts: bool,
    /// Start only once this run has completed.
    after: Option<i64>,
    /// Split the range into this many slices, each with its own worker.
    parallel: i32,
}

/// The key columns, quoted, for the range queries of `keyset`.
fn quoted_keys(compiled: &compile::Compiled) -> Vec<String> {
    compiled
        .keys
        .iter()
        .map(|k| pgrx::spi::quote_identifier(&k.name))
        .collect()
}

/// Read one key (canonical text per column) from the first row of a query, if any.
pub(crate) fn read_key(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
    k: usize,
) -> DripResult<Option<Vec<String>>> {
    Ok(Spi::connect(|c| {
        let t = c.select(sql, None, args)?;
        match t.into_iter().next() {
            Some(r) => (1..=k)
                .map(|j| r.get::<String>(j).map(|v| v.unwrap_or_default()))
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            None => Ok(None),
        }
    })?)
}

/// Split keys that cut `(from, to]` into at most `n` slices of about the same number of keys.
/// Fewer keys than slices give fewer split keys (none for one key or none).
fn split_points(
    compiled: &compile::Compiled,
    from: Option<&Vec<String>>,
    to: Option<&Vec<String>>,
    n: i32,
) -> DripResult<Vec<Vec<String>>> {
    let sql = crate::keyset::range(
        &compiled.relation,
        &quoted_keys(compiled),
        from.is_some(),
        to.is_some(),
    );
    let bounds = || -> DripResult<Vec<pgrx::datum::DatumWithOid<'static>>> {
        let mut args = Vec::new();
        for key in [from, to].into_iter().flatten() {
            args.extend(compiled.key_args(key)?);
        }
        Ok(args)
    };
    let total = Spi::get_one_with_args::<i64>(&sql.count, &bounds()?)?.unwrap_or(0);
    let mut points: Vec<Vec<String>> = Vec::new();
    for i in 1..n as i64 {
        // The last key of slice i: keys before it number about i * total / n.
        let offset = i * total / n as i64 - 1;
        if offset < 0 {
            continue;
        }
        let mut args = bounds()?;
        args.push(offset.into());
        if let Some(p) = read_key(&sql.nth, &args, compiled.keys.len())? {
            if points.last() != Some(&p) {
                points.push(p);
            }
        }
    }
    // A split at the very end of the range would leave an empty last slice.
    if let (Some(last), Some(to)) = (points.last(), to) {
        if last == to {
            points.pop();
        }
    }
    Ok(points)
}

/// Key values given as text in the caller's notation: a JSON array for a composite key, or one
/// value. Returns them checked and in the canonical text the engine stores.
pub(crate) fn key_values(
    compiled: &compile::Compiled,
    what: &'static str,
    text: &str,
) -> DripResult<Vec<String>> {
    let k = compiled.keys.len();
    let values: Vec<String> = match serde_json::from_str::<Value>(text.trim()) {
        Ok(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        _ => vec![text.to_string()],
    };
    if values.len() != k {
        return Err(DripError::BadOption(format!(
            "{what} must give {k} key value(s) ({}), got {}",
            compiled
                .keys
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            values.len()
        )));
    }
    compiled
        .keys
        .iter()
        .zip(&values)
        .map(|(col, v)| types::canonical_key_text(col.type_oid, v, &format!("{what}.{}", col.name)))
        .collect()
}

/// The largest key now (canonical text per column), read as the caller; None for an empty table.
fn largest_key(compiled: &compile::Compiled) -> DripResult<Option<Vec<String>>> {
    let sql = crate::keyset::range(&compiled.relation, &quoted_keys(compiled), false, false);
    read_key(&sql.largest, &[], compiled.keys.len())
}

/// Batch settings given to `start`; NULL keeps the backfill's.
struct RunOverrides<'a> {
    batch_size: Option<i32>,
    sleep: Option<Interval>,
    lock_timeout: Option<Interval>,
    statement_timeout: Option<Interval>,
    target_batch_time: Option<Interval>,
    min_batch_size: Option<i32>,
    max_batch_size: Option<i32>,
    max_replica_lag: Option<Interval>,
    throttle_query: Option<&'a str>,
    /// Keep undo data (NULL: the backfill's setting).
    undo: Option<bool>,
}

impl RunOverrides<'_> {
    fn check(&self) -> DripResult<()> {
        if let Some(b) = self.batch_size {
            check_batch_size(b)?;
        }
        if self.min_batch_size.is_some() || self.max_batch_size.is_some() {
            check_bounds(
                self.min_batch_size.unwrap_or(1),
                self.max_batch_size.unwrap_or(i32::MAX),
            )?;
        }
        for (what, v, max_ms) in [
            ("sleep", &self.sleep, None),
            ("lock_timeout", &self.lock_timeout, Some(TIMEOUT_MAX_MS)),
            (
                "statement_timeout",
                &self.statement_timeout,
                Some(TIMEOUT_MAX_MS),
            ),
            ("target_batch_time", &self.target_batch_time, None),
            ("max_replica_lag", &self.max_replica_lag, None),
        ] {
            if let Some(v) = v {
                check_interval_at_most(what, v, max_ms)?;
            }
        }
        Ok(())
    }
}

fn start_impl(
    name: &str,
    values: Option<JsonB>,
    overrides: &RunOverrides,
    range: &RunRange,
    start_at: Option<TimestampWithTimeZone>,
    note: Option<&str>,
) -> DripResult<i64> {
    let caller = identity::current_user();
    let definition = security::as_catalog(|| {
        let definition = catalog::definition_for_update(name)?;
        let def = Definition::from_json(&definition)?;
        security::check_control(caller, def.owner(), name)?;
        if let Some((run_id, status)) = catalog::active_run(name)? {
            return Err(DripError::ActiveRunExists {
                backfill: name.to_string(),
                run_id,
                status,
            });
        }
        Ok(definition)
    })?;
    overrides.check()?;
    if let Some(at) = start_at {
        let finite =
            Spi::get_one_with_args::<bool>("SELECT pg_catalog.isfinite($1)", &[at.into()])?
                .unwrap_or(false);
        if !finite {
            let text = Spi::get_one_with_args::<String>("SELECT $1::text", &[at.into()])?
                .unwrap_or_default();
            return Err(DripError::UnschedulableStartAt(text));
        }
    }
    if !(1..=64).contains(&range.parallel) {
        return Err(DripError::BadOption(format!(
            "parallel must be between 1 and 64, got {}",
            range.parallel
        )));
    }
    let def = Definition::from_json(&definition)?;
    // The scope, action, parameter types and keys are resolved with the search_path registered
    // with the backfill, as the runner does, not with the caller's.
    let search_path = def.search_path.clone();
    crate::pg::settings::with(&[(c"search_path", search_path.as_str())], || {
        start_planned(
            name,
            &definition,
            &def,
            values,
            overrides,
            range,
            start_at,
            note,
            caller,
        )
    })
}

/// `start` once the definition is read and checked: plan the run and store it.
#[allow(clippy::too_many_arguments)]
fn start_planned(
    name: &str,
    definition: &Value,
    def: &Definition,
    values: Option<JsonB>,
    overrides: &RunOverrides,
    range: &RunRange,
    start_at: Option<TimestampWithTimeZone>,
    note: Option<&str>,
    caller: pg_sys::Oid,
) -> DripResult<i64> {
    let throttle_query = overrides
        .throttle_query
        .map(compile::throttle_query)
        .transpose()?;
    let compiled = def.compile()?;
    let undo = overrides
        .undo
        .unwrap_or_else(|| definition.get("undo").and_then(Value::as_bool) == Some(true));
    crate::undo::check_supported(&compiled, undo)?;
    let relation = pg_sys::Oid::from(def.relation_oid);
    let placement = Placement::of(relation)?;
    if undo {
        placement.check_undo(&compiled.relation)?;
    }
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
    let started_by = security::role_name(caller)?;
    let from_key = range
        .from_key
        .map(|t| key_values(&compiled, "from_key", t))
        .transpose()?;
    let to_key = match range.to_key {
        Some(t) => Some(key_values(&compiled, "to_key", t)?),
        None if range.follow_inserts => None,
        None => largest_key(&compiled)?,
    };
    // On a hash-distributed Citus table walked by its distribution column: one sub-run per
    // shard, whatever `parallel` says (see distribution::shard_walk).
    let shard_slices = placement.shard_slices(relation, &compiled.keys)?;
    // Otherwise slices come from the split keys actually found: a range with fewer keys than
    // requested slices gets fewer slices, and one with a single key (or none) runs as a plain
    // run. The stored `parallel` and the slice rows always agree, so no key range has two
    // workers.
    let splits = if shard_slices.is_none() && range.parallel > 1 {
        split_points(
            &compiled,
            from_key.as_ref(),
            to_key.as_ref(),
            range.parallel,
        )?
    } else {
        Vec::new()
    };
    let slices = match &shard_slices {
        Some(shards) => shards.len() as i32,
        None if splits.is_empty() => 1,
        None => splits.len() as i32 + 1,
    };
    if let Some(after) = range.after {
        security::as_catalog(|| {
            let awaited = catalog::lock_run(after)?;
            security::check_run_control(
                caller,
                after,
                catalog::run_owner(after)?,
                &awaited.backfill,
            )
        })?;
    }

    let row = security::as_catalog(|| {
        // Under REPEATABLE READ or SERIALIZABLE a concurrent start is invisible to the check
        // above; the unique index catches it, and the caller gets the documented 55006.
        let inserted = crate::pg::subxact::try_in_subtransaction(|| {
            Spi::connect_mut(|c| {
                let t = c.update(
            &format!(
                "INSERT INTO drip.runs (backfill, status, params, batch_size, sleep, definition, note, \
                 start_at, rows_estimated, lock_timeout, statement_timeout, owner, started_by, \
                 target_batch_time, min_batch_size, max_batch_size, max_replica_lag, throttle_query, \
                 cursor, to_key, follow_inserts, after_run, parallel, undo) \
             SELECT b.name, CASE WHEN $5 > now() OR $20::bigint IS NOT NULL THEN 'pending' ELSE 'enqueued' END, $2, \
                    coalesce($3, b.batch_size), coalesce($4, b.sleep), $6, $7, $5, $8, \
                    coalesce($9, b.lock_timeout), coalesce($10, b.statement_timeout), b.owner, $11, \
                    coalesce($12, b.target_batch_time), coalesce($13, b.min_batch_size), \
                    coalesce($14, b.max_batch_size), coalesce($15, b.max_replica_lag), \
                    coalesce($16, b.throttle_query), $17, $18, $19, $20, $21, coalesce($22, b.undo) \
             FROM drip.backfills b WHERE b.name = $1 \
             RETURNING {}",
                catalog::RUN_COLUMNS
            ),
            None,
            &[
                name.into(),
                JsonB(params::values_to_json(&decls, &effective)).into(),
                overrides.batch_size.into(),
                overrides.sleep.into(),
                start_at.into(),
                JsonB(definition.clone()).into(),
                note.into(),
                estimate.into(),
                overrides.lock_timeout.into(),
                overrides.statement_timeout.into(),
                started_by.as_str().into(),
                overrides.target_batch_time.into(),
                overrides.min_batch_size.into(),
                overrides.max_batch_size.into(),
                overrides.max_replica_lag.into(),
                throttle_query.as_deref().into(),
                from_key.clone().into(),
                to_key.clone().into(),
                range.follow_inserts.into(),
                range.after.into(),
                slices.into(),
                overrides.undo.into(),
            ],
        )?;
                Ok::<_, DripError>(catalog::runs_from(t)?.pop())
            })
        });
        let row = match inserted {
            Ok(r) => r?,
            Err(e) if e.sqlstate == "23505" || e.sqlstate == "40001" => {
                return Err(DripError::ConcurrentStart(name.to_string()))
            }
            Err(e) => return Err(DripError::Internal(e.message)),
        }
        .ok_or_else(|| DripError::UnknownBackfill(name.to_string()))?;
        if let Some(shards) = &shard_slices {
            // Sub-run i walks the whole key range, restricted to shard i's hash range.
            for (i, s) in shards.iter().enumerate() {
                Spi::run_with_args(
                    "INSERT INTO drip.slices (run_id, slice, low_key, high_key, hash_min, hash_max, node_group) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    &[
                        row.id.into(),
                        (i as i32).into(),
                        from_key.clone().into(),
                        to_key.clone().into(),
                        s.hash_min.into(),
                        s.hash_max.into(),
                        s.node_group.into(),
                    ],
                )?;
            }
        } else if slices > 1 {
            // Slice i covers (bound i-1, bound i]: the run's range cut at the split keys.
            let mut bounds: Vec<Option<Vec<String>>> = vec![from_key.clone()];
            bounds.extend(splits.iter().cloned().map(Some));
            bounds.push(to_key.clone());
            for (i, w) in bounds.windows(2).enumerate() {
                Spi::run_with_args(
                    "INSERT INTO drip.slices (run_id, slice, low_key, high_key) VALUES ($1, $2, $3, $4)",
                    &[row.id.into(), (i as i32).into(), w[0].clone().into(), w[1].clone().into()],
                )?;
            }
        }
        catalog::notify_run(&row, None)?;
        Ok(row)
    })?;
    Ok(row.id)
}

/// The planner's estimate of the rows in scope (None if it cannot be had).
pub(crate) fn estimate_rows(
    compiled: &compile::Compiled,
    args: &[pgrx::datum::DatumWithOid],
) -> Option<i64> {
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
    // A distributed plan's own row count is Citus's constant; its tasks' plans are real.
    if let Some(rows) = crate::distribution::distributed_estimate(&plan) {
        return Some(rows);
    }
    plan.get(0)?
        .get("Plan")?
        .get("Plan Rows")?
        .as_f64()
        .map(|f| f.round() as i64)
}

/// Lock a run for a change by the current caller: it must exist and the caller must be allowed
/// to control it, else 42704 either way (see `security::check_run_control`). Runs as the
/// catalog owner.
fn lock_run_for_caller(run_id: i64, caller: pg_sys::Oid) -> DripResult<catalog::RunRow> {
    let run = catalog::lock_run(run_id)?;
    security::check_run_control(caller, run_id, catalog::run_owner(run_id)?, &run.backfill)?;
    Ok(run)
}

fn control(run_id: i64, what: Control) -> DripResult<String> {
    let caller = identity::current_user();
    security::as_catalog(|| {
        let run = lock_run_for_caller(run_id, caller)?;
        let to = what.apply(run_id, run.status)?;
        let row = catalog::set_run_status(&run, to, None)?;
        Ok(row.status.as_str().to_string())
    })
}

/// Pause an enqueued or running run; a batch in flight finishes first. Returns the new status.
#[pg_extern(volatile, parallel_unsafe)]
fn pause(run_id: Option<i64>) -> String {
    finish_call(required(run_id, "run_id").and_then(|id| control(id, Control::Pause)))
}

/// Resume a paused run from its cursor. Returns the new status.
#[pg_extern(volatile, parallel_unsafe)]
fn resume(run_id: Option<i64>) -> String {
    finish_call(required(run_id, "run_id").and_then(|id| control(id, Control::Resume)))
}

/// Stop an active run for good; a batch in flight finishes first. Returns the new status.
#[pg_extern(volatile, parallel_unsafe)]
fn stop(run_id: Option<i64>) -> String {
    finish_call(required(run_id, "run_id").and_then(|id| control(id, Control::Stop)))
}

/// Move a failed or stopped run back to enqueued; it goes on from its cursor with fresh attempts.
/// Another active run of the same backfill blocks it. Returns the new status.
#[pg_extern(volatile, parallel_unsafe)]
fn retry(run_id: Option<i64>) -> String {
    finish_call(required(run_id, "run_id").and_then(retry_impl))
}

fn retry_impl(run_id: i64) -> DripResult<String> {
    let caller = identity::current_user();
    security::as_catalog(|| {
        let run = lock_run_for_caller(run_id, caller)?;
        let to = Control::Retry.apply(run_id, run.status)?;
        catalog::definition_for_update(&run.backfill)?;
        if let Some((other, status)) = catalog::active_run(&run.backfill)? {
            return Err(DripError::ActiveRunExists {
                backfill: run.backfill.clone(),
                run_id: other,
                status,
            });
        }
        Ok(catalog::set_run_status(&run, to, None)?
            .status
            .as_str()
            .to_string())
    })
}

/// Change a run's batch settings from its next batch on. Called by the SQL function
/// `drip.alter`, which returns the run's row.
#[pg_extern(volatile, parallel_unsafe)]
fn alter_internal(
    run_id: Option<i64>,
    batch_size: Option<i32>,
    sleep: Option<Interval>,
    target_batch_time: Option<Interval>,
    max_replica_lag: Option<Interval>,
) {
    let changes = RunOverrides {
        batch_size,
        sleep,
        lock_timeout: None,
        statement_timeout: None,
        target_batch_time,
        min_batch_size: None,
        max_batch_size: None,
        max_replica_lag,
        throttle_query: None,
        undo: None,
    };
    required(run_id, "run_id")
        .and_then(|id| alter_impl(id, &changes))
        .or_raise();
}

fn alter_impl(run_id: i64, changes: &RunOverrides) -> DripResult<()> {
    changes.check()?;
    let caller = identity::current_user();
    security::as_catalog(|| {
        let run = lock_run_for_caller(run_id, caller)?;
        if !run.status.is_active() {
            return Err(DripError::WrongStatus {
                action: "alter",
                run_id,
                status: run.status.as_str().to_string(),
            });
        }
        Spi::run_with_args(
            "UPDATE drip.runs SET batch_size = coalesce($2, batch_size), sleep = coalesce($3, sleep), \
                 target_batch_time = CASE WHEN $4 IS NULL THEN target_batch_time \
                                          WHEN $4 = interval '0' THEN NULL ELSE $4 END, \
                 max_replica_lag = coalesce($5, max_replica_lag) \
             WHERE id = $1",
            &[
                run_id.into(),
                changes.batch_size.into(),
                changes.sleep.into(),
                changes.target_batch_time.into(),
                changes.max_replica_lag.into(),
            ],
        )?;
        Ok(())
    })
}

extension_sql!(
    r#"
CREATE FUNCTION drip.alter(run_id bigint, batch_size integer DEFAULT NULL,
    sleep interval DEFAULT NULL, target_batch_time interval DEFAULT NULL,
    max_replica_lag interval DEFAULT NULL) RETURNS drip.runs
LANGUAGE sql VOLATILE AS $fn$
    SELECT drip.alter_internal($1, $2, $3, $4, $5);
    SELECT * FROM drip.runs WHERE runs.id = $1;
$fn$;
COMMENT ON FUNCTION drip.alter(bigint, integer, interval, interval, interval)
    IS 'Change an active run''s batch_size, sleep, target_batch_time (0 = fixed size) or max_replica_lag from its next batch on.';
"#,
    name = "alter_wrapper",
    requires = ["bootstrap", alter_internal]
);

extension_sql!(
    r#"
CREATE FUNCTION drip.register(
    name text, relation regclass, action text,
    scope text DEFAULT NULL, params jsonb DEFAULT '{}', key text[] DEFAULT NULL,
    batch_size integer DEFAULT 1000, sleep interval DEFAULT '100 milliseconds',
    max_attempts integer DEFAULT 3, description text DEFAULT NULL,
    replace boolean DEFAULT false,
    lock_timeout interval DEFAULT '1 second', statement_timeout interval DEFAULT '1 minute',
    target_batch_time interval DEFAULT NULL, min_batch_size integer DEFAULT 10,
    max_batch_size integer DEFAULT 100000, max_replica_lag interval DEFAULT '10 seconds',
    throttle_query text DEFAULT NULL, mode text DEFAULT 'batch', on_row_error text DEFAULT 'fail',
    undo boolean DEFAULT false)
    RETURNS drip.backfills
LANGUAGE sql VOLATILE AS $fn$
    SELECT drip.register_internal($1, $2::oid, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
                                  $14, $15, $16, $17, $18, $19, $20, $21);
    SELECT * FROM drip.backfills WHERE backfills.name = $1;
$fn$;
COMMENT ON FUNCTION drip.register(text, regclass, text, text, jsonb, text[], integer, interval, integer, text, boolean, interval, interval, interval, integer, integer, interval, text, text, text, boolean)
    IS 'Define (or with replace => true redefine) a backfill; validates everything up front.';
"#,
    name = "register_wrapper",
    requires = ["bootstrap", register_internal]
);

extension_sql_file!(
    "../sql/helpers.sql",
    name = "helpers",
    requires = ["register_wrapper", start]
);
