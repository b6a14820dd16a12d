//! Subtransactions: run one piece of work so that an ERROR in it rolls back only that piece
//! and the enclosing transaction goes on (used for element mode, one subtransaction per row).
//! pgrx has no subtransaction API; this is the pattern PL/pgSQL's exception blocks use.

use std::panic::AssertUnwindSafe;

use pgrx::pg_sys;
use pgrx::prelude::*;

use super::transaction::TxError;

/// Run `f` in a subtransaction. On an ERROR the subtransaction is rolled back and the error
/// returned; the enclosing transaction is intact either way.
pub fn try_in_subtransaction<R>(f: impl FnOnce() -> R) -> Result<R, TxError> {
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
    .catch_others(|e| Err(TxError::from(e)))
    .execute();
    // SAFETY: exactly one of release or rollback for the subtransaction begun above, then the
    // caller's memory context and resource owner are put back.
    unsafe {
        match &result {
            Ok(_) => pg_sys::ReleaseCurrentSubTransaction(),
            Err(_) => {
                pg_sys::MemoryContextSwitchTo(context);
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
            }
        }
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = owner;
    }
    result
}
