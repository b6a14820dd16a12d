//! Signal handling for workers that must stop promptly.

use pgrx::pg_sys;

unsafe extern "C-unwind" {
    /// Postgres's own SIGTERM handler (tcop/postgres.c). pgrx wraps `pg_sys::die` in a Rust
    /// function, which cannot be installed as a handler, so we declare the C symbol ourselves.
    #[link_name = "die"]
    fn postgres_die(postgres_signal_arg: std::ffi::c_int);
}

/// Make SIGTERM end the worker at the next interrupt check, even inside a long statement: the
/// statement is cancelled, the transaction rolls back and the process exits.
pub fn terminate_promptly_on_sigterm() {
    // SAFETY: `die` is async-signal-safe by design (it only sets flags and the latch) and is the
    // handler every regular backend uses; pqsignal (pqsignal_be on 18) installs it for this process
    // only. SIGTERM is unblocked afterwards by BackgroundWorkerUnblockSignals.
    unsafe {
        #[cfg(not(feature = "pg18"))]
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(postgres_die));
        // PostgreSQL 18 made `pqsignal` a macro that picks pqsignal_be in the backend (and
        // pqsignal_fe in frontends); bindgen only sees the function, which returns nothing.
        #[cfg(feature = "pg18")]
        pg_sys::pqsignal_be(pg_sys::SIGTERM as i32, Some(postgres_die));
        pg_sys::BackgroundWorkerUnblockSignals();
    }
}

/// Re-read postgresql.conf after a SIGHUP.
pub fn reload_config() {
    // SAFETY: called from the worker's main loop, outside any transaction-critical section, as
    // every Postgres process does when it notices ConfigReloadPending.
    unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
}

/// Allow a pending cancel or termination to take effect now.
pub fn check_for_interrupts() {
    pgrx::check_for_interrupts!();
}
