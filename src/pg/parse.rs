//! Asking Postgres's own parser about a statement's shape.

use std::ffi::{CStr, CString};

use pgrx::pg_sys;
use pgrx::PgList;

/// The columns an `UPDATE` statement assigns (`SET a = .., (b, c) = (..)`), as Postgres's raw
/// parser reads them. Empty for anything else. The statement must already have been checked to
/// parse (the raw parser raises a syntax ERROR otherwise).
pub fn update_target_columns(sql: &str) -> Vec<String> {
    let Ok(text) = CString::new(sql) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    // SAFETY: raw_parser reads a NUL-terminated string that outlives the call and returns a List
    // of RawStmt allocated in the current memory context. We only read the nodes, checking each
    // node's tag before casting it: RawStmt.stmt is an UpdateStmt for UPDATE, whose targetList
    // holds ResTarget nodes whose `name` is the assigned column (a NUL-terminated string).
    unsafe {
        let stmts = PgList::<pg_sys::RawStmt>::from_pg(pg_sys::raw_parser(
            text.as_ptr(),
            pg_sys::RawParseMode::RAW_PARSE_DEFAULT,
        ));
        for raw in stmts.iter_ptr() {
            let node = (*raw).stmt;
            if node.is_null() || (*node).type_ != pg_sys::NodeTag::T_UpdateStmt {
                continue;
            }
            let update = node as *mut pg_sys::UpdateStmt;
            let targets = PgList::<pg_sys::ResTarget>::from_pg((*update).targetList);
            for target in targets.iter_ptr() {
                if (*target).type_ == pg_sys::NodeTag::T_ResTarget && !(*target).name.is_null() {
                    out.push(
                        CStr::from_ptr((*target).name)
                            .to_string_lossy()
                            .into_owned(),
                    );
                }
            }
        }
    }
    out
}
