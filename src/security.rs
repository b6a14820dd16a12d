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

/// Check that `caller` may control run `run_id`, whose backfill `backfill` is owned by `owner`.
///
/// Seeing a run and controlling it are one rule (`drip.may_control`, the row-level security
/// policy of `drip.runs`: members of the owner role and superusers). A caller refused here
/// therefore cannot see the run, and is answered exactly as for a run that does not exist
/// (42704 `run N does not exist`): no backfill name, no owner, so probing run ids tells nothing.
pub fn check_run_control(
    caller: pg_sys::Oid,
    run_id: i64,
    owner: pg_sys::Oid,
    backfill: &str,
) -> DripResult<()> {
    match check_control(caller, owner, backfill) {
        Err(DripError::PermissionDenied { .. }) => Err(DripError::UnknownRun(run_id)),
        other => other,
    }
}

/// Names that look like another name are refused: zero-width characters, bidirectional
/// controls and other invisible format characters (Unicode category Cf), and control
/// characters. `alice\u{200b}_fix` would otherwise pass for `alice_fix` in every list.
pub fn check_visible_name(what: &str, name: &str) -> DripResult<()> {
    match name.chars().find(|c| is_invisible(*c)) {
        Some(c) => Err(DripError::InvisibleName(format!(
            "{what} \"{}\" contains the invisible character U+{:04X}; names must not contain zero-width, bidirectional or control characters",
            name.escape_default(),
            c as u32
        ))),
        None => Ok(()),
    }
}

fn is_invisible(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}'                  // soft hyphen
            | '\u{034F}'                // combining grapheme joiner
            | '\u{061C}'                // Arabic letter mark
            | '\u{115F}' | '\u{1160}'   // Hangul fillers
            | '\u{17B4}' | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'   // Mongolian variation selectors and vowel separator
            | '\u{200B}'..='\u{200F}'   // zero-width space, joiners, LRM, RLM
            | '\u{202A}'..='\u{202E}'   // bidi embeddings and overrides
            | '\u{2060}'..='\u{206F}'   // word joiner, invisible operators, bidi isolates
            | '\u{3164}' | '\u{FFA0}'   // Hangul fillers
            | '\u{FE00}'..='\u{FE0F}'   // variation selectors
            | '\u{FEFF}'                // zero-width no-break space
            | '\u{FFF9}'..='\u{FFFB}'   // interlinear annotation
            | '\u{E0000}'..='\u{E007F}' // tags
        )
}

/// Name of a role, for `started_by`.
pub fn role_name(role: pg_sys::Oid) -> DripResult<String> {
    Ok(Spi::get_one_with_args::<String>(
        "SELECT rolname::text FROM pg_catalog.pg_roles WHERE oid = $1",
        &[role.into()],
    )?
    .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invisible_characters_in_names_are_refused() {
        for bad in [
            "alice\u{200b}_fix",
            "a\u{202e}b",
            "x\u{2066}y",
            "\u{feff}name",
            "tab\there",
            "soft\u{ad}hyphen",
        ] {
            let e = check_visible_name("backfill", bad).unwrap_err();
            assert!(e.to_string().contains("invisible character U+"), "{e}");
        }
        for ok in ["alice_fix", "orders/2024", "café", "数据回填", "emoji_🚀"] {
            assert!(check_visible_name("backfill", ok).is_ok(), "{ok}");
        }
    }
}
