//! The runs screen: tabs with counts, search, mine / all, inline controls.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::Uri;
use axum::response::Response;
use serde::Deserialize;

use crate::auth::Viewer;
use crate::db::queries::{self, Rights, RunFilter, Tab};
use crate::error::AppResult;
use crate::routes::{chrome, current_url, fragment_url, html};
use crate::views::fmt;
use crate::views::pages::{query_href, tab_views, RunView, RunsFragment, RunsLive, RunsPage};
use crate::AppState;

pub const PAGE_SIZE: i64 = 50;

#[derive(Deserialize, Default)]
pub struct RunsQuery {
    pub tab: Option<String>,
    pub q: Option<String>,
    pub mine: Option<String>,
    pub before: Option<i64>,
    pub fragment: Option<String>,
}

impl RunsQuery {
    pub fn filter(&self, backfill: Option<String>) -> RunFilter {
        RunFilter {
            tab: Tab::parse(self.tab.as_deref().unwrap_or("all")),
            search: self.q.clone().unwrap_or_default().trim().to_string(),
            mine: self
                .mine
                .as_deref()
                .is_some_and(|m| !m.is_empty() && m != "0"),
            before: self.before,
            backfill,
        }
    }

    pub fn is_fragment(&self) -> bool {
        self.fragment.is_some()
    }
}

/// Tabs, table and pager for `base` (the runs screen, or one backfill's page).
pub async fn runs_live(
    db: &tokio_postgres::Client,
    rights: &Rights,
    f: &RunFilter,
    base: &str,
    return_to: &str,
) -> AppResult<RunsLive> {
    let counts = queries::tab_counts(db, f).await?;
    let rows = queries::runs(db, f, PAGE_SIZE + 1).await?;
    let now = fmt::now_epoch();
    let more = rows.len() as i64 > PAGE_SIZE;
    let runs: Vec<RunView> = rows
        .iter()
        .take(PAGE_SIZE as usize)
        .map(|r| RunView::new(r, rights, now))
        .collect();
    let mine = if f.mine { "1" } else { "" };
    let older_href = match (more, runs.last()) {
        (true, Some(last)) => query_href(
            base,
            &[
                ("tab", f.tab.slug()),
                ("q", &f.search),
                ("mine", mine),
                ("before", &last.id.to_string()),
            ],
        ),
        _ => String::new(),
    };
    let newer_href = if f.before.is_some() {
        query_href(
            base,
            &[("tab", f.tab.slug()), ("q", &f.search), ("mine", mine)],
        )
    } else {
        String::new()
    };
    let total: i64 = counts
        .iter()
        .find(|(t, _)| *t == Tab::All)
        .map(|(_, n)| *n)
        .unwrap_or(0);
    let (empty_title, empty_text) = if total == 0 && f.search.is_empty() {
        (
            "No runs you may see".to_string(),
            if f.mine {
                "None of the runs visible to you belong to your role. Try “All I may see”."
                    .to_string()
            } else {
                "Runs of backfills owned by your role (or roles you are a member of) appear here as soon as they start. Start one from Backfills.".to_string()
            },
        )
    } else if total == 0 {
        (
            format!("No run matches “{}”", f.search),
            "The search looks at backfill names.".to_string(),
        )
    } else {
        (
            format!("Nothing {}", f.tab.label().to_lowercase()),
            "Other tabs have runs; the counts above say where.".to_string(),
        )
    };
    Ok(RunsLive {
        tabs: tab_views(&counts, f.tab, base, &f.search, f.mine),
        runs,
        tab: f.tab.slug().to_string(),
        search: f.search.clone(),
        mine: f.mine,
        backfill: f.backfill.clone().unwrap_or_default(),
        newer_href,
        older_href,
        mine_href: query_href(
            base,
            &[("tab", f.tab.slug()), ("q", &f.search), ("mine", "1")],
        ),
        all_href: query_href(base, &[("tab", f.tab.slug()), ("q", &f.search)]),
        return_to: return_to.to_string(),
        empty_title,
        empty_text,
    })
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    uri: Uri,
    Query(q): Query<RunsQuery>,
) -> AppResult<Response> {
    let db = viewer.pool.get().await?;
    let rights = queries::rights(&db).await?;
    let here = current_url(uri.path(), uri.query());
    let cursor = queries::head_cursor(&db).await?;
    let live = runs_live(&db, &rights, &q.filter(None), "/", &here).await?;
    let mut chrome = chrome(&state, &viewer, &rights, "Runs".into(), "runs");
    chrome.cursor = cursor;
    chrome.live_src = fragment_url(&here);
    if q.is_fragment() {
        return Ok(html(RunsFragment { chrome, live }.render()?));
    }
    Ok(html(RunsPage { chrome, live }.render()?))
}
