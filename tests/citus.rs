//! Citus suite: backfills of Citus tables on a real 3-node cluster, every row exactly once.
//!
//! Each test owns a cluster (tests/common/citus.rs): a coordinator and two workers, separate
//! data directories under `target/citus/TEST/`, loopback ports, trust authentication,
//! `shared_preload_libraries = 'citus,data_drip'`, data_drip created on the coordinator only.
//! The action is deliberately not idempotent (`SET n = n + 1`): every test checks that every row
//! in scope ends with n = 1 (none 0, none 2), that the run completed and that `rows_done` (and
//! the completed batches' rows) equal the row count.
//!
//! Needs Citus 12.1.12 and the extension installed in the PostgreSQL of `DRIP_PG_BIN` (default
//! Debian's 15), and Debian's `gdb` for the one-phase-commit test. `scripts/test.sh citus` does
//! all of that (and skips, saying why, when the Citus sources are absent). The tests are
//! `#[ignore]` so that `cargo pgrx test` does not run them:
//!
//! ```sh
//! cargo test --test citus -- --ignored --nocapture --test-threads=1
//! ```

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::citus::{
    exact, log_lines, runner_pid, start_run, try_connect, wait_finished, wait_until, CitusCluster,
    DB,
};
use common::{kill9, pg_bin, Cluster};

const RUN_TIMEOUT: Duration = Duration::from_secs(240);

fn elapsed(name: &str, t: Instant) {
    println!("TIME {name}: {:.1}s", t.elapsed().as_secs_f64());
}

/// `pg_ctl restart -m immediate` of one node (a crash and recovery).
fn restart_immediate(node: &Cluster) {
    let log = node.dir.join("postgres.log");
    let out = node.pg(
        "pg_ctl",
        &[
            "restart",
            "-m",
            "immediate",
            "-w",
            "-t",
            "60",
            "-D",
            node.data().to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "pg_ctl restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn status_and_done(node: &Cluster, run: i64) -> Option<(String, i64)> {
    let mut c = try_connect(node)?;
    c.query_one(
        "SELECT status, rows_done FROM drip.runs WHERE id = $1",
        &[&run],
    )
    .ok()
    .map(|r| (r.get(0), r.get(1)))
}

/// A hash-distributed table `name (id bigint PRIMARY KEY, n int)` with `rows` rows, analyzed.
fn distributed_table(c: &mut postgres::Client, name: &str, rows: i64, shards: i32, colocate: &str) {
    c.batch_execute(&format!(
        "CREATE TABLE {name} (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0, pad text DEFAULT 'x');
         SELECT create_distributed_table('{name}', 'id', shard_count => {shards}, colocate_with => '{colocate}');
         INSERT INTO {name} (id) SELECT g FROM generate_series(1, {rows}) g;
         ANALYZE {name};"
    ))
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// a. Every kind of table a Citus user has
// ---------------------------------------------------------------------------------------------

const KIND_ROWS: i64 = 30_000;

struct Kind {
    name: &'static str,
    table: &'static str,
    setup: String,
    action: &'static str,
    parallel: i32,
}

fn kinds() -> Vec<Kind> {
    let n = KIND_ROWS;
    let set = "SET n = n + 1";
    vec![
        Kind {
            name: "hash-distributed bigint key, 32 shards",
            table: "k_hash",
            setup: format!(
                "CREATE TABLE k_hash (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0, pad text DEFAULT 'x');
                 SELECT create_distributed_table('k_hash', 'id', shard_count => 32);
                 INSERT INTO k_hash (id) SELECT g FROM generate_series(1, {n}) g;"
            ),
            action: set,
            parallel: 1,
        },
        Kind {
            name: "hash-distributed on a text column",
            table: "k_text",
            setup: format!(
                "CREATE TABLE k_text (code text PRIMARY KEY, n int NOT NULL DEFAULT 0);
                 SELECT create_distributed_table('k_text', 'code', shard_count => 32);
                 INSERT INTO k_text (code) SELECT 'c-' || lpad(g::text, 7, '0') FROM generate_series(1, {n}) g;"
            ),
            action: set,
            parallel: 1,
        },
        Kind {
            name: "composite primary key (tenant_id, id), distributed by tenant_id",
            table: "k_comp",
            setup: format!(
                "CREATE TABLE k_comp (tenant_id int, id bigint, n int NOT NULL DEFAULT 0, PRIMARY KEY (tenant_id, id));
                 SELECT create_distributed_table('k_comp', 'tenant_id', shard_count => 32);
                 INSERT INTO k_comp (tenant_id, id) SELECT g % 97, g FROM generate_series(1, {n}) g;"
            ),
            action: set,
            parallel: 1,
        },
        Kind {
            name: "colocated join action (UPDATE orders ... FROM drip_batch JOIN customers)",
            table: "orders",
            setup: format!(
                "CREATE TABLE customers (id bigint PRIMARY KEY, tier int NOT NULL);
                 SELECT create_distributed_table('customers', 'id', shard_count => 32);
                 CREATE TABLE orders (customer_id bigint, id bigint, n int NOT NULL DEFAULT 0,
                                      PRIMARY KEY (customer_id, id));
                 SELECT create_distributed_table('orders', 'customer_id', colocate_with => 'customers');
                 INSERT INTO customers SELECT g, g % 3 FROM generate_series(1, 1000) g;
                 INSERT INTO orders (customer_id, id) SELECT g % 1000 + 1, g FROM generate_series(1, {n}) g;"
            ),
            action: "UPDATE orders o SET n = o.n + 1 FROM drip_batch b JOIN customers c ON c.id = b.customer_id \
                     WHERE o.customer_id = b.customer_id AND o.id = b.id AND c.tier >= 0",
            parallel: 1,
        },
        Kind {
            name: "single-shard table (create_distributed_table(t, null))",
            table: "k_single",
            setup: format!(
                "CREATE TABLE k_single (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
                 SELECT create_distributed_table('k_single', null);
                 INSERT INTO k_single (id) SELECT g FROM generate_series(1, {n}) g;"
            ),
            action: set,
            parallel: 1,
        },
        Kind {
            name: "schema-based sharding (citus.enable_schema_based_sharding)",
            table: "k_tenant.items",
            setup: format!(
                "SET citus.enable_schema_based_sharding TO on;
                 CREATE SCHEMA k_tenant;
                 RESET citus.enable_schema_based_sharding;
                 CREATE TABLE k_tenant.items (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
                 INSERT INTO k_tenant.items (id) SELECT g FROM generate_series(1, {n}) g;"
            ),
            action: set,
            parallel: 1,
        },
        Kind {
            name: "reference table",
            table: "k_ref",
            setup: format!(
                "CREATE TABLE k_ref (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
                 SELECT create_reference_table('k_ref');
                 INSERT INTO k_ref (id) SELECT g FROM generate_series(1, {n}) g;"
            ),
            action: set,
            parallel: 1,
        },
        Kind {
            name: "Citus local table",
            table: "k_local",
            setup: format!(
                "CREATE TABLE k_local (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
                 SELECT citus_add_local_table_to_metadata('k_local');
                 INSERT INTO k_local (id) SELECT g FROM generate_series(1, {n}) g;"
            ),
            action: set,
            parallel: 1,
        },
        Kind {
            name: "partitioned distributed table (3 partitions, key (id, at))",
            table: "k_part",
            setup: format!(
                "CREATE TABLE k_part (id bigint, at date NOT NULL, n int NOT NULL DEFAULT 0, PRIMARY KEY (id, at))
                     PARTITION BY RANGE (at);
                 CREATE TABLE k_part_1 PARTITION OF k_part FOR VALUES FROM ('2024-01-01') TO ('2024-02-01');
                 CREATE TABLE k_part_2 PARTITION OF k_part FOR VALUES FROM ('2024-02-01') TO ('2024-03-01');
                 CREATE TABLE k_part_3 PARTITION OF k_part FOR VALUES FROM ('2024-03-01') TO ('2024-04-01');
                 SELECT create_distributed_table('k_part', 'id', shard_count => 8);
                 INSERT INTO k_part (id, at) SELECT g, date '2024-01-01' + (g % 90) FROM generate_series(1, {n}) g;"
            ),
            action: set,
            parallel: 1,
        },
        Kind {
            name: "plain table on the coordinator",
            table: "k_plain",
            setup: format!(
                "CREATE TABLE k_plain (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
                 INSERT INTO k_plain (id) SELECT g FROM generate_series(1, {n}) g;"
            ),
            action: set,
            parallel: 1,
        },
        Kind {
            name: "hash-distributed, parallel => 2",
            table: "k_par",
            setup: format!(
                "CREATE TABLE k_par (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
                 SELECT create_distributed_table('k_par', 'id', shard_count => 32);
                 INSERT INTO k_par (id) SELECT g FROM generate_series(1, {n}) g;"
            ),
            action: set,
            parallel: 2,
        },
    ]
}

/// Every table kind, one run each (one after another), batch 1,000, no sleep: every row once.
/// Reports every kind before failing on the first bad one.
#[test]
#[ignore]
fn a_every_table_kind_exactly_once() {
    let t0 = Instant::now();
    let cc = CitusCluster::start("kinds");
    let mut c = cc.connect();
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for (i, k) in kinds().into_iter().enumerate() {
        let t = Instant::now();
        // One statement at a time: a multi-statement string is one transaction, and Citus
        // refuses some DDL after local execution in the same transaction.
        let setup = format!("{}\nANALYZE {};", k.setup, k.table);
        let err = setup
            .split(";\n")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .find_map(|stmt| {
                c.batch_execute(stmt)
                    .err()
                    .map(|e| format!("{stmt}: {e:?}"))
            });
        if let Some(e) = err {
            failures.push(format!("{}: setup failed: {e}", k.name));
            continue;
        }
        let name = format!("kind_{i}");
        let reg = c.execute(
            "SELECT drip.register($1, $2::text::regclass, $3, batch_size => 1000, sleep => '0', max_attempts => 3)",
            &[&name, &k.table, &k.action],
        );
        if let Err(e) = reg {
            failures.push(format!("{}: drip.register refused: {e:?}", k.name));
            continue;
        }
        let run: i64 = match c.query_one(
            "SELECT drip.start($1, parallel => $2)",
            &[&name, &k.parallel],
        ) {
            Ok(r) => r.get(0),
            Err(e) => {
                failures.push(format!("{}: drip.start refused: {e:?}", k.name));
                continue;
            }
        };
        let status = wait_finished(&cc.coord, run, RUN_TIMEOUT);
        let line = match status {
            Err(e) => {
                failures.push(format!("{}: {e}", k.name));
                format!("FAIL {:.1}s {}: {e}", t.elapsed().as_secs_f64(), k.name)
            }
            Ok(_) => {
                let ex = exact(&mut c, k.table, run);
                let p = ex.problems();
                if p.is_empty() {
                    format!(
                        "ok   {:.1}s {}: {} rows, rows_estimated {:?}",
                        t.elapsed().as_secs_f64(),
                        k.name,
                        ex.rows,
                        ex.rows_estimated
                    )
                } else {
                    let batch_errors: Vec<String> = c
                        .query(
                            "SELECT coalesce(sqlstate, '') || ' ' || coalesce(error, '') FROM drip.batches \
                              WHERE run_id = $1 AND error IS NOT NULL LIMIT 3",
                            &[&run],
                        )
                        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
                        .unwrap_or_default();
                    failures.push(format!(
                        "{} (run {run}): {}; batch errors {batch_errors:?}",
                        k.name,
                        p.join("; ")
                    ));
                    format!(
                        "FAIL {:.1}s {}: {}",
                        t.elapsed().as_secs_f64(),
                        k.name,
                        p.join("; ")
                    )
                }
            }
        };
        println!("{line}");
        report.push(line);
    }
    println!("table kinds:\n{}", report.join("\n"));
    elapsed("a_every_table_kind_exactly_once", t0);
    assert!(
        failures.is_empty(),
        "{} of the table kinds failed:\n{}\n--- coordinator log (tail) ---\n{}",
        failures.len(),
        failures.join("\n"),
        cc.coord_log_tail(30)
    );
}

// ---------------------------------------------------------------------------------------------
// b. The one-phase-commit window, with gdb
// ---------------------------------------------------------------------------------------------

/// A gdb Python script: stop the runner where Citus has committed (one-phase) or prepared
/// (two-phase) the transaction's remote work but the coordinator has not yet written its commit
/// record (`XactLogCommitRecord` while Citus's `CurrentCoordinatedTransactionState` is
/// `COORD_TRANS_COMMITTED` or `COORD_TRANS_PREPARED`: the same transaction), check
/// that this transaction's work really is out on the worker (rows committed there, or prepared
/// transactions), and SIGKILL the backend there.
fn gdb_script(cc: &CitusCluster, table: &str) -> String {
    let conn = |n: &Cluster| {
        format!(
            "['-h', '{}', '-p', '{}', '-U', '{}', '-d', '{DB}']",
            n.sock().display(),
            n.port,
            n.user()
        )
    };
    let workers: Vec<String> = cc.workers.iter().map(conn).collect();
    let psql = format!("{}/psql", pg_bin());
    format!(
        r#"
import gdb, subprocess
PSQL = '{psql}'
COORD = {coord}
WORKERS = [{workers}]
def q(args, sql):
    r = subprocess.run([PSQL, '-XAtq', *args, '-c', sql], capture_output=True, text=True, timeout=30)
    return r.stdout.strip()
def done_rows():
    return int(q(COORD, 'SELECT count(*) FROM {table} WHERE n >= 1') or -1)
def prepared():
    return sum(int(q(w, 'SELECT count(*) FROM pg_prepared_xacts') or 0) for w in WORKERS)
def coordinated_state():
    # Citus's state of the transaction's remote work (reading memory; no inferior calls).
    return str(gdb.parse_and_eval('CurrentCoordinatedTransactionState'))
gdb.execute('set pagination off')
gdb.execute('set confirm off')
gdb.execute('set width 0')
gdb.execute('handle SIGUSR1 SIGUSR2 SIGALRM SIGPIPE SIGHUP SIGTERM SIGQUIT SIGINT SIGCHLD SIGURG SIGIO nostop noprint pass')
remote = [gdb.Breakpoint('CoordinatedRemoteTransactionsCommit'), gdb.Breakpoint('CoordinatedRemoteTransactionsPrepare')]
commit = gdb.Breakpoint('XactLogCommitRecord')
commit.enabled = False
killed = False
for i in range(400):
    gdb.execute('continue')
    fn = gdb.selected_frame().name()
    before = done_rows()
    for b in remote: b.enabled = False
    commit.enabled = True
    gdb.execute('continue')
    state = coordinated_state()
    same = state in ('COORD_TRANS_COMMITTED', 'COORD_TRANS_PREPARED')
    after = done_rows()
    prep = prepared()
    print('DRIP-WINDOW %d: %s, then XactLogCommitRecord with Citus state %s, rows done on the workers %d -> %d, prepared on the workers %d' % (i, fn, state, before, after, prep))
    commit.enabled = False
    if same and (after > before or prep > 0):
        print('DRIP-KILL in the window after %s' % fn)
        gdb.execute('bt 25')
        gdb.execute('kill')
        killed = True
        break
    for b in remote: b.enabled = True
if not killed:
    print('DRIP-NO-WINDOW')
    gdb.execute('detach')
"#,
        coord = conn(&cc.coord),
        workers = workers.join(", "),
    )
}

/// The window where Citus has sent COMMIT (or PREPARE) to the worker but the coordinator has not
/// written its commit record: the runner is SIGKILLed there (twice, in two batches' commits).
/// Without two-phase commit (or a cursor that commits with the data on the worker) the batch
/// is done again after the crash and its rows end with n = 2.
#[test]
#[ignore]
fn b_one_phase_commit_window_gdb() {
    let t0 = Instant::now();
    assert!(
        Command::new("gdb").arg("--version").output().is_ok(),
        "gdb not found: as root `apt-get install -y gdb` (scripts/test.sh citus does that)"
    );
    let cc = CitusCluster::start("onepc");
    let mut c = cc.connect();
    c.batch_execute(
        "CREATE TABLE k_1pc (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
         SELECT create_distributed_table('k_1pc', null);
         INSERT INTO k_1pc (id) SELECT g FROM generate_series(1, 20000) g;
         ANALYZE k_1pc;",
    )
    .unwrap();
    let run = start_run(
        &mut c,
        "onepc",
        "k_1pc",
        "SET n = n + 1",
        500,
        "200 milliseconds",
        1,
        "",
    );
    drop(c);
    let script = cc.coord.dir.join("window.py");
    std::fs::write(&script, gdb_script(&cc, "k_1pc")).unwrap();
    let mut windows = 0;
    for round in 1..=2 {
        // A batch or two in, so the runner is in its steady state.
        let q = format!("SELECT rows_done FROM drip.runs WHERE id = {run}");
        let floor = if round == 1 { 500 } else { 0 };
        if wait_until(&cc.coord, &q, |v| v >= floor, Duration::from_secs(60)).is_err() {
            break;
        }
        let Some(pid) = runner_pid(&cc.coord, run, Duration::from_secs(30)) else {
            break;
        };
        let out = Command::new("timeout")
            .args(["-k", "5", "90", "gdb", "-q", "-batch", "-nx"])
            .args(["-iex", "set debuginfod enabled off"])
            .args(["-p", &pid.to_string(), "-x", script.to_str().unwrap()])
            .output()
            .expect("gdb");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        let summary: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("DRIP-") || l.starts_with('#'))
            .collect();
        println!("gdb round {round} on pid {pid}:\n{}", summary.join("\n"));
        if text.contains("DRIP-KILL") {
            windows += 1;
        } else {
            println!("gdb stdout:\n{text}\ngdb stderr:\n{err}");
            if let Some((s, _)) = status_and_done(&cc.coord, run) {
                if s == "completed" {
                    break;
                }
            }
        }
        // The backend is gone: the postmaster restarts every backend; the launcher resumes the run.
        std::thread::sleep(Duration::from_secs(1));
    }
    let status = wait_finished(&cc.coord, run, RUN_TIMEOUT).unwrap();
    let mut c = cc.connect();
    let ex = exact(&mut c, "k_1pc", run);
    println!("one-phase-commit window: {windows} kills in the window, status {status}, {ex:?}");
    elapsed("b_one_phase_commit_window_gdb", t0);
    assert!(
        windows >= 1,
        "gdb never stopped the runner between the remote commit and the coordinator's commit record"
    );
    ex.assert_ok("after SIGKILL in the one-phase-commit window");
}

// ---------------------------------------------------------------------------------------------
// c. The coordinator's runner killed, the coordinator restarted
// ---------------------------------------------------------------------------------------------

/// A run over a 60,000-row, 32-shard table, paced (batches of 500, 50 ms apart); `fault` is
/// injected `times` times, each after at least 1,500 more rows are done and while the run still
/// runs; then every row must be done once.
fn coordinator_faults(test: &str, times: usize, fault: impl Fn(&CitusCluster, i64) -> String) {
    let t0 = Instant::now();
    const ROWS: i64 = 60_000;
    let cc = CitusCluster::start(test);
    let mut c = cc.connect();
    distributed_table(&mut c, "k_ck", ROWS, 32, "default");
    let run = start_run(
        &mut c,
        "ck",
        "k_ck",
        "SET n = n + 1",
        500,
        "50 milliseconds",
        1,
        "",
    );
    drop(c);
    let q = format!("SELECT rows_done FROM drip.runs WHERE id = {run}");
    let mut last = 0;
    for k in 1..=times {
        let floor = last + 1500;
        let v = wait_until(&cc.coord, &q, |v| v >= floor, Duration::from_secs(90))
            .unwrap_or_else(|e| panic!("{test}: before fault {k}: {e}"));
        let (s, _) = status_and_done(&cc.coord, run).unwrap();
        assert_eq!(
            s, "running",
            "{test}: the run must still be running at fault {k} (make it slower)"
        );
        let what = fault(&cc, run);
        println!("{test}: fault {k}: {what} at rows_done {v}");
        last = v;
    }
    let status = wait_finished(&cc.coord, run, RUN_TIMEOUT).unwrap();
    let mut c = cc.connect();
    let ex = exact(&mut c, "k_ck", run);
    println!("{test}: status {status}, {ex:?}");
    elapsed(test, t0);
    if !ex.problems().is_empty() {
        let redone: Vec<String> = c
            .query(
                "SELECT batch_no || ' slice ' || coalesce(slice, -1) || ' (' || coalesce(low_key[1], '-') || ', ' \
                        || high_key[1] || '] attempts ' || attempts || ' ' || coalesce(error, '') \
                   FROM drip.batches WHERE run_id = $1 AND (attempts > 1 OR error IS NOT NULL) ORDER BY batch_no",
                &[&run],
            )
            .map(|rows| rows.iter().map(|r| r.get(0)).collect())
            .unwrap_or_default();
        println!("{test}: batches with more than one attempt: {redone:?}");
    }
    ex.assert_ok(test);
}

/// SIGKILL of the coordinator's runner, three times mid-run (each kill makes the postmaster
/// restart every backend, so every sub-run running at the time dies): every row once.
#[test]
#[ignore]
fn c_coordinator_runner_sigkill() {
    coordinator_faults("c_coordinator_runner_sigkill", 3, |cc, run| {
        let pid = runner_pid(&cc.coord, run, Duration::from_secs(30)).expect("no runner");
        kill9(pid);
        std::thread::sleep(Duration::from_millis(300));
        format!("runner {pid} SIGKILLed")
    });
}

/// `pg_ctl restart -m immediate` of the coordinator, twice mid-run: every row once.
#[test]
#[ignore]
fn c_coordinator_restart_immediate() {
    coordinator_faults("c_coordinator_restart_immediate", 2, |cc, _| {
        restart_immediate(&cc.coord);
        "coordinator restarted (-m immediate)".to_string()
    });
}

// ---------------------------------------------------------------------------------------------
// d. A worker node down for 6 seconds
// ---------------------------------------------------------------------------------------------

/// A worker stopped with `-m immediate` mid-run and started 6 s later: the run holds (never
/// `failed`, `drip.runs.throttled` names the node), then completes, every row once, with the
/// default `max_attempts` (3).
#[test]
#[ignore]
fn d_worker_down_six_seconds() {
    let t0 = Instant::now();
    const ROWS: i64 = 60_000;
    let cc = CitusCluster::start("workerdown");
    let mut c = cc.connect();
    distributed_table(&mut c, "k_wd", ROWS, 32, "default");
    c.execute(
        "SELECT drip.register('wd', 'k_wd', 'SET n = n + 1', batch_size => 500, sleep => '50 milliseconds')",
        &[],
    )
    .unwrap();
    let run: i64 = c.query_one("SELECT drip.start('wd')", &[]).unwrap().get(0);
    let q = format!("SELECT rows_done FROM drip.runs WHERE id = {run}");
    wait_until(&cc.coord, &q, |v| v >= 3000, Duration::from_secs(90)).unwrap();
    let w = &cc.workers[0];
    w.stop("immediate");
    let down = Instant::now();
    println!("worker on port {} stopped (immediate)", w.port);
    let port = w.port.to_string();
    let mut statuses = Vec::new();
    let mut throttled_seen: Vec<String> = Vec::new();
    while down.elapsed() < Duration::from_secs(6) {
        if let Ok(r) = c.query_one(
            "SELECT status, throttled, rows_done FROM drip.runs WHERE id = $1",
            &[&run],
        ) {
            let s: String = r.get(0);
            let t: Option<String> = r.get(1);
            if statuses.last() != Some(&s) {
                statuses.push(s);
            }
            if let Some(t) = t {
                if !throttled_seen.contains(&t) {
                    throttled_seen.push(t);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    w.start();
    println!(
        "worker restarted after {:.1}s",
        down.elapsed().as_secs_f64()
    );
    let status = wait_finished(&cc.coord, run, RUN_TIMEOUT).unwrap();
    let ex = exact(&mut c, "k_wd", run);
    let batch_errors: Vec<String> = c
        .query(
            "SELECT status || ' ' || coalesce(sqlstate, '') || ' ' || coalesce(error, '') FROM drip.batches \
              WHERE run_id = $1 AND error IS NOT NULL ORDER BY batch_no LIMIT 5",
            &[&run],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    println!(
        "worker down: statuses while down {statuses:?}, throttled {throttled_seen:?}, batch errors {batch_errors:?}, final {status}, {ex:?}"
    );
    elapsed("d_worker_down_six_seconds", t0);
    assert!(
        !statuses.iter().any(|s| s == "failed"),
        "the run failed while the worker was down: {statuses:?}; errors {batch_errors:?}; log:\n{}",
        log_lines(&cc.coord, "error", 10).join("\n")
    );
    ex.assert_ok("worker down 6 s");
    assert!(
        throttled_seen.iter().any(|t| t.contains(&port)),
        "drip.runs.throttled never named the worker (port {port}) while it was down: {throttled_seen:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// e. Shard moves, a rebalance and a split mid-run
// ---------------------------------------------------------------------------------------------

/// Starts a run on `table`, waits for some progress, runs `op` (which must finish while the run
/// is still running) and checks every row once.
fn during_run(
    cc: &CitusCluster,
    name: &str,
    table: &str,
    rows: i64,
    op: impl FnOnce(&mut postgres::Client),
) {
    let t = Instant::now();
    let mut c = cc.connect();
    // Slow (batches of 100, 150 ms apart) while the operation runs, fast once it is over.
    let run = start_run(
        &mut c,
        name,
        table,
        "SET n = n + 1",
        100,
        "150 milliseconds",
        1,
        "",
    );
    let q = format!("SELECT rows_done FROM drip.runs WHERE id = {run}");
    wait_until(&cc.coord, &q, |v| v >= rows / 10, Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut admin = cc.connect();
    // A move or split that cannot finish fails the test instead of hanging the suite.
    admin
        .batch_execute("SET statement_timeout = '120s'")
        .unwrap();
    op(&mut admin);
    let (s, done) = status_and_done(&cc.coord, run).unwrap();
    println!("{name}: operation done at rows_done {done} ({s})");
    assert!(
        s == "running" && done < rows,
        "{name}: the run was no longer running when the operation ended ({s}, {done} rows): make it slower"
    );
    c.execute(
        "SELECT drip.alter($1, batch_size => 1000, sleep => '0')",
        &[&run],
    )
    .unwrap();
    let status = wait_finished(&cc.coord, run, RUN_TIMEOUT).unwrap();
    let ex = exact(&mut c, table, run);
    println!(
        "{name}: status {status}, {ex:?} ({:.1}s)",
        t.elapsed().as_secs_f64()
    );
    ex.assert_ok(name);
}

/// `citus_move_shard_placement` (logical replication) of two shards, `citus_rebalance_start`
/// (block_writes) on an imbalanced table, and `citus_split_shard_by_split_points`
/// (block_writes), each mid-run on its own 16-shard table: every row once. (The split is not
/// done through logical replication: here its apply worker sometimes exits with code 1 in a
/// loop and the split waits for ever; the move covers logical replication.)
#[test]
#[ignore]
fn e_move_rebalance_split_mid_run() {
    let t0 = Instant::now();
    const ROWS: i64 = 30_000;
    let cc = CitusCluster::start("moves");
    let (n1, n2) = (cc.node_id(0), cc.node_id(1));
    let mut c = cc.connect();
    for t in ["k_move", "k_reb", "k_split"] {
        distributed_table(&mut c, t, ROWS, 16, "none");
    }
    // The rebalance needs something to do: 6 of k_reb's 8 shards on worker 2 go to worker 1.
    let (p1, p2) = (cc.workers[0].port as i32, cc.workers[1].port as i32);
    let on_w2: Vec<i64> = c
        .query(
            "SELECT s.shardid FROM pg_dist_shard s JOIN pg_dist_placement p USING (shardid)
              WHERE s.logicalrelid = 'k_reb'::regclass
                AND p.groupid = (SELECT groupid FROM pg_dist_node WHERE nodeport = $1)
              ORDER BY s.shardid LIMIT 6",
            &[&p2],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for s in on_w2 {
        c.execute(
            "SELECT citus_move_shard_placement($1, '127.0.0.1', $2, '127.0.0.1', $3, \
             shard_transfer_mode => 'block_writes')",
            &[&s, &p2, &p1],
        )
        .unwrap();
    }
    during_run(&cc, "move", "k_move", ROWS, |a| {
        // Two shards from worker 1 to worker 2, one at a time, logical replication (the default).
        let shards: Vec<i64> = a
            .query(
                "SELECT s.shardid FROM pg_dist_shard s JOIN pg_dist_placement p USING (shardid)
                  WHERE s.logicalrelid = 'k_move'::regclass
                    AND p.groupid = (SELECT groupid FROM pg_dist_node WHERE nodeport = $1)
                  ORDER BY s.shardid LIMIT 2",
                &[&p1],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        for s in shards {
            let t = Instant::now();
            a.execute(
                "SELECT citus_move_shard_placement($1, '127.0.0.1', $2, '127.0.0.1', $3)",
                &[&s, &p1, &p2],
            )
            .unwrap();
            println!("move: shard {s} moved in {:.1}s", t.elapsed().as_secs_f64());
        }
    });
    during_run(&cc, "rebalance", "k_reb", ROWS, |a| {
        let t = Instant::now();
        let job: Option<i64> = a
            .query_one(
                "SELECT citus_rebalance_start(shard_transfer_mode => 'block_writes')",
                &[],
            )
            .unwrap()
            .get(0);
        a.batch_execute("SELECT citus_rebalance_wait()").unwrap();
        let state: String = a
            .query_one(
                "SELECT state::text FROM pg_dist_background_job WHERE job_id = $1",
                &[&job],
            )
            .map(|r| r.get(0))
            .unwrap_or_else(|_| "?".into());
        println!(
            "rebalance: job {job:?} {state} in {:.1}s",
            t.elapsed().as_secs_f64()
        );
        assert!(job.is_some(), "the rebalancer found nothing to move");
        assert_eq!(state, "finished", "rebalance job state");
    });
    during_run(&cc, "split", "k_split", ROWS, |a| {
        let t = Instant::now();
        let r = a
            .query_one(
                "SELECT shardid, ((shardminvalue::bigint + shardmaxvalue::bigint) / 2)::text
                   FROM pg_dist_shard WHERE logicalrelid = 'k_split'::regclass ORDER BY shardid LIMIT 1",
                &[],
            )
            .unwrap();
        let (shard, mid): (i64, String) = (r.get(0), r.get(1));
        a.execute(
            "SELECT citus_split_shard_by_split_points($1, ARRAY[$2], ARRAY[$3::int, $4::int], \
             shard_transfer_mode => 'block_writes')",
            &[&shard, &mid, &n1, &n2],
        )
        .unwrap();
        println!(
            "split: shard {shard} split at {mid} in {:.1}s",
            t.elapsed().as_secs_f64()
        );
    });
    elapsed("e_move_rebalance_split_mid_run", t0);
}

// ---------------------------------------------------------------------------------------------
// f. lock_timeout reaches the workers
// ---------------------------------------------------------------------------------------------

/// A row lock held through the coordinator (on the worker that holds the row), a run with
/// `lock_timeout => '1s'`, `statement_timeout => '30s'`, `max_attempts => 1`: the batch fails
/// with 55P03 after about a second (not 57014 after 30 s). Then the lock goes, the run is
/// retried, and every row is done once.
#[test]
#[ignore]
fn f_lock_timeout_reaches_the_workers() {
    let t0 = Instant::now();
    const ROWS: i64 = 20_000;
    let cc = CitusCluster::start("locktimeout");
    let mut c = cc.connect();
    distributed_table(&mut c, "k_lock", ROWS, 32, "default");
    let mut holder = cc.connect();
    holder
        .batch_execute("BEGIN; SELECT n FROM k_lock WHERE id = 7 FOR UPDATE;")
        .unwrap();
    c.execute(
        "SELECT drip.register('lk', 'k_lock', 'SET n = n + 1', batch_size => 1000, sleep => '0', \
         max_attempts => 1, lock_timeout => '1 second', statement_timeout => '30 seconds')",
        &[],
    )
    .unwrap();
    let started = Instant::now();
    let run: i64 = c.query_one("SELECT drip.start('lk')", &[]).unwrap().get(0);
    let status = wait_finished(&cc.coord, run, Duration::from_secs(120)).unwrap();
    let took = started.elapsed();
    let failed = c
        .query(
            "SELECT coalesce(sqlstate, ''), coalesce(error, ''), \
                    coalesce(extract(epoch FROM duration), -1)::float8 \
               FROM drip.batches WHERE run_id = $1 AND status = 'failed' ORDER BY batch_no",
            &[&run],
        )
        .unwrap();
    let run_err: Option<String> = c
        .query_one("SELECT error FROM drip.runs WHERE id = $1", &[&run])
        .unwrap()
        .get(0);
    let fails: Vec<(String, String, f64)> = failed
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    println!(
        "lock_timeout: run {status} after {:.1}s, failed batches {fails:?}, run error {run_err:?}",
        took.as_secs_f64()
    );
    assert_eq!(status, "failed", "the run must fail (max_attempts 1)");
    let (state, msg, secs) = fails
        .first()
        .cloned()
        .unwrap_or_else(|| panic!("no failed batch recorded; run error {run_err:?}"));
    assert_eq!(
        state, "55P03",
        "the batch must fail on lock_timeout on the worker (got {state}: {msg})"
    );
    assert!(
        (0.5..10.0).contains(&secs),
        "the failing attempt took {secs:.1}s; lock_timeout is 1s"
    );
    assert!(
        took < Duration::from_secs(29),
        "the run took {took:?} to fail: statement_timeout (30s), not lock_timeout"
    );
    holder.batch_execute("COMMIT").unwrap();
    c.query_one("SELECT drip.retry($1)", &[&run]).unwrap();
    let status = wait_finished(&cc.coord, run, RUN_TIMEOUT).unwrap();
    let ex = exact(&mut c, "k_lock", run);
    println!("lock_timeout: after retry {status}, {ex:?}");
    elapsed("f_lock_timeout_reaches_the_workers", t0);
    ex.assert_ok("lock_timeout, then retry");
}

// ---------------------------------------------------------------------------------------------
// g. rows_estimated on a distributed table
// ---------------------------------------------------------------------------------------------

/// MAY FAIL TODAY (issue 17: Citus's planner answers a fixed 100,000 rows for a distributed
/// table): after ANALYZE, `rows_estimated` of a run over a 200,000-row, 32-shard table is within
/// 20% of the real count. The run also completes with every row once.
#[test]
#[ignore]
fn g_rows_estimated_within_20_percent() {
    let t0 = Instant::now();
    const ROWS: i64 = 200_000;
    let cc = CitusCluster::start("estimate");
    let mut c = cc.connect();
    distributed_table(&mut c, "k_est", ROWS, 32, "default");
    let run = start_run(&mut c, "est", "k_est", "SET n = n + 1", 5000, "0", 1, "");
    let status = wait_finished(&cc.coord, run, RUN_TIMEOUT).unwrap();
    let ex = exact(&mut c, "k_est", run);
    println!(
        "estimate: rows_estimated {:?} for {} rows; status {status}, {ex:?}",
        ex.rows_estimated, ex.rows
    );
    elapsed("g_rows_estimated_within_20_percent", t0);
    ex.assert_ok("200k-row distributed table");
    let est = ex.rows_estimated.unwrap_or(-1);
    assert!(
        (est - ROWS).abs() * 5 <= ROWS,
        "rows_estimated {est} is not within 20% of {ROWS}"
    );
}
