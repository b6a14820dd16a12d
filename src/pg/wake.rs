//! Waking another backend: set its latch so it stops waiting and looks at the catalog again.

use pgrx::pg_sys;

/// Set the latch of the backend with process id `pid`, if it is still alive. Never raises an
/// error, so it may be called after commit.
pub fn wake_pid(pid: i32) {
    if pid <= 0 {
        return;
    }
    // SAFETY: BackendPidGetProc takes ProcArrayLock and returns the PGPROC of a live backend or
    // NULL; PGPROC slots live in shared memory for the life of the postmaster, so the pointer
    // stays valid even if that backend exits meanwhile, and SetLatch on a recycled slot is a
    // harmless spurious wake-up.
    unsafe {
        let proc_ = pg_sys::BackendPidGetProc(pid);
        if !proc_.is_null() {
            pg_sys::SetLatch(&mut (*proc_).procLatch);
        }
    }
}

/// The current database's oid.
pub fn my_database_oid() -> pg_sys::Oid {
    // SAFETY: MyDatabaseId is set once at connection start and only read afterwards.
    unsafe { pg_sys::MyDatabaseId }
}

/// This process's pid.
pub fn my_pid() -> i32 {
    // SAFETY: MyProcPid is set at process start and only read afterwards.
    unsafe { pg_sys::MyProcPid }
}
