//! The backfills screen and one backfill's page.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::Uri;
use axum::response::Response;
use serde::Deserialize;

use crate::auth::Viewer;
use crate::db::queries;
use crate::error::{AppError, AppResult};
use crate::routes::runs::{runs_live, RunsQuery};
use crate::routes::{chrome, current_url, fragment_url, html};
use crate::views::fmt;
use crate::views::pages::{pct, BackfillPage, BackfillView, BackfillsPage, RunsFragment};
use crate::AppState;

#[derive(Deserialize)]
pub struct SearchQuery {
    q: Option<String>,
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Query(q): Query<SearchQuery>,
) -> AppResult<Response> {
    let db = viewer.pool.get().await?;
    let rights = queries::rights(&db).await?;
    let search = q.q.unwrap_or_default().trim().to_string();
    let now = fmt::now_epoch();
    let backfills = queries::backfills(&db, &search)
        .await?
        .iter()
        .map(|b| BackfillView::new(b, &rights, now))
        .collect();
    let chrome = chrome(&state, &viewer, &rights, "Backfills".into(), "backfills");
    Ok(html(
        BackfillsPage {
            chrome,
            search,
            backfills,
        }
        .render()?,
    ))
}

pub async fn show(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Path(name): Path<String>,
    uri: Uri,
    Query(q): Query<RunsQuery>,
) -> AppResult<Response> {
    let db = viewer.pool.get().await?;
    let rights = queries::rights(&db).await?;
    let Some(row) = queries::backfill(&db, &name).await? else {
        return Err(AppError::not_found(format!(
            "No backfill named “{name}” that your role may see."
        )));
    };
    let base = format!("/backfills/{}", pct(&name));
    let here = current_url(&base, uri.query());
    let cursor = queries::head_cursor(&db).await?;
    let live = runs_live(&db, &rights, &q.filter(Some(name.clone())), &base, &here).await?;
    let mut chrome = chrome(&state, &viewer, &rights, name.clone(), "backfills");
    chrome.cursor = cursor;
    chrome.live_src = fragment_url(&here);
    if q.is_fragment() {
        return Ok(html(RunsFragment { chrome, live }.render()?));
    }
    let b = BackfillView::new(&row, &rights, fmt::now_epoch());
    Ok(html(BackfillPage { chrome, b, live }.render()?))
}
