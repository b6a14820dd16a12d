//! Every query the dashboard runs. All of them run on a connection of the viewer's role, so
//! row-level security decides what comes back; values are always bound parameters.
//!
//! Timestamps and intervals come back as epoch seconds (`float8`) and are formatted in
//! `views::fmt`. Counts come from `drip.runs` and `drip.progress`, never from `count(*)` over
//! `drip.batches`.

use tokio_postgres::{Client, Row};

use crate::error::AppResult;

/// The statuses behind each tab of the runs screen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tab {
    All,
    Running,
    Scheduled,
    Paused,
    Failed,
    Finished,
}

impl Tab {
    pub const ALL: [Tab; 6] = [
        Tab::All,
        Tab::Running,
        Tab::Scheduled,
        Tab::Paused,
        Tab::Failed,
        Tab::Finished,
    ];

    pub fn parse(s: &str) -> Tab {
        Tab::ALL
            .into_iter()
            .find(|t| t.slug() == s)
            .unwrap_or(Tab::All)
    }

    pub fn slug(self) -> &'static str {
        match self {
            Tab::All => "all",
            Tab::Running => "running",
            Tab::Scheduled => "scheduled",
            Tab::Paused => "paused",
            Tab::Failed => "failed",
            Tab::Finished => "finished",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Tab::All => "All",
            Tab::Running => "Running",
            Tab::Scheduled => "Scheduled",
            Tab::Paused => "Paused",
            Tab::Failed => "Failed",
            Tab::Finished => "Finished",
        }
    }

    pub fn statuses(self) -> Vec<String> {
        let s: &[&str] = match self {
            Tab::All => &[
                "pending",
                "enqueued",
                "running",
                "paused",
                "completed",
                "failed",
                "stopped",
            ],
            Tab::Running => &["running"],
            Tab::Scheduled => &["pending", "enqueued"],
            Tab::Paused => &["paused"],
            Tab::Failed => &["failed"],
            Tab::Finished => &["completed", "stopped"],
        };
        s.iter().map(|s| s.to_string()).collect()
    }
}

/// What the viewer's role may call, asked of the database (`has_function_privilege`). `None`
/// means allowed; `Some(reason)` is shown on the disabled control.
#[derive(Clone, Debug, Default)]
pub struct Rights {
    pub role: String,
    pub superuser: bool,
    pub start: Option<String>,
    pub pause: Option<String>,
    pub resume: Option<String>,
    pub stop: Option<String>,
    pub retry: Option<String>,
    pub alter: Option<String>,
    pub timezone: String,
}

pub async fn rights(db: &Client) -> AppResult<Rights> {
    let row = db
        .query_one(
            "SELECT current_user::text,
                    coalesce((SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user), false),
                    coalesce(has_schema_privilege(to_regnamespace('drip'), 'USAGE'), false),
                    current_setting('TimeZone')",
            &[],
        )
        .await?;
    let role: String = row.try_get(0)?;
    let usage: bool = row.try_get(2)?;
    let mut rights = Rights {
        role: role.clone(),
        superuser: row.try_get(1)?,
        timezone: row.try_get(3)?,
        ..Rights::default()
    };
    let no_usage = format!("role {role} has no USAGE on schema drip (GRANT USAGE ON SCHEMA drip)");
    let funcs = db
        .query(
            "SELECT p.proname::text, bool_or(has_function_privilege(p.oid, 'EXECUTE'))
               FROM pg_catalog.pg_proc p
              WHERE p.pronamespace = to_regnamespace('drip')
                AND p.proname = ANY('{start,pause,resume,stop,retry,alter}')
              GROUP BY p.proname",
            &[],
        )
        .await?;
    let allowed = |name: &str| -> Option<String> {
        if !usage {
            return Some(no_usage.clone());
        }
        match funcs
            .iter()
            .find(|r| r.try_get::<_, String>(0).ok().as_deref() == Some(name))
        {
            Some(r) if r.try_get::<_, bool>(1).unwrap_or(false) => None,
            Some(_) => Some(format!(
                "role {role} may not execute drip.{name} (no EXECUTE privilege)"
            )),
            None => Some(format!("drip.{name} does not exist in this database")),
        }
    };
    rights.start = allowed("start");
    rights.pause = allowed("pause");
    rights.resume = allowed("resume");
    rights.stop = allowed("stop");
    rights.retry = allowed("retry");
    rights.alter = allowed("alter");
    Ok(rights)
}

#[derive(Clone, Debug)]
pub struct RunRow {
    pub id: i64,
    pub backfill: String,
    pub owner: String,
    pub status: String,
    pub throttled: Option<String>,
    pub note: Option<String>,
    pub rows_done: i64,
    pub rows_failed: i64,
    pub rows_estimated: Option<i64>,
    pub percent: f64,
    pub rows_per_sec: Option<f64>,
    pub eta_secs: Option<f64>,
    pub elapsed_secs: Option<f64>,
    pub batches_done: i64,
    pub created_at: f64,
    pub start_at: Option<f64>,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
    pub last_error: Option<String>,
}

const RUN_COLUMNS: &str = "
    r.id, r.backfill, r.owner::text, r.status, r.throttled, r.note, r.rows_done, r.rows_failed,
    r.rows_estimated, coalesce(p.percent, 0)::float8, p.rows_per_sec::float8,
    extract(epoch FROM p.eta)::float8, extract(epoch FROM p.elapsed)::float8, r.batches_done,
    extract(epoch FROM r.created_at)::float8, extract(epoch FROM r.start_at)::float8,
    extract(epoch FROM r.started_at)::float8, extract(epoch FROM r.finished_at)::float8,
    left(p.last_error, 2001)";

fn run_row(row: &Row) -> AppResult<RunRow> {
    Ok(RunRow {
        id: row.try_get(0)?,
        backfill: row.try_get(1)?,
        owner: row.try_get(2)?,
        status: row.try_get(3)?,
        throttled: row.try_get(4)?,
        note: row.try_get(5)?,
        rows_done: row.try_get(6)?,
        rows_failed: row.try_get(7)?,
        rows_estimated: row.try_get(8)?,
        percent: row.try_get(9)?,
        rows_per_sec: row.try_get(10)?,
        eta_secs: row.try_get(11)?,
        elapsed_secs: row.try_get(12)?,
        batches_done: row.try_get(13)?,
        created_at: row.try_get(14)?,
        start_at: row.try_get(15)?,
        started_at: row.try_get(16)?,
        finished_at: row.try_get(17)?,
        last_error: row.try_get(18)?,
    })
}

/// Filters of the runs screen; all of them live in the URL.
#[derive(Clone, Debug)]
pub struct RunFilter {
    pub tab: Tab,
    pub search: String,
    pub mine: bool,
    /// Keyset pagination: runs with an id below this one.
    pub before: Option<i64>,
    pub backfill: Option<String>,
}

const RUN_WHERE: &str = "
    ($1 = '' OR strpos(lower(r.backfill), lower($1)) > 0)
    AND (NOT $2 OR r.owner::oid = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user))
    AND ($3::text IS NULL OR r.backfill = $3)";

pub async fn runs(db: &Client, f: &RunFilter, limit: i64) -> AppResult<Vec<RunRow>> {
    // The page of ids first (runs_pkey backwards), then drip.progress for just those runs.
    let sql = format!(
        "WITH page AS (
             SELECT r.id FROM drip.runs r
              WHERE {RUN_WHERE} AND r.status = ANY($4) AND ($5::bigint IS NULL OR r.id < $5)
              ORDER BY r.id DESC LIMIT $6)
         SELECT {RUN_COLUMNS}
           FROM page JOIN drip.runs r ON r.id = page.id
           JOIN drip.progress p ON p.run_id = page.id
          ORDER BY r.id DESC"
    );
    let rows = db
        .query(
            &sql,
            &[
                &f.search,
                &f.mine,
                &f.backfill,
                &f.tab.statuses(),
                &f.before,
                &limit,
            ],
        )
        .await?;
    rows.iter().map(run_row).collect()
}

/// Runs per tab for the current search (counts over drip.runs, which is small next to batches).
pub async fn tab_counts(db: &Client, f: &RunFilter) -> AppResult<Vec<(Tab, i64)>> {
    let sql = format!(
        "SELECT count(*),
                count(*) FILTER (WHERE status = 'running'),
                count(*) FILTER (WHERE status IN ('pending', 'enqueued')),
                count(*) FILTER (WHERE status = 'paused'),
                count(*) FILTER (WHERE status = 'failed'),
                count(*) FILTER (WHERE status IN ('completed', 'stopped'))
           FROM drip.runs r WHERE {RUN_WHERE}"
    );
    let row = db
        .query_one(&sql, &[&f.search, &f.mine, &f.backfill])
        .await?;
    let mut out = Vec::new();
    for (i, tab) in Tab::ALL.into_iter().enumerate() {
        out.push((tab, row.try_get(i)?));
    }
    Ok(out)
}

pub async fn run(db: &Client, id: i64) -> AppResult<Option<RunRow>> {
    let sql = format!(
        "SELECT {RUN_COLUMNS} FROM drip.runs r JOIN drip.progress p ON p.run_id = r.id WHERE r.id = $1"
    );
    match db.query_opt(&sql, &[&id]).await? {
        Some(row) => Ok(Some(run_row(&row)?)),
        None => Ok(None),
    }
}

/// The whole error of a run (its own, else its latest failed batch's, as drip.progress says).
pub async fn run_error(db: &Client, id: i64) -> AppResult<Option<String>> {
    Ok(db
        .query_opt(
            "SELECT last_error FROM drip.progress WHERE run_id = $1",
            &[&id],
        )
        .await?
        .map(|r| r.try_get::<_, Option<String>>(0))
        .transpose()?
        .flatten())
}

/// The whole error of one batch (its latest attempt's).
pub async fn batch_error(db: &Client, run_id: i64, batch_no: i64) -> AppResult<Option<String>> {
    Ok(db
        .query_opt(
            "SELECT error FROM drip.batches WHERE run_id = $1 AND batch_no = $2 AND error IS NOT NULL
              ORDER BY started_at DESC LIMIT 1",
            &[&run_id, &batch_no],
        )
        .await?
        .map(|r| r.try_get::<_, Option<String>>(0))
        .transpose()?
        .flatten())
}

/// Whether row-level security shows the viewer run `id`.
pub async fn run_visible(db: &Client, id: i64) -> AppResult<bool> {
    Ok(db
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM drip.runs WHERE id = $1)",
            &[&id],
        )
        .await?
        .try_get(0)?)
}

#[derive(Clone, Debug)]
pub struct RunDetail {
    pub params: serde_json::Value,
    pub definition: serde_json::Value,
    pub batch_size: i32,
    pub sleep_secs: f64,
    pub target_batch_time_secs: Option<f64>,
    pub parallel: i32,
    pub started_by: String,
    pub error: Option<String>,
    pub after_run: Option<i64>,
    pub next_batch_no: i64,
    pub worker_pid: Option<i32>,
    pub cursor: Option<Vec<String>>,
    pub to_key: Option<Vec<String>>,
}

pub async fn run_detail(db: &Client, id: i64) -> AppResult<Option<RunDetail>> {
    let row = db
        .query_opt(
            "SELECT params, definition, batch_size, extract(epoch FROM sleep)::float8,
                    extract(epoch FROM target_batch_time)::float8, parallel, started_by::text, left(error, 2001),
                    after_run, next_batch_no, worker_pid, cursor, to_key
               FROM drip.runs WHERE id = $1",
            &[&id],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(RunDetail {
        params: row.try_get(0)?,
        definition: row.try_get(1)?,
        batch_size: row.try_get(2)?,
        sleep_secs: row.try_get(3)?,
        target_batch_time_secs: row.try_get(4)?,
        parallel: row.try_get(5)?,
        started_by: row.try_get(6)?,
        error: row.try_get(7)?,
        after_run: row.try_get(8)?,
        next_batch_no: row.try_get(9)?,
        worker_pid: row.try_get(10)?,
        cursor: row.try_get(11)?,
        to_key: row.try_get(12)?,
    }))
}

#[derive(Clone, Debug)]
pub struct BatchRow {
    pub batch_no: i64,
    pub low_key: Option<Vec<String>>,
    pub high_key: Vec<String>,
    pub rows: Option<i64>,
    pub batch_size: Option<i32>,
    pub slice: Option<i32>,
    pub status: String,
    pub attempts: i32,
    pub started_at: f64,
    pub duration_secs: Option<f64>,
    pub error: Option<String>,
    pub sqlstate: Option<String>,
}

/// One page of batches, newest first (keyset on `batch_no` through `batches_pkey`).
pub async fn batches(
    db: &Client,
    run_id: i64,
    errors_only: bool,
    before: Option<i64>,
    limit: i64,
) -> AppResult<Vec<BatchRow>> {
    let rows = db
        .query(
            "SELECT batch_no, low_key, high_key, rows, batch_size, slice, status, attempts,
                    extract(epoch FROM started_at)::float8, extract(epoch FROM duration)::float8,
                    left(error, 301), sqlstate
               FROM drip.batches
              WHERE run_id = $1 AND (NOT $2 OR error IS NOT NULL)
                AND ($3::bigint IS NULL OR batch_no < $3)
              ORDER BY batch_no DESC LIMIT $4",
            &[&run_id, &errors_only, &before, &limit],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(BatchRow {
                batch_no: r.try_get(0)?,
                low_key: r.try_get(1)?,
                high_key: r.try_get(2)?,
                rows: r.try_get(3)?,
                batch_size: r.try_get(4)?,
                slice: r.try_get(5)?,
                status: r.try_get(6)?,
                attempts: r.try_get(7)?,
                started_at: r.try_get(8)?,
                duration_secs: r.try_get(9)?,
                error: r.try_get(10)?,
                sqlstate: r.try_get(11)?,
            })
        })
        .collect()
}

/// A stretch of consecutive batches (in key order) drawn as one mark of the timeline; a single
/// batch when the run has few enough.
#[derive(Clone, Debug)]
pub struct TimelineMark {
    pub first: i64,
    pub last: i64,
    pub count: i64,
    pub failed: bool,
    pub running: bool,
    pub retried: bool,
    pub avg_secs: Option<f64>,
    pub max_secs: Option<f64>,
    pub rows: Option<i64>,
    /// The slice (a parallel run's slice, a Citus shard's sub-run) whose lane the mark is in;
    /// None for a run walked by one worker.
    pub lane: Option<i32>,
}

/// At most `marks` marks over all of the run's batches, in key order: batch number order; for a
/// parallel run (slices, or a Citus run's sub-runs, one per shard) one lane per slice, each in
/// its own batch order, at most `marks` marks in all (at least 20 per lane).
pub async fn timeline(
    db: &Client,
    run_id: i64,
    parallel: bool,
    marks: i64,
) -> AppResult<Vec<TimelineMark>> {
    let sql = if parallel {
        // One lane per slice: positions and bucket sizes within the slice.
        "WITH b AS (SELECT batch_no, slice, status, error, duration, rows,
                           row_number() OVER (PARTITION BY slice ORDER BY batch_no) - 1 AS pos,
                           count(*) OVER (PARTITION BY slice) AS total
                      FROM drip.batches WHERE run_id = $1),
              l AS (SELECT greatest(20, $2 / greatest(count(DISTINCT slice), 1)) AS per_lane FROM b)
         SELECT min(batch_no), max(batch_no), count(*),
                bool_or(status = 'failed'), bool_or(status = 'running'),
                bool_or(status = 'completed' AND error IS NOT NULL),
                avg(extract(epoch FROM duration))::float8, max(extract(epoch FROM duration))::float8,
                sum(rows)::bigint, slice
           FROM b, l
          GROUP BY slice, pos * l.per_lane / total
          ORDER BY slice, pos * l.per_lane / total"
    } else {
        "WITH n AS (SELECT greatest(max(batch_no), 1) AS total FROM drip.batches WHERE run_id = $1),
              b AS (SELECT batch_no, status, error, duration, rows, batch_no - 1 AS pos
                      FROM drip.batches WHERE run_id = $1)
         SELECT min(batch_no), max(batch_no), count(*),
                bool_or(status = 'failed'), bool_or(status = 'running'),
                bool_or(status = 'completed' AND error IS NOT NULL),
                avg(extract(epoch FROM duration))::float8, max(extract(epoch FROM duration))::float8,
                sum(rows)::bigint, NULL::integer
           FROM b, n
          GROUP BY pos * $2 / n.total
          ORDER BY pos * $2 / n.total"
    };
    let rows = db.query(sql, &[&run_id, &marks]).await?;
    rows.iter()
        .map(|r| {
            Ok(TimelineMark {
                first: r.try_get(0)?,
                last: r.try_get(1)?,
                count: r.try_get(2)?,
                failed: r.try_get(3)?,
                running: r.try_get(4)?,
                retried: r.try_get(5)?,
                avg_secs: r.try_get(6)?,
                max_secs: r.try_get(7)?,
                rows: r.try_get(8)?,
                lane: r.try_get(9)?,
            })
        })
        .collect()
}

/// Rows per second of the last `n` completed batches, oldest first, for the sparkline.
pub async fn throughput(db: &Client, run_id: i64, n: i64) -> AppResult<Vec<f64>> {
    let rows = db
        .query(
            "SELECT coalesce(rows, 0)::float8 / greatest(extract(epoch FROM duration)::float8, 0.001)
               FROM (SELECT batch_no, rows, duration FROM drip.batches
                      WHERE run_id = $1 AND status = 'completed'
                      ORDER BY batch_no DESC LIMIT $2) last
              ORDER BY batch_no",
            &[&run_id, &n],
        )
        .await?;
    rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
}

#[derive(Clone, Debug)]
pub struct ErrorGroup {
    pub sqlstate: String,
    pub batches: i64,
    pub first_batch: i64,
    pub last_batch: i64,
    pub example: String,
}

pub async fn error_groups(db: &Client, run_id: i64) -> AppResult<Vec<ErrorGroup>> {
    let rows = db
        .query(
            "SELECT coalesce(sqlstate, '-----'), count(*), min(batch_no), max(batch_no),
                    (array_agg(left(error, 301) ORDER BY batch_no DESC))[1]
               FROM drip.batches WHERE run_id = $1 AND error IS NOT NULL
              GROUP BY 1 ORDER BY 2 DESC, 1",
            &[&run_id],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(ErrorGroup {
                sqlstate: r.try_get(0)?,
                batches: r.try_get(1)?,
                first_batch: r.try_get(2)?,
                last_batch: r.try_get(3)?,
                example: crate::views::fmt::clip(
                    &r.try_get::<_, String>(4)?,
                    crate::views::fmt::ERROR_IN_LIST,
                )
                .0,
            })
        })
        .collect()
}

#[derive(Clone, Debug)]
pub struct RowError {
    pub batch_no: i64,
    pub key: Vec<String>,
    pub error: String,
    pub sqlstate: String,
    pub at: f64,
    pub resolved: bool,
}

pub async fn row_errors(db: &Client, run_id: i64, limit: i64) -> AppResult<Vec<RowError>> {
    let rows = db
        .query(
            "SELECT batch_no, key, left(error, 301), sqlstate, extract(epoch FROM at)::float8, resolved_at IS NOT NULL
               FROM drip.row_errors WHERE run_id = $1 ORDER BY at DESC LIMIT $2",
            &[&run_id, &limit],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(RowError {
                batch_no: r.try_get(0)?,
                key: r.try_get(1)?,
                error: r.try_get(2)?,
                sqlstate: r.try_get(3)?,
                at: r.try_get(4)?,
                resolved: r.try_get(5)?,
            })
        })
        .collect()
}

#[derive(Clone, Debug)]
pub struct EventRow {
    pub id: i64,
    pub at: f64,
    pub event: String,
    pub payload: serde_json::Value,
}

/// The run's latest events (`events_run` index), newest first.
pub async fn run_events(db: &Client, run_id: i64, limit: i64) -> AppResult<Vec<EventRow>> {
    let rows = db
        .query(
            "SELECT id, extract(epoch FROM at)::float8, event, payload
               FROM drip.events WHERE run_id = $1 ORDER BY id DESC LIMIT $2",
            &[&run_id, &limit],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(EventRow {
                id: r.try_get(0)?,
                at: r.try_get(1)?,
                event: r.try_get(2)?,
                payload: r.try_get(3)?,
            })
        })
        .collect()
}

#[derive(Clone, Debug)]
pub struct BackfillRow {
    pub name: String,
    pub description: Option<String>,
    pub relation: String,
    pub action: String,
    pub action_kind: String,
    pub scope: Option<String>,
    pub params: serde_json::Value,
    pub key: Vec<String>,
    pub owner: String,
    pub mode: String,
    pub batch_size: i32,
    pub sleep_secs: f64,
    pub max_attempts: i32,
    pub updated_at: f64,
    pub latest_run: Option<i64>,
    pub latest_status: Option<String>,
    pub latest_at: Option<f64>,
}

const BACKFILL_SQL: &str = "
    SELECT b.name, b.description, b.relation::text, b.action, b.action_kind, b.scope, b.params,
           b.key, b.owner::text, b.mode, b.batch_size, extract(epoch FROM b.sleep)::float8,
           b.max_attempts, extract(epoch FROM b.updated_at)::float8,
           lr.id, lr.status, extract(epoch FROM lr.created_at)::float8
      FROM drip.backfills b
      LEFT JOIN LATERAL (SELECT r.id, r.status, r.created_at FROM drip.runs r
                          WHERE r.backfill = b.name ORDER BY r.id DESC LIMIT 1) lr ON true";

fn backfill_row(r: &Row) -> AppResult<BackfillRow> {
    Ok(BackfillRow {
        name: r.try_get(0)?,
        description: r.try_get(1)?,
        relation: r.try_get(2)?,
        action: r.try_get(3)?,
        action_kind: r.try_get(4)?,
        scope: r.try_get(5)?,
        params: r.try_get(6)?,
        key: r.try_get(7)?,
        owner: r.try_get(8)?,
        mode: r.try_get(9)?,
        batch_size: r.try_get(10)?,
        sleep_secs: r.try_get(11)?,
        max_attempts: r.try_get(12)?,
        updated_at: r.try_get(13)?,
        latest_run: r.try_get(14)?,
        latest_status: r.try_get(15)?,
        latest_at: r.try_get(16)?,
    })
}

pub async fn backfills(db: &Client, search: &str) -> AppResult<Vec<BackfillRow>> {
    let sql = format!(
        "{BACKFILL_SQL} WHERE $1 = '' OR strpos(lower(b.name), lower($1)) > 0 ORDER BY b.name LIMIT 500"
    );
    let rows = db.query(&sql, &[&search]).await?;
    rows.iter().map(backfill_row).collect()
}

pub async fn backfill(db: &Client, name: &str) -> AppResult<Option<BackfillRow>> {
    let sql = format!("{BACKFILL_SQL} WHERE b.name = $1");
    match db.query_opt(&sql, &[&name]).await? {
        Some(r) => Ok(Some(backfill_row(&r)?)),
        None => Ok(None),
    }
}

/// A control call: `drip.pause`, `resume`, `stop` or `retry`. Returns the new status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Pause,
    Resume,
    Stop,
    Retry,
}

impl Control {
    pub fn parse(s: &str) -> Option<Control> {
        match s {
            "pause" => Some(Control::Pause),
            "resume" => Some(Control::Resume),
            "stop" => Some(Control::Stop),
            "retry" => Some(Control::Retry),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Control::Pause => "pause",
            Control::Resume => "resume",
            Control::Stop => "stop",
            Control::Retry => "retry",
        }
    }

    /// Whether the run's lifecycle has this transition from `status` (README, drip.pause ...).
    /// Used only to choose which buttons to draw; the function call decides.
    pub fn applies_to(self, status: &str) -> bool {
        match self {
            Control::Pause => matches!(status, "enqueued" | "running"),
            Control::Resume => status == "paused",
            Control::Stop => matches!(status, "pending" | "enqueued" | "running" | "paused"),
            Control::Retry => matches!(status, "failed" | "stopped"),
        }
    }
}

pub async fn control(db: &Client, action: Control, run_id: i64) -> AppResult<String> {
    let sql = match action {
        Control::Pause => "SELECT drip.pause($1)",
        Control::Resume => "SELECT drip.resume($1)",
        Control::Stop => "SELECT drip.stop($1)",
        Control::Retry => "SELECT drip.retry($1)",
    };
    Ok(db.query_one(sql, &[&run_id]).await?.try_get(0)?)
}

/// `drip.alter` with the two settings the run page offers; NULL keeps a setting.
pub async fn alter(
    db: &Client,
    run_id: i64,
    batch_size: Option<i32>,
    sleep: Option<&str>,
) -> AppResult<()> {
    db.query_one(
        "SELECT batch_size FROM drip.alter($1, batch_size => $2, sleep => $3::text::interval)",
        &[&run_id, &batch_size, &sleep],
    )
    .await?;
    Ok(())
}

/// Everything the start form sends to `drip.start`; text values are converted by Postgres.
#[derive(Clone, Debug, Default)]
pub struct StartRequest {
    pub name: String,
    pub params: serde_json::Value,
    pub batch_size: Option<String>,
    pub sleep: Option<String>,
    pub start_at: Option<String>,
    pub note: Option<String>,
}

pub async fn start(db: &Client, req: &StartRequest) -> AppResult<i64> {
    let row = db
        .query_one(
            "SELECT drip.start($1, $2, batch_size => $3::text::integer, sleep => $4::text::interval,
                               start_at => $5::text::timestamptz, note => $6)",
            &[
                &req.name,
                &req.params,
                &req.batch_size,
                &req.sleep,
                &req.start_at,
                &req.note,
            ],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// A cursor at the head of the commit-ordered event log for the current snapshot: every event
/// of a transaction that ended before it is "already seen" by a page rendered now.
pub async fn head_cursor(db: &Client) -> AppResult<String> {
    let row = db
        .query_one(
            "SELECT ((pg_snapshot_xmin(pg_current_snapshot())::text::numeric - 1)::text) || ':9223372036854775807'",
            &[],
        )
        .await?;
    Ok(row.try_get(0)?)
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct LiveEvent {
    pub id: i64,
    pub event: String,
    pub run_id: Option<i64>,
    pub status: Option<String>,
    pub batch: Option<i64>,
    pub cursor: String,
}

/// The events after `cursor` that the viewer may see, in commit order (`drip.events_since`, as
/// the viewer), and the cursor to continue from. When fewer than `max` came back, every event
/// below the snapshot's xmin has been read, so the cursor moves there even if the viewer saw
/// none of them (the next call then skips other roles' events instead of re-reading them).
pub async fn events_since(
    db: &Client,
    cursor: &str,
    max: i32,
) -> AppResult<(Vec<LiveEvent>, String)> {
    let rows = db
        .query(
            "WITH s AS (SELECT ((pg_snapshot_xmin(pg_current_snapshot())::text::numeric - 1)::text)
                               || ':9223372036854775807' AS head)
             SELECT e.id, e.event, e.run_id, e.payload->>'status', (e.payload->>'batch')::bigint,
                    e.cursor, s.head
               FROM s LEFT JOIN LATERAL drip.events_since($1, $2) e ON true",
            &[&cursor, &max],
        )
        .await?;
    let mut events = Vec::new();
    let mut head = None;
    for r in &rows {
        head = Some(r.try_get::<_, String>(6)?);
        let Some(id) = r.try_get::<_, Option<i64>>(0)? else {
            continue;
        };
        events.push(LiveEvent {
            id,
            event: r.try_get(1)?,
            run_id: r.try_get(2)?,
            status: r.try_get(3)?,
            batch: r.try_get(4)?,
            cursor: r.try_get(5)?,
        });
    }
    let last = events.last().map(|e| e.cursor.clone());
    let next = if (events.len() as i64) < max as i64 {
        match (last, head) {
            (Some(l), Some(h)) => max_cursor(&l, &h).to_string(),
            (None, Some(h)) => max_cursor(cursor, &h).to_string(),
            (Some(l), None) => l,
            (None, None) => cursor.to_string(),
        }
    } else {
        last.unwrap_or_else(|| cursor.to_string())
    };
    Ok((events, next))
}

/// Parses "xid:id".
pub fn parse_cursor(c: &str) -> Option<(u64, i64)> {
    let (x, i) = c.split_once(':')?;
    Some((x.parse().ok()?, i.parse().ok()?))
}

fn max_cursor<'a>(a: &'a str, b: &'a str) -> &'a str {
    match (parse_cursor(a), parse_cursor(b)) {
        (Some(x), Some(y)) if y > x => b,
        (Some(_), _) => a,
        _ => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_compare_as_pairs() {
        assert_eq!(parse_cursor("12:5"), Some((12, 5)));
        assert_eq!(parse_cursor("x"), None);
        assert_eq!(max_cursor("12:5", "11:9223372036854775807"), "12:5");
        assert_eq!(
            max_cursor("9:5", "11:9223372036854775807"),
            "11:9223372036854775807"
        );
        assert_eq!(max_cursor("junk", "11:1"), "11:1");
    }

    #[test]
    fn tabs_round_trip_and_cover_every_status() {
        for t in Tab::ALL {
            assert_eq!(Tab::parse(t.slug()), t);
        }
        assert_eq!(Tab::parse("nonsense"), Tab::All);
        let mut all: Vec<String> = Tab::ALL[1..].iter().flat_map(|t| t.statuses()).collect();
        all.sort();
        let mut expected = Tab::All.statuses();
        expected.sort();
        assert_eq!(all, expected);
    }

    #[test]
    fn controls_follow_the_lifecycle() {
        assert!(Control::Pause.applies_to("running"));
        assert!(!Control::Pause.applies_to("paused"));
        assert!(Control::Resume.applies_to("paused"));
        assert!(Control::Retry.applies_to("failed"));
        assert!(!Control::Stop.applies_to("completed"));
        assert_eq!(Control::parse("stop"), Some(Control::Stop));
        assert_eq!(Control::parse("drop"), None);
    }
}

/// One row `drip.preview` returns: its key and the changed columns before and after (`after`
/// NULL for a deleted row).
#[derive(Clone, Debug)]
pub struct PreviewRow {
    pub key: Vec<String>,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// `drip.preview` as the viewer: the action runs as the backfill's owner and is rolled back.
pub async fn preview(
    db: &Client,
    name: &str,
    params: &serde_json::Value,
    rows: i32,
) -> AppResult<Vec<PreviewRow>> {
    let rows = db
        .query(
            "SELECT key, before, after FROM drip.preview($1, $2, rows => $3)",
            &[&name, params, &rows],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(PreviewRow {
                key: r.try_get(0)?,
                before: r.try_get(1)?,
                after: r.try_get(2)?,
            })
        })
        .collect()
}

/// What a run keeps for `drip.revert`, and its revert links.
#[derive(Clone, Debug)]
pub struct UndoInfo {
    pub undo: bool,
    pub purged_at: Option<f64>,
    pub reverts: Option<i64>,
    pub reverted_by: Option<i64>,
    /// `drip.undo_size`: changed rows saved and their bytes (None: not asked or refused).
    pub size: Option<(i64, i64)>,
}

pub async fn undo_info(db: &Client, id: i64) -> AppResult<Option<UndoInfo>> {
    let Some(row) = db
        .query_opt(
            "SELECT undo, extract(epoch FROM undo_purged_at)::float8, reverts, reverted_by
               FROM drip.runs WHERE id = $1",
            &[&id],
        )
        .await?
    else {
        return Ok(None);
    };
    let undo: bool = row.try_get(0)?;
    // drip.undo_size answers only to roles that may control the run: a viewer who may only
    // see it gets no size, not an error page.
    let size = if undo {
        db.query_one("SELECT rows, bytes FROM drip.undo_size($1)", &[&id])
            .await
            .ok()
            .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)))
    } else {
        None
    };
    Ok(Some(UndoInfo {
        undo,
        purged_at: row.try_get(1)?,
        reverts: row.try_get(2)?,
        reverted_by: row.try_get(3)?,
        size,
    }))
}

/// One row a revert run left alone (`drip.revert_conflicts`, as the viewer).
#[derive(Clone, Debug)]
pub struct ConflictRow {
    pub key: Vec<String>,
    pub reason: String,
    pub current: Option<String>,
    pub expected: String,
    pub at: f64,
}

pub async fn revert_conflicts(db: &Client, id: i64, limit: i64) -> AppResult<Vec<ConflictRow>> {
    let rows = db
        .query(
            "SELECT key, reason, left(current::text, 2000), left(expected::text, 2000),
                    extract(epoch FROM at)::float8
               FROM drip.revert_conflicts WHERE run_id = $1 ORDER BY at, key LIMIT $2",
            &[&id, &limit],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(ConflictRow {
                key: r.try_get(0)?,
                reason: r.try_get(1)?,
                current: r.try_get(2)?,
                expected: r.try_get(3)?,
                at: r.try_get(4)?,
            })
        })
        .collect()
}

pub async fn conflict_count(db: &Client, id: i64) -> AppResult<i64> {
    Ok(db
        .query_one(
            "SELECT count(*) FROM drip.revert_conflicts WHERE run_id = $1",
            &[&id],
        )
        .await?
        .try_get(0)?)
}

/// `drip.revert` as the viewer; returns the revert run's id.
pub async fn revert(db: &Client, id: i64) -> AppResult<i64> {
    Ok(db
        .query_one("SELECT drip.revert($1)", &[&id])
        .await?
        .try_get(0)?)
}
