//! Multi-user login and logout. A login is checked by PostgreSQL itself: connecting as the
//! role with the password either works or it does not.

use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use crate::auth::{set_cookie, AnySession};
use crate::db::pool::Pool;
use crate::error::AppResult;
use crate::routes::html;
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
    AnySession(session): AnySession,
) -> AppResult<Response> {
    if !state.config.multi_user {
        return Ok(Redirect::to("/").into_response());
    }
    Ok(html(login_page(&state, &session.csrf, "", String::new())?))
}

#[derive(Deserialize)]
pub struct LoginForm {
    user: String,
    password: String,
}

pub async fn login(
    State(state): State<Arc<AppState>>,
    AnySession(session): AnySession,
    Form(form): Form<LoginForm>,
) -> AppResult<Response> {
    if !state.config.multi_user {
        return Ok(Redirect::to("/").into_response());
    }
    let user = form.user.trim().to_string();
    let mut config = state.base.clone();
    config.user(&user).password(form.password.as_bytes());
    match Pool::connect(&config).await {
        Ok(client) => {
            drop(client);
            // A new session id at login (the old one may have been seen by someone else).
            state.sessions.remove(&session.id);
            let fresh = state.sessions.create(Some(Pool::new(config)))?;
            let mut resp = Redirect::to("/").into_response();
            set_cookie(&mut resp, &fresh.id);
            Ok(resp)
        }
        Err(e) => {
            let msg = format!("PostgreSQL refused the login: {}", crate::describe(&e));
            let body = login_page(&state, &session.csrf, &user, msg)?;
            Ok((StatusCode::UNAUTHORIZED, html(body)).into_response())
        }
    }
}

pub async fn logout(
    State(state): State<Arc<AppState>>,
    AnySession(session): AnySession,
) -> AppResult<Response> {
    state.sessions.remove(&session.id);
    let target = if state.config.multi_user {
        "/login"
    } else {
        "/"
    };
    Ok(Redirect::to(target).into_response())
}
