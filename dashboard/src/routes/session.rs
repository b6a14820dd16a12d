//! Multi-user login and logout. A login is checked by PostgreSQL itself (see `login`).

use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use serde::Deserialize;

use crate::auth::{clear_cookie, set_cookie, MaybeSession};
use crate::error::AppResult;
use crate::routes::html;
use crate::server::ClientAddr;
use crate::views::pages::{Chrome, LoginPage};
use crate::AppState;

fn login_page(state: &AppState, csrf: &str, user: &str, error: String) -> AppResult<String> {
    Ok(LoginPage {
        chrome: Chrome {
            title: "Sign in".into(),
            read_only: state.config.read_only,
            csrf: csrf.to_string(),
            ..Chrome::default()
        },
        user: user.to_string(),
        error,
    }
    .render()?)
}

pub async fn login_form(
    State(state): State<Arc<AppState>>,
    MaybeSession { session, csrf }: MaybeSession,
) -> AppResult<Response> {
    if !state.config.multi_user || session.is_some() {
        return Ok(Redirect::to("/").into_response());
    }
    Ok(html(login_page(&state, &csrf, "", String::new())?))
}

#[derive(Deserialize)]
pub struct LoginForm {
    user: String,
    password: String,
}

pub async fn login(
    State(state): State<Arc<AppState>>,
    MaybeSession { session, csrf }: MaybeSession,
    addr: Option<Extension<ClientAddr>>,
    Form(form): Form<LoginForm>,
) -> AppResult<Response> {
    if !state.config.multi_user {
        return Ok(Redirect::to("/").into_response());
    }
    let user = form.user.trim().to_string();
    let addr = addr.map(|Extension(ClientAddr(a))| a.ip());
    match crate::login::sign_in(&state, &user, &form.password, addr).await {
        Ok(fresh) => {
            // A new session id at every login; an earlier session of this browser ends.
            if let Some(old) = session {
                state.sessions.remove(&old.id);
            }
            let mut resp = Redirect::to("/").into_response();
            set_cookie(&mut resp, &fresh.id, state.secure_cookies);
            Ok(resp)
        }
        Err(e) => {
            let body = login_page(&state, &csrf, &user, e.message.clone())?;
            let mut resp = (e.status, html(body)).into_response();
            if let Some(s) = e.retry_after {
                resp.headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, s.into());
            }
            Ok(resp)
        }
    }
}

/// Ends the session (its event streams too) and tells the browser to forget the cookie.
pub async fn logout(
    State(state): State<Arc<AppState>>,
    MaybeSession { session, .. }: MaybeSession,
) -> AppResult<Response> {
    if let Some(s) = session {
        state.sessions.remove(&s.id);
    }
    let target = if state.config.multi_user {
        "/login"
    } else {
        "/"
    };
    let mut resp = Redirect::to(target).into_response();
    clear_cookie(&mut resp, state.secure_cookies);
    Ok(resp)
}
