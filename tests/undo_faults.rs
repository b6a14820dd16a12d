//! Undo data and drip.revert under faults (issue 19): a run with undo, then its revert, each
//! with its runner SIGKILLed (the postmaster crash-restarts) and the server stopped in immediate
//! mode in the middle. Every row in scope is changed exactly once and saved exactly once; the
//! revert puts every row back to its before-image exactly once, leaves the rows edited or
//! deleted in between alone and reports each of them once. The undo data also survives
//! pg_dump and restore: the revert works in the restored database too.
//!
//! Runs on a throwaway cluster it owns (`target/undo_faults`, see tests/common) and needs the
//! extension installed in the system PostgreSQL 15 (as `cargo pgrx test` or
//! `scripts/test.sh faults` leave it). `#[ignore]`, like tests/faults.rs:
//!
//! ```sh
//! cargo test --test undo_faults -- --ignored --nocapture --test-threads=1
//! ```

mod common;

use std::time::{Duration, Instant};

use common::{kill9, Cluster};
use postgres::Client;

const ROWS: i64 = 20_000;
/// In scope: every id except those ending in 3 (18,000 rows).
const SCOPE: &str = "id % 10 <> 3";
const IN_SCOPE: i64 = 18_000;

fn wait_finished(cluster: &Cluster, db: &str, run: i64, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    let mut client: Option<Client> = None;
    loop {
        assert!(
            Instant::now() < deadline,
            "run {run} did not finish within {timeout:?}"
        );
        let c = client.get_or_insert_with(|| cluster.connect(db));
        match c.query_one("SELECT status FROM drip.runs WHERE id = $1", &[&run]) {
            Ok(row) => {
                let s: String = row.get(0);
                if matches!(s.as_str(), "completed" | "failed" | "stopped") {
                    return s;
                }
            }
            Err(_) => client = None,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGKILL the runner of `db` once it has one (the postmaster then crash-restarts).
fn kill_runner(cluster: &Cluster, db: &str) -> bool {
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        if let Ok(mut c) = std::panic::catch_unwind(|| cluster.connect(db)) {
            if let Ok(rows) = c.query(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'data_drip runner' \
                 AND datname = current_database()",
                &[],
            ) {
                if let Some(r) = rows.first() {
                    kill9(r.get(0));
                    return true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Two runner kills and an immediate stop, spread over the run's first seconds.
fn faults(cluster: &Cluster, db: &str, run: i64) -> usize {
    let mut n = 0;
    for (i, wait_ms) in [300u64, 500, 400].into_iter().enumerate() {
        std::thread::sleep(Duration::from_millis(wait_ms));
        let mut c = cluster.connect(db);
        let status: String = c
            .query_one("SELECT status FROM drip.runs WHERE id = $1", &[&run])
            .map(|r| r.get(0))
            .unwrap_or_default();
        if !matches!(status.as_str(), "enqueued" | "running") {
            break;
        }
        if i < 2 {
            if kill_runner(cluster, db) {
                n += 1;
            }
        } else {
            cluster.stop("immediate");
            cluster.start();
            n += 1;
        }
    }
    n
}

fn one(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// Check the reverted table against the copy taken before the run.
fn check_reverted(c: &mut Client, revert: i64) {
    // Rows edited or deleted after the run: reported once each, left as they are now.
    assert_eq!(
        one(
            c,
            &format!("SELECT count(*) FROM drip.revert_conflicts WHERE run_id = {revert}")
        ),
        40
    );
    assert_eq!(
        one(c, &format!("SELECT count(*) FROM drip.revert_conflicts WHERE run_id = {revert} AND reason = 'changed' AND current->>'v' = 'edited' AND key[1]::int % 1000 = 1")),
        20
    );
    assert_eq!(
        one(c, &format!("SELECT count(*) FROM drip.revert_conflicts WHERE run_id = {revert} AND reason = 'deleted' AND current IS NULL AND key[1]::int % 1000 = 2")),
        20
    );
    assert_eq!(
        one(c, "SELECT count(*) FROM t WHERE v = 'edited' AND n = 1"),
        20
    );
    assert_eq!(one(c, "SELECT count(*) FROM t"), ROWS - 20);
    // Every other row exactly as before the run.
    assert_eq!(
        one(
            c,
            "SELECT count(*) FROM t JOIN original o USING (id) WHERE t::text = o::text"
        ),
        ROWS - 40
    );
    // Each restored row counted once, whatever was killed in between.
    assert_eq!(
        one(
            c,
            &format!("SELECT rows_done FROM drip.runs WHERE id = {revert}")
        ),
        IN_SCOPE - 40
    );
}

#[test]
#[ignore]
fn undo_and_revert_survive_kills_restarts_and_dump_restore() {
    let cluster = Cluster::create("undo_faults");
    cluster.set_preload(true);
    cluster.start();
    let db = "undo_faults";
    let mut admin = cluster.connect("postgres");
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .unwrap();
    drop(admin);
    let mut c = cluster.connect(db);
    c.batch_execute(&format!(
        "CREATE EXTENSION data_drip;
         CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL, n int NOT NULL DEFAULT 0, note text);
         INSERT INTO t (id, v) SELECT g, 'v' || g FROM generate_series(1, {ROWS}) g;
         CREATE TABLE original AS SELECT * FROM t;
         SELECT drip.register('fix', 't', 'SET v = upper(v), n = n + 1', scope => '{SCOPE}',
             batch_size => 100, sleep => '20 milliseconds', undo => true);"
    ))
    .unwrap();
    let run = one(&mut c, "SELECT drip.start('fix')");
    drop(c);
    let n = faults(&cluster, db, run);
    assert_eq!(
        wait_finished(&cluster, db, run, Duration::from_secs(300)),
        "completed"
    );
    println!("run {run}: completed after {n} faults");

    let mut c = cluster.connect(db);
    // Changed exactly once, saved exactly once, with the values it had before.
    assert_eq!(
        one(
            &mut c,
            "SELECT count(*) FROM t WHERE n = 1 AND v = upper('v' || id)"
        ),
        IN_SCOPE
    );
    assert_eq!(
        one(
            &mut c,
            "SELECT count(*) FROM t WHERE n = 0 AND v = 'v' || id"
        ),
        ROWS - IN_SCOPE
    );
    assert_eq!(
        one(
            &mut c,
            &format!(
                "SELECT count(*) FROM drip.undo_rows u JOIN original o ON o.id = u.key[1]::int \
                 WHERE u.run_id = {run} AND u.op = 'update' AND u.before->>'v' = o.v \
                 AND (u.before->>'n')::int = o.n AND u.written->>'v' = upper(o.v)"
            )
        ),
        IN_SCOPE
    );
    assert_eq!(
        one(&mut c, &format!("SELECT rows FROM drip.undo_size({run})")),
        IN_SCOPE
    );

    // Edited and deleted after the run (some rows of every batch range).
    c.batch_execute(
        "UPDATE t SET v = 'edited' WHERE id % 1000 = 1;
         DELETE FROM t WHERE id % 1000 = 2;",
    )
    .unwrap();

    // A dump of this state, restored into another database.
    let dump = cluster.dir.join("undo.dump");
    let out = cluster.pg(
        "pg_dump",
        &[
            "-h",
            cluster.sock().to_str().unwrap(),
            "-p",
            &cluster.port.to_string(),
            "-Fc",
            "-f",
            dump.to_str().unwrap(),
            db,
        ],
    );
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // (The faults restarted the server: a new connection.)
    let mut admin = cluster.connect("postgres");
    admin
        .batch_execute("DROP DATABASE IF EXISTS undo_restored WITH (FORCE)")
        .unwrap();
    admin
        .batch_execute("CREATE DATABASE undo_restored")
        .unwrap();
    let out = cluster.pg(
        "pg_restore",
        &[
            "-h",
            cluster.sock().to_str().unwrap(),
            "-p",
            &cluster.port.to_string(),
            "-d",
            "undo_restored",
            dump.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "pg_restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The revert, under the same faults.
    let revert = one(&mut c, &format!("SELECT drip.revert({run})"));
    drop(c);
    let n = faults(&cluster, db, revert);
    assert_eq!(
        wait_finished(&cluster, db, revert, Duration::from_secs(300)),
        "completed"
    );
    println!("revert {revert}: completed after {n} faults");
    let mut c = cluster.connect(db);
    check_reverted(&mut c, revert);
    assert_eq!(
        one(
            &mut c,
            &format!("SELECT reverted_by FROM drip.runs WHERE id = {run}")
        ),
        revert
    );

    // The restored copy reverts the same way.
    let mut r = cluster.connect("undo_restored");
    assert_eq!(
        one(&mut r, &format!("SELECT rows FROM drip.undo_size({run})")),
        IN_SCOPE
    );
    let revert2 = one(&mut r, &format!("SELECT drip.revert({run})"));
    drop(r);
    assert_eq!(
        wait_finished(&cluster, "undo_restored", revert2, Duration::from_secs(300)),
        "completed"
    );
    let mut r = cluster.connect("undo_restored");
    check_reverted(&mut r, revert2);
}
