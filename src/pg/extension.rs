//! Which data_drip catalog a process serves, and whether it still exists.
//!
//! A background worker remembers the extension instance it started on (the `pg_extension` row's
//! oid and the oid of `drip.runs`). `DROP EXTENSION ... CASCADE; CREATE EXTENSION ...` in one
//! transaction gives a new catalog under the same names: cached plans would then silently
//! re-resolve `drip.runs` to the new table, and an old runner would execute an old definition
//! under a new run's id. Checking the instance at the start of every transaction that touches
//! the catalog, after locking the old `drip.runs`, closes that door: the lock keeps the
//! extension from being dropped until we commit, and the check sees a drop that committed before.
//!
//! The library version is checked against the catalog version too: between installing a new
//! package and `ALTER EXTENSION data_drip UPDATE`, new processes load the new library while the
//! catalog is still the old one.

use pgrx::pg_sys;
use pgrx::prelude::*;

/// The extension's name in `pg_extension`.
const EXTENSION: &core::ffi::CStr = c"data_drip";

/// The version of this library (the catalog version it expects).
pub const LIBRARY_VERSION: &str = env!("CARGO_PKG_VERSION");

/// One installed data_drip catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instance {
    extension: pg_sys::Oid,
    runs: pg_sys::Oid,
}

fn extension_oid() -> Option<pg_sys::Oid> {
    // SAFETY: get_extension_oid reads pg_extension through an index with a NUL-terminated name;
    // with missing_ok = true it returns InvalidOid instead of raising. It needs a transaction,
    // which every caller is in.
    let oid = unsafe { pg_sys::get_extension_oid(EXTENSION.as_ptr(), true) };
    (oid != pg_sys::Oid::INVALID).then_some(oid)
}

/// The catalog installed in this database now (None if the extension is not installed).
pub fn current() -> Option<Instance> {
    let extension = extension_oid()?;
    let runs = Spi::get_one::<pg_sys::Oid>("SELECT pg_catalog.to_regclass('drip.runs')::oid")
        .ok()
        .flatten()?;
    Some(Instance { extension, runs })
}

/// Lock `instance`'s `drip.runs` (so the extension cannot be dropped before this transaction
/// ends) and tell whether it is still the installed catalog. Call it first in every transaction
/// of a long-lived process that touches the catalog; on false, touch nothing and exit.
pub fn still_current(instance: &Instance) -> bool {
    // SAFETY: locking an oid is valid whether or not the relation still exists (the lock manager
    // only records the tag); AccessShareLock conflicts only with AccessExclusiveLock, which
    // DROP EXTENSION needs. The lock is released at transaction end.
    unsafe { pg_sys::LockRelationOid(instance.runs, pg_sys::AccessShareLock as pg_sys::LOCKMODE) };
    extension_oid() == Some(instance.extension)
}

/// The installed catalog's version (`pg_extension.extversion`), if installed.
pub fn catalog_version() -> Option<String> {
    Spi::get_one::<String>(
        "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'data_drip'",
    )
    .ok()
    .flatten()
}

/// Whether the installed catalog is the one this library was built for.
pub fn catalog_matches_library() -> bool {
    catalog_version().as_deref() == Some(LIBRARY_VERSION)
}
