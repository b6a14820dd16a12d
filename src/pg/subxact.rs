//! Subtransactions: run one piece of work so that an ERROR in it rolls back only that piece
//! and the enclosing transaction goes on (used for element mode, one subtransaction per row).
//! pgrx has no subtransaction API; this is the pattern PL/pgSQL's exception blocks use.

use std::panic::AssertUnwindSafe;

use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;

use super::transaction::TxError;

/// Run `f` in a subtransaction. On an ERROR the subtransaction is rolled back and the error
/// returned; the enclosing transaction is intact either way.
pub fn try_in_subtransaction<R>(f: impl FnOnce() -> R) -> Result<R, TxError> {
    in_subtransaction(f, false, TxError::from)
}

/// Run `f` in a subtransaction that ends by `RELEASE` when `f` returns (unless `rollback`) and
/// by a rollback when it raises or `rollback` is set; an ERROR is caught and mapped by `caught`.
/// The one place that begins and ends subtransactions: `try_in_subtransaction` keeps the work,
/// `scratch::rolled_back` always undoes it.
pub(crate) fn in_subtransaction<R, E>(
    f: impl FnOnce() -> R,
    rollback: bool,
    caught: fn(CaughtError) -> E,
) -> Result<R, E> {
    // SAFETY: we are inside a transaction (callers run in a batch transaction or a SQL
    // function). We save the memory context and resource owner and restore them after the
    // subtransaction ends, as PL/pgSQL does, because both Release and RollbackAndRelease leave
    // the parent's values current only for the transaction machinery, not for our caller.
    let (context, owner) = unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
        (context, owner)
    };
    let f = AssertUnwindSafe(f);
    let result = PgTryBuilder::new(move || {
        let f = f;
        Ok((f.0)())
    })
    .catch_others(move |e| Err(caught(e)))
    .execute();
    // SAFETY: exactly one of release or rollback for the subtransaction begun above (a rollback
    // also after an ERROR, which PgTry caught, as PL/pgSQL's exception handler does), then the
    // caller's memory context and resource owner are put back.
    unsafe {
        if result.is_ok() && !rollback {
            pg_sys::ReleaseCurrentSubTransaction();
        } else {
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = owner;
    }
    result
}
