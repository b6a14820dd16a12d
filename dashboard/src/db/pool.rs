//! Database connections, bounded: one small pool per role, shared by all of that role's
//! sessions, and one budget of open connections for the whole dashboard.
//!
//! - A role's pool has at most `--max-connections-per-role` connections open (in use or
//!   idle): a new one is opened only when none is idle, and at most that many are in use.
//! - Every open connection (idle ones too) holds one of `--max-connections` permits. When the
//!   budget is spent, an idle connection of any role is closed to make room; if none is idle,
//!   the request waits a while and then gets 503.
//! - Idle connections close after `IDLE_CLOSE`.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::Client;

use crate::db::connect::ConnectSpec;
use crate::error::AppError;

/// Idle connections are closed after this long.
pub const IDLE_CLOSE: Duration = Duration::from_secs(180);
/// How long a request waits for a connection when every one is busy.
const WAIT: Duration = Duration::from_secs(10);

fn busy() -> AppError {
    AppError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "Too busy",
        "every database connection the dashboard may open is in use: try again in a moment",
    )
}

/// The dashboard's budget of open connections, and every pool that spends it.
pub struct Budget {
    permits: Arc<Semaphore>,
    max: usize,
    pools: Mutex<Vec<Weak<Pool>>>,
}

impl Budget {
    pub fn new(max: usize) -> Arc<Budget> {
        Arc::new(Budget {
            permits: Arc::new(Semaphore::new(max)),
            max,
            pools: Mutex::new(Vec::new()),
        })
    }

    /// Open connections right now (idle and in use).
    pub fn open(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    /// A permit for one more open connection: free, or made free by closing an idle one, or
    /// waited for (at most `WAIT`).
    pub async fn permit(&self) -> Result<OwnedSemaphorePermit, AppError> {
        if let Ok(p) = Arc::clone(&self.permits).try_acquire_owned() {
            return Ok(p);
        }
        self.close_one_idle();
        match tokio::time::timeout(WAIT, Arc::clone(&self.permits).acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(busy()),
        }
    }

    /// Closes the longest-idle connection of any pool (its permit returns to the budget).
    fn close_one_idle(&self) {
        let pools: Vec<Arc<Pool>> = match self.pools.lock() {
            Ok(mut v) => {
                v.retain(|w| w.strong_count() > 0);
                v.iter().filter_map(Weak::upgrade).collect()
            }
            Err(_) => return,
        };
        let oldest = pools
            .iter()
            .filter_map(|p| p.oldest_idle().map(|at| (at, p)))
            .min_by_key(|(at, _)| *at);
        if let Some((_, pool)) = oldest {
            pool.close_idle(|_| true, 1);
        }
    }

    /// Closes every connection idle for longer than `IDLE_CLOSE`.
    pub fn sweep(&self) {
        let pools: Vec<Arc<Pool>> = match self.pools.lock() {
            Ok(mut v) => {
                v.retain(|w| w.strong_count() > 0);
                v.iter().filter_map(Weak::upgrade).collect()
            }
            Err(_) => return,
        };
        for p in pools {
            p.close_idle(|at| at.elapsed() > IDLE_CLOSE, usize::MAX);
        }
    }
}

struct Idle {
    client: Client,
    permit: OwnedSemaphorePermit,
    since: Instant,
}

/// The connections of one role.
pub struct Pool {
    spec: Mutex<ConnectSpec>,
    role: String,
    idle: Mutex<Vec<Idle>>,
    in_use: Arc<Semaphore>,
    budget: Arc<Budget>,
}

impl Pool {
    pub fn new(mut spec: ConnectSpec, per_role: usize, budget: &Arc<Budget>) -> Arc<Pool> {
        spec.config.application_name("drip-dashboard");
        let pool = Arc::new(Pool {
            role: spec.user(),
            spec: Mutex::new(spec),
            idle: Mutex::new(Vec::new()),
            in_use: Arc::new(Semaphore::new(per_role)),
            budget: Arc::clone(budget),
        });
        if let Ok(mut v) = budget.pools.lock() {
            v.push(Arc::downgrade(&pool));
        }
        pool
    }

    /// The role this pool logs in as.
    pub fn role(&self) -> String {
        self.role.clone()
    }

    pub fn spec(&self) -> Option<ConnectSpec> {
        self.spec.lock().ok().map(|s| s.clone())
    }

    /// After a login with a (possibly new) password: new connections use it.
    pub fn set_spec(&self, spec: ConnectSpec) {
        if let Ok(mut s) = self.spec.lock() {
            let mut spec = spec;
            spec.config.application_name("drip-dashboard");
            *s = spec;
        }
    }

    /// Keeps an open connection (a login's) for later requests.
    pub fn adopt(&self, client: Client, permit: OwnedSemaphorePermit) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < self.in_use.available_permits() {
                idle.push(Idle {
                    client,
                    permit,
                    since: Instant::now(),
                });
            }
        }
    }

    fn oldest_idle(&self) -> Option<Instant> {
        self.idle.lock().ok()?.iter().map(|i| i.since).min()
    }

    /// Closes up to `n` idle connections whose idle-since instant matches `which`.
    pub fn close_idle(&self, which: impl Fn(Instant) -> bool, n: usize) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.sort_by_key(|i| i.since);
            let mut closed = 0;
            idle.retain(|i| {
                let close = closed < n && which(i.since);
                if close {
                    closed += 1;
                }
                !close
            });
        }
    }

    pub async fn get(self: &Arc<Self>) -> Result<Conn, AppError> {
        let in_use = tokio::time::timeout(WAIT, Arc::clone(&self.in_use).acquire_owned())
            .await
            .map_err(|_| busy())?
            .map_err(|_| busy())?;
        let reused = loop {
            let next = self.idle.lock().map(|mut idle| idle.pop()).unwrap_or(None);
            match next {
                Some(i) if i.client.is_closed() => continue,
                other => break other,
            }
        };
        let (client, permit) = match reused {
            Some(i) => (i.client, i.permit),
            None => {
                let permit = self.budget.permit().await?;
                let spec = self.spec().ok_or_else(busy)?;
                (spec.connect().await?, permit)
            }
        };
        Ok(Conn {
            client: Some((client, permit)),
            pool: Arc::clone(self),
            _in_use: in_use,
        })
    }
}

/// A pooled connection; goes back to the pool when dropped (unless it broke).
pub struct Conn {
    client: Option<(Client, OwnedSemaphorePermit)>,
    pool: Arc<Pool>,
    _in_use: OwnedSemaphorePermit,
}

impl Deref for Conn {
    type Target = Client;
    fn deref(&self) -> &Client {
        // Only None after drop.
        &self
            .client
            .as_ref()
            .expect("connection present until drop")
            .0
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self
            .client
            .as_mut()
            .expect("connection present until drop")
            .0
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some((client, permit)) = self.client.take() {
            if !client.is_closed() {
                if let Ok(mut idle) = self.pool.idle.lock() {
                    idle.push(Idle {
                        client,
                        permit,
                        since: Instant::now(),
                    });
                }
            }
        }
    }
}

/// One pool per role, shared by that role's sessions.
pub struct Pools {
    pub budget: Arc<Budget>,
    per_role: usize,
    by_role: Mutex<HashMap<String, Arc<Pool>>>,
}

impl Pools {
    pub fn new(max: usize, per_role: usize) -> Pools {
        Pools {
            budget: Budget::new(max),
            per_role,
            by_role: Mutex::new(HashMap::new()),
        }
    }

    /// A pool that is not shared by role (single-user mode, metrics).
    pub fn standalone(&self, spec: ConnectSpec) -> Arc<Pool> {
        Pool::new(spec, self.per_role, &self.budget)
    }

    /// The pool of `spec`'s role, made on first use; a later login's password replaces the
    /// earlier one for new connections.
    pub fn for_role(&self, spec: ConnectSpec) -> Arc<Pool> {
        let role = spec.user();
        let Ok(mut map) = self.by_role.lock() else {
            return self.standalone(spec);
        };
        match map.get(&role) {
            Some(p) => {
                p.set_spec(spec);
                Arc::clone(p)
            }
            None => {
                let p = Pool::new(spec, self.per_role, &self.budget);
                map.insert(role, Arc::clone(&p));
                p
            }
        }
    }

    /// Forgets a role's pool (signed out): its idle connections close now, busy ones when
    /// their request ends.
    pub fn remove(&self, role: &str) {
        let gone = self.by_role.lock().ok().and_then(|mut m| m.remove(role));
        if let Some(p) = gone {
            p.close_idle(|_| true, usize::MAX);
        }
    }

    pub fn roles(&self) -> Vec<Arc<Pool>> {
        self.by_role
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}
