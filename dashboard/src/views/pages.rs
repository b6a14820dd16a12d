//! The askama page types and the view models they render. Everything a template prints is
//! prepared here as text, so templates stay declarative.

use askama::Template;

use crate::db::queries::{
    BackfillRow, BatchRow, ConflictRow, Control, ErrorGroup, EventRow, PreviewRow, Rights,
    RowError, RunDetail, RunRow, Tab, UndoInfo,
};
use crate::error::AppError;
use crate::views::{fmt, svg};

/// What every page's frame needs: who is looking, the CSRF token for its forms, and where the
/// live script starts reading the event log.
#[derive(Clone, Debug, Default)]
pub struct Chrome {
    pub title: String,
    pub nav: &'static str,
    pub role: String,
    /// The viewer's role is a superuser (row-level security does not apply to it).
    pub superuser: bool,
    pub multi_user: bool,
    pub read_only: bool,
    pub csrf: String,
    /// Event-log cursor the page was rendered at (`data-cursor`); empty: no live updates.
    pub cursor: String,
    /// The URL that re-renders this page's live region, and the run it follows (0 = all).
    pub live_src: String,
    pub live_run: i64,
    pub timezone: String,
}

#[derive(Clone, Debug)]
pub struct When {
    pub rel: String,
    pub abs: String,
    pub iso: String,
}

impl When {
    pub fn at(epoch: f64, now: f64) -> When {
        When {
            rel: fmt::relative(epoch, now),
            abs: fmt::absolute(epoch),
            iso: fmt::iso(epoch),
        }
    }
    pub fn opt(epoch: Option<f64>, now: f64) -> Option<When> {
        epoch.map(|e| When::at(e, now))
    }
}

#[derive(Clone, Debug)]
pub struct ControlView {
    pub action: &'static str,
    pub label: &'static str,
    /// Why the database would refuse it; empty when allowed.
    pub refused: String,
}

impl ControlView {
    pub fn enabled(&self) -> bool {
        self.refused.is_empty()
    }
}

fn control_views(status: &str, rights: &Rights) -> Vec<ControlView> {
    [
        (Control::Pause, "Pause", &rights.pause),
        (Control::Resume, "Resume", &rights.resume),
        (Control::Stop, "Stop", &rights.stop),
        (Control::Retry, "Retry", &rights.retry),
    ]
    .into_iter()
    .filter(|(c, _, _)| c.applies_to(status))
    .map(|(c, label, refused)| ControlView {
        action: c.name(),
        label,
        refused: refused.clone().unwrap_or_default(),
    })
    .collect()
}

#[derive(Clone, Debug)]
pub struct RunView {
    pub id: i64,
    pub backfill: String,
    pub owner: String,
    pub status: String,
    pub bar: String,
    pub percent: String,
    pub rows: String,
    pub rate: String,
    pub eta: String,
    pub elapsed: String,
    pub batches: String,
    pub created: When,
    pub started: Option<When>,
    pub finished: Option<When>,
    pub start_at: Option<When>,
    pub throttled: String,
    pub note: String,
    pub last_error: String,
    /// The error was cut: the full text is at `/runs/{id}/error`.
    pub last_error_cut: bool,
    pub rows_failed: String,
    pub controls: Vec<ControlView>,
}

impl RunView {
    pub fn new(r: &RunRow, rights: &Rights, now: f64) -> RunView {
        let rows = match r.rows_estimated {
            Some(est) if est > 0 => format!("{} of ~{}", fmt::count(r.rows_done), fmt::count(est)),
            _ => format!("{} rows", fmt::count(r.rows_done)),
        };
        RunView {
            id: r.id,
            backfill: r.backfill.clone(),
            owner: r.owner.clone(),
            status: r.status.clone(),
            bar: svg::progress_bar(r.percent, &r.status),
            percent: format!("{:.1}%", r.percent),
            rows,
            rate: if r.status == "running" {
                fmt::rate(r.rows_per_sec)
            } else {
                "–".into()
            },
            eta: fmt::eta(r.eta_secs, &r.status),
            elapsed: fmt::opt_duration(r.elapsed_secs),
            batches: fmt::count(r.batches_done),
            created: When::at(r.created_at, now),
            started: When::opt(r.started_at, now),
            finished: When::opt(r.finished_at, now),
            start_at: When::opt(r.start_at, now),
            throttled: r.throttled.clone().unwrap_or_default(),
            note: r.note.clone().unwrap_or_default(),
            last_error: fmt::clip(r.last_error.as_deref().unwrap_or(""), fmt::ERROR_IN_LIST).0,
            last_error_cut: fmt::clip(r.last_error.as_deref().unwrap_or(""), fmt::ERROR_IN_LIST).1,
            rows_failed: if r.rows_failed > 0 {
                fmt::count(r.rows_failed)
            } else {
                String::new()
            },
            controls: control_views(&r.status, rights),
        }
    }
}

#[derive(Clone, Debug)]
pub struct TabView {
    pub slug: &'static str,
    pub label: &'static str,
    pub count: String,
    pub current: bool,
    pub href: String,
}

/// The live region of the runs screen (tabs with counts and the table).
#[derive(Clone, Debug, Default)]
pub struct RunsLive {
    pub tabs: Vec<TabView>,
    pub runs: Vec<RunView>,
    pub tab: String,
    pub search: String,
    pub mine: bool,
    pub backfill: String,
    pub newer_href: String,
    pub older_href: String,
    pub mine_href: String,
    pub all_href: String,
    pub return_to: String,
    pub empty_title: String,
    pub empty_text: String,
}

#[derive(Template)]
#[template(path = "runs.html")]
pub struct RunsPage {
    pub chrome: Chrome,
    pub live: RunsLive,
}

#[derive(Template)]
#[template(path = "runs_live.html")]
pub struct RunsFragment {
    pub chrome: Chrome,
    pub live: RunsLive,
}

#[derive(Clone, Debug)]
pub struct ParamView {
    pub name: String,
    pub ty: String,
    pub required: bool,
    pub default: String,
}

/// The declared parameters, required ones first, then by name.
pub fn param_views(params: &serde_json::Value) -> Vec<ParamView> {
    let Some(obj) = params.as_object() else {
        return Vec::new();
    };
    let mut views: Vec<ParamView> = obj
        .iter()
        .map(|(name, decl)| ParamView {
            name: name.clone(),
            ty: decl
                .get("type")
                .and_then(|t| t.as_str())
                .or_else(|| decl.as_str())
                .unwrap_or("text")
                .to_string(),
            required: decl
                .get("required")
                .and_then(|r| r.as_bool())
                .unwrap_or(false),
            default: match decl.get("default") {
                None | Some(serde_json::Value::Null) => String::new(),
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
            },
        })
        .collect();
    views.sort_by(|a, b| {
        b.required
            .cmp(&a.required)
            .then_with(|| a.name.cmp(&b.name))
    });
    views
}

#[derive(Clone, Debug)]
pub struct BackfillView {
    pub name: String,
    pub description: String,
    pub relation: String,
    pub action: String,
    pub action_kind: String,
    pub scope: String,
    pub params: Vec<ParamView>,
    pub key: String,
    pub owner: String,
    pub mode: String,
    pub batch_size: String,
    pub sleep: String,
    pub max_attempts: i32,
    pub updated: When,
    pub latest_run: i64,
    pub latest_status: String,
    pub latest_at: Option<When>,
    /// Why Start would be refused (no right, or an active run); empty when it may be pressed.
    pub start_refused: String,
}

impl BackfillView {
    pub fn new(b: &BackfillRow, rights: &Rights, now: f64) -> BackfillView {
        let active = matches!(
            b.latest_status.as_deref(),
            Some("pending" | "enqueued" | "running" | "paused")
        );
        let start_refused = match (&rights.start, active) {
            (Some(reason), _) => reason.clone(),
            (None, true) => format!(
                "run {} is still {}: one active run per backfill",
                b.latest_run.unwrap_or_default(),
                b.latest_status.clone().unwrap_or_default()
            ),
            (None, false) => String::new(),
        };
        BackfillView {
            name: b.name.clone(),
            description: b.description.clone().unwrap_or_default(),
            relation: b.relation.clone(),
            action: b.action.clone(),
            action_kind: b.action_kind.clone(),
            scope: b.scope.clone().unwrap_or_default(),
            params: param_views(&b.params),
            key: b.key.join(", "),
            owner: b.owner.clone(),
            mode: b.mode.clone(),
            batch_size: fmt::count(b.batch_size as i64),
            sleep: fmt::duration(b.sleep_secs),
            max_attempts: b.max_attempts,
            updated: When::at(b.updated_at, now),
            latest_run: b.latest_run.unwrap_or_default(),
            latest_status: b.latest_status.clone().unwrap_or_default(),
            latest_at: When::opt(b.latest_at, now),
            start_refused,
        }
    }
}

#[derive(Template)]
#[template(path = "backfills.html")]
pub struct BackfillsPage {
    pub chrome: Chrome,
    pub search: String,
    pub backfills: Vec<BackfillView>,
}

#[derive(Template)]
#[template(path = "backfill.html")]
pub struct BackfillPage {
    pub chrome: Chrome,
    pub b: BackfillView,
    pub live: RunsLive,
}

/// One input of the start form, chosen from the declared type.
#[derive(Clone, Debug)]
pub struct FieldView {
    pub name: String,
    pub ty: String,
    /// number, integer, text, datetime, date, time, bool, array, json
    pub kind: &'static str,
    pub value: String,
    pub required: bool,
    pub default: String,
}

impl FieldView {
    pub fn input_name(&self) -> String {
        format!("p.{}", self.name)
    }
    pub fn is(&self, kind: &str) -> bool {
        self.kind == kind
    }
    pub fn bool_is(&self, v: &str) -> bool {
        self.value == v
    }
}

/// The input kind for a declared parameter type.
pub fn field_kind(ty: &str) -> &'static str {
    let t = ty.trim().to_ascii_lowercase();
    if t.ends_with("[]") || t.starts_with('_') {
        return "array";
    }
    match t.as_str() {
        "int" | "int2" | "int4" | "int8" | "integer" | "smallint" | "bigint" => "integer",
        "numeric" | "decimal" | "real" | "float4" | "float8" | "double precision" => "number",
        "bool" | "boolean" => "bool",
        "timestamptz"
        | "timestamp with time zone"
        | "timestamp"
        | "timestamp without time zone" => "datetime",
        "date" => "date",
        "time" | "time without time zone" => "time",
        "json" | "jsonb" => "json",
        _ if t.starts_with("numeric(") || t.starts_with("decimal(") => "number",
        _ => "text",
    }
}

#[derive(Clone, Debug, Default)]
pub struct FormError {
    pub message: String,
    pub sqlstate: String,
    pub detail: String,
    pub hint: String,
}

impl From<&AppError> for FormError {
    fn from(e: &AppError) -> Self {
        FormError {
            message: e.message.clone(),
            sqlstate: e.sqlstate.clone().unwrap_or_default(),
            detail: e.detail.as_deref().unwrap_or_default().to_string(),
            hint: e.hint.as_deref().unwrap_or_default().to_string(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RerunView {
    pub id: i64,
    pub status: String,
    pub created: When,
    pub current: bool,
}

#[derive(Template)]
#[template(path = "start.html")]
pub struct StartPage {
    pub chrome: Chrome,
    pub b: BackfillView,
    pub fields: Vec<FieldView>,
    pub batch_size: String,
    pub sleep: String,
    pub start_at: String,
    pub note: String,
    pub error: Option<FormError>,
    pub reruns: Vec<RerunView>,
    /// After Preview: what drip.preview returned, or its error.
    pub preview: Option<PreviewView>,
}

/// `drip.preview`'s answer on the start form.
#[derive(Clone, Debug, Default)]
pub struct PreviewView {
    pub rows: Vec<PreviewRowView>,
    pub error: Option<FormError>,
}

/// One previewed row: its key and, per column that differs, the value before and after.
#[derive(Clone, Debug)]
pub struct PreviewRowView {
    pub key: String,
    pub deleted: bool,
    pub cells: Vec<PreviewCell>,
}

#[derive(Clone, Debug)]
pub struct PreviewCell {
    pub column: String,
    pub before: String,
    pub after: String,
    /// The value differs (highlighted); false for a column shown only for context.
    pub changed: bool,
}

/// A jsonb value as a table cell shows it: text without quotes, NULL for null.
fn cell_text(v: Option<&serde_json::Value>) -> String {
    match v {
        None | Some(serde_json::Value::Null) => "NULL".into(),
        Some(serde_json::Value::String(s)) => fmt::clip(s, 200).0,
        Some(other) => fmt::clip(&other.to_string(), 200).0,
    }
}

impl PreviewRowView {
    pub fn new(r: &PreviewRow) -> PreviewRowView {
        let empty = serde_json::Map::new();
        let before = r
            .before
            .as_ref()
            .and_then(|v| v.as_object())
            .unwrap_or(&empty);
        let after = r.after.as_ref().and_then(|v| v.as_object());
        let mut columns: Vec<&String> = before.keys().collect();
        if let Some(a) = after {
            columns.extend(a.keys().filter(|k| !before.contains_key(*k)));
        }
        let cells = columns
            .into_iter()
            .map(|c| {
                let b = before.get(c);
                let a = after.and_then(|a| a.get(c));
                PreviewCell {
                    column: c.clone(),
                    before: cell_text(b),
                    after: if after.is_some() {
                        cell_text(a)
                    } else {
                        String::new()
                    },
                    changed: after.is_none() || b != a,
                }
            })
            .collect();
        PreviewRowView {
            key: fmt::key(&r.key),
            deleted: r.after.is_none(),
            cells,
        }
    }
}

/// The undo card of a run page.
#[derive(Clone, Debug, Default)]
pub struct UndoView {
    /// "kept", "purged", "none" (a run without undo data) or "revert" (a revert run).
    pub state: &'static str,
    pub rows: String,
    pub bytes: String,
    pub purged: Option<When>,
    pub reverts: Option<i64>,
    pub reverted_by: Option<i64>,
    /// Empty when Revert may be offered; else why not.
    pub revert_refused: String,
    pub conflicts: Vec<ConflictView>,
    pub conflict_count: String,
}

impl UndoView {
    pub fn new(u: &UndoInfo, status: &str, read_only: bool, now: f64) -> UndoView {
        let state = if u.reverts.is_some() {
            "revert"
        } else if u.purged_at.is_some() {
            "purged"
        } else if u.undo {
            "kept"
        } else {
            "none"
        };
        let (rows, bytes) = match u.size {
            Some((r, b)) => (fmt::count(r), fmt::bytes(b)),
            None => (String::new(), String::new()),
        };
        let revert_refused = if read_only {
            "read-only mode".to_string()
        } else if state != "kept" {
            String::new()
        } else if u.reverted_by.is_some() {
            "already reverted".to_string()
        } else if !matches!(status, "completed" | "failed" | "stopped") {
            format!("the run is {status}: only a finished, failed or stopped run can be reverted")
        } else {
            String::new()
        };
        UndoView {
            state,
            rows,
            bytes,
            purged: When::opt(u.purged_at, now),
            reverts: u.reverts,
            reverted_by: u.reverted_by,
            revert_refused,
            conflicts: Vec::new(),
            conflict_count: String::new(),
        }
    }

    /// Revert is offered (a button) on this run.
    pub fn can_revert(&self) -> bool {
        self.state == "kept" && self.revert_refused.is_empty()
    }
}

#[derive(Clone, Debug)]
pub struct ConflictView {
    pub key: String,
    pub reason: String,
    pub current: String,
    pub expected: String,
    pub at: When,
}

impl ConflictView {
    pub fn new(c: &ConflictRow, now: f64) -> ConflictView {
        ConflictView {
            key: fmt::key(&c.key),
            reason: c.reason.clone(),
            current: c.current.clone().unwrap_or_else(|| "(row gone)".into()),
            expected: c.expected.clone(),
            at: When::at(c.at, now),
        }
    }
}

/// The confirmation before `drip.revert`.
#[derive(Template)]
#[template(path = "revert.html")]
pub struct RevertPage {
    pub chrome: Chrome,
    pub id: i64,
    pub backfill: String,
    pub status: String,
    pub rows: String,
}

#[derive(Clone, Debug)]
pub struct BatchView {
    pub batch_no: i64,
    pub range: String,
    pub rows: String,
    pub batch_size: String,
    pub slice: String,
    pub status: String,
    pub attempts: i32,
    pub started: When,
    pub duration: String,
    pub error: String,
    pub error_cut: bool,
    pub sqlstate: String,
}

impl BatchView {
    pub fn new(b: &BatchRow, now: f64) -> BatchView {
        BatchView {
            batch_no: b.batch_no,
            range: format!("({}, {}]", fmt::opt_key(&b.low_key), fmt::key(&b.high_key)),
            rows: b.rows.map(fmt::count).unwrap_or_else(|| "–".into()),
            batch_size: b
                .batch_size
                .map(|s| fmt::count(s as i64))
                .unwrap_or_else(|| "–".into()),
            slice: b.slice.map(|s| s.to_string()).unwrap_or_default(),
            status: b.status.clone(),
            attempts: b.attempts,
            started: When::at(b.started_at, now),
            duration: fmt::opt_duration(b.duration_secs),
            error: fmt::clip(b.error.as_deref().unwrap_or(""), fmt::ERROR_IN_LIST).0,
            error_cut: fmt::clip(b.error.as_deref().unwrap_or(""), fmt::ERROR_IN_LIST).1,
            sqlstate: b.sqlstate.clone().unwrap_or_default(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct EventView {
    pub id: i64,
    pub at: When,
    pub event: String,
    pub detail: String,
}

impl EventView {
    pub fn new(e: &EventRow, now: f64) -> EventView {
        let p = &e.payload;
        let mut parts = Vec::new();
        if let Some(b) = p.get("batch").and_then(|v| v.as_i64()) {
            parts.push(format!("batch {b}"));
        }
        if let Some(r) = p.get("rows").and_then(|v| v.as_i64()) {
            parts.push(format!("{} rows", fmt::count(r)));
        }
        if let Some(r) = p.get("rows_done").and_then(|v| v.as_i64()) {
            parts.push(format!("{} rows done", fmt::count(r)));
        }
        for key in ["reason", "error"] {
            if let Some(s) = p.get(key).and_then(|v| v.as_str()) {
                parts.push(fmt::clip(s, fmt::ERROR_IN_LIST).0);
            }
        }
        EventView {
            id: e.id,
            at: When::at(e.at, now),
            event: e.event.clone(),
            detail: parts.join(" · "),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RowErrorView {
    pub batch_no: i64,
    pub key: String,
    pub error: String,
    pub sqlstate: String,
    pub at: When,
    pub resolved: bool,
}

impl RowErrorView {
    pub fn new(r: &RowError, now: f64) -> RowErrorView {
        RowErrorView {
            batch_no: r.batch_no,
            key: fmt::key(&r.key),
            error: fmt::clip(&r.error, fmt::ERROR_IN_LIST).0,
            sqlstate: r.sqlstate.clone(),
            at: When::at(r.at, now),
            resolved: r.resolved,
        }
    }
}

/// The live region of a run page.
#[derive(Clone, Debug)]
pub struct RunLive {
    pub run: RunView,
    pub sparkline: String,
    pub timeline: String,
    pub timeline_note: String,
    pub run_error: String,
    /// The run's error was cut: the full text is at `/runs/{id}/error`.
    pub run_error_cut: bool,
    pub errors: Vec<ErrorGroup>,
    pub batches: Vec<BatchView>,
    pub errors_only: bool,
    pub older_href: String,
    pub first_href: String,
    pub filter_href: String,
    pub row_errors: Vec<RowErrorView>,
    pub events: Vec<EventView>,
    pub return_to: String,
    pub started_by: String,
    pub worker_pid: String,
    pub cursor: String,
    pub batch_settings: String,
}

#[derive(Template)]
#[template(path = "run.html")]
pub struct RunPage {
    pub chrome: Chrome,
    pub live: RunLive,
    pub params: String,
    pub definition: String,
    pub alter_refused: String,
    pub alter_open: bool,
    pub batch_size: i32,
    pub sleep: String,
    pub undo: UndoView,
}

#[derive(Template)]
#[template(path = "run_live.html")]
pub struct RunFragment {
    pub chrome: Chrome,
    pub live: RunLive,
}

pub fn detail_settings(d: &RunDetail) -> String {
    let mut s = format!(
        "batch size {}, sleep {}",
        fmt::count(d.batch_size as i64),
        fmt::duration(d.sleep_secs)
    );
    if let Some(t) = d.target_batch_time_secs {
        s.push_str(&format!(", adaptive to {} per batch", fmt::duration(t)));
    }
    if d.parallel > 1 {
        s.push_str(&format!(", {} parallel slices", d.parallel));
    }
    s
}

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub chrome: Chrome,
    pub user: String,
    pub error: String,
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    pub chrome: Chrome,
    pub status: u16,
    pub e: AppError,
}

impl ErrorPage {
    pub fn render_error(e: &AppError) -> String {
        // A database error can carry a huge text: the page shows its beginning.
        let mut e = e.clone();
        e.message = fmt::clip(&e.message, fmt::ERROR_ON_PAGE).0;
        e.detail = e
            .detail
            .map(|d| Box::from(fmt::clip(&d, fmt::ERROR_ON_PAGE).0.as_str()));
        let e = &e;
        let page = ErrorPage {
            chrome: Chrome {
                title: e.title.to_string(),
                ..Chrome::default()
            },
            status: e.status.as_u16(),
            e: e.clone(),
        };
        page.render().unwrap_or_else(|_| {
            // Rendering the error page itself failed: plain text, escaped.
            format!(
                "<!doctype html><title>Error</title><p>{}</p>",
                svg::esc(&e.one_line())
            )
        })
    }
}

/// Tab links keep the search, "mine" and backfill filters.
pub fn tab_views(
    counts: &[(Tab, i64)],
    current: Tab,
    base: &str,
    search: &str,
    mine: bool,
) -> Vec<TabView> {
    counts
        .iter()
        .map(|(tab, n)| TabView {
            slug: tab.slug(),
            label: tab.label(),
            count: fmt::count(*n),
            current: *tab == current,
            href: query_href(
                base,
                &[
                    ("tab", tab.slug()),
                    ("q", search),
                    ("mine", if mine { "1" } else { "" }),
                ],
            ),
        })
        .collect()
}

/// `base?k=v&...` leaving out empty values; values percent-encoded.
pub fn query_href(base: &str, pairs: &[(&str, &str)]) -> String {
    let q: Vec<String> = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", pct(v)))
        .collect();
    if q.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", q.join("&"))
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn pct(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_kinds_follow_declared_types() {
        assert_eq!(field_kind("integer"), "integer");
        assert_eq!(field_kind("numeric(10,2)"), "number");
        assert_eq!(field_kind("timestamptz"), "datetime");
        assert_eq!(field_kind("int[]"), "array");
        assert_eq!(field_kind("boolean"), "bool");
        assert_eq!(field_kind("uuid"), "text");
        assert_eq!(field_kind("jsonb"), "json");
    }

    #[test]
    fn params_declarations_become_views() {
        let p: serde_json::Value = serde_json::json!({
            "age": {"type": "integer", "required": true},
            "source": {"type": "text", "default": "web"},
            "short": "date"
        });
        let v = param_views(&p);
        assert_eq!(v.len(), 3);
        let age = v.iter().find(|p| p.name == "age").unwrap();
        assert!(age.required && age.ty == "integer");
        assert_eq!(
            v.iter().find(|p| p.name == "source").unwrap().default,
            "web"
        );
        assert_eq!(v.iter().find(|p| p.name == "short").unwrap().ty, "date");
    }

    #[test]
    fn hrefs_encode_and_skip_empty() {
        assert_eq!(query_href("/", &[("tab", "all"), ("q", "")]), "/?tab=all");
        assert_eq!(query_href("/", &[("q", "a b&c")]), "/?q=a%20b%26c");
        assert_eq!(query_href("/x", &[]), "/x");
    }
}
