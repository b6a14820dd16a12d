//! The client connection of the current session.

use pgrx::pg_sys;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

unsafe extern "C-unwind" {
    // libpq/libpq.h, PostgreSQL 14 and later: polls the client socket for a hang-up without
    // reading from it. Not in pgrx's bindings.
    fn pq_check_connection() -> bool;
}

/// End this backend, as Postgres itself does with client_connection_check_interval, when its
/// client has gone away: a long wait must not outlive its client and keep holding locks.
pub fn end_session_if_client_gone() {
    // SAFETY: MyProcPort is a backend-local pointer, NULL in background workers and standalone
    // backends, which have no client to check.
    let has_client = unsafe { !pg_sys::MyProcPort.is_null() };
    // SAFETY: pq_check_connection only polls MyProcPort's socket (non-blocking) and returns
    // false once the peer has closed it; it raises nothing.
    if has_client && !unsafe { pq_check_connection() } {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
            "connection to client lost",
            "data_drip",
        )
        .report(PgLogLevel::FATAL);
    }
}

/// Whether a row version was written by this transaction or one of its subtransactions (its
/// `xmin`, as the 32-bit number `xmin::text` shows): such a row is invisible to everybody else
/// until this transaction commits.
pub fn written_by_this_transaction(xmin: u32) -> bool {
    // SAFETY: TransactionIdIsCurrentTransactionId only reads the backend's own transaction
    // state (the top-level xid and the stack of subtransaction xids); any xid value is valid.
    unsafe { pg_sys::TransactionIdIsCurrentTransactionId(pg_sys::TransactionId::from(xmin)) }
}
