//! Signing in with a PostgreSQL role and password, and keeping that honest.
//!
//! - At start, multi-user mode proves the login path checks passwords: a login with a random
//!   wrong password, for a random role name and for the database URL's role, must fail. If one
//!   succeeds (`trust`, or `peer` when the dashboard's OS user matches), it refuses to start.
//! - A login is a connection as that role with that password. Superusers are refused unless
//!   `--allow-superuser`. The visitor sees one message for every failure; the log has the detail.
//! - Every `--session-check`, each signed-in role is logged in again with its password: a role
//!   that no longer can (NOLOGIN, password changed, dropped, expired) is signed out everywhere.

use std::net::IpAddr;
use std::sync::Arc;

use axum::http::StatusCode;

use crate::auth::Session;
use crate::db::connect::ConnectSpec;
use crate::error::AppError;
use crate::{describe, AppState};

/// What anonymous visitors are told about any failed login.
pub const FAILED: &str =
    "Sign-in failed: the role name or the password is wrong, or that role may not sign in here.";

/// Whether an error is PostgreSQL refusing the credentials (class 28), as opposed to the
/// server being unreachable.
fn is_auth_failure(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|db| db.code().code().starts_with("28"))
}

pub async fn prove_passwords_are_checked(base: &ConnectSpec) -> Result<(), String> {
    let random = crate::csrf::token().map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    let probe_role = format!("drip_probe_{}", &random[..16]);
    let mut roles = vec![probe_role];
    if !base.user().is_empty() {
        roles.push(base.user());
    }
    for role in roles {
        let mut spec = base.with_login(&role, random.as_bytes());
        spec.config.application_name("drip-dashboard probe");
        match spec.connect().await {
            Ok(_) => {
                return Err(format!(
                    "refusing --multi-user: a login as \"{role}\" with a random wrong password \
                     succeeded, so the login path does not check passwords. Change the \
                     pg_hba.conf line that matches this connection (host, socket or database) \
                     from trust or peer to scram-sha-256, or use a URL whose host goes through \
                     such a line."
                ))
            }
            Err(e) if is_auth_failure(&e) => {}
            Err(e) => {
                return Err(format!(
                    "cannot check that logins need a password (as \"{role}\"): {}",
                    describe(&e)
                ))
            }
        }
    }
    Ok(())
}

/// A signed-in session for `user`/`password`, or the error to show.
pub async fn sign_in(
    state: &AppState,
    user: &str,
    password: &str,
    addr: Option<IpAddr>,
) -> Result<Session, AppError> {
    if let Err(wait) = state.throttle.check(user, addr) {
        return Err(too_many(wait));
    }
    let refuse = |detail: String| {
        eprintln!("drip-dashboard: login as {user:?} from {addr:?} refused: {detail}");
        AppError::new(StatusCode::UNAUTHORIZED, "Sign-in failed", FAILED)
    };
    if user.is_empty() || password.is_empty() {
        state.throttle.failed(user, addr);
        return Err(refuse("empty role name or password".into()));
    }
    let mut spec = state.base.with_login(user, password.as_bytes());
    // The same name as the pool's connections: this one joins the pool.
    spec.config.application_name("drip-dashboard");
    let permit = state.pools.budget.permit().await?;
    let client = match spec.connect().await {
        Ok(c) => c,
        Err(e) => {
            if is_auth_failure(&e) {
                state.throttle.failed(user, addr);
                return Err(refuse(describe(&e)));
            }
            eprintln!("drip-dashboard: login as {user:?}: {}", describe(&e));
            return Err(AppError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Database unavailable",
                "The dashboard cannot reach PostgreSQL right now. Try again in a moment.",
            ));
        }
    };
    let superuser: bool = client
        .query_one(
            "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .and_then(|r| r.try_get(0))
        .map_err(AppError::from)?;
    if superuser && !state.config.allow_superuser {
        state.throttle.failed(user, addr);
        eprintln!(
            "drip-dashboard: login as {user:?} refused: a superuser, and no --allow-superuser"
        );
        return Err(AppError::forbidden(
            "Superusers may not sign in to this dashboard (it was started without --allow-superuser). Sign in with an ordinary role.",
        ));
    }
    state.throttle.succeeded(user);
    let pool = state.pools.for_role(spec);
    pool.adopt(client, permit);
    state.sessions.create(user, pool)
}

pub fn too_many(wait: u64) -> AppError {
    let mut e = AppError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many attempts",
        format!("Too many failed sign-ins: wait {wait} s and try again."),
    );
    e.retry_after = Some(wait);
    e
}

/// Logs every signed-in role in again; signs out those PostgreSQL now refuses.
pub async fn recheck_sessions(state: &Arc<AppState>) {
    for role in state.sessions.roles() {
        let Some(pool) = state.pools.roles().into_iter().find(|p| p.role() == role) else {
            // No pool: nothing can act for these sessions; end them.
            state.sessions.remove_role(&role);
            continue;
        };
        let Some(mut spec) = pool.spec() else {
            continue;
        };
        spec.config.application_name("drip-dashboard session check");
        let Ok(_permit) = state.pools.budget.permit().await else {
            continue;
        };
        match spec.connect().await {
            Ok(_) => {}
            Err(e) if is_auth_failure(&e) => {
                let n = state.sessions.remove_role(&role);
                state.pools.remove(&role);
                eprintln!(
                    "drip-dashboard: signed out {n} session(s) of {role:?}: PostgreSQL now refuses it ({})",
                    describe(&e)
                );
            }
            Err(e) => {
                eprintln!(
                    "drip-dashboard: session check for {role:?}: {} (kept)",
                    describe(&e)
                );
            }
        }
    }
}
