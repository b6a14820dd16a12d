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

impl From<CaughtError> for TxError {
    fn from(e: CaughtError) -> TxError {
        match e {
            CaughtError::PostgresError(r)
            | CaughtError::ErrorReport(r)
            | CaughtError::RustPanic { ereport: r, .. } => TxError {
                message: r.message().to_string(),
                sqlstate: sqlstate_text(r.sql_error_code()),
            },
        }
    }
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
        let err = TxError::from(e);
        // SAFETY: we caught an ERROR raised inside the transaction started by
        // BackgroundWorker::transaction; Postgres requires aborting it before starting another.
        // AbortCurrentTransaction handles every transaction state, including none.
        unsafe { pg_sys::AbortCurrentTransaction() };
        Err(err)
    })
    .execute()
}

/// `run`, but the transaction is a transaction block, as a client's `BEGIN; ...; COMMIT;` is:
/// `f` runs as one statement inside the block and the block commits after it. Extensions that
/// look at the block state see a multi-statement transaction (Citus then opens remote
/// transaction blocks and passes `SET LOCAL` on to its worker connections; outside a block it
/// runs a single-shard write as an autocommit statement on the worker).
pub fn run_block<R>(f: impl FnOnce() -> R) -> Result<R, TxError> {
    let f = AssertUnwindSafe(f);
    PgTryBuilder::new(move || {
        let f = f;
        // SAFETY: the same sequence of calls exec_simple_query makes for "BEGIN", one statement
        // and "COMMIT", from a background worker that is between transactions (every caller of
        // this module is): start a transaction command, open the block, end the command (the
        // block is now in progress); run the statement with a snapshot; end the block and
        // commit. An ERROR anywhere unwinds to the catch below, which aborts out of the block.
        unsafe {
            pg_sys::SetCurrentStatementStartTimestamp();
            pg_sys::StartTransactionCommand();
            pg_sys::BeginTransactionBlock();
            pg_sys::CommitTransactionCommand();
            pg_sys::StartTransactionCommand();
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        }
        let out = (f.0)();
        // SAFETY: pairs with the PushActiveSnapshot above; then "COMMIT" ends the block, and the
        // command that follows it commits the transaction.
        unsafe {
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
            pg_sys::StartTransactionCommand();
            pg_sys::EndTransactionBlock(false);
            pg_sys::CommitTransactionCommand();
        }
        Ok(out)
    })
    .catch_others(|e| {
        let err = TxError::from(e);
        // SAFETY: an ERROR was raised inside the block (or its commit); AbortOutOfAnyTransaction
        // rolls back whatever transaction and block state is current and leaves none, so the
        // worker can start its next transaction.
        unsafe { pg_sys::AbortOutOfAnyTransaction() };
        Err(err)
    })
    .execute()
}

/// `run_block` when `block`, else `run`.
pub fn run_maybe_block<R>(block: bool, f: impl FnOnce() -> R) -> Result<R, TxError> {
    if block {
        run_block(f)
    } else {
        run(f)
    }
}
