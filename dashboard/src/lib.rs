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
pub mod host;
pub mod live;
pub mod login;
pub mod metrics;
pub mod routes;
pub mod server;
pub mod throttle;
pub mod views;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::db::connect::ConnectSpec;
use crate::db::pool::{Pool, Pools};

pub struct AppState {
    pub config: Config,
    /// The database URL, parsed: the role of single-user mode; host and database of logins.
    pub base: ConnectSpec,
    /// Single-user mode's pool; multi-user pools are per role, in `pools`.
    pub shared_pool: Option<Arc<Pool>>,
    /// `--metrics`: the pool `/metrics` reads with (the database URL's role).
    pub metrics_pool: Option<Arc<Pool>>,
    pub pools: Pools,
    pub sessions: auth::Sessions,
    pub throttle: throttle::LoginThrottle,
    /// The CSRF token of forms shown without a session (single-user mode, the login form).
    pub anon_csrf: String,
    /// An https `--public-url`: cookies carry `Secure`.
    pub secure_cookies: bool,
    pub hub: Arc<live::Hub>,
    pub run_stats: db::cache::RunStatsCache,
}

impl AppState {
    /// Checks the database URL by connecting once (and, in multi-user mode, that the login
    /// path checks passwords), then starts the LISTEN connection and the housekeeping tasks.
    pub async fn new(config: Config) -> Result<Arc<AppState>, String> {
        let base =
            ConnectSpec::parse(&config.database_url).map_err(|e| format!("database URL: {e}"))?;
        let client = base
            .connect()
            .await
            .map_err(|e| format!("cannot connect with the database URL: {}", describe(&e)))?;
        drop(client);
        if config.multi_user {
            login::prove_passwords_are_checked(&base).await?;
        }
        let pools = Pools::new(config.max_connections, config.max_connections_per_role);
        let shared_pool = if config.multi_user {
            None
        } else {
            Some(pools.standalone(base.clone()))
        };
        let metrics_pool = config.metrics.then(|| pools.standalone(base.clone()));
        let secure_cookies = match &config.public_url {
            Some(u) => host::PublicUrl::parse(u)?.https,
            None => false,
        };
        let anon_csrf = csrf::token().map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
        let hub = live::Hub::new();
        live::spawn_listener(base.clone(), Arc::clone(&hub));
        let state = Arc::new(AppState {
            sessions: auth::Sessions::new(config.max_sessions),
            config,
            base,
            shared_pool,
            metrics_pool,
            pools,
            throttle: throttle::LoginThrottle::default(),
            anon_csrf,
            secure_cookies,
            hub,
            run_stats: db::cache::RunStatsCache::default(),
        });
        spawn_housekeeping(&state);
        Ok(state)
    }
}

/// Idle sessions and connections expire; signed-in roles are re-checked against the database.
fn spawn_housekeeping(state: &Arc<AppState>) {
    let weak = Arc::downgrade(state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tick.tick().await;
            let Some(s) = weak.upgrade() else { return };
            s.sessions.sweep();
            s.pools.budget.sweep();
        }
    });
    let weak = Arc::downgrade(state);
    let every = state.config.session_check;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(s) = weak.upgrade() else { return };
            login::recheck_sessions(&s).await;
        }
    });
}

/// An error from tokio-postgres with its SQLSTATE when the server sent one.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
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
    let local = listener.local_addr()?;
    let policy = host::HostPolicy::new(
        local,
        &state.config.allowed_hosts,
        state.config.public_url.as_deref(),
    )
    .map_err(std::io::Error::other)?;
    let hub = Arc::clone(&state.hub);
    let limits = server::Limits {
        header_timeout: state.config.header_timeout,
        per_address: state.config.max_clients_per_address,
    };
    let app = routes::router(state, Arc::new(policy));
    server::run(listener, app, limits, shutdown, move || hub.end_streams()).await
}
