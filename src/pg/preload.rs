//! Whether the library is being loaded through shared_preload_libraries.

use pgrx::pg_sys;

pub fn in_shared_preload_libraries() -> bool {
    // SAFETY: a plain global flag the postmaster sets while it loads preload libraries; read
    // from _PG_init in the same (single-threaded) process.
    unsafe { pg_sys::process_shared_preload_libraries_in_progress }
}
