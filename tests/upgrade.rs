//! The upgrade path, as a DBA lives it: runs in every state under the released 0.1.0, the new
//! package installed over it while a run is executing, `ALTER EXTENSION data_drip UPDATE`, and
//! then every run goes on and every row is processed exactly once. Finally the upgraded catalog
//! must equal a fresh install of the new version, object by object.
//!
//! Needs two package trees made by `cargo pgrx package` (scripts/test.sh's `upgrade` suite
//! builds them): `DRIP_UPGRADE_OLD` (the v0.1.0 tag) and `DRIP_UPGRADE_NEW` (this tree). They are
//! installed into the PostgreSQL of `DRIP_PG_BIN` (default 15) as a package manager would: files
//! copied, the library replaced by rename, so running processes keep their mapped copy.
//!
//! ```sh
//! scripts/test.sh upgrade
//! ```

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Cluster;
use postgres::Client;

const DESCRIBE: &str = include_str!("sql/describe_extension.sql");

fn package_dir(var: &str) -> PathBuf {
    let dir =
        std::env::var(var).unwrap_or_else(|_| panic!("set {var} (see scripts/test.sh upgrade)"));
    let dir = PathBuf::from(dir);
    assert!(dir.is_dir(), "{var}={} is not a directory", dir.display());
    dir
}

/// Copy every file of a `cargo pgrx package` tree to its absolute path. Shared libraries are
/// written next to their target and renamed over it, as dpkg does: a running backend keeps the
/// old mapping, new processes load the new file.
fn install_package(tree: &Path) {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    let mut files = Vec::new();
    walk(tree, tree, &mut files);
    assert!(!files.is_empty(), "empty package {}", tree.display());
    let sudo = !common::is_root();
    for rel in files {
        let src = tree.join(&rel);
        let dst = Path::new("/").join(&rel);
        let tmp = dst.with_extension("drip-new");
        let run = |args: &[&str]| {
            let mut cmd = if sudo {
                let mut c = Command::new("sudo");
                c.arg("-n");
                c.args(args);
                c
            } else {
                let mut c = Command::new(args[0]);
                c.args(&args[1..]);
                c
            };
            let st = cmd.status().unwrap();
            assert!(st.success(), "{args:?} failed");
        };
        run(&["cp", src.to_str().unwrap(), tmp.to_str().unwrap()]);
        run(&["mv", "-f", tmp.to_str().unwrap(), dst.to_str().unwrap()]);
    }
}

fn describe(c: &mut Client) -> Vec<String> {
    c.query(DESCRIBE, &[])
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

fn wait_status(c: &mut Client, run: i64, want: &[&str], timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let s: String = c
            .query_one("SELECT status FROM drip.runs WHERE id = $1", &[&run])
            .unwrap()
            .get(0);
        if want.contains(&s.as_str()) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "run {run} is {s}, not {want:?}, after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Rows of `table` processed other than once: (never, more than once). `skip` names ids that
/// must stay untouched (element-mode rows that fail on purpose).
fn not_once(c: &mut Client, table: &str, skip: &str) -> (i64, i64) {
    let r = c
        .query_one(
            &format!(
                "SELECT count(*) FILTER (WHERE n = 0 AND NOT ({skip})), \
                        count(*) FILTER (WHERE n > 1 OR (n <> 0 AND ({skip}))) FROM {table}"
            ),
            &[],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

#[test]
#[ignore]
fn upgrade_from_0_1_0_keeps_every_run_and_equals_a_fresh_install() {
    let old = package_dir("DRIP_UPGRADE_OLD");
    let new = package_dir("DRIP_UPGRADE_NEW");
    install_package(&old);

    let cluster = Cluster::create("upgrade");
    cluster.start();
    let mut admin = cluster.connect("postgres");
    admin.batch_execute("CREATE DATABASE up").unwrap();
    admin.batch_execute("CREATE DATABASE fresh").unwrap();
    let mut c = cluster.connect("up");
    c.batch_execute(
        "CREATE EXTENSION data_drip VERSION '0.1.0';
         CREATE TABLE t_done (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         CREATE TABLE t_fail (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         CREATE TABLE t_paused (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         CREATE TABLE t_pending (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         CREATE TABLE t_running (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         CREATE TABLE t_rows (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         CREATE TABLE t_stopped (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         CREATE TABLE fail_flag (divisor int NOT NULL);
         INSERT INTO fail_flag VALUES (0);
         INSERT INTO t_done (id) SELECT generate_series(1, 2000);
         INSERT INTO t_fail (id) SELECT generate_series(1, 2000);
         INSERT INTO t_paused (id) SELECT generate_series(1, 3000);
         INSERT INTO t_pending (id) SELECT generate_series(1, 2000);
         INSERT INTO t_running (id) SELECT generate_series(1, 3000);
         INSERT INTO t_rows (id) SELECT generate_series(1, 1000);
         INSERT INTO t_stopped (id) SELECT generate_series(1, 3000);
         SELECT drip.register('done', 't_done', 'SET n = n + 1', batch_size => 500, sleep => '0');
         SELECT drip.register('fail', 't_fail', 'SET n = n + 1 / (SELECT divisor FROM fail_flag)',
                              batch_size => 500, sleep => '0', max_attempts => 1);
         SELECT drip.register('paused', 't_paused', 'SET n = n + 1', batch_size => 100, sleep => '50 ms');
         SELECT drip.register('pending', 't_pending', 'SET n = n + 1', batch_size => 500, sleep => '0');
         SELECT drip.register('running', 't_running', 'SET n = n + 1', batch_size => 50, sleep => '100 ms');
         SELECT drip.register('rows', 't_rows', 'SET n = n + 1 + 0 / (id % 100)', batch_size => 100,
                              sleep => '0', mode => 'row', on_row_error => 'skip');
         SELECT drip.register('stopped', 't_stopped', 'SET n = n + 1', batch_size => 100, sleep => '50 ms');",
    )
    .unwrap();
    let start = |c: &mut Client, name: &str| -> i64 {
        c.query_one("SELECT drip.start($1)", &[&name])
            .unwrap()
            .get(0)
    };
    let done = start(&mut c, "done");
    let fail = start(&mut c, "fail");
    let rows = start(&mut c, "rows");
    assert_eq!(
        wait_status(&mut c, done, &["completed"], Duration::from_secs(60)),
        "completed"
    );
    assert_eq!(
        wait_status(&mut c, fail, &["failed"], Duration::from_secs(60)),
        "failed"
    );
    assert_eq!(
        wait_status(&mut c, rows, &["completed"], Duration::from_secs(60)),
        "completed"
    );

    let paused = start(&mut c, "paused");
    let stopped = start(&mut c, "stopped");
    // Let both get going, then pause one and stop the other mid-way.
    let deadline = Instant::now() + Duration::from_secs(30);
    while c
        .query_one(
            "SELECT count(*) FROM drip.batches WHERE run_id IN ($1, $2) AND status = 'completed'",
            &[&paused, &stopped],
        )
        .unwrap()
        .get::<_, i64>(0)
        < 6
    {
        assert!(
            Instant::now() < deadline,
            "paused/stopped runs made no progress"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    c.execute("SELECT drip.pause($1)", &[&paused]).unwrap();
    c.execute("SELECT drip.stop($1)", &[&stopped]).unwrap();
    let pending: i64 = c
        .query_one("SELECT drip.start('pending', after => $1)", &[&paused])
        .unwrap()
        .get(0);
    let running = start(&mut c, "running");
    wait_status(&mut c, paused, &["paused"], Duration::from_secs(30));
    wait_status(&mut c, stopped, &["stopped"], Duration::from_secs(30));
    wait_status(&mut c, running, &["running"], Duration::from_secs(30));
    assert_eq!(
        c.query_one("SELECT status FROM drip.runs WHERE id = $1", &[&pending])
            .unwrap()
            .get::<_, String>(0),
        "pending"
    );

    // The package upgrade: new files while the 0.1.0 runner keeps working.
    install_package(&new);
    // A new session loads the new library; on the old catalog it refuses to act, with the fix.
    let mut window = cluster.connect("up");
    let err = window
        .execute("SELECT drip.pause($1)", &[&running])
        .expect_err("the new library must refuse the 0.1.0 catalog");
    let db = err.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "55000", "{db:?}");
    assert!(
        db.hint()
            .unwrap_or_default()
            .contains("ALTER EXTENSION data_drip UPDATE"),
        "{db:?}"
    );
    drop(window);

    let mut u = cluster.connect("up");
    u.batch_execute("ALTER EXTENSION data_drip UPDATE").unwrap();
    let version: String = u
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'data_drip'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(version, "0.3.0");

    // Everything goes on under the new version.
    u.execute("UPDATE fail_flag SET divisor = 1", &[]).unwrap();
    u.execute("SELECT drip.retry($1)", &[&fail]).unwrap();
    u.execute("SELECT drip.resume($1)", &[&paused]).unwrap();
    for run in [running, paused, pending, fail] {
        assert_eq!(
            wait_status(
                &mut u,
                run,
                &["completed", "failed", "stopped"],
                Duration::from_secs(120)
            ),
            "completed",
            "run {run}"
        );
    }
    for (table, skip) in [
        ("t_done", "false"),
        ("t_fail", "false"),
        ("t_paused", "false"),
        ("t_pending", "false"),
        ("t_running", "false"),
        ("t_rows", "id % 100 = 0"),
    ] {
        assert_eq!(
            not_once(&mut u, table, skip),
            (0, 0),
            "{table}: rows not processed exactly once"
        );
    }
    let (errors, stopped_twice): (i64, i64) = {
        let r = u
            .query_one(
                "SELECT (SELECT count(*) FROM drip.row_errors WHERE run_id = $1), \
                        (SELECT count(*) FROM t_stopped WHERE n > 1)",
                &[&rows],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(errors, 10, "row errors of element mode survive the upgrade");
    assert_eq!(stopped_twice, 0);
    // The history written under 0.1.0 is still there.
    let events: i64 = u
        .query_one(
            "SELECT count(*) FROM drip.events WHERE run_id = $1",
            &[&done],
        )
        .unwrap()
        .get(0);
    assert!(events > 2, "events of run {done}: {events}");

    // Upgraded == fresh.
    let mut f = cluster.connect("fresh");
    f.batch_execute("CREATE EXTENSION data_drip").unwrap();
    let fresh = describe(&mut f);
    let upgraded = describe(&mut u);
    let only_fresh: Vec<&String> = fresh.iter().filter(|l| !upgraded.contains(l)).collect();
    let only_upgraded: Vec<&String> = upgraded.iter().filter(|l| !fresh.contains(l)).collect();
    assert!(
        only_fresh.is_empty() && only_upgraded.is_empty(),
        "the upgraded catalog differs from a fresh install\n--- only in a fresh install:\n{}\n--- only after the upgrade:\n{}",
        only_fresh.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"),
        only_upgraded.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"),
    );
    assert!(
        fresh.len() > 100,
        "describe found only {} lines",
        fresh.len()
    );
}
