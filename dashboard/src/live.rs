//! Live updates without polling the browser: one `LISTEN drip_events` connection for the whole
//! dashboard, fanned out to every open page over Server-Sent Events.
//!
//! A notification is only a signal ("something changed"). Each page's stream then reads the
//! commit-ordered event log with `drip.events_since` on a connection of the viewer's role, so
//! a viewer hears only of events row-level security lets them see, and a reconnecting page
//! (its `Last-Event-ID` is the log cursor) gets every event it missed. Signals are coalesced:
//! a stream reads the log at most once per `COALESCE`, however fast runs go.

use std::convert::Infallible;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::{Stream, StreamExt};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_postgres::AsyncMessage;

use crate::db::connect::ConnectSpec;
use crate::db::pool::Pool;
use crate::db::queries::{self, LiveEvent};

/// At most one read of the log per stream per this interval.
pub const COALESCE: Duration = Duration::from_millis(250);
/// After a signal, look again for this long: an event whose transaction committed behind an
/// older open transaction only becomes readable when that one ends (see `drip.events_since`).
const SETTLE: Duration = Duration::from_secs(10);
const PAGE: i32 = 1000;

#[derive(Clone, Copy, Debug)]
pub enum Signal {
    /// A notification arrived (only the run id is used, and only as a hint).
    Notified,
    /// The LISTEN connection was (re)established: something may have been missed.
    Resync,
}

pub struct Hub {
    tx: broadcast::Sender<Signal>,
    /// Bumped to end every open stream (server shutdown).
    generation: watch::Sender<u64>,
    /// The backend pid of the LISTEN connection (0 while disconnected).
    listener_pid: AtomicI32,
}

impl Hub {
    pub fn new() -> Arc<Hub> {
        let (tx, _) = broadcast::channel(1024);
        let (generation, _) = watch::channel(0);
        Arc::new(Hub {
            tx,
            generation,
            listener_pid: AtomicI32::new(0),
        })
    }

    pub fn listener_pid(&self) -> i32 {
        self.listener_pid.load(Ordering::SeqCst)
    }

    pub fn end_streams(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

/// Keeps one connection listening on `drip_events`, reconnecting (with LISTEN again and a
/// resync signal) whenever it drops.
pub fn spawn_listener(mut spec: ConnectSpec, hub: Arc<Hub>) {
    spec.config.application_name("drip-dashboard listen");
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        loop {
            match listen_once(&spec, &hub).await {
                Ok(()) => backoff = Duration::from_millis(200),
                Err(e) => eprintln!("drip-dashboard: LISTEN connection: {}", crate::describe(&e)),
            }
            hub.listener_pid.store(0, Ordering::SeqCst);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
}

async fn listen_once(spec: &ConnectSpec, hub: &Hub) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = spec.connect_raw().await?;
    let (ntx, mut nrx) = mpsc::unbounded_channel::<()>();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(_)) => {
                    if ntx.send(()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("drip-dashboard: LISTEN connection lost: {e}");
                    break;
                }
            }
        }
    });
    client.batch_execute("LISTEN drip_events").await?;
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .try_get(0)?;
    hub.listener_pid.store(pid, Ordering::SeqCst);
    // Anything committed while we were not listening is in the log: let every stream look.
    let _ = hub.tx.send(Signal::Resync);
    while nrx.recv().await.is_some() {
        let _ = hub.tx.send(Signal::Notified);
    }
    driver.abort();
    Ok(())
}

#[derive(serde::Serialize)]
struct Batch<'a> {
    cursor: &'a str,
    runs: Vec<i64>,
    events: &'a [LiveEvent],
}

/// The stream of one page: catches up from `cursor` at once, then after every (coalesced)
/// signal. Event ids are log cursors, so the browser's automatic reconnect resumes exactly.
pub fn stream(
    hub: Arc<Hub>,
    pool: Arc<Pool>,
    cursor: String,
    signed_out: Option<watch::Receiver<bool>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (tx, rx) = mpsc::channel::<Event>(16);
    let mut signals = hub.tx.subscribe();
    let mut ended = hub.generation.subscribe();
    // Single-user mode has no sessions: a sender kept alive here never signs out.
    let (_never, never_rx) = watch::channel(false);
    let mut signed_out = signed_out.unwrap_or(never_rx);
    tokio::spawn(async move {
        let _never = _never;
        if *signed_out.borrow() {
            return;
        }
        let hello = Event::default()
            .event("ready")
            .id(cursor.clone())
            .retry(Duration::from_millis(1000))
            .data(cursor.clone());
        if tx.send(hello).await.is_err() {
            return;
        }
        let mut cursor = cursor;
        let mut settle_until = tokio::time::Instant::now() + SETTLE;
        loop {
            {
                match read_log(&pool, &cursor).await {
                    Ok((events, next)) => {
                        cursor = next;
                        if !events.is_empty() {
                            let mut runs: Vec<i64> =
                                events.iter().filter_map(|e| e.run_id).collect();
                            runs.sort_unstable();
                            runs.dedup();
                            let data = serde_json::to_string(&Batch {
                                cursor: &cursor,
                                runs,
                                events: &events,
                            })
                            .unwrap_or_else(|_| "{}".into());
                            let ev = Event::default().event("drip").id(cursor.clone()).data(data);
                            if tx.send(ev).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let ev = Event::default().event("problem").data(e.one_line());
                        if tx.send(ev).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let settling = tokio::time::Instant::now() < settle_until;
            tokio::select! {
                s = signals.recv() => match s {
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Coalesce a burst into one read.
                        tokio::time::sleep(COALESCE).await;
                        while signals.try_recv().is_ok() {}
                        settle_until = tokio::time::Instant::now() + SETTLE;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tokio::time::sleep(Duration::from_secs(1)), if settling => {}
                _ = ended.changed() => return,
                _ = crate::server::until_true(&mut signed_out) => return,
                _ = tx.closed() => return,
            }
        }
    });
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

async fn read_log(
    pool: &Arc<Pool>,
    cursor: &str,
) -> Result<(Vec<LiveEvent>, String), crate::error::AppError> {
    let db = pool.get().await?;
    let mut all = Vec::new();
    let mut cursor = cursor.to_string();
    loop {
        let (mut events, next) = queries::events_since(&db, &cursor, PAGE).await?;
        let full = events.len() as i32 >= PAGE;
        all.append(&mut events);
        cursor = next;
        if !full || all.len() >= 20 * PAGE as usize {
            return Ok((all, cursor));
        }
    }
}
