//! A Citus cluster owned by a test: a coordinator and two workers, each its own `Cluster`
//! (separate data directories under `target/citus/NAME/`, loopback ports, trust authentication),
//! started with `shared_preload_libraries = 'citus,data_drip'` (Citus first), prepared
//! transactions enabled and `wal_level = logical` (shard moves and splits through logical
//! replication; where the server has Debian's `output_plugin_libraries`, `citus` is added to it).
//! `CREATE EXTENSION citus` runs on all three; the coordinator registers itself and both
//! workers; `CREATE EXTENSION data_drip` runs on the coordinator only.
//!
//! Helpers for the tests of tests/citus.rs: running SQL per node, waiting for a run across
//! crash restarts, and the exactly-once check.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use postgres::Client;

use super::{pg_bin, Cluster};

/// The database every test uses (Citus must be created in it on every node).
pub const DB: &str = "postgres";

/// Settings for every node, appended to postgresql.auto.conf.
const NODE_CONF: &str = "shared_preload_libraries = 'citus,data_drip'
max_prepared_transactions = 100
wal_level = logical
max_replication_slots = 16
max_wal_senders = 16
synchronous_commit = off
log_line_prefix = '%m [%p] %q%a '
drip.launcher_interval = 1";

pub struct CitusCluster {
    pub coord: Cluster,
    pub workers: Vec<Cluster>,
}

impl CitusCluster {
    /// Three fresh nodes under `target/citus/NAME`, started and joined.
    pub fn start(name: &str) -> CitusCluster {
        let parent = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join("citus")
            .join(name);
        let coord = Cluster::create_in(&parent, "coord");
        let workers: Vec<Cluster> = (1..=2)
            .map(|i| Cluster::create_in(&parent, &format!("w{i}")))
            .collect();
        let cc = CitusCluster { coord, workers };
        // Debian's 15.20 only lets the libraries named in output_plugin_libraries (default
        // 'pgoutput, test_decoding') be logical decoding output plugins; Citus's non-blocking
        // shard split decodes with its own library. Servers without the setting need nothing.
        let describe = cc.coord.pg("postgres", &["--describe-config"]);
        let plugins = String::from_utf8_lossy(&describe.stdout)
            .lines()
            .any(|l| l.starts_with("output_plugin_libraries\t"));
        for node in cc.nodes() {
            node.set_conf(NODE_CONF);
            if plugins {
                node.set_conf("output_plugin_libraries = 'pgoutput, test_decoding, citus'");
            }
            node.start();
            node.connect(DB)
                .batch_execute("CREATE EXTENSION citus")
                .unwrap_or_else(|e| {
                    panic!(
                        "CREATE EXTENSION citus on port {}: {e}\n(is Citus 12.1.12 installed in {}? scripts/citus.sh)",
                        node.port,
                        pg_bin()
                    )
                });
        }
        let mut c = cc.coord.connect(DB);
        c.execute(
            "SELECT citus_set_coordinator_host('127.0.0.1', $1)",
            &[&(cc.coord.port as i32)],
        )
        .unwrap();
        for w in &cc.workers {
            c.execute(
                "SELECT citus_add_node('127.0.0.1', $1)",
                &[&(w.port as i32)],
            )
            .unwrap();
        }
        c.batch_execute("CREATE EXTENSION data_drip").unwrap();
        cc
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Cluster> {
        std::iter::once(&self.coord).chain(self.workers.iter())
    }

    pub fn connect(&self) -> Client {
        self.coord.connect(DB)
    }

    /// Citus's node id of worker `i` (0 or 1).
    pub fn node_id(&self, i: usize) -> i32 {
        self.connect()
            .query_one(
                "SELECT nodeid FROM pg_dist_node WHERE nodeport = $1",
                &[&(self.workers[i].port as i32)],
            )
            .unwrap()
            .get(0)
    }

    /// The coordinator's server log (for failure messages).
    pub fn coord_log_tail(&self, lines: usize) -> String {
        log_tail(&self.coord, lines)
    }
}

pub fn log_tail(node: &Cluster, lines: usize) -> String {
    let text = std::fs::read_to_string(node.dir.join("postgres.log")).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The lines of a node's log that mention `needle` (case-insensitive), at most `max`.
pub fn log_lines(node: &Cluster, needle: &str, max: usize) -> Vec<String> {
    let text = std::fs::read_to_string(node.dir.join("postgres.log")).unwrap_or_default();
    let n = needle.to_ascii_lowercase();
    text.lines()
        .filter(|l| l.to_ascii_lowercase().contains(&n))
        .take(max)
        .map(str::to_string)
        .collect()
}

/// Register backfill `name` on `table` and start it; returns the run id.
#[allow(clippy::too_many_arguments)]
pub fn start_run(
    c: &mut Client,
    name: &str,
    table: &str,
    action: &str,
    batch: i32,
    sleep: &str,
    parallel: i32,
    extra_start: &str,
) -> i64 {
    c.execute(
        "SELECT drip.register($1, $2::text::regclass, $3, batch_size => $4, \
         sleep => $5::text::interval, max_attempts => 3)",
        &[&name, &table, &action, &batch, &sleep],
    )
    .unwrap_or_else(|e| panic!("drip.register {name} on {table}: {e:?}"));
    c.query_one(
        &format!("SELECT drip.start($1, parallel => $2{extra_start})"),
        &[&name, &parallel],
    )
    .unwrap_or_else(|e| panic!("drip.start {name}: {e:?}"))
    .get(0)
}

/// Status of `run` once it is completed, failed or stopped; reconnects across restarts.
pub fn wait_finished(node: &Cluster, run: i64, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let mut client: Option<Client> = None;
    loop {
        if Instant::now() > deadline {
            let last = client
                .as_mut()
                .and_then(|c| {
                    c.query_one(
                        "SELECT status || ' rows_done=' || rows_done || ' throttled=' || coalesce(throttled, '-') \
                         || ' error=' || coalesce(error, '-') FROM drip.runs WHERE id = $1",
                        &[&run],
                    )
                    .ok()
                })
                .map(|r| r.get::<_, String>(0))
                .unwrap_or_default();
            return Err(format!(
                "run {run} did not finish within {timeout:?} ({last})"
            ));
        }
        if client.is_none() {
            client = try_connect(node);
        }
        if let Some(c) = client.as_mut() {
            match c.query_one("SELECT status FROM drip.runs WHERE id = $1", &[&run]) {
                Ok(row) => {
                    let s: String = row.get(0);
                    if matches!(s.as_str(), "completed" | "failed" | "stopped") {
                        return Ok(s);
                    }
                }
                Err(_) => client = None,
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A connection, or None while the node does not accept one (restarting).
pub fn try_connect(node: &Cluster) -> Option<Client> {
    postgres::Config::new()
        .host_path(node.sock())
        .port(node.port)
        .user(&node.user())
        .dbname(DB)
        .connect_timeout(Duration::from_secs(2))
        .connect(postgres::NoTls)
        .ok()
}

/// Poll `query` (one bigint column, one row) on the coordinator until `pred` holds.
pub fn wait_until(
    node: &Cluster,
    query: &str,
    pred: impl Fn(i64) -> bool,
    timeout: Duration,
) -> Result<i64, String> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(mut c) = try_connect(node) {
            if let Ok(r) = c.query_one(query, &[]) {
                let v: Option<i64> = r.get(0);
                if let Some(v) = v {
                    if pred(v) {
                        return Ok(v);
                    }
                    last = Some(v);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "timed out after {timeout:?} on `{query}` (last value {last:?})"
    ))
}

/// The run's runner backend: `drip.runs.worker_pid`, else a `data_drip runner` backend.
pub fn runner_pid(node: &Cluster, run: i64, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(mut c) = try_connect(node) {
            if let Ok(r) = c.query_one(
                "SELECT coalesce((SELECT worker_pid FROM drip.runs WHERE id = $1 AND status = 'running'), \
                        (SELECT pid FROM pg_stat_activity WHERE backend_type = 'data_drip runner' LIMIT 1))",
                &[&run],
            ) {
                if let Some(pid) = r.get::<_, Option<i32>>(0) {
                    return Some(pid);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// What the exactly-once check saw.
#[derive(Debug)]
pub struct Exact {
    pub rows: i64,
    pub zero: i64,
    pub twice: i64,
    pub ones: i64,
    pub status: String,
    pub rows_done: i64,
    pub batch_rows: i64,
    pub rows_estimated: Option<i64>,
    pub error: Option<String>,
}

impl Exact {
    /// Every row of `table` has n = 1, the run completed and counted each row once.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.status != "completed" {
            p.push(format!(
                "status {} (error: {})",
                self.status,
                self.error.as_deref().unwrap_or("-")
            ));
        }
        if self.zero != 0 {
            p.push(format!("{} rows never done (n = 0)", self.zero));
        }
        if self.twice != 0 {
            p.push(format!("{} rows done more than once (n > 1)", self.twice));
        }
        if self.ones != self.rows {
            p.push(format!("{} of {} rows have n = 1", self.ones, self.rows));
        }
        if self.rows_done != self.rows {
            p.push(format!(
                "rows_done {} != {} rows",
                self.rows_done, self.rows
            ));
        }
        if self.batch_rows != self.rows {
            p.push(format!(
                "completed batches count {} rows, the table has {}",
                self.batch_rows, self.rows
            ));
        }
        p
    }

    pub fn assert_ok(&self, what: &str) {
        let p = self.problems();
        assert!(p.is_empty(), "{what}: {} ({self:?})", p.join("; "));
    }
}

/// Count `table`'s rows by `n` and read the run's totals.
pub fn exact(c: &mut Client, table: &str, run: i64) -> Exact {
    let r = c
        .query_one(
            &format!(
                "SELECT count(*), count(*) FILTER (WHERE n = 0), count(*) FILTER (WHERE n > 1), \
                        count(*) FILTER (WHERE n = 1) FROM {table}"
            ),
            &[],
        )
        .unwrap();
    let run_row = c
        .query_one(
            "SELECT status, rows_done, rows_estimated, error, \
                    (SELECT coalesce(sum(rows), 0)::bigint FROM drip.batches \
                      WHERE run_id = $1 AND status = 'completed') \
               FROM drip.runs WHERE id = $1",
            &[&run],
        )
        .unwrap();
    Exact {
        rows: r.get(0),
        zero: r.get(1),
        twice: r.get(2),
        ones: r.get(3),
        status: run_row.get(0),
        rows_done: run_row.get(1),
        rows_estimated: run_row.get(2),
        error: run_row.get(3),
        batch_rows: run_row.get(4),
    }
}
