//! URL → handler, plus what every response carries (security headers).

pub mod backfills;
pub mod run;
pub mod runs;
pub mod session;
pub mod start;

use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use crate::auth::Viewer;
use crate::db::queries::{self, Rights};
use crate::error::{AppError, AppResult};
use crate::host::HostPolicy;
use crate::views::pages::Chrome;
use crate::{assets, live, AppState};

/// No inline script or style anywhere: scripts, styles and fetches come from this origin only.
pub const CSP: &str =
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
frame-ancestors 'none'";

pub fn router(state: Arc<AppState>, hosts: Arc<HostPolicy>) -> Router {
    Router::new()
        .route("/", get(runs::list))
        .route("/backfills", get(backfills::list))
        .route("/backfills/{name}", get(backfills::show))
        .route(
            "/backfills/{name}/start",
            get(start::form).post(start::submit),
        )
        .route("/backfills/{name}/preview", post(start::preview))
        .route("/runs/{id}", get(run::show))
        .route(
            "/runs/{id}/revert",
            get(run::revert_confirm).post(run::revert),
        )
        .route("/runs/{id}/alter", post(run::alter))
        .route("/runs/{id}/error", get(run::full_error))
        .route("/runs/{id}/{action}", post(run::control))
        .route("/live", get(live_stream))
        .route("/metrics", get(crate::metrics::serve))
        .route("/login", get(session::login_form).post(session::login))
        .route("/logout", post(session::logout))
        .route("/assets/{file}", get(assets::serve))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            crate::auth::gate,
        ))
        // Outermost but for the headers: a foreign Host gets nothing else.
        .layer(middleware::from_fn_with_state(hosts, crate::host::guard))
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("DENY"),
    );
    h.insert(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(CACHE_CONTROL) {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

async fn not_found() -> AppError {
    AppError::not_found("There is no page at this address.")
}

#[derive(Deserialize)]
pub struct LiveQuery {
    after: Option<String>,
}

/// `GET /live`: the page's event stream (Server-Sent Events). The cursor is the browser's
/// `Last-Event-ID` on a reconnect, else `?after=` from the page, else the log's head now.
async fn live_stream(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    headers: HeaderMap,
    Query(q): Query<LiveQuery>,
) -> AppResult<Response> {
    let from_header = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let cursor = match from_header.or(q.after).filter(|c| !c.is_empty()) {
        Some(c) if queries::parse_cursor(&c).is_some() => c,
        Some(c) => return Err(AppError::bad_request(format!("not an event cursor: {c}"))),
        None => {
            let db = viewer.pool.get().await?;
            queries::head_cursor(&db).await?
        }
    };
    let signed_out = viewer.signed_out();
    Ok(live::stream(Arc::clone(&state.hub), viewer.pool, cursor, signed_out).into_response())
}

/// The frame of a page for this viewer.
pub fn chrome(
    state: &AppState,
    viewer: &Viewer,
    rights: &Rights,
    title: String,
    nav: &'static str,
) -> Chrome {
    Chrome {
        title,
        nav,
        role: rights.role.clone(),
        superuser: rights.superuser,
        multi_user: state.config.multi_user,
        read_only: state.config.read_only,
        csrf: viewer.csrf.clone(),
        cursor: String::new(),
        live_src: String::new(),
        live_run: 0,
        timezone: rights.timezone.clone(),
    }
}

pub fn html(body: String) -> Response {
    Html(body).into_response()
}

/// Only same-site paths are followed after an action (no open redirect).
pub fn safe_return(to: Option<&str>, fallback: &str) -> String {
    match to {
        Some(t)
            if t.starts_with('/')
                && !t.starts_with("//")
                && !t.contains('\\')
                && !t.chars().any(|c| c.is_control()) =>
        {
            t.to_string()
        }
        _ => fallback.to_string(),
    }
}

/// `path?query` of the current request without `fragment=1`, for links back to it.
pub fn current_url(path: &str, query: Option<&str>) -> String {
    let kept: Vec<&str> = query
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty() && !kv.starts_with("fragment="))
        .collect();
    if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

/// The URL the live script re-fetches: the same page, fragment only.
pub fn fragment_url(current: &str) -> String {
    if current.contains('?') {
        format!("{current}&fragment=1")
    } else {
        format!("{current}?fragment=1")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_stay_on_this_site() {
        assert_eq!(safe_return(Some("/runs/1"), "/"), "/runs/1");
        assert_eq!(safe_return(Some("//evil.example"), "/"), "/");
        assert_eq!(safe_return(Some("https://evil.example"), "/"), "/");
        assert_eq!(safe_return(Some("/\\evil"), "/"), "/");
        assert_eq!(safe_return(None, "/x"), "/x");
    }

    #[test]
    fn fragment_urls() {
        assert_eq!(
            current_url("/", Some("tab=running&fragment=1")),
            "/?tab=running"
        );
        assert_eq!(fragment_url("/"), "/?fragment=1");
        assert_eq!(fragment_url("/?tab=x"), "/?tab=x&fragment=1");
    }
}
