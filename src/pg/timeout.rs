//! Statement timeouts that really fire in a background worker.
//!
//! `SET statement_timeout` only arms a timer in the client protocol loop, which a background
//! worker does not run. We arm Postgres's own STATEMENT_TIMEOUT timer around a batch statement,
//! as the protocol loop would; when it fires, the default SIGINT handler cancels the statement
//! with SQLSTATE 57014.

use std::ffi::c_int;
use std::time::Duration;

/// `STATEMENT_TIMEOUT` in `enum TimeoutId` (utils/timeout.h); the same value on PG 13 to 18.
const STATEMENT_TIMEOUT: c_int = 3;

unsafe extern "C-unwind" {
    fn enable_timeout_after(id: c_int, delay_ms: c_int);
    fn disable_timeout(id: c_int, keep_indicator: bool);
}

/// Armed while alive; disarms on drop, also when an ERROR unwinds through it.
pub struct StatementTimeout {
    armed: bool,
}

impl StatementTimeout {
    /// Arm the timer; a zero duration means no limit.
    pub fn arm(limit: Duration) -> StatementTimeout {
        let ms = limit.as_millis().min(i32::MAX as u128) as c_int;
        if ms <= 0 {
            return StatementTimeout { armed: false };
        }
        // SAFETY: STATEMENT_TIMEOUT is registered by InitPostgres in every backend, background
        // workers with a database connection included; enable_timeout_after only schedules a
        // SIGALRM-driven timer and does not raise errors for a registered id.
        unsafe { enable_timeout_after(STATEMENT_TIMEOUT, ms) };
        StatementTimeout { armed: true }
    }
}

impl Drop for StatementTimeout {
    fn drop(&mut self) {
        if self.armed {
            // SAFETY: disarming a registered timer is always allowed and cannot fail; the
            // indicator is cleared so a later cancel is not mistaken for a timeout.
            unsafe { disable_timeout(STATEMENT_TIMEOUT, false) };
        }
    }
}
