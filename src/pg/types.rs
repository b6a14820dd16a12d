//! Types and values: resolve a type name the way Postgres does, and convert text to a Datum with
//! the type's own input function.

use std::ffi::CString;

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::error::{DripError, DripResult};

/// A type resolved by Postgres.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedType {
    pub oid: pg_sys::Oid,
    pub is_array: bool,
    /// `format_type` spelling, for messages.
    pub display: String,
}

/// Resolve `name` (any spelling Postgres accepts, arrays included). None when it does not exist
/// or does not parse as a type name.
pub fn resolve(name: &str) -> Option<ResolvedType> {
    let name = name.to_string();
    PgTryBuilder::new(move || {
        Spi::get_three_with_args::<pg_sys::Oid, bool, String>(
            "SELECT t.oid, t.typcategory = 'A', format_type(t.oid, NULL) \
             FROM pg_catalog.pg_type t WHERE t.oid = pg_catalog.to_regtype($1)",
            &[name.as_str().into()],
        )
        .ok()
        .and_then(|(oid, arr, disp)| {
            Some(ResolvedType {
                oid: oid?,
                is_array: arr?,
                display: disp?,
            })
        })
    })
    // to_regtype raises on syntactically invalid names in PG < 16; that is "does not exist" too.
    .catch_others(|_| None)
    .execute()
}

/// Convert `text` to a Datum of type `oid` with the type's input function (NULL for None).
/// `what` names the value in error messages (for example the parameter name).
pub fn input_datum<'a>(
    oid: pg_sys::Oid,
    text: Option<&str>,
    what: &str,
) -> DripResult<DatumWithOid<'a>> {
    let Some(text) = text else {
        return Ok(DatumWithOid::null_oid(oid));
    };
    let datum = input_raw(oid, text, what)?;
    // SAFETY: the datum was produced by the input function of type `oid`, so it is a valid
    // value of that type, allocated in the current memory context, which outlives its use by
    // the SPI call it is passed to.
    Ok(unsafe { DatumWithOid::new(datum, oid) })
}

fn input_raw(oid: pg_sys::Oid, text: &str, what: &str) -> DripResult<pg_sys::Datum> {
    let cstr = CString::new(text).map_err(|_| DripError::BadParamValue {
        name: what.to_string(),
        message: "value contains a NUL character".into(),
        sqlstate: PgSqlErrorCode::ERRCODE_UNTRANSLATABLE_CHARACTER,
    })?;
    PgTryBuilder::new(|| {
        let mut input_fn = pg_sys::Oid::INVALID;
        let mut io_param = pg_sys::Oid::INVALID;
        // SAFETY: getTypeInputInfo only reads the syscache for a valid type oid (we got `oid`
        // from pg_type) and writes the two out-parameters we own. OidInputFunctionCall gets a
        // NUL-terminated string that outlives the call; input functions do not modify it.
        // Errors raised by either are turned into a Rust panic by pgrx's guard and caught here.
        unsafe {
            pg_sys::getTypeInputInfo(oid, &mut input_fn, &mut io_param);
            let d = pg_sys::OidInputFunctionCall(input_fn, cstr.as_ptr() as *mut _, io_param, -1);
            Ok(d)
        }
    })
    .catch_others(|e| match e {
        CaughtError::PostgresError(r)
        | CaughtError::ErrorReport(r)
        | CaughtError::RustPanic { ereport: r, .. } => Err(DripError::BadParamValue {
            name: what.to_string(),
            message: r.message().to_string(),
            sqlstate: r.sql_error_code(),
        }),
    })
    .execute()
}

/// Errors about a key value name the key column, not a parameter.
fn as_key_error(e: DripError) -> DripError {
    match e {
        DripError::BadParamValue {
            name,
            message,
            sqlstate,
        } => DripError::BadKeyValue {
            column: name,
            message,
            sqlstate,
        },
        other => other,
    }
}

/// A stored key value (canonical text, see `settings::CANONICAL`) as a Datum of the key
/// column's type. `column` names the key column in errors.
pub fn key_datum<'a>(oid: pg_sys::Oid, text: &str, column: &str) -> DripResult<DatumWithOid<'a>> {
    super::settings::canonical(|| input_datum(oid, Some(text), column)).map_err(as_key_error)
}

/// A key value written by a user in their own session's notation (`from_key`, `to_key`), checked
/// against the column's type and turned into the canonical text the engine stores.
pub fn canonical_key_text(oid: pg_sys::Oid, text: &str, column: &str) -> DripResult<String> {
    let value = input_raw(oid, text, column).map_err(as_key_error)?;
    Ok(super::settings::canonical(|| {
        let mut output_fn = pg_sys::Oid::INVALID;
        let mut varlena = false;
        // SAFETY: getTypeOutputInfo reads the syscache for a valid type oid and writes the two
        // out-parameters we own; the datum was just produced by the same type's input function.
        // OidOutputFunctionCall returns a palloc'd NUL-terminated string, copied before return.
        unsafe {
            pg_sys::getTypeOutputInfo(oid, &mut output_fn, &mut varlena);
            let p = pg_sys::OidOutputFunctionCall(output_fn, value);
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }))
}
