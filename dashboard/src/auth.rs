//! Sessions, login and the request gate: who the viewer is, CSRF on every POST, read-only mode
//! enforced on the server.
//!
//! Single-user mode gives every browser a session too (for its CSRF token); all of them share
//! the `--database-url` pool. Multi-user mode checks a login by connecting to PostgreSQL as
//! that role with that password; the session then owns a small pool of that role's
//! connections, so each request runs as the viewer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

use crate::csrf;
use crate::db::pool::Pool;
use crate::error::AppError;
use crate::AppState;

pub const COOKIE_NAME: &str = "drip_session";
const IDLE_LIMIT: Duration = Duration::from_secs(12 * 3600);
const MAX_SESSIONS: usize = 10_000;
const MAX_FORM_BYTES: usize = 256 * 1024;

#[derive(Clone)]
pub struct Session {
    pub id: String,
    pub csrf: String,
    /// Multi-user mode: the logged-in role's pool. None before login.
    pub pool: Option<Arc<Pool>>,
    last_seen: Instant,
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut map = self.map.lock().ok()?;
        let s = map.get_mut(id)?;
        if s.last_seen.elapsed() > IDLE_LIMIT {
            map.remove(id);
            return None;
        }
        s.last_seen = Instant::now();
        Some(s.clone())
    }

    pub fn create(&self, pool: Option<Arc<Pool>>) -> Result<Session, AppError> {
        let token_err = |e: std::io::Error| {
            AppError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "No randomness",
                format!("cannot read /dev/urandom: {e}"),
            )
        };
        let session = Session {
            id: csrf::token().map_err(token_err)?,
            csrf: csrf::token().map_err(token_err)?,
            pool,
            last_seen: Instant::now(),
        };
        if let Ok(mut map) = self.map.lock() {
            if map.len() >= MAX_SESSIONS {
                map.retain(|_, s| s.last_seen.elapsed() < IDLE_LIMIT);
                if map.len() >= MAX_SESSIONS {
                    // Still full: forget the longest-idle session.
                    if let Some(oldest) = map
                        .values()
                        .min_by_key(|s| s.last_seen)
                        .map(|s| s.id.clone())
                    {
                        map.remove(&oldest);
                    }
                }
            }
            map.insert(session.id.clone(), session.clone());
        }
        Ok(session)
    }

    /// Forgets sessions idle for longer than the limit (and with them their role's pool, whose
    /// connections close).
    pub fn sweep(&self) {
        if let Ok(mut map) = self.map.lock() {
            map.retain(|_, s| s.last_seen.elapsed() < IDLE_LIMIT);
        }
    }

    pub fn remove(&self, id: &str) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(id);
        }
    }
}

fn cookie_value(parts_headers: &axum::http::HeaderMap) -> Option<String> {
    for h in parts_headers.get_all(COOKIE) {
        let Ok(s) = h.to_str() else { continue };
        for kv in s.split(';') {
            if let Some((k, v)) = kv.trim().split_once('=') {
                if k == COOKIE_NAME {
                    return Some(v.to_string());
                }
            }
        }
    }
    None
}

pub fn set_cookie(resp: &mut Response, id: &str) {
    // HttpOnly: no script reads it; SameSite=Strict: no other site's page sends it.
    let v = format!("{COOKIE_NAME}={id}; Path=/; HttpOnly; SameSite=Strict");
    if let Ok(h) = HeaderValue::from_str(&v) {
        resp.headers_mut().append(SET_COOKIE, h);
    }
}

fn is_public(path: &str) -> bool {
    path == "/login" || path.starts_with("/assets/")
}

/// The gate every request passes: finds or creates the session, sends multi-user visitors
/// who are not logged in to the login form, refuses POSTs without the session's CSRF token,
/// and refuses every action in read-only mode.
pub async fn gate(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    match gate_inner(state, req, next).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn gate_inner(state: Arc<AppState>, req: Request, next: Next) -> Result<Response, AppError> {
    let path = req.uri().path().to_string();
    if path.starts_with("/assets/") {
        return Ok(next.run(req).await);
    }
    let existing = cookie_value(req.headers()).and_then(|id| state.sessions.get(&id));
    let (session, fresh) = match existing {
        Some(s) => (s, false),
        None => (state.sessions.create(state.shared_pool.clone())?, true),
    };
    let (mut parts, body) = req.into_parts();

    let req = if parts.method == Method::POST {
        if state.config.read_only && path != "/login" && path != "/logout" {
            return Err(AppError::forbidden(
                "this dashboard runs with --read-only: actions are refused",
            ));
        }
        let bytes: Bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
            .await
            .map_err(|_| AppError::bad_request("form too large"))?;
        let ok = csrf::form_token(&bytes)
            .map(|t| csrf::same(&t, &session.csrf))
            .unwrap_or(false);
        if !ok {
            return Err(AppError::forbidden(
                "missing or stale CSRF token: reload the page and try again",
            ));
        }
        parts.extensions.insert(session.clone());
        Request::from_parts(parts, Body::from(bytes))
    } else {
        parts.extensions.insert(session.clone());
        Request::from_parts(parts, body)
    };

    if state.config.multi_user && session.pool.is_none() && !is_public(&path) {
        let mut resp = if path == "/live" || req.headers().contains_key("x-fragment") {
            AppError::new(StatusCode::UNAUTHORIZED, "Signed out", "sign in again").into_response()
        } else {
            Redirect::to("/login").into_response()
        };
        if fresh {
            set_cookie(&mut resp, &session.id);
        }
        return Ok(resp);
    }

    let mut resp = next.run(req).await;
    if fresh {
        set_cookie(&mut resp, &session.id);
    }
    Ok(resp)
}

/// The viewer of a request: their session and the pool of their role.
pub struct Viewer {
    pub session: Session,
    pub pool: Arc<Pool>,
}

impl FromRequestParts<Arc<AppState>> for Viewer {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let session =
            parts.extensions.get::<Session>().cloned().ok_or_else(|| {
                AppError::new(StatusCode::UNAUTHORIZED, "No session", "no session")
            })?;
        let pool = session
            .pool
            .clone()
            .or_else(|| state.shared_pool.clone())
            .ok_or_else(|| {
                AppError::new(StatusCode::UNAUTHORIZED, "Signed out", "sign in first")
            })?;
        Ok(Viewer { session, pool })
    }
}

/// The session of a request, logged in or not (login form, logout).
pub struct AnySession(pub Session);

impl FromRequestParts<Arc<AppState>> for AnySession {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Session>()
            .cloned()
            .map(AnySession)
            .ok_or_else(|| AppError::new(StatusCode::UNAUTHORIZED, "No session", "no session"))
    }
}
