//! Element mode's second chance: `drip.retry_rows(run_id)` processes again, in the caller's
//! session, only the rows of a run that failed (drip.row_errors), each in its own
//! subtransaction and with the owner's privileges, exactly as the worker ran them.

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::Value;

use crate::catalog;
use crate::compile::Definition;
use crate::error::{DripError, DripResult, OrRaise};
use crate::params;
use crate::pg::identity::{self, Restriction};
use crate::pg::{subxact, types};
use crate::security;

/// Process the failed rows of a run again; returns how many now succeeded.
#[pg_extern(volatile, parallel_unsafe)]
fn retry_rows(run_id: Option<i64>) -> i64 {
    crate::error::required(run_id, "run_id")
        .and_then(retry_rows_impl)
        .or_raise()
}

fn retry_rows_impl(run_id: i64) -> DripResult<i64> {
    let caller = identity::current_user();
    let (definition, values, failed) = security::as_catalog(|| {
        let run = catalog::read_run(run_id)?.ok_or(DripError::UnknownRun(run_id))?;
        security::check_run_control(caller, run_id, catalog::run_owner(run_id)?, &run.backfill)?;
        let (def, values) = Spi::get_two_with_args::<JsonB, JsonB>(
            "SELECT definition, params FROM drip.runs WHERE id = $1",
            &[run_id.into()],
        )?;
        let failed = Spi::connect(|c| {
            let t = c.select(
                "SELECT key FROM drip.row_errors WHERE run_id = $1 AND resolved_at IS NULL ORDER BY key",
                None,
                &[run_id.into()],
            )?;
            t.map(|r| r.get::<Vec<String>>(1).map(|k| k.unwrap_or_default()))
                .collect::<Result<Vec<_>, _>>()
        })?;
        Ok((
            def.map(|j| j.0).unwrap_or_default(),
            values.map(|j| j.0).unwrap_or_default(),
            failed,
        ))
    })?;
    let def = Definition::from_json(&definition)?;
    if def.mode != "row" {
        return Err(DripError::BadOption(format!(
            "run {run_id} is not in element mode (mode => 'row'); it has no failed rows to retry"
        )));
    }
    let compiled = def.compile()?;
    let texts: Vec<Option<String>> = compiled
        .params
        .iter()
        .map(|(d, t)| params::input_text(values.get(&d.name).unwrap_or(&Value::Null), t.is_array))
        .collect();
    let mut fixed = 0;
    for key in failed {
        let mut args: Vec<DatumWithOid> = Vec::new();
        for ((d, t), v) in compiled.params.iter().zip(&texts) {
            args.push(types::input_datum(t.oid, v.as_deref(), &d.name)?);
        }
        // The row's key as the low bound and (unused) the high bound.
        for _ in 0..2 {
            args.extend(compiled.key_args(&key)?);
        }
        let sql = compiled.sql.work_row.clone();
        let result = subxact::try_in_subtransaction(|| {
            identity::run_as(
                def.owner(),
                Restriction::Restricted,
                &def.search_path,
                || {
                    Spi::connect_mut(|c| {
                        c.update(sql.as_str(), None, &args).map(|t| t.len() as i64)
                    })
                },
            )
            .map_err(DripError::from)
            .or_raise()
        });
        security::as_catalog(|| {
            match &result {
                Ok(n) => {
                    Spi::run_with_args(
                        "UPDATE drip.row_errors SET resolved_at = clock_timestamp() WHERE run_id = $1 AND key = $2",
                        &[run_id.into(), key.clone().into()],
                    )?;
                    Spi::run_with_args(
                        "UPDATE drip.runs SET rows_done = rows_done + $2, rows_failed = greatest(rows_failed - 1, 0) WHERE id = $1",
                        &[run_id.into(), (*n).into()],
                    )?;
                }
                Err(e) => {
                    Spi::run_with_args(
                        "UPDATE drip.row_errors SET error = $3, sqlstate = $4, at = clock_timestamp() \
                         WHERE run_id = $1 AND key = $2",
                        &[run_id.into(), key.clone().into(), e.message.as_str().into(), e.sqlstate.as_str().into()],
                    )?;
                }
            }
            Ok(())
        })?;
        if result.is_ok() {
            fixed += 1;
        }
    }
    Ok(fixed)
}
