//! Scratch work in a client session: a subtransaction that is always rolled back (whatever the
//! work did to tables is undone and its row and table locks are released), and a statement
//! timeout for part of a statement that leaves the client's own timeout in place.
//! Used by `drip.preview`, which runs a backfill's real action and shows what it changed.

use std::ffi::c_int;
use std::time::Duration;

use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::PgSqlErrorCode;

/// An ERROR raised inside the scratch work, as Postgres reported it.
#[derive(Debug, Clone)]
pub struct Caught {
    pub sqlstate: PgSqlErrorCode,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

/// Run `f` in a subtransaction and roll it back, whether `f` returned or raised. `R` must not
/// hold memory allocated by Postgres inside `f` (it is freed with the subtransaction): copy
/// results into Rust values first.
pub fn rolled_back<R>(f: impl FnOnce() -> R) -> Result<R, Caught> {
    super::subxact::in_subtransaction(f, true, |e| match e {
        CaughtError::PostgresError(r)
        | CaughtError::ErrorReport(r)
        | CaughtError::RustPanic { ereport: r, .. } => Caught {
            sqlstate: r.sql_error_code(),
            message: r.message().to_string(),
            detail: r.detail().map(str::to_string),
            hint: r.hint().map(str::to_string),
        },
    })
}

/// `STATEMENT_TIMEOUT` in `enum TimeoutId` (utils/timeout.h); the same value on PG 13 to 18.
const STATEMENT_TIMEOUT: c_int = 3;

unsafe extern "C-unwind" {
    fn enable_timeout_after(id: c_int, delay_ms: c_int);
    fn enable_timeout_at(id: c_int, fin_time: pg_sys::TimestampTz);
    fn disable_timeout(id: c_int, keep_indicator: bool);
    fn get_timeout_active(id: c_int) -> bool;
    fn get_timeout_finish_time(id: c_int) -> pg_sys::TimestampTz;
}

/// A statement timeout for a stretch of a client's statement (a batch statement run by a SQL
/// function). The client's own statement_timeout timer is the same timer: while this one is
/// armed it replaces the client's only if it would fire earlier, and the client's is put back
/// on drop (also when an ERROR unwinds).
pub struct NestedStatementTimeout {
    armed: bool,
    /// The client's timer, to restore: its finish time.
    restore: Option<pg_sys::TimestampTz>,
}

impl NestedStatementTimeout {
    /// Arm the timer for `limit` from now; zero means no limit of our own.
    pub fn arm(limit: Duration) -> NestedStatementTimeout {
        let ms = limit.as_millis().min(i32::MAX as u128) as c_int;
        let idle = NestedStatementTimeout {
            armed: false,
            restore: None,
        };
        if ms <= 0 {
            return idle;
        }
        // SAFETY: STATEMENT_TIMEOUT is registered in every backend by InitPostgres; reading
        // its state and (re)scheduling it raise no errors for a registered id.
        unsafe {
            let restore = if get_timeout_active(STATEMENT_TIMEOUT) {
                let client = get_timeout_finish_time(STATEMENT_TIMEOUT);
                let ours = pg_sys::GetCurrentTimestamp() + i64::from(ms) * 1000;
                if client <= ours {
                    return idle; // the client's limit comes first anyway
                }
                Some(client)
            } else {
                None
            };
            enable_timeout_after(STATEMENT_TIMEOUT, ms);
            NestedStatementTimeout {
                armed: true,
                restore,
            }
        }
    }
}

impl Drop for NestedStatementTimeout {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // SAFETY: disarming and scheduling a registered timer cannot fail. A finish time in
        // the past makes the client's timeout fire at once, as it would have anyway.
        unsafe {
            disable_timeout(STATEMENT_TIMEOUT, false);
            if let Some(at) = self.restore {
                enable_timeout_at(STATEMENT_TIMEOUT, at);
            }
        }
    }
}
