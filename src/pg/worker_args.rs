//! Decoding the Datum a background worker is started with.

use pgrx::pg_sys;
use pgrx::FromDatum;

/// Decode a worker's main argument.
pub fn arg_oid(arg: pg_sys::Datum) -> pg_sys::Oid {
    // SAFETY: the scheduler's argument is always set from an Oid datum by launch_scheduler.
    unsafe { pg_sys::Oid::from_datum(arg, false) }.unwrap_or(pg_sys::Oid::INVALID)
}

pub fn arg_i64(arg: pg_sys::Datum) -> i64 {
    // SAFETY: the runner's argument is always set from an i64 datum (pass-by-value on the 64-bit
    // platforms pgrx supports) by launch_runner.
    unsafe { i64::from_datum(arg, false) }.unwrap_or(0)
}
