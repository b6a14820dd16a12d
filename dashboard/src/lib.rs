//! drip-dashboard: a live web dashboard for data_drip.
//!
//! Server-rendered pages (askama templates compiled in, assets embedded), one `LISTEN
//! drip_events` connection fanned out over Server-Sent Events, and every query run as the
//! viewer's own role so that row-level security and the `drip.*` functions decide what each
//! person sees and may do.

pub mod assets;
pub mod auth;
pub mod config;
pub mod csrf;
pub mod db;
pub mod error;
pub mod live;
pub mod routes;
pub mod views;

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;

use crate::config::Config;
use crate::db::pool::Pool;

pub struct AppState {
    pub config: Config,
    /// `--database-url`, parsed: the role of single-user mode; host and database of logins.
    pub base: tokio_postgres::Config,
    /// Single-user mode's pool; multi-user pools live in the sessions.
    pub shared_pool: Option<Arc<Pool>>,
    pub sessions: auth::Sessions,
    pub hub: Arc<live::Hub>,
    pub run_stats: db::cache::RunStatsCache,
}

impl AppState {
    /// Checks the database URL by connecting once, then starts the LISTEN connection.
    pub async fn new(config: Config) -> Result<Arc<AppState>, String> {
        let base = tokio_postgres::Config::from_str(&config.database_url)
            .map_err(|e| format!("--database-url: {e}"))?;
        let client = Pool::connect(&base)
            .await
            .map_err(|e| format!("cannot connect with --database-url: {}", describe(&e)))?;
        drop(client);
        let shared_pool = if config.multi_user {
            None
        } else {
            Some(Pool::new(base.clone()))
        };
        let hub = live::Hub::new();
        live::spawn_listener(base.clone(), Arc::clone(&hub));
        let state = Arc::new(AppState {
            config,
            base,
            shared_pool,
            sessions: auth::Sessions::default(),
            hub,
            run_stats: db::cache::RunStatsCache::default(),
        });
        let weak = Arc::downgrade(&state);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(600));
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(s) => s.sessions.sweep(),
                    None => return,
                }
            }
        });
        Ok(state)
    }
}

/// An error from tokio-postgres with its SQLSTATE when the server sent one.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// Serves until `shutdown` resolves; then ends the open event streams and returns once every
/// connection is closed. The state (sessions, the LISTEN connection) outlives a server, so a
/// test can stop and start serving on the same port with the same state.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let hub = Arc::clone(&state.hub);
    let app = routes::router(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            hub.end_streams();
        })
        .await
}
