//! Whose privileges SQL runs with.
//!
//! Two switches, both the way Postgres itself runs a SECURITY DEFINER function or a maintenance
//! command as a table owner (`SetUserIdAndSecContext` inside a GUC nest level):
//! - the catalog switch: the SQL API writes `drip.*` as the catalog owner, so callers need no
//!   privileges on the catalog tables and cannot write them directly;
//! - the owner switch: a runner executes a backfill's scope and action as the backfill's owner,
//!   in a security-restricted operation, so `SET ROLE`, `RESET ROLE` and `SET SESSION
//!   AUTHORIZATION` fail and nothing in the action can gain more rights than the owner has.
//!
//! Both pin `search_path` for their duration and undo every setting changed inside on the way
//! out, so neither side can plant functions or settings for the other.

use pgrx::pg_sys;

/// The search_path our own (privileged) SQL runs with: nothing a user can create objects in.
pub const SAFE_SEARCH_PATH: &str = "pg_catalog, pg_temp";

/// The role the current SQL runs as (`current_user`).
pub fn current_user() -> pg_sys::Oid {
    // SAFETY: GetUserId only reads a backend-local variable; it raises no error once a user is
    // set, which is always the case inside a transaction.
    unsafe { pg_sys::GetUserId() }
}

/// How restricted the switched section is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restriction {
    /// Our own SQL: the user id is local (no SET ROLE inside).
    Local,
    /// User SQL: also a security-restricted operation (no temporary objects, no session state).
    Restricted,
}

/// Restores the caller's identity when dropped, also while an ERROR unwinds.
struct Restore {
    user: pg_sys::Oid,
    context: i32,
    nest: i32,
    done: bool,
}

impl Drop for Restore {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // SAFETY: restoring the values GetUserIdAndSecContext returned is always valid. On the
        // error path the transaction abort that follows also pops the GUC nest level.
        unsafe {
            pg_sys::SetUserIdAndSecContext(self.user, self.context);
        }
    }
}

/// Run `f` as `role` with `search_path`, then restore the identity and every setting.
pub fn run_as<R>(
    role: pg_sys::Oid,
    restriction: Restriction,
    search_path: &str,
    f: impl FnOnce() -> R,
) -> R {
    run_as_with(role, restriction, &[(c"search_path", search_path)], f)
}

/// `run_as` with more settings for the switched section (the first should be search_path).
pub fn run_as_with<R>(
    role: pg_sys::Oid,
    restriction: Restriction,
    settings: &[(&std::ffi::CStr, &str)],
    f: impl FnOnce() -> R,
) -> R {
    let mut user = pg_sys::Oid::INVALID;
    let mut context: i32 = 0;
    // SAFETY: writes the two out-parameters we own.
    unsafe { pg_sys::GetUserIdAndSecContext(&mut user, &mut context) };
    // SAFETY: NewGUCNestLevel only increments a counter; every value set from here on is undone
    // by the matching AtEOXact_GUC below (or by the transaction abort on error).
    let nest = unsafe { pg_sys::NewGUCNestLevel() };
    let mut restore = Restore {
        user,
        context,
        nest,
        done: false,
    };
    for (name, value) in settings {
        super::settings::set_saved(name, value);
    }
    let flags = match restriction {
        Restriction::Local => pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        Restriction::Restricted => {
            (pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION) as i32
        }
    };
    // SAFETY: `role` is an existing role oid (callers check); the flags only add restrictions
    // to the caller's security context.
    unsafe { pg_sys::SetUserIdAndSecContext(role, context | flags) };
    let result = f();
    // SAFETY: pops exactly the nest level opened above, undoing settings changed inside
    // (isCommit = false: nothing set inside survives), then restores the identity.
    unsafe {
        pg_sys::AtEOXact_GUC(false, restore.nest);
        pg_sys::SetUserIdAndSecContext(restore.user, restore.context);
    }
    restore.done = true;
    result
}
