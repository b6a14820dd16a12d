//! Live tests: committed data, the real scheduler and runners, and an autocommit client.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use postgres::Client;

mod bad_input;
mod control;
mod edges;
mod engine;
mod events;
mod features;
mod preview;
mod private_events;
mod resilience;
mod security;
mod tuning;
mod undo;

/// Live tests share one database and the `drip.max_runs` slots, so they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

pub struct Db {
    pub c: Client,
    _serial: MutexGuard<'static, ()>,
}

/// Poll `sql` (one bigint) every 20 ms until it is at least `at_least`; panics with `what`
/// after `timeout`. Returns the value reached.
pub fn poll_until(c: &mut Client, sql: &str, at_least: i64, timeout: Duration, what: &str) -> i64 {
    let deadline = Instant::now() + timeout;
    loop {
        let v: i64 = c
            .query_one(sql, &[])
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0);
        if v >= at_least {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Boot the test cluster (once per test binary) and connect.
pub fn db() -> Db {
    let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    pgrx_tests::run_test("boot", None, crate::pg_test::postgresql_conf_options())
        .expect("test cluster boots");
    Db {
        c: connect(),
        _serial: serial,
    }
}

/// Another connection to the test database.
pub fn connect() -> Client {
    pgrx_tests::client().expect("connect to test cluster").0
}

/// A connection to another database of the test cluster, as the test superuser.
pub fn connect_db(name: &str) -> Client {
    let mut admin = connect();
    let (port, user): (String, String) = {
        let r = admin
            .query_one("SELECT current_setting('port'), current_user::text", &[])
            .unwrap();
        (r.get(0), r.get(1))
    };
    postgres::Config::new()
        .host("localhost")
        .port(port.parse().expect("port"))
        .user(&user)
        .dbname(name)
        .connect(postgres::NoTls)
        .unwrap_or_else(|e| panic!("connect to {name}: {e}"))
}

/// A connection to the test database as `role` (a LOGIN role; the test cluster trusts local
/// connections).
pub fn connect_as(role: &str) -> Client {
    let mut admin = connect();
    let port: String = admin
        .query_one("SELECT current_setting('port')", &[])
        .unwrap()
        .get(0);
    let db: String = admin
        .query_one("SELECT current_database()::text", &[])
        .unwrap()
        .get(0);
    postgres::Config::new()
        .host("localhost")
        .port(port.parse().expect("port"))
        .user(role)
        .dbname(&db)
        .connect(postgres::NoTls)
        .unwrap_or_else(|e| panic!("connect as {role}: {e}"))
}

impl Db {
    pub fn exec(&mut self, sql: &str) {
        self.c
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    pub fn i64(&mut self, sql: &str) -> i64 {
        self.c
            .query_one(sql, &[])
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }

    pub fn text(&mut self, sql: &str) -> String {
        self.c
            .query_one(sql, &[])
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }

    pub fn status(&mut self, run: i64) -> String {
        self.c
            .query_one("SELECT status FROM drip.runs WHERE id = $1", &[&run])
            .expect("run exists")
            .get(0)
    }

    /// Poll until the run has one of `statuses`; panics after `timeout`.
    pub fn wait_for(&mut self, run: i64, statuses: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status(run);
            if statuses.contains(&s.as_str()) {
                return s;
            }
            if Instant::now() > deadline {
                let err: Option<String> = self
                    .c
                    .query_one(
                        "SELECT last_error FROM drip.progress WHERE run_id = $1",
                        &[&run],
                    )
                    .ok()
                    .and_then(|r| r.get(0));
                panic!(
                    "run {run} is {s}, not {statuses:?}, after {timeout:?} (last error: {err:?})"
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// `poll_until` on this connection.
    pub fn wait_until(&mut self, sql: &str, at_least: i64, timeout: Duration, what: &str) -> i64 {
        poll_until(&mut self.c, sql, at_least, timeout, what)
    }

    pub fn wait_done(&mut self, run: i64) -> String {
        self.wait_for(
            run,
            &["completed", "failed", "stopped"],
            Duration::from_secs(60),
        )
    }

    /// Start a run in autocommit and return its id.
    pub fn start(&mut self, sql: &str) -> i64 {
        self.i64(sql)
    }

    /// The SQLSTATE of the error `sql` raises (panics if it succeeds).
    pub fn sqlstate(&mut self, sql: &str) -> String {
        match self.c.batch_execute(sql) {
            Ok(()) => panic!("expected an error from: {sql}"),
            Err(e) => e
                .code()
                .map(|c| c.code().to_string())
                .unwrap_or_else(|| format!("no code: {e}")),
        }
    }
}
