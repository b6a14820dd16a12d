//! Reading rows as they were before the current transaction changed them.
//!
//! A batch saves undo data after its action ran, in the same transaction. The rows' old
//! versions are still there, visible to a snapshot whose command id is the transaction's first:
//! a version the transaction deleted or replaced (xmax = this transaction, cmax >= 0) counts
//! as not yet deleted, and a version it inserted (cmin >= 0) as not yet inserted. Taken now, the
//! snapshot also sees everything other transactions committed, so for each row this
//! transaction changed it gives exactly the version that transaction replaced (others cannot
//! have changed such a row since: the transaction holds its row lock).
//!
//! pgrx's SPI wrappers run a query read-only (with the active snapshot as it is) only while the
//! transaction has no xid, which after a batch's action it always has; so the query runs here,
//! through `SPI_execute_with_args` with `read_only = true`.

use std::ffi::CString;

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;

use crate::error::{DripError, DripResult};

/// Run `sql` (a SELECT of one row and one column of a varlena type, e.g. an `array_agg`) with
/// an active snapshot taken now but with this transaction's first command id, and return that
/// value as a Datum copied into the caller's memory context (None for NULL or no row): no text
/// output and input on the way.
pub fn select_datum_before_changes(
    sql: &str,
    args: &[DatumWithOid],
) -> DripResult<Option<pg_sys::Datum>> {
    let query = CString::new(sql).map_err(|_| DripError::Internal("NUL in a query".into()))?;
    let mut types: Vec<pg_sys::Oid> = args.iter().map(|a| a.oid()).collect();
    let mut values: Vec<pg_sys::Datum> = args
        .iter()
        .map(|a| {
            a.datum()
                .map(|d| d.sans_lifetime())
                .unwrap_or(pg_sys::Datum::from(0))
        })
        .collect();
    let nulls: Vec<std::ffi::c_char> = args
        .iter()
        .map(|a| if a.datum().is_some() { b' ' } else { b'n' } as std::ffi::c_char)
        .collect();
    // SAFETY: we are inside a transaction (a batch's). GetLatestSnapshot returns a static
    // snapshot, which PushCopiedSnapshot copies; the copy is the active snapshot, ours to change
    // (as UpdateActiveSnapshotCommandId does). SPI_connect/SPI_finish bracket the query; with
    // read_only = true SPI executes with the active snapshot as it is. An ERROR unwinds past the
    // pops: the transaction abort that follows pops the snapshot and ends the SPI connection. The value
    // read is a varlena (typByVal false, typLen -1: the caller's SQL guarantees it);
    // SPI_datumTransfer copies it (detoasted) into the memory context that was current at
    // SPI_connect, so it outlives SPI_finish, as long as the caller's context does.
    unsafe {
        pg_sys::PushCopiedSnapshot(pg_sys::GetLatestSnapshot());
        (*pg_sys::GetActiveSnapshot()).curcid = pg_sys::FirstCommandId;
        pg_sys::SPI_connect();
        let rc = pg_sys::SPI_execute_with_args(
            query.as_ptr(),
            args.len() as i32,
            types.as_mut_ptr(),
            values.as_mut_ptr(),
            nulls.as_ptr(),
            true,
            1,
        );
        let mut out = None;
        if rc == pg_sys::SPI_OK_SELECT as i32
            && !pg_sys::SPI_tuptable.is_null()
            && (*pg_sys::SPI_tuptable).numvals > 0
        {
            let table = &*pg_sys::SPI_tuptable;
            let mut is_null = false;
            let d = pg_sys::SPI_getbinval(*table.vals, table.tupdesc, 1, &mut is_null);
            if !is_null {
                out = Some(pg_sys::SPI_datumTransfer(d, false, -1));
            }
        }
        pg_sys::SPI_finish();
        pg_sys::PopActiveSnapshot();
        if rc != pg_sys::SPI_OK_SELECT as i32 {
            return Err(DripError::Internal(format!(
                "reading before-images: SPI result {rc}"
            )));
        }
        Ok(out)
    }
}
