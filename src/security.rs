//! Who may do what.
//!
//! - A backfill's owner is the role that called `drip.register` (the caller, never a definer).
//! - Its owner, members of the owner role and superusers may control it; anyone else gets 42501.
//! - The catalog is written by the SQL API as the catalog owner, after those checks; callers
//!   have no write privileges on it, and row-level security hides other roles' rows from them.
//! - Runners execute scope and action as the owner (see `pg::identity`).

use pgrx::prelude::*;

use crate::error::{DripError, DripResult};
use crate::pg::extension;
use crate::pg::identity::{self, Restriction, SAFE_SEARCH_PATH};

/// The role that owns the catalog tables (whoever ran CREATE EXTENSION). Refuses a catalog of
/// another version than this library: between a package upgrade and `ALTER EXTENSION data_drip
/// UPDATE`, new code must not read or write the old catalog.
fn catalog_owner() -> DripResult<pg_sys::Oid> {
    let (owner, version) = Spi::get_two::<pg_sys::Oid, String>(
        "SELECT c.relowner, (SELECT e.extversion FROM pg_catalog.pg_extension e \
                             WHERE e.extname = 'data_drip') \
         FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'drip' AND c.relname = 'backfills'",
    )
    .map_err(|_| DripError::Internal("drip.backfills is missing".into()))?;
    if let Some(catalog) = version.filter(|v| v != extension::LIBRARY_VERSION) {
        return Err(DripError::CatalogVersion {
            library: extension::LIBRARY_VERSION.to_string(),
            catalog,
        });
    }
    owner.ok_or_else(|| DripError::Internal("drip.backfills is missing".into()))
}

/// Run catalog reads and writes as the catalog owner, with a search_path no user can plant
/// objects in.
pub fn as_catalog<R>(f: impl FnOnce() -> DripResult<R>) -> DripResult<R> {
    let owner = catalog_owner()?;
    identity::run_as(owner, Restriction::Local, SAFE_SEARCH_PATH, f)
}

/// Check that `caller` may control a backfill owned by `owner`.
pub fn check_control(caller: pg_sys::Oid, owner: pg_sys::Oid, backfill: &str) -> DripResult<()> {
    let allowed = Spi::get_one_with_args::<bool>(
        "SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE oid = $2) \
                     THEN pg_catalog.pg_has_role($1, $2, 'MEMBER') \
                     ELSE (SELECT rolsuper FROM pg_catalog.pg_roles WHERE oid = $1) END",
        &[caller.into(), owner.into()],
    )?
    .unwrap_or(false);
    if allowed {
        return Ok(());
    }
    let owner_name = Spi::get_one_with_args::<String>(
        "SELECT coalesce((SELECT rolname::text FROM pg_catalog.pg_roles WHERE oid = $1), $1::text)",
        &[owner.into()],
    )?
    .unwrap_or_default();
    Err(DripError::PermissionDenied {
        backfill: backfill.to_string(),
        owner: owner_name,
    })
}

/// Name of a role, for `started_by`.
pub fn role_name(role: pg_sys::Oid) -> DripResult<String> {
    Ok(Spi::get_one_with_args::<String>(
        "SELECT rolname::text FROM pg_catalog.pg_roles WHERE oid = $1",
        &[role.into()],
    )?
    .unwrap_or_default())
}
