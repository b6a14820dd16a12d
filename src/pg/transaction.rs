//! Transactions in background workers, with errors caught instead of killing the worker.

use std::panic::AssertUnwindSafe;

use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

/// An ERROR raised inside a worker transaction, after that transaction was rolled back.
#[derive(Debug, Clone)]
pub struct TxError {
    pub message: String,
    pub sqlstate: String,
}

pub fn sqlstate_text(code: PgSqlErrorCode) -> String {
    // SAFETY: unpack_sql_state only formats the integer code into a static buffer, which we copy.
    unsafe {
        let p = pg_sys::unpack_sql_state(code as i32);
        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// Run `f` in its own transaction. On an ERROR the transaction is rolled back and the error
/// returned; the worker can go on with the next transaction.
pub fn run<R>(f: impl FnOnce() -> R) -> Result<R, TxError> {
    let f = AssertUnwindSafe(f);
    PgTryBuilder::new(move || {
        let f = f;
        Ok(BackgroundWorker::transaction(AssertUnwindSafe(move || {
            (f.0)()
        })))
    })
    .catch_others(|e| {
        let err = match e {
            CaughtError::PostgresError(r)
            | CaughtError::ErrorReport(r)
            | CaughtError::RustPanic { ereport: r, .. } => TxError {
                message: r.message().to_string(),
                sqlstate: sqlstate_text(r.sql_error_code()),
            },
        };
        // SAFETY: we caught an ERROR raised inside the transaction started by
        // BackgroundWorker::transaction; Postgres requires aborting it before starting another.
        // AbortCurrentTransaction handles every transaction state, including none.
        unsafe { pg_sys::AbortCurrentTransaction() };
        Err(err)
    })
    .execute()
}
