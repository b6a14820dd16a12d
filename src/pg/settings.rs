//! Settings changed for a stretch of code and put back afterwards, the way a function's `SET`
//! clause does it (a GUC nest level).
//!
//! `CANONICAL` is the one definition of the settings under which data_drip turns key values into
//! text and back. Key values are stored as text (`drip.runs.cursor`, `to_key`, slice and batch
//! bounds) and read back by another session, often a background worker with other settings; the
//! text form of timestamps, intervals, floats, bytea and money depends on the session. Under
//! these settings every type's output is unambiguous and its input reads it back exactly.
//! `drip.key_text(anyelement)` in sql/bootstrap.sql carries the same list as SET clauses.

use std::ffi::{CStr, CString};

use pgrx::pg_sys;

pub const CANONICAL: &[(&CStr, &str)] = &[
    (c"DateStyle", "ISO, YMD"),
    (c"IntervalStyle", "postgres"),
    (c"TimeZone", "UTC"),
    (c"extra_float_digits", "3"),
    (c"bytea_output", "hex"),
    (c"lc_monetary", "C"),
];

/// Types whose text output no setting changes (integers, numeric, text types, uuid, bool):
/// `::text` is already their canonical text. Everything else (dates, times, intervals, floats,
/// bytea, money, domains, composites, enums, arrays...) goes through `drip.key_text`.
pub fn text_is_canonical(oid: pg_sys::Oid) -> bool {
    [
        pg_sys::INT2OID,
        pg_sys::INT4OID,
        pg_sys::INT8OID,
        pg_sys::OIDOID,
        pg_sys::NUMERICOID,
        pg_sys::TEXTOID,
        pg_sys::VARCHAROID,
        pg_sys::BPCHAROID,
        pg_sys::NAMEOID,
        pg_sys::CHAROID,
        pg_sys::UUIDOID,
        pg_sys::BOOLOID,
    ]
    .contains(&oid)
}

/// Set a setting at the current GUC nest level (undone when the level is popped), without going
/// through SQL.
pub(crate) fn set_saved(name: &CStr, value: &str) {
    let value = CString::new(value.replace('\0', "")).unwrap_or_default();
    // SAFETY: both strings are NUL-terminated and outlive the call; GUC_ACTION_SAVE records the
    // old value at the current nest level, exactly as a function's SET clause does. An invalid
    // value raises an ERROR (elevel ERROR), which pgrx turns into a panic unwinding to the
    // caller's transaction boundary.
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            pg_sys::PGERROR as i32,
            false,
        );
    }
}

/// Pops the nest level when dropped, also while an ERROR unwinds through `with`.
struct Level(i32);

impl Drop for Level {
    fn drop(&mut self) {
        // SAFETY: pops exactly the nest level opened in `with` (isCommit = false: nothing set
        // inside survives). Levels are strictly nested because `with` owns this guard for the
        // whole of its body.
        unsafe { pg_sys::AtEOXact_GUC(false, self.0) };
    }
}

/// Run `f` with `settings` in force, then restore every setting (also those `f` changed).
pub fn with<R>(settings: &[(&CStr, &str)], f: impl FnOnce() -> R) -> R {
    // SAFETY: NewGUCNestLevel only increments a counter; the guard pops it.
    let level = Level(unsafe { pg_sys::NewGUCNestLevel() });
    for (name, value) in settings {
        set_saved(name, value);
    }
    let result = f();
    drop(level);
    result
}

/// Run `f` under the canonical settings for key text.
pub fn canonical<R>(f: impl FnOnce() -> R) -> R {
    with(CANONICAL, f)
}
