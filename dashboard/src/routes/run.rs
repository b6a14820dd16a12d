//! One run: progress, timeline, batches, errors, events; its controls and `drip.alter`.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::Uri;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use crate::auth::Viewer;
use crate::db::cache::{Fingerprint, RunStats, BIG_RUN};
use crate::db::queries::{self, Control};
use crate::error::{AppError, AppResult};
use crate::routes::{chrome, current_url, fragment_url, html, safe_return};
use crate::views::pages::{
    detail_settings, query_href, BatchView, ConflictView, EventView, RevertPage, RowErrorView,
    RunFragment, RunLive, RunPage, RunView, UndoView,
};
use crate::views::{fmt, svg};
use crate::AppState;

const BATCH_PAGE: i64 = 50;
/// More batches than this are drawn as stretches (one mark per stretch).
const TIMELINE_MARKS: i64 = 400;

#[derive(Deserialize, Default)]
pub struct RunQuery {
    /// "1": only batches with an error.
    errors: Option<String>,
    /// Keyset pagination of the batches table.
    before: Option<i64>,
    fragment: Option<String>,
}

pub async fn show(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Path(id): Path<i64>,
    uri: Uri,
    Query(q): Query<RunQuery>,
) -> AppResult<Response> {
    let db = viewer.pool.get().await?;
    let rights = queries::rights(&db).await?;
    // The cursor first: whatever commits after it reaches the page through the stream.
    let cursor = queries::head_cursor(&db).await?;
    let (Some(run), Some(detail)) = (
        queries::run(&db, id).await?,
        queries::run_detail(&db, id).await?,
    ) else {
        return Err(run_not_found(id));
    };
    let now = fmt::now_epoch();
    let errors_only = q.errors.as_deref() == Some("1");
    let base = format!("/runs/{id}");
    let here = current_url(&base, uri.query());

    let batches = queries::batches(&db, id, errors_only, q.before, BATCH_PAGE + 1).await?;
    let more = batches.len() as i64 > BATCH_PAGE;
    let batches: Vec<BatchView> = batches
        .iter()
        .take(BATCH_PAGE as usize)
        .map(|b| BatchView::new(b, now))
        .collect();
    let errors_flag = if errors_only { "1" } else { "" };
    let older_href = match (more, batches.last()) {
        (true, Some(last)) => query_href(
            &base,
            &[
                ("errors", errors_flag),
                ("before", &last.batch_no.to_string()),
            ],
        ),
        _ => String::new(),
    };
    let first_href = if q.before.is_some() {
        query_href(&base, &[("errors", errors_flag)])
    } else {
        String::new()
    };
    let filter_href = query_href(&base, &[("errors", if errors_only { "" } else { "1" })]);

    let stats = run_stats(&state, &db, id, &run.status, run.batches_done, &detail).await?;
    let batch_count: i64 = stats.marks.iter().map(|m| m.count).sum();
    let lanes = {
        let mut l: Vec<Option<i32>> = stats.marks.iter().map(|m| m.lane).collect();
        l.dedup();
        l.into_iter().flatten().count()
    };
    let timeline_note = if lanes > 0 {
        format!(
            "{} batches, one lane per slice ({lanes}; a Citus run: per shard), each in key order",
            fmt::count(batch_count)
        )
    } else if batch_count > TIMELINE_MARKS {
        format!(
            "{} batches in key order, one mark per ~{} batches",
            fmt::count(batch_count),
            fmt::count((batch_count + TIMELINE_MARKS - 1) / TIMELINE_MARKS)
        )
    } else {
        format!(
            "{} batches in key order, one mark each",
            fmt::count(batch_count)
        )
    };

    let live = RunLive {
        run: RunView::new(&run, &rights, now),
        sparkline: svg::sparkline(&queries::throughput(&db, id, 60).await?),
        timeline: svg::timeline(&stats.marks),
        timeline_note,
        run_error: fmt::clip(detail.error.as_deref().unwrap_or(""), fmt::ERROR_ON_PAGE).0,
        run_error_cut: fmt::clip(detail.error.as_deref().unwrap_or(""), fmt::ERROR_ON_PAGE).1,
        errors: stats.errors,
        batches,
        errors_only,
        older_href,
        first_href,
        filter_href,
        row_errors: queries::row_errors(&db, id, 50)
            .await?
            .iter()
            .map(|r| RowErrorView::new(r, now))
            .collect(),
        events: queries::run_events(&db, id, 100)
            .await?
            .iter()
            .map(|e| EventView::new(e, now))
            .collect(),
        return_to: here.clone(),
        started_by: detail.started_by.clone(),
        worker_pid: detail.worker_pid.map(|p| p.to_string()).unwrap_or_default(),
        cursor: cursor.clone(),
        batch_settings: detail_settings(&detail),
    };
    let mut chrome = chrome(
        &state,
        &viewer,
        &rights,
        format!("Run {id} · {}", run.backfill),
        "runs",
    );
    chrome.cursor = cursor;
    chrome.live_src = fragment_url(&here);
    chrome.live_run = id;
    if q.fragment.is_some() {
        return Ok(html(RunFragment { chrome, live }.render()?));
    }
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let active = matches!(
        run.status.as_str(),
        "pending" | "enqueued" | "running" | "paused"
    );
    let undo = undo_view(&state, &db, id, &run.status, now).await?;
    let alter_refused = match (&rights.alter, active) {
        (Some(r), _) => r.clone(),
        (None, false) => format!("run {id} is {}: only active runs can change", run.status),
        (None, true) => String::new(),
    };
    Ok(html(
        RunPage {
            chrome,
            live,
            params: pretty(&detail.params),
            definition: pretty(&detail.definition),
            alter_refused,
            alter_open: active,
            batch_size: detail.batch_size,
            sleep: fmt::duration(detail.sleep_secs),
            undo,
        }
        .render()?,
    ))
}

/// Conflicts shown on a revert run's page (the count says how many there are in all).
const CONFLICTS_ON_PAGE: i64 = 50;

/// The undo card: whether the run keeps undo data and how much, Revert, and for a revert run
/// the rows it left alone. Read as the viewer.
async fn undo_view(
    state: &AppState,
    db: &tokio_postgres::Client,
    id: i64,
    status: &str,
    now: f64,
) -> AppResult<UndoView> {
    let Some(info) = queries::undo_info(db, id).await? else {
        return Ok(UndoView::default());
    };
    let mut v = UndoView::new(&info, status, state.config.read_only, now);
    if info.reverts.is_some() {
        v.conflicts = queries::revert_conflicts(db, id, CONFLICTS_ON_PAGE)
            .await?
            .iter()
            .map(|c| ConflictView::new(c, now))
            .collect();
        v.conflict_count = fmt::count(queries::conflict_count(db, id).await?);
    }
    Ok(v)
}

/// `GET /runs/{id}/revert`: the confirmation, naming the run and the rows a revert restores
/// (no script: the page itself is the confirmation; its form posts the revert).
pub async fn revert_confirm(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Path(id): Path<i64>,
) -> AppResult<Response> {
    let db = viewer.pool.get().await?;
    require_visible(&db, id).await?;
    let rights = queries::rights(&db).await?;
    let run = queries::run(&db, id)
        .await?
        .ok_or_else(|| run_not_found(id))?;
    let info = queries::undo_info(&db, id)
        .await?
        .ok_or_else(|| run_not_found(id))?;
    let rows = info.size.map(|(r, _)| fmt::count(r)).unwrap_or_default();
    Ok(html(
        RevertPage {
            chrome: chrome(
                &state,
                &viewer,
                &rights,
                format!("Revert run {id} · {}", run.backfill),
                "runs",
            ),
            id,
            backfill: run.backfill.clone(),
            status: run.status.clone(),
            rows,
        }
        .render()?,
    ))
}

/// `POST /runs/{id}/revert`: `drip.revert` as the viewer (it decides, its error is shown with
/// the SQLSTATE); on to the revert run's page.
pub async fn revert(viewer: Viewer, Path(id): Path<i64>) -> AppResult<Response> {
    let db = viewer.pool.get().await?;
    require_visible(&db, id).await?;
    let revert_id = queries::revert(&db, id).await?;
    Ok(Redirect::to(&format!("/runs/{revert_id}")).into_response())
}

/// The timeline and the errors by SQLSTATE: read fresh for ordinary runs, kept a while for big
/// ones (see `db::cache`).
async fn run_stats(
    state: &AppState,
    db: &tokio_postgres::Client,
    id: i64,
    status: &str,
    batches_done: i64,
    detail: &queries::RunDetail,
) -> AppResult<RunStats> {
    // An upper bound of the batches cut so far, without counting over drip.batches.
    let batches = (detail.next_batch_no - 1).max(batches_done);
    let fp = Fingerprint {
        status: status.to_string(),
        batches_done,
        next_batch_no: detail.next_batch_no,
    };
    let big = batches > BIG_RUN;
    if big {
        if let Some(s) = state.run_stats.get(id, &fp) {
            return Ok(s);
        }
    }
    let stats = RunStats {
        marks: queries::timeline(db, id, detail.parallel > 1, TIMELINE_MARKS).await?,
        errors: queries::error_groups(db, id).await?,
    };
    if big {
        state.run_stats.put(id, fp, stats.clone());
    }
    Ok(stats)
}

/// A run the viewer may not see answers exactly like one that does not exist (404, no name,
/// no owner), before any drip.* function is asked.
pub async fn require_visible(db: &tokio_postgres::Client, id: i64) -> AppResult<()> {
    if queries::run_visible(db, id).await? {
        Ok(())
    } else {
        Err(run_not_found(id))
    }
}

pub fn run_not_found(id: i64) -> AppError {
    AppError::not_found(format!("run {id} does not exist"))
}

#[derive(Deserialize)]
pub struct ErrorQuery {
    batch: Option<i64>,
}

/// `GET /runs/{id}/error[?batch=N]`: the whole error text the pages cut short, as plain text
/// (the run's, or one batch's), read as the viewer.
pub async fn full_error(
    viewer: Viewer,
    Path(id): Path<i64>,
    Query(q): Query<ErrorQuery>,
) -> AppResult<Response> {
    let db = viewer.pool.get().await?;
    require_visible(&db, id).await?;
    let text = match q.batch {
        Some(no) => queries::batch_error(&db, id, no).await?,
        None => queries::run_error(&db, id).await?,
    };
    let Some(text) = text else {
        return Err(AppError::not_found(match q.batch {
            Some(no) => format!("batch {no} of run {id} has no error"),
            None => format!("run {id} has no error"),
        }));
    };
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

#[derive(Deserialize)]
pub struct ControlForm {
    return_to: Option<String>,
}

/// `POST /runs/{id}/{pause|resume|stop|retry}`: the drip.* function decides; its error is
/// shown with the SQLSTATE.
pub async fn control(
    viewer: Viewer,
    Path((id, action)): Path<(i64, String)>,
    Form(form): Form<ControlForm>,
) -> AppResult<Response> {
    let action = Control::parse(&action)
        .ok_or_else(|| AppError::not_found(format!("no action “{action}”")))?;
    let db = viewer.pool.get().await?;
    require_visible(&db, id).await?;
    queries::control(&db, action, id).await?;
    let back = safe_return(form.return_to.as_deref(), &format!("/runs/{id}"));
    Ok(Redirect::to(&back).into_response())
}

#[derive(Deserialize)]
pub struct AlterForm {
    batch_size: Option<String>,
    sleep: Option<String>,
}

pub async fn alter(
    viewer: Viewer,
    Path(id): Path<i64>,
    Form(form): Form<AlterForm>,
) -> AppResult<Response> {
    let batch_size = match form.batch_size.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(s) => Some(s.parse::<i32>().map_err(|_| {
            AppError::bad_request(format!("batch size “{s}” is not a whole number"))
        })?),
    };
    let sleep = form
        .sleep
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let db = viewer.pool.get().await?;
    require_visible(&db, id).await?;
    queries::alter(&db, id, batch_size, sleep).await?;
    Ok(Redirect::to(&format!("/runs/{id}")).into_response())
}
