//! Fault-injection suite: every row in scope is processed exactly once, whatever happens.
//!
//! Runs on a throwaway cluster it owns (`target/faults`, loopback, its own socket directory;
//! started as `postgres` when run as root) and stops it at the end, whatever happens. The action
//! is deliberately not idempotent (`SET n = n + 1`) so a redone or skipped row shows up.
//!
//! Needs the extension installed in the system PostgreSQL 15 (`scripts/test.sh faults` does
//! that). The tests are `#[ignore]` so that `cargo pgrx test` does not run them:
//!
//! ```sh
//! cargo test --test faults -- --ignored --nocapture --test-threads=1
//! ```
//!
//! Set `FAULT_SEED` to replay the random fault timings of an earlier run.

mod common;

use std::time::{Duration, Instant};

use common::{kill9, Cluster};
use postgres::Client;
const ROWS: i64 = 200_000;
const BATCH: i64 = 500;
/// In scope: every id except those ending in 3 (180,000 rows).
const SCOPE: &str = "id % 10 <> 3";

// ---------------------------------------------------------------------------------------------
// Randomness (reproducible with FAULT_SEED)
// ---------------------------------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        println!("fault seed: {seed} (replay with FAULT_SEED={seed})");
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }
}

// ---------------------------------------------------------------------------------------------
// Scenario plumbing
// ---------------------------------------------------------------------------------------------

/// Create database `db` with the extension and the counted table, register `action`.
fn setup(cluster: &Cluster, db: &str, action: &str, extra_sql: &str) -> i64 {
    setup_parallel(cluster, db, action, extra_sql, 1, SLEEP)
}

/// The sleep between batches of most scenarios.
const SLEEP: &str = "10 milliseconds";

/// `setup`, starting the run with `parallel` slices and `sleep` between batches (with none, each
/// batch is marked in the commit of the previous batch's work).
fn setup_parallel(
    cluster: &Cluster,
    db: &str,
    action: &str,
    extra_sql: &str,
    parallel: i32,
    sleep: &str,
) -> i64 {
    let mut admin = cluster.connect("postgres");
    // Two calls: DROP/CREATE DATABASE refuse a multi-statement (implicit transaction) string.
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .unwrap();
    let mut c = cluster.connect(db);
    c.batch_execute(&format!(
        "CREATE EXTENSION data_drip;
         CREATE TABLE counted (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO counted (id) SELECT g FROM generate_series(1, {ROWS}) g;
         ANALYZE counted;
         {extra_sql}"
    ))
    .unwrap();
    c.execute(
        "SELECT drip.register('count', 'counted', $1, scope => $2, batch_size => $3::int, \
         sleep => $4::text::interval, max_attempts => 3)",
        &[&action, &SCOPE, &(BATCH as i32), &sleep],
    )
    .unwrap();
    c.query_one("SELECT drip.start('count', parallel => $1)", &[&parallel])
        .unwrap()
        .get(0)
}

/// Poll the run's status, reconnecting across restarts, until it is one of `done` statuses.
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

/// Status of the run, or None while the server is unreachable.
fn status(cluster: &Cluster, db: &str, run: i64) -> Option<String> {
    let mut c = cluster.connect(db);
    c.query_one("SELECT status FROM drip.runs WHERE id = $1", &[&run])
        .ok()
        .map(|r| r.get(0))
}

/// The runner's pid, once it has one.
fn runner_pid(cluster: &Cluster, db: &str, deadline: Duration) -> Option<i32> {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if let Ok(mut c) = std::panic::catch_unwind(|| cluster.connect(db)) {
            if let Ok(rows) = c.query(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'data_drip runner'",
                &[],
            ) {
                if let Some(r) = rows.first() {
                    return Some(r.get(0));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

struct Report {
    rows: i64,
    duplicates: i64,
    missing: i64,
    outside_changed: i64,
    completed_batches: i64,
    gaps: i64,
    overlaps: i64,
    rows_done: i64,
    batch_rows: i64,
    changed: i64,
    /// Batch attempts cut short by a dead worker (recorded as `interrupted` and redone).
    interrupted: i64,
    status: String,
}

/// Check every invariant. `done_up_to`: for a run meant to fail, the last key whose row must be
/// done (rows above it must be untouched); None for a run that must complete.
fn verify(cluster: &Cluster, db: &str, run: i64, done_up_to: Option<i64>) -> Report {
    let mut c = cluster.connect(db);
    let limit = done_up_to.unwrap_or(ROWS);
    let r = c
        .query_one(
            &format!(
                "SELECT count(*),
                    count(*) FILTER (WHERE {SCOPE} AND n > 1),
                    count(*) FILTER (WHERE {SCOPE} AND id <= $1 AND n = 0),
                    count(*) FILTER (WHERE NOT ({SCOPE}) AND n <> 0)
                        + count(*) FILTER (WHERE {SCOPE} AND id > $1 AND n <> 0),
                    count(*) FILTER (WHERE n = 1)
                 FROM counted"
            ),
            &[&(limit as i32)],
        )
        .unwrap();
    let b = c
        .query_one(
            "WITH c AS (SELECT low_key[1]::int AS lo, high_key[1]::int AS hi, rows
                          FROM drip.batches WHERE run_id = $1 AND status = 'completed'),
                  o AS (SELECT *, lag(hi) OVER (ORDER BY hi) AS prev_hi FROM c)
             SELECT count(*),
                    count(*) FILTER (WHERE lo IS DISTINCT FROM prev_hi AND (lo IS NULL OR prev_hi IS NULL OR lo > prev_hi)),
                    count(*) FILTER (WHERE lo < prev_hi OR (lo IS NULL AND prev_hi IS NOT NULL)),
                    coalesce(sum(rows), 0)::bigint,
                    (SELECT count(*) FROM drip.batches WHERE run_id = $1 AND error = 'interrupted')
             FROM o",
            &[&run],
        )
        .unwrap();
    let run_row = c
        .query_one(
            "SELECT status, rows_done FROM drip.runs WHERE id = $1",
            &[&run],
        )
        .unwrap();
    Report {
        rows: r.get(0),
        duplicates: r.get(1),
        missing: r.get(2),
        outside_changed: r.get(3),
        changed: r.get(4),
        completed_batches: b.get(0),
        gaps: b.get(1),
        overlaps: b.get(2),
        batch_rows: b.get(3),
        interrupted: b.get(4),
        status: run_row.get(0),
        rows_done: run_row.get(1),
    }
}

fn assert_report(name: &str, faults: usize, rep: &Report, want_status: &str) {
    println!(
        "scenario {name}: faults injected {faults}, rows checked {}, duplicates {}, missing {}, \
         outside scope changed {}, completed batches {} (gaps {}, overlaps {}), interrupted batches redone {}, \
         rows_done {}, status {}",
        rep.rows, rep.duplicates, rep.missing, rep.outside_changed, rep.completed_batches, rep.gaps,
        rep.overlaps, rep.interrupted, rep.rows_done, rep.status
    );
    assert_eq!(rep.status, want_status, "{name}: final status");
    assert_eq!(rep.duplicates, 0, "{name}: rows processed twice");
    assert_eq!(rep.missing, 0, "{name}: rows skipped");
    assert_eq!(
        rep.outside_changed, 0,
        "{name}: rows outside the scope or past the failure changed"
    );
    assert_eq!(rep.gaps, 0, "{name}: completed batches are not contiguous");
    assert_eq!(rep.overlaps, 0, "{name}: completed batches overlap");
    assert_eq!(
        rep.rows_done, rep.changed,
        "{name}: rows_done differs from the rows changed"
    );
    assert_eq!(
        rep.batch_rows, rep.changed,
        "{name}: batch rows differ from the rows changed"
    );
}

/// Run one scenario: `fault` is called `count` times at random moments while the run is active
/// and returns whether it injected something.
fn scenario(
    cluster: &Cluster,
    rng: &mut Rng,
    name: &str,
    count: usize,
    fault: impl FnMut(&Cluster, &str) -> bool,
    after_fault: impl Fn(&Cluster, &str),
) {
    scenario_parallel(cluster, rng, name, count, 1, fault, after_fault)
}

/// `scenario` with the run split into `parallel` slices, each with its own worker.
#[allow(clippy::too_many_arguments)]
fn scenario_parallel(
    cluster: &Cluster,
    rng: &mut Rng,
    name: &str,
    count: usize,
    parallel: i32,
    fault: impl FnMut(&Cluster, &str) -> bool,
    after_fault: impl Fn(&Cluster, &str),
) {
    scenario_with(
        cluster,
        rng,
        name,
        count,
        parallel,
        SLEEP,
        fault,
        after_fault,
    );
}

/// `scenario` with no sleep between batches: each batch is marked in the same commit as the
/// previous batch's work. A fault lands while a batch is in flight, and its marker must have
/// been durable: the interrupted attempt is on record.
fn scenario_no_sleep(
    cluster: &Cluster,
    rng: &mut Rng,
    name: &str,
    count: usize,
    fault: impl FnMut(&Cluster, &str) -> bool,
) {
    let rep = scenario_with(cluster, rng, name, count, 1, "0", fault, nothing);
    assert!(
        rep.interrupted >= 1,
        "{name}: no interrupted attempt was recorded"
    );
}

#[allow(clippy::too_many_arguments)]
fn scenario_with(
    cluster: &Cluster,
    rng: &mut Rng,
    name: &str,
    count: usize,
    parallel: i32,
    sleep: &str,
    mut fault: impl FnMut(&Cluster, &str) -> bool,
    after_fault: impl Fn(&Cluster, &str),
) -> Report {
    let db = format!("f_{name}");
    // The uncorrelated sub-select runs once per batch: ~20 ms of work per batch, so most faults
    // land while a batch is in flight rather than in the 10 ms sleep between batches.
    let run = setup_parallel(
        cluster,
        &db,
        "SET n = n + 1 + (SELECT 0 FROM pg_sleep(0.02))",
        "",
        parallel,
        sleep,
    );
    let mut injected = 0;
    for _ in 0..count {
        std::thread::sleep(rng.millis(300, 1200));
        if status(cluster, &db, run).as_deref() == Some("completed") {
            break;
        }
        if fault(cluster, &db) {
            injected += 1;
            after_fault(cluster, &db);
        }
    }
    assert!(
        injected > 0,
        "{name}: the run finished before any fault landed"
    );
    assert_eq!(
        wait_finished(cluster, &db, run, Duration::from_secs(180)),
        "completed",
        "{name}"
    );
    let rep = verify(cluster, &db, run, None);
    assert_report(name, injected, &rep, "completed");
    // One completed batch per key range (slices may cut a batch in two at their borders).
    let expected = ROWS / BATCH;
    assert!(
        (expected..expected + parallel as i64).contains(&rep.completed_batches),
        "{name}: {} completed batches for {expected} key ranges",
        rep.completed_batches
    );
    rep
}

// ---------------------------------------------------------------------------------------------
// The scenarios
// ---------------------------------------------------------------------------------------------

fn kill_runner(cluster: &Cluster, db: &str) -> bool {
    match runner_pid(cluster, db, Duration::from_secs(20)) {
        Some(pid) => {
            kill9(pid);
            true
        }
        None => false,
    }
}

fn kill_backend(cluster: &Cluster, db: &str) -> bool {
    // An ordinary client backend, busy in a long sleep: SIGKILL makes the postmaster crash-restart.
    let mut c = cluster.connect(db);
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let handle = std::thread::spawn(move || {
        let _ = c.batch_execute("SELECT pg_sleep(60)");
    });
    std::thread::sleep(Duration::from_millis(50));
    kill9(pid);
    let _ = handle.join();
    true
}

fn immediate_restart(cluster: &Cluster, _db: &str) -> bool {
    cluster.stop("immediate");
    cluster.start();
    true
}

fn fast_restart(cluster: &Cluster, _db: &str) -> bool {
    // A clean shutdown: the runner gets SIGTERM and its batch in flight rolls back.
    cluster.stop("fast");
    cluster.start();
    true
}

fn terminate_runner(cluster: &Cluster, db: &str) -> bool {
    let Some(pid) = runner_pid(cluster, db, Duration::from_secs(20)) else {
        return false;
    };
    let mut c = cluster.connect(db);
    c.query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .is_ok()
}

/// Without preload nothing resumes a run after a restart until a drip.* call commits.
fn poke_with_a_drip_call(cluster: &Cluster, db: &str) {
    let mut c = cluster.connect(db);
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS poke (id int PRIMARY KEY);
         SELECT drip.register('poke', 'poke', 'DELETE', replace => true);",
    )
    .unwrap();
}

/// After a restart without preload, a deploy script's `drip.wait` alone must get the run going
/// again (it starts the recovery itself); here it gives up after a moment, as a timeout.
fn poke_with_wait(cluster: &Cluster, db: &str) {
    let mut c = cluster.connect(db);
    let run: i64 = c
        .query_one(
            "SELECT max(id) FROM drip.runs WHERE backfill = 'count'",
            &[],
        )
        .unwrap()
        .get(0);
    match c.batch_execute(&format!("SELECT drip.wait({run}, '300 milliseconds')")) {
        Ok(()) => {}
        Err(e) => assert_eq!(e.code().map(|c| c.code()), Some("57014"), "{e}"),
    }
}

fn nothing(_: &Cluster, _: &str) {}

#[test]
#[ignore = "fault-injection suite: run by scripts/test.sh faults"]
fn fault_injection_suite() {
    let mut rng = Rng::new();
    let cluster = Cluster::create("faults");

    // With shared_preload_libraries: the launcher resumes runs after crashes and restarts.
    cluster.set_preload(true);
    cluster.start();
    scenario(
        &cluster,
        &mut rng,
        "sigkill_worker",
        3,
        kill_runner,
        nothing,
    );
    scenario(
        &cluster,
        &mut rng,
        "sigkill_backend",
        3,
        kill_backend,
        nothing,
    );
    scenario(
        &cluster,
        &mut rng,
        "immediate_stop",
        3,
        immediate_restart,
        nothing,
    );
    scenario(&cluster, &mut rng, "fast_restart", 2, fast_restart, nothing);
    scenario(
        &cluster,
        &mut rng,
        "terminate_worker",
        4,
        terminate_runner,
        nothing,
    );
    scenario_parallel(
        &cluster,
        &mut rng,
        "sigkill_worker_parallel",
        3,
        2,
        kill_runner,
        nothing,
    );
    scenario_parallel(
        &cluster,
        &mut rng,
        "terminate_worker_parallel",
        4,
        3,
        terminate_runner,
        nothing,
    );
    scenario_no_sleep(
        &cluster,
        &mut rng,
        "sigkill_worker_no_sleep",
        3,
        kill_runner,
    );
    scenario_no_sleep(
        &cluster,
        &mut rng,
        "immediate_stop_no_sleep",
        2,
        immediate_restart,
    );
    crash_loop(&cluster);
    replaced_extension_is_left_alone(&cluster, true);
    replaced_extension_is_left_alone(&cluster, false);
    cluster.stop("fast");

    // Without preload: the scheduler survives pg_terminate_backend of a runner; after a restart
    // the next drip.* call resumes the run.
    cluster.set_preload(false);
    cluster.start();
    scenario(
        &cluster,
        &mut rng,
        "terminate_worker_no_preload",
        4,
        terminate_runner,
        nothing,
    );
    scenario(
        &cluster,
        &mut rng,
        "immediate_stop_no_preload",
        2,
        immediate_restart,
        poke_with_a_drip_call,
    );
    scenario(
        &cluster,
        &mut rng,
        "immediate_stop_no_preload_wait",
        2,
        immediate_restart,
        poke_with_wait,
    );
    transient_failures(&cluster);
    permanent_failure(&cluster);
    paused_run_stays_paused_across_restart(&cluster);
}

/// The first attempt of five batches raises; each is retried once and the run completes.
fn transient_failures(cluster: &Cluster) {
    let name = "transient_failure";
    let db = format!("f_{name}");
    let run = setup(
        cluster,
        &db,
        "SET n = n + flaky(id)",
        "CREATE SEQUENCE flaky_calls;
         CREATE FUNCTION flaky(k int) RETURNS int LANGUAGE plpgsql AS $$
         BEGIN
             -- nextval survives the rollback: odd calls (first attempts) fail, even ones pass.
             IF k % 40000 = 17 AND nextval('flaky_calls') % 2 = 1 THEN
                 RAISE EXCEPTION 'transient failure at %', k USING ERRCODE = '40001';
             END IF;
             RETURN 1;
         END $$;",
    );
    assert_eq!(
        wait_finished(cluster, &db, run, Duration::from_secs(180)),
        "completed"
    );
    let rep = verify(cluster, &db, run, None);
    assert_report(name, 5, &rep, "completed");
    let mut c = cluster.connect(&db);
    let retried: i64 = c
        .query_one(
            "SELECT count(*) FROM drip.batches WHERE run_id = $1 AND status = 'completed' AND attempts = 2 AND sqlstate = '40001'",
            &[&run],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        retried, 5,
        "{name}: each flaky batch failed once and then completed"
    );
    assert_eq!(rep.completed_batches, ROWS / BATCH);
}

/// A row that always fails: the run ends failed at that batch, nothing past it is touched, and
/// everything before it is done exactly once.
fn permanent_failure(cluster: &Cluster) {
    let name = "permanent_failure";
    let db = format!("f_{name}");
    let run = setup(
        cluster,
        &db,
        "SET n = n + 1 / (CASE WHEN id = 100001 THEN 0 ELSE 1 END)",
        "",
    );
    assert_eq!(
        wait_finished(cluster, &db, run, Duration::from_secs(180)),
        "failed"
    );
    let rep = verify(cluster, &db, run, Some(100_000));
    assert_report(name, 1, &rep, "failed");
    let mut c = cluster.connect(&db);
    let (attempts, state): (i32, String) = c
        .query_one(
            "SELECT attempts, sqlstate FROM drip.batches WHERE run_id = $1 AND status = 'failed'",
            &[&run],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(
        (attempts, state.as_str()),
        (3, "22012"),
        "{name}: failed batch after max_attempts"
    );
    assert_eq!(rep.completed_batches, 100_000 / BATCH);
}

/// An action that kills its own backend (SIGKILL, so the postmaster restarts every backend) on
/// one key, every time. With no sleep between batches, that batch is marked in the commit of
/// the batch before it; the marker must survive each crash so that each attempt is counted,
/// and the run must end `failed` after max_attempts (3) crash-restarts instead of looping.
/// Everything before that batch is done exactly once, nothing after it is touched.
fn crash_loop(cluster: &Cluster) {
    let name = "crash_loop";
    let db = format!("f_{name}");
    let run = setup_parallel(
        cluster,
        &db,
        "SET n = n + crash_at(id, 100001)",
        "CREATE FUNCTION crash_at(k int, target int) RETURNS int LANGUAGE plpgsql AS $$
         BEGIN
             IF k = target THEN
                 EXECUTE format('COPY (SELECT 1) TO PROGRAM %L', 'kill -9 ' || pg_backend_pid());
             END IF;
             RETURN 1;
         END $$;",
        1,
        "0",
    );
    let started = Instant::now();
    assert_eq!(
        wait_finished(cluster, &db, run, Duration::from_secs(240)),
        "failed",
        "{name}"
    );
    let rep = verify(cluster, &db, run, Some(100_000));
    assert_report(name, 3, &rep, "failed");
    let mut c = cluster.connect(&db);
    let (attempts, error, run_error): (i32, String, String) = c
        .query_one(
            "SELECT b.attempts, b.error, r.error FROM drip.batches b JOIN drip.runs r ON r.id = b.run_id \
             WHERE b.run_id = $1 AND b.status = 'failed'",
            &[&run],
        )
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .unwrap();
    println!(
        "scenario {name}: failed after {:.1} s; batch attempts {attempts} ({error}); run: {run_error}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        (attempts, error.as_str()),
        (3, "interrupted"),
        "{name}: the crashing batch is recorded with every attempt"
    );
    assert!(
        run_error.contains("interrupted 3 times"),
        "{name}: the run says why it failed: {run_error}"
    );
    assert_eq!(rep.completed_batches, 100_000 / BATCH);
}

/// A paused run is still paused after a restart, and resumes from its cursor.
/// With preload (the launcher probing every second): DROP EXTENSION, and with `recreate` also
/// CREATE EXTENSION in the same transaction, while a run executes. The old runner must not touch
/// its table again, and nothing of the old catalog runs under a new one.
fn replaced_extension_is_left_alone(cluster: &Cluster, recreate: bool) {
    let name = if recreate {
        "replaced_extension"
    } else {
        "dropped_extension"
    };
    let db = format!("f_{name}");
    let run = setup(
        cluster,
        &db,
        "SET n = n + 1 + (SELECT 0 FROM pg_sleep(0.02))",
        "",
    );
    let mut c = cluster.connect(&db);
    let changed = |c: &mut postgres::Client| -> i64 {
        c.query_one("SELECT count(*) FROM counted WHERE n > 0", &[])
            .unwrap()
            .get(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while changed(&mut c) < 2000 {
        assert!(
            Instant::now() < deadline,
            "{name}: run {run} made no progress"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    c.batch_execute(if recreate {
        "BEGIN; DROP EXTENSION data_drip CASCADE; CREATE EXTENSION data_drip; COMMIT;"
    } else {
        "DROP EXTENSION data_drip CASCADE"
    })
    .unwrap();
    // Whatever batch was in flight commits or not; after that, nothing moves.
    std::thread::sleep(Duration::from_secs(2));
    let frozen = changed(&mut c);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(changed(&mut c), frozen, "{name}: the old run kept working");
    let twice: i64 = c
        .query_one("SELECT count(*) FROM counted WHERE n > 1", &[])
        .unwrap()
        .get(0);
    assert_eq!(twice, 0, "{name}");
    if recreate {
        let runs: i64 = c
            .query_one("SELECT count(*) FROM drip.runs", &[])
            .unwrap()
            .get(0);
        assert_eq!(runs, 0, "{name}: the new catalog is empty");
    }
    println!("scenario {name}: {frozen} rows done before the replacement, none after");
}

fn paused_run_stays_paused_across_restart(cluster: &Cluster) {
    let name = "paused_across_restart";
    let db = format!("f_{name}");
    let run = setup(cluster, &db, "SET n = n + 1", "");
    std::thread::sleep(Duration::from_millis(700));
    let mut c = cluster.connect(&db);
    let s: String = c
        .query_one("SELECT drip.pause($1)", &[&run])
        .unwrap()
        .get(0);
    assert_eq!(s, "paused");
    drop(c);
    cluster.stop("fast");
    cluster.start();
    poke_with_a_drip_call(cluster, &db);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        status(cluster, &db, run).as_deref(),
        Some("paused"),
        "{name}"
    );
    let mut c = cluster.connect(&db);
    c.query_one("SELECT drip.resume($1)", &[&run]).unwrap();
    assert_eq!(
        wait_finished(cluster, &db, run, Duration::from_secs(180)),
        "completed"
    );
    let rep = verify(cluster, &db, run, None);
    assert_report(name, 1, &rep, "completed");
}
