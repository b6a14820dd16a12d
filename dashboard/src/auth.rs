//! Sessions and the request gate: who the viewer is, CSRF on every POST, read-only mode
//! enforced on the server.
//!
//! A session exists only once someone signed in (multi-user mode); anonymous visitors and
//! single-user mode get none, so no request can grow server memory. Their forms carry the
//! server's anonymous CSRF token: reading it takes a page of this origin (the Host check keeps
//! other origins out), and every POST must also come from an allowed Origin.
//!
//! Sessions are capped (`--max-sessions`); when full, a new login is refused: a signed-in
//! session is never evicted to make room. Each session can be signed out (logout, or the
//! periodic re-check finding the role can no longer log in), which also ends its event streams.

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
use tokio::sync::watch;

use crate::csrf;
use crate::db::pool::Pool;
use crate::error::AppError;
use crate::AppState;

pub const COOKIE_NAME: &str = "drip_session";
const IDLE_LIMIT: Duration = Duration::from_secs(12 * 3600);
const MAX_FORM_BYTES: usize = 256 * 1024;

#[derive(Clone)]
pub struct Session {
    pub id: String,
    pub csrf: String,
    pub role: String,
    pub pool: Arc<Pool>,
    last_seen: Instant,
    /// Becomes true when the session is signed out; its event streams watch it.
    signed_out: Arc<watch::Sender<bool>>,
}

impl Session {
    pub fn signed_out(&self) -> watch::Receiver<bool> {
        self.signed_out.subscribe()
    }
}

pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    max: usize,
}

impl Sessions {
    pub fn new(max: usize) -> Sessions {
        Sessions {
            map: Mutex::new(HashMap::new()),
            max,
        }
    }

    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, id: &str) -> Option<Session> {
        let mut map = self.map.lock().ok()?;
        let s = map.get_mut(id)?;
        if s.last_seen.elapsed() > IDLE_LIMIT {
            if let Some(s) = map.remove(id) {
                let _ = s.signed_out.send(true);
            }
            return None;
        }
        s.last_seen = Instant::now();
        Some(s.clone())
    }

    /// A new signed-in session, or 503 when the cap is reached (nobody is evicted).
    pub fn create(&self, role: &str, pool: Arc<Pool>) -> Result<Session, AppError> {
        let token_err = |e: std::io::Error| {
            AppError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "No randomness",
                format!("cannot read /dev/urandom: {e}"),
            )
        };
        let (signed_out, _) = watch::channel(false);
        let session = Session {
            id: csrf::token().map_err(token_err)?,
            csrf: csrf::token().map_err(token_err)?,
            role: role.to_string(),
            pool,
            last_seen: Instant::now(),
            signed_out: Arc::new(signed_out),
        };
        let mut map = self
            .map
            .lock()
            .map_err(|_| AppError::new(StatusCode::INTERNAL_SERVER_ERROR, "Sessions", "lock"))?;
        if map.len() >= self.max {
            Self::expire(&mut map);
        }
        if map.len() >= self.max {
            return Err(AppError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Too many sessions",
                "the dashboard has as many signed-in sessions as it may keep: try again later",
            ));
        }
        map.insert(session.id.clone(), session.clone());
        Ok(session)
    }

    fn expire(map: &mut HashMap<String, Session>) {
        map.retain(|_, s| {
            let keep = s.last_seen.elapsed() < IDLE_LIMIT;
            if !keep {
                let _ = s.signed_out.send(true);
            }
            keep
        });
    }

    /// Forgets sessions idle for longer than the limit.
    pub fn sweep(&self) {
        if let Ok(mut map) = self.map.lock() {
            Self::expire(&mut map);
        }
    }

    /// Signs one session out (logout): its streams end.
    pub fn remove(&self, id: &str) {
        let gone = self.map.lock().ok().and_then(|mut m| m.remove(id));
        if let Some(s) = gone {
            let _ = s.signed_out.send(true);
        }
    }

    /// Signs out every session of `role`; returns how many there were.
    pub fn remove_role(&self, role: &str) -> usize {
        let Ok(mut map) = self.map.lock() else {
            return 0;
        };
        let before = map.len();
        map.retain(|_, s| {
            let keep = s.role != role;
            if !keep {
                let _ = s.signed_out.send(true);
            }
            keep
        });
        before - map.len()
    }

    /// The roles that have sessions.
    pub fn roles(&self) -> Vec<String> {
        let mut roles: Vec<String> = self
            .map
            .lock()
            .map(|m| m.values().map(|s| s.role.clone()).collect())
            .unwrap_or_default();
        roles.sort();
        roles.dedup();
        roles
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

fn cookie_header(value: &str, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!("{value}{secure}")).ok()
}

pub fn set_cookie(resp: &mut Response, id: &str, secure: bool) {
    // HttpOnly: no script reads it; SameSite=Strict: no other site's page sends it.
    let v = format!("{COOKIE_NAME}={id}; Path=/; HttpOnly; SameSite=Strict");
    if let Some(h) = cookie_header(&v, secure) {
        resp.headers_mut().append(SET_COOKIE, h);
    }
}

/// Tells the browser to forget the session cookie.
pub fn clear_cookie(resp: &mut Response, secure: bool) {
    let v = format!("{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Some(h) = cookie_header(&v, secure) {
        resp.headers_mut().append(SET_COOKIE, h);
    }
}

fn is_public(path: &str) -> bool {
    path == "/login" || path.starts_with("/assets/") || path == "/metrics"
}

/// The gate every request passes: finds the session, sends multi-user visitors who are not
/// signed in to the login form, refuses POSTs without the right CSRF token, and refuses every
/// action in read-only mode.
pub async fn gate(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    match gate_inner(state, req, next).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn gate_inner(state: Arc<AppState>, req: Request, next: Next) -> Result<Response, AppError> {
    let path = req.uri().path().to_string();
    if path.starts_with("/assets/") || path == "/metrics" {
        return Ok(next.run(req).await);
    }
    let cookie = cookie_value(req.headers());
    let session = if state.config.multi_user {
        cookie.as_deref().and_then(|id| state.sessions.get(id))
    } else {
        None
    };
    // A cookie for a session that is gone (signed out, expired, restarted): forget it.
    let stale_cookie = cookie.is_some() && session.is_none();
    let expected_csrf = session
        .as_ref()
        .map(|s| s.csrf.clone())
        .unwrap_or_else(|| state.anon_csrf.clone());
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
        // Signing out a session that is already gone only clears a cookie: no token needed.
        let nothing_to_protect = path == "/logout" && session.is_none();
        let ok = nothing_to_protect
            || csrf::form_token(&bytes)
                .map(|t| csrf::same(&t, &expected_csrf))
                .unwrap_or(false);
        if !ok {
            return Err(AppError::forbidden(
                "missing or stale CSRF token: reload the page and try again",
            ));
        }
        if let Some(s) = &session {
            parts.extensions.insert(s.clone());
        }
        Request::from_parts(parts, Body::from(bytes))
    } else {
        if let Some(s) = &session {
            parts.extensions.insert(s.clone());
        }
        Request::from_parts(parts, body)
    };

    let secure = state.secure_cookies;
    if state.config.multi_user && session.is_none() && !is_public(&path) && path != "/logout" {
        let mut resp = if path == "/live" || req.headers().contains_key("x-fragment") {
            AppError::new(StatusCode::UNAUTHORIZED, "Signed out", "sign in again").into_response()
        } else {
            Redirect::to("/login").into_response()
        };
        if stale_cookie {
            clear_cookie(&mut resp, secure);
        }
        return Ok(resp);
    }

    let mut resp = next.run(req).await;
    if stale_cookie && !resp.headers().contains_key(SET_COOKIE) {
        clear_cookie(&mut resp, secure);
    }
    Ok(resp)
}

/// The viewer of a request: their session (multi-user mode) and the pool of their role.
pub struct Viewer {
    pub session: Option<Session>,
    pub csrf: String,
    pub pool: Arc<Pool>,
}

impl Viewer {
    /// Ends when the viewer is signed out (never in single-user mode).
    pub fn signed_out(&self) -> Option<watch::Receiver<bool>> {
        self.session.as_ref().map(Session::signed_out)
    }
}

impl FromRequestParts<Arc<AppState>> for Viewer {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        if let Some(s) = parts.extensions.get::<Session>().cloned() {
            return Ok(Viewer {
                csrf: s.csrf.clone(),
                pool: Arc::clone(&s.pool),
                session: Some(s),
            });
        }
        match &state.shared_pool {
            Some(pool) => Ok(Viewer {
                session: None,
                csrf: state.anon_csrf.clone(),
                pool: Arc::clone(pool),
            }),
            None => Err(AppError::new(
                StatusCode::UNAUTHORIZED,
                "Signed out",
                "sign in first",
            )),
        }
    }
}

/// The session of a request if someone is signed in, and the CSRF token its forms use.
pub struct MaybeSession {
    pub session: Option<Session>,
    pub csrf: String,
}

impl FromRequestParts<Arc<AppState>> for MaybeSession {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let session = parts.extensions.get::<Session>().cloned();
        let csrf = session
            .as_ref()
            .map(|s| s.csrf.clone())
            .unwrap_or_else(|| state.anon_csrf.clone());
        Ok(MaybeSession { session, csrf })
    }
}
