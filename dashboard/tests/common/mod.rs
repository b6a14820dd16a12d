//! Test fixtures: a database of our own in the cluster `scripts/test.sh dashboard` started,
//! roles with passwords, a dashboard served in-process, and an HTTP helper.
//!
//! The suite exports DRIP_DASH_PGHOST (socket directory), DRIP_DASH_PGPORT and
//! DRIP_DASH_PGUSER (a superuser); TCP connections from 127.0.0.1 use scram-sha-256, so the
//! dashboard logs roles in with real passwords.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drip_dashboard::config::Config;
use drip_dashboard::AppState;
use tokio::sync::oneshot;
use tokio_postgres::{Client, NoTls};

pub mod browser;
pub mod http;
pub mod sse;

pub const PASSWORD: &str = "s3cret pass";

pub struct Cluster {
    pub host: String,
    pub port: u16,
    pub superuser: String,
}

pub fn cluster() -> Cluster {
    let need = |k: &str| {
        std::env::var(k).unwrap_or_else(|_| {
            panic!(
                "{k} is not set: these tests need the cluster that `scripts/test.sh dashboard` \
                 starts (it also installs chromium and the extension). Run that command."
            )
        })
    };
    Cluster {
        host: need("DRIP_DASH_PGHOST"),
        port: need("DRIP_DASH_PGPORT")
            .parse()
            .expect("DRIP_DASH_PGPORT is a port"),
        superuser: need("DRIP_DASH_PGUSER"),
    }
}

pub async fn connect(conn: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(conn, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {conn}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A fresh database with the extension, and two roles of its own: `<name>_alice` owns a table
/// and backfills; `<name>_bob` has the same API rights and nothing of alice's.
pub struct TestDb {
    pub name: String,
    pub alice: String,
    pub bob: String,
    pub cluster: Cluster,
}

impl TestDb {
    pub async fn new(name: &str) -> TestDb {
        let cluster = cluster();
        let db = format!("dash_{name}");
        let sup = connect(&cluster.superuser_conn("postgres")).await;
        let alice = format!("{name}_alice");
        let bob = format!("{name}_bob");
        for stmt in [
            format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
            format!("DROP ROLE IF EXISTS {alice}"),
            format!("DROP ROLE IF EXISTS {bob}"),
            format!("CREATE ROLE {alice} LOGIN PASSWORD '{PASSWORD}'"),
            format!("CREATE ROLE {bob} LOGIN PASSWORD '{PASSWORD}'"),
            format!("CREATE DATABASE {db}"),
        ] {
            sup.batch_execute(&stmt)
                .await
                .unwrap_or_else(|e| panic!("{stmt}: {e}"));
        }
        let t = TestDb {
            name: db,
            alice,
            bob,
            cluster,
        };
        let s = t.superuser().await;
        s.batch_execute(&format!(
            "CREATE EXTENSION data_drip;
             GRANT USAGE ON SCHEMA drip TO {a}, {b};
             GRANT CREATE ON SCHEMA public TO {a}, {b};",
            a = t.alice,
            b = t.bob
        ))
        .await
        .expect("create extension");
        t
    }

    pub async fn superuser(&self) -> Client {
        connect(&self.cluster.superuser_conn(&self.name)).await
    }

    /// A connection as `role` over TCP with its password (as the dashboard connects).
    pub async fn as_role(&self, role: &str) -> Client {
        connect(&self.url(role)).await
    }

    pub fn url(&self, role: &str) -> String {
        format!(
            "postgres://{role}:{}@127.0.0.1:{}/{}",
            PASSWORD.replace(' ', "%20"),
            self.cluster.port,
            self.name
        )
    }

    /// `<table>` with `rows` rows owned by `role`, and a backfill `name` over it.
    pub async fn slow_backfill(&self, role: &str, name: &str, rows: i64, batch: i32, sleep: &str) {
        let c = self.as_role(role).await;
        c.batch_execute(&format!(
            "CREATE TABLE {name}_t (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0, d int NOT NULL DEFAULT 1);
             INSERT INTO {name}_t (id) SELECT g FROM generate_series(1, {rows}) g;
             ANALYZE {name}_t;"
        ))
        .await
        .expect("create table");
        c.execute(
            "SELECT drip.register($1, $2::text::regclass, action => 'SET n = n + $step', scope => '$min IS NULL OR id >= $min',
                    params => '{\"step\": {\"type\": \"integer\", \"required\": true}, \"min\": \"bigint\", \"label\": {\"type\": \"text\", \"default\": \"web\"}, \"until\": \"timestamptz\", \"dry\": \"boolean\", \"tags\": \"text[]\"}',
                    batch_size => $3, sleep => $4::text::interval, max_attempts => 1,
                    description => 'A slow test backfill')",
            &[&name, &format!("{name}_t"), &batch, &sleep],
        )
        .await
        .expect("register");
    }

    pub async fn start(&self, role: &str, name: &str, params: &str) -> i64 {
        let c = self.as_role(role).await;
        let v: serde_json::Value = serde_json::from_str(params).expect("params json");
        c.query_one("SELECT drip.start($1, $2)", &[&name, &v])
            .await
            .expect("start")
            .get(0)
    }

    pub async fn status(&self, run: i64) -> String {
        self.superuser()
            .await
            .query_one("SELECT status FROM drip.runs WHERE id = $1", &[&run])
            .await
            .expect("status")
            .get(0)
    }

    /// Waits (polling the catalog, with a deadline) until the run has `status`.
    pub async fn wait_status(&self, run: i64, want: &[&str], limit: Duration) -> String {
        let start = Instant::now();
        loop {
            let s = self.status(run).await;
            if want.contains(&s.as_str()) {
                return s;
            }
            assert!(
                start.elapsed() < limit,
                "run {run} is {s}, wanted {want:?} within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Cluster {
    pub fn superuser_conn(&self, db: &str) -> String {
        format!(
            "host={} port={} user={} dbname={}",
            self.host, self.port, self.superuser, db
        )
    }
}

/// The defaults, with this database URL and a free loopback port.
pub fn config(url: &str) -> Config {
    Config {
        database_url: url.to_string(),
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    }
}

/// A dashboard served in-process on a loopback port.
pub struct Server {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    pub async fn start(url: &str, multi_user: bool, read_only: bool) -> Server {
        Server::start_with(Config {
            multi_user,
            read_only,
            ..config(url)
        })
        .await
    }

    pub async fn start_with(config: Config) -> Server {
        let state = AppState::new(config).await.expect("dashboard state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut s = Server {
            addr: listener.local_addr().unwrap(),
            state,
            stop: None,
            task: None,
        };
        s.serve(listener);
        s.wait_listening().await;
        s
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let (tx, rx) = oneshot::channel::<()>();
        let state = Arc::clone(&self.state);
        self.stop = Some(tx);
        self.task = Some(tokio::spawn(async move {
            let _ = drip_dashboard::serve(listener, state, async move {
                let _ = rx.await;
            })
            .await;
        }));
    }

    /// Stops serving: open event streams end, connections close, the port is free.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("server stops within 10 s")
                .expect("server task");
        }
    }

    /// Serves again on the same port with the same state (sessions, LISTEN connection).
    pub async fn restart(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("rebind");
        self.serve(listener);
        self.wait_listening().await;
    }

    async fn wait_listening(&self) {
        // The LISTEN connection is up once it has a backend pid.
        let start = Instant::now();
        while self.state.hub.listener_pid() == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "LISTEN never connected"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

/// Polls `check` until it returns Some, or fails with `what` after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
