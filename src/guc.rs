//! Settings (GUCs) of data_drip.

use std::ffi::CString;

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};

/// What `NOTIFY drip_events` carries. Any role can LISTEN, and notifications bypass row-level
/// security, so the default names nobody's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PostgresGucEnum)]
pub enum NotifyPayload {
    /// The event, ids (event, run, batch) and the status.
    #[name = c"minimal"]
    Minimal,
    /// The whole event: backfill name, counts, error texts (single-tenant installations).
    #[name = c"full"]
    Full,
}

pub static NOTIFY_PAYLOAD: GucSetting<NotifyPayload> =
    GucSetting::<NotifyPayload>::new(NotifyPayload::Minimal);

/// Most runs executing at once in one database; more wait as `enqueued`.
pub static MAX_RUNS: GucSetting<i32> = GucSetting::<i32>::new(2);

/// Whether runs on hash-distributed Citus tables get one sub-run per shard.
pub static CITUS_SUB_RUNS: GucSetting<bool> = GucSetting::<bool>::new(true);

/// How many sub-runs of Citus shards may write to one node at once.
pub static MAX_RUNS_PER_NODE: GucSetting<i32> = GucSetting::<i32>::new(1);

/// How long drip.events rows are kept (seconds; 0 = for ever).
pub static EVENT_RETENTION: GucSetting<i32> = GucSetting::<i32>::new(30 * 24 * 3600);

/// How long the batch rows of finished runs are kept (seconds; 0 = for ever).
pub static BATCH_RETENTION: GucSetting<i32> = GucSetting::<i32>::new(30 * 24 * 3600);

/// How long the undo data of finished runs is kept (seconds; 0 = for ever).
pub static UNDO_RETENTION: GucSetting<i32> = GucSetting::<i32>::new(7 * 24 * 3600);

/// Database the launcher connects to in order to list databases (with shared_preload_libraries).
pub static LAUNCHER_DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));

/// Seconds between the launcher's looks at each database.
pub static LAUNCHER_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(10);

/// Define the settings. `in_preload`: the library is loaded by shared_preload_libraries, the
/// only time a postmaster-level setting may be defined.
pub fn define(in_preload: bool) {
    GucRegistry::define_int_guc(
        c"drip.max_runs",
        c"Maximum number of backfill runs executing at once per database.",
        c"Each executing run uses one background worker; further runs wait as enqueued. Raise max_worker_processes along with it.",
        &MAX_RUNS,
        0,
        1024,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"drip.citus_sub_runs",
        c"Whether a run on a hash-distributed Citus table gets one sub-run per shard.",
        c"Read by drip.start. Off: the table is walked as one key range from the coordinator, every batch reaching every shard (exactly once too, but several times slower); for comparison, and for integer keys so sparse that per-shard windows find few rows.",
        &CITUS_SUB_RUNS,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"drip.max_runs_per_node",
        c"Maximum number of sub-runs writing to one Citus node at once.",
        c"A run on a hash-distributed Citus table has one sub-run per shard; a sub-run whose shard's node already has this many waits, enqueued. Counted within drip.max_runs.",
        &MAX_RUNS_PER_NODE,
        1,
        1024,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"drip.notify_payload",
        c"What NOTIFY drip_events carries: minimal (event, ids, status) or full (the whole event).",
        c"Every role can LISTEN and notifications bypass row-level security: full exposes backfill names, counts and error texts (which may contain row data) to all roles. Only superusers may change it.",
        &NOTIFY_PAYLOAD,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"drip.event_retention",
        c"How long drip.events rows are kept (0 = for ever).",
        c"The scheduler removes older rows in small deletes.",
        &EVENT_RETENTION,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"drip.batch_retention",
        c"How long the drip.batches rows of finished runs are kept (0 = for ever).",
        c"The scheduler removes older rows in small deletes; runs themselves are kept.",
        &BATCH_RETENTION,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"drip.undo_retention",
        c"How long the undo data (drip.undo) of a finished run is kept after it finished (0 = for ever).",
        c"The scheduler removes expired undo data in small deletes and records it in drip.runs.undo_purged_at; such a run can no longer be reverted. Superusers may set it per database (ALTER DATABASE ... SET).",
        &UNDO_RETENTION,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    if !in_preload {
        return;
    }
    GucRegistry::define_string_guc(
        c"drip.launcher_database",
        c"Database the data_drip launcher connects to in order to list databases.",
        c"Only used when data_drip is in shared_preload_libraries.",
        &LAUNCHER_DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"drip.launcher_interval",
        c"Seconds between the launcher's checks of each database for runs to resume.",
        c"Only used when data_drip is in shared_preload_libraries.",
        &LAUNCHER_INTERVAL,
        1,
        3600,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
}

/// The launcher database's name.
pub fn launcher_database() -> String {
    LAUNCHER_DATABASE
        .get()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_else(|| "postgres".to_string())
}
