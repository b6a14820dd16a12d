//! A tiny pool of connections that all log in as one role.
//!
//! Single-user mode has one pool (the `--database-url` role); multi-user mode has one per
//! logged-in session, so every query runs as the viewer and row-level security decides what
//! they see. A few connections per role are plenty for a dashboard.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::{Client, Config, NoTls};

use crate::error::AppError;

const MAX_CONNECTIONS: usize = 4;

pub struct Pool {
    config: Config,
    idle: Mutex<Vec<Client>>,
    permits: Arc<Semaphore>,
}

impl Pool {
    pub fn new(mut config: Config) -> Arc<Pool> {
        config.application_name("drip-dashboard");
        Arc::new(Pool {
            config,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        })
    }

    /// The role this pool logs in as.
    pub fn role(&self) -> String {
        self.config.get_user().unwrap_or("").to_string()
    }

    /// Opens a connection as this pool's role (also how a login's password is checked).
    pub async fn connect(config: &Config) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            // Ends when the client is dropped or the server goes away; errors show up on the
            // client's next query, which the request reports.
            let _ = connection.await;
        });
        Ok(client)
    }

    pub async fn get(self: &Arc<Self>) -> Result<Conn, AppError> {
        // At most MAX_CONNECTIONS at once; the semaphore is never closed, so this only waits.
        let permit = self.permits.clone().acquire_owned().await.map_err(|_| {
            AppError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Database unavailable",
                "the connection pool is closed",
            )
        })?;
        let reused = self.idle.lock().map(|mut idle| idle.pop()).unwrap_or(None);
        let client = match reused {
            Some(c) if !c.is_closed() => c,
            _ => Pool::connect(&self.config).await?,
        };
        Ok(Conn {
            client: Some(client),
            pool: Arc::clone(self),
            _permit: permit,
        })
    }
}

/// A pooled connection; goes back to the pool when dropped (unless it broke).
pub struct Conn {
    client: Option<Client>,
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
}

impl Deref for Conn {
    type Target = Client;
    fn deref(&self) -> &Client {
        // Only None after drop.
        self.client.as_ref().expect("connection present until drop")
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("connection present until drop")
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            if !client.is_closed() {
                if let Ok(mut idle) = self.pool.idle.lock() {
                    idle.push(client);
                }
            }
        }
    }
}
