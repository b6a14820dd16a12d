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

/// Sleep until this backend's latch is set or `timeout` passes, then honour a pending cancel
/// or termination (which raises). For use in a regular backend (a SQL function), where the
/// latch is `MyLatch`.
pub fn wait_on_latch(timeout: std::time::Duration) {
    let ms = timeout.as_millis().min(i64::MAX as u128) as i64;
    // SAFETY: MyLatch is this backend's own latch, valid for the life of the process; WaitLatch
    // with WL_EXIT_ON_PM_DEATH never returns on postmaster death. ResetLatch then
    // CHECK_FOR_INTERRUPTS is the documented pattern so a cancel arriving meanwhile is seen.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            ms as _,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    pgrx::check_for_interrupts!();
}

/// Release a session-level advisory lock (key1, key2) this backend holds. Never raises (a
/// missing lock only logs a warning), so it may run in a transaction-abort callback.
pub fn release_session_advisory(key1: i32, key2: i32) {
    let tag = pg_sys::LOCKTAG {
        locktag_field1: my_database_oid().to_u32(),
        locktag_field2: key1 as u32,
        locktag_field3: key2 as u32,
        locktag_field4: 2,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    };
    // SAFETY: the tag is built exactly as SET_LOCKTAG_ADVISORY does for the two-int4 form of
    // pg_advisory_lock, in this database; LockRelease on a session lock does no catalog access
    // and only warns if the lock is not held.
    unsafe {
        pg_sys::LockRelease(&tag, pg_sys::ExclusiveLock as i32, true);
    }
}
