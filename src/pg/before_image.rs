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

use std::ffi::{CStr, CString};

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;

use crate::error::{DripError, DripResult};

/// Run `sql` (a SELECT) with an active snapshot taken now but with this transaction's first
/// command id, and return every row's columns in their text form (None for NULL).
pub fn select_text_before_changes(
    sql: &str,
    args: &[DatumWithOid],
) -> DripResult<Vec<Vec<Option<String>>>> {
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
    // read_only = true SPI executes with the active snapshot as it is. The argument arrays
    // outlive the call; every value read is copied into Rust strings before SPI_finish frees
    // the result. An ERROR unwinds past the pops: the transaction abort that follows pops the
    // snapshot and ends the SPI connection, as for any error inside SPI.
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
            0,
        );
        let mut out = Vec::new();
        if rc == pg_sys::SPI_OK_SELECT as i32 && !pg_sys::SPI_tuptable.is_null() {
            let table = &*pg_sys::SPI_tuptable;
            let ncols = (*table.tupdesc).natts;
            for i in 0..table.numvals as usize {
                let tuple = *table.vals.add(i);
                let mut row = Vec::with_capacity(ncols as usize);
                for col in 1..=ncols {
                    let p = pg_sys::SPI_getvalue(tuple, table.tupdesc, col);
                    row.push(if p.is_null() {
                        None
                    } else {
                        Some(CStr::from_ptr(p).to_string_lossy().into_owned())
                    });
                }
                out.push(row);
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
