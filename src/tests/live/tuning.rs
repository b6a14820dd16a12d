//! Adaptive batch sizing, throttling on a throttle_query, and drip.alter, against the live
//! worker. (Replica-lag throttling has its own test with a real standby: tests/replica.rs.)

use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;

use super::{connect, db};

fn sizes(db: &mut super::Db, run: i64) -> Vec<i64> {
    db.c.query(
        "SELECT batch_size::bigint FROM drip.batches WHERE run_id = $1 AND status = 'completed' ORDER BY batch_no",
        &[&run],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[test]
fn adaptive_sizing_grows_settles_and_shrinks_fast() {
    let mut db = db();
    db.exec(
        "CREATE TABLE ad_flag (slow bool NOT NULL); INSERT INTO ad_flag VALUES (false);
         CREATE TABLE ad_t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0, pad text NOT NULL DEFAULT repeat('x', 200));
         INSERT INTO ad_t (id) SELECT g FROM generate_series(1, 400000) g;
         SELECT drip.register('ad', 'ad_t',
             'SET n = n + 1 + (SELECT 0 FROM pg_sleep(CASE WHEN (SELECT slow FROM ad_flag) THEN 0.3 ELSE 0 END))',
             batch_size => 100, sleep => '0', target_batch_time => '40 milliseconds',
             min_batch_size => 10, max_batch_size => 200000);",
    );
    let run = db.start("SELECT drip.start('ad')");
    // Let it settle, then make every batch 0.3 s slower.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sizes(&mut db, run).len() < 16 {
        assert!(Instant::now() < deadline, "too few batches");
        std::thread::sleep(Duration::from_millis(20));
    }
    db.exec("UPDATE ad_flag SET slow = true");
    let flipped_at = sizes(&mut db, run).len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while sizes(&mut db, run).len() < flipped_at + 4 {
        assert!(
            Instant::now() < deadline,
            "too few batches after the slowdown"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    db.exec(&format!("SELECT drip.stop({run})"));
    let s = sizes(&mut db, run);
    // Grows from 100, at most doubling per batch.
    assert_eq!(s[0], 100, "{s:?}");
    assert!(s[5] > s[0], "{s:?}");
    for w in s[..flipped_at].windows(2) {
        assert!(w[1] <= w[0] * 2 + 1, "growth bounded: {s:?}");
    }
    // Settled within ten batches: from batch 10 to the flip, the sizes stay near their median
    // (one outlier allowed: a checkpoint or another backend can slow a single batch).
    let mut settled: Vec<i64> = s[10..flipped_at].to_vec();
    settled.sort();
    let median = settled[settled.len() / 2];
    let near = settled
        .iter()
        .filter(|x| (**x - median).abs() as f64 <= 0.35 * median as f64)
        .count();
    assert!(near + 1 >= settled.len(), "not settled: {s:?}");
    // Shrinks fast: within three batches of the slowdown the size is a fraction of what it was.
    let after = &s[flipped_at..flipped_at + 3];
    assert!(
        after.iter().any(|x| *x * 4 < median),
        "did not shrink: {s:?}"
    );
    // The run keeps its current size in drip.runs.batch_size.
    let current = db.i64(&format!(
        "SELECT batch_size::bigint FROM drip.runs WHERE id = {run}"
    ));
    assert!(current * 4 < median, "{current} vs {s:?}");
}

#[test]
fn throttle_query_holds_the_run_and_it_continues_after() {
    let mut db = db();
    let mut listener = connect();
    listener.batch_execute("LISTEN drip_events").unwrap();
    db.exec(
        "CREATE TABLE th_flag (hold bool NOT NULL); INSERT INTO th_flag VALUES (true);
         CREATE TABLE th_t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO th_t (id) SELECT g FROM generate_series(1, 100) g;
         SELECT drip.register('th', 'th_t', 'SET n = n + 1', batch_size => 10, sleep => '0',
             throttle_query => 'SELECT hold FROM th_flag');",
    );
    let run = db.start("SELECT drip.start('th')");
    db.wait_for(run, &["running"], Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(db.status(run), "running", "holding keeps the status");
    assert_eq!(
        db.i64(&format!(
            "SELECT count(*) FROM drip.batches WHERE run_id = {run}"
        )),
        0
    );
    assert_eq!(
        db.text(&format!("SELECT throttled FROM drip.runs WHERE id = {run}")),
        "throttle_query returned true"
    );
    db.exec("UPDATE th_flag SET hold = false");
    assert_eq!(db.wait_done(run), "completed");
    assert_eq!(db.i64("SELECT count(*) FROM th_t WHERE n = 1"), 100);
    assert_eq!(
        db.i64(&format!(
            "SELECT count(*) FROM drip.runs WHERE id = {run} AND throttled IS NULL"
        )),
        1
    );
    listener.batch_execute("SELECT 1").unwrap();
    let mut ids = Vec::new();
    {
        let mut notes = listener.notifications();
        let mut it = notes.timeout_iter(Duration::from_millis(200));
        while let Some(n) = it.next().unwrap() {
            let v: serde_json::Value = serde_json::from_str(n.payload()).unwrap();
            if v["run_id"] == run && v["event"] == "run_throttled" {
                assert_eq!(v["status"], "running");
                ids.push(v["id"].as_i64().expect("event id"));
            }
        }
    }
    assert_eq!(ids.len(), 1, "announced once per reason");
    // The reason is in the event's row (the notification carries only ids and the status).
    let reason: String = listener
        .query_one(
            "SELECT payload->>'reason' FROM drip.events WHERE id = $1",
            &[&ids[0]],
        )
        .unwrap()
        .get(0);
    assert_eq!(reason, "throttle_query returned true");
    // A throttle query that is not a query is refused at register.
    assert_eq!(
        db.sqlstate("SELECT drip.register('th2', 'th_t', 'SET n = 1', throttle_query => 'DELETE FROM th_flag')"),
        "42601"
    );
}

#[test]
fn alter_changes_a_run_from_its_next_batch() {
    let mut db = db();
    db.exec(
        "CREATE TABLE al_t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO al_t (id) SELECT g FROM generate_series(1, 400) g;
         SELECT drip.register('al', 'al_t', 'SET n = n + 1', batch_size => 10, sleep => '400 milliseconds');",
    );
    let run = db.start("SELECT drip.start('al')");
    db.wait_until(
        &format!("SELECT batches_done FROM drip.runs WHERE id = {run}"),
        1,
        Duration::from_secs(5),
        "no batch done",
    );
    let row =
        db.c.query_one(
            "SELECT batch_size, sleep::text FROM drip.alter($1, batch_size => 100, sleep => '0')",
            &[&run],
        )
        .unwrap();
    let (bs, sl): (i32, String) = (row.get(0), row.get(1));
    assert_eq!((bs, sl.as_str()), (100, "00:00:00"));
    assert_eq!(db.wait_done(run), "completed");
    let s = sizes(&mut db, run);
    assert_eq!(s[0], 10);
    assert_eq!(*s.last().unwrap(), 100, "{s:?}");
    assert_eq!(db.i64("SELECT count(*) FROM al_t WHERE n = 1"), 400);
    assert_eq!(
        db.sqlstate(&format!("SELECT drip.alter({run}, batch_size => 5)")),
        "55000"
    );
    assert_eq!(
        db.sqlstate("SELECT drip.alter(987654321, batch_size => 5)"),
        "42704"
    );
    let run = db.start("SELECT drip.start('al', start_at => now() + interval '1 hour')");
    assert_eq!(
        db.sqlstate(&format!("SELECT drip.alter({run}, batch_size => 0)")),
        "22023"
    );
    db.exec(&format!("SELECT drip.stop({run})"));
}

#[test]
fn plan_shows_the_statements_and_their_plans_and_changes_nothing() {
    let mut db = db();
    db.exec(
        "CREATE TABLE pl_t (id int PRIMARY KEY, age int NOT NULL, n int NOT NULL DEFAULT 0);
         INSERT INTO pl_t (id, age) SELECT g, g % 50 FROM generate_series(1, 100000) g;
         ANALYZE pl_t;
         SELECT drip.register('pl', 'pl_t', 'SET n = n + 1', scope => 'age = $age',
             params => '{\"age\": \"int\"}', batch_size => 5000);",
    );
    let before = db.text("SELECT (SELECT count(*) FROM drip.runs) || '/' || (SELECT count(*) FROM pl_t WHERE n <> 0)");
    let row = db
        .c
        .query_one(
            "SELECT rows_in_scope, batches, boundary_sql, batch_sql, boundary_plan, batch_plan, warning
             FROM drip.plan('pl', '{\"age\": 7}')",
            &[],
        )
        .unwrap();
    let rows: i64 = row.get(0);
    let batches: i64 = row.get(1);
    let (bsql, wsql, bplan, wplan): (String, String, String, String) =
        (row.get(2), row.get(3), row.get(4), row.get(5));
    let warning: Option<String> = row.get(6);
    assert!((1500..=2500).contains(&rows), "{rows}");
    assert_eq!(batches, 20);
    assert!(
        bsql.contains("ORDER BY drip_rows.id OFFSET $2 - 1 LIMIT 1"),
        "{bsql}"
    );
    assert!(
        wsql.starts_with("UPDATE public.pl_t SET n = n + 1"),
        "{wsql}"
    );
    assert!(
        bplan.contains("Index Only Scan") || bplan.contains("Index Scan"),
        "{bplan}"
    );
    assert!(wplan.contains("Update on pl_t"), "{wplan}");
    assert_eq!(warning, None);
    let after = db.text("SELECT (SELECT count(*) FROM drip.runs) || '/' || (SELECT count(*) FROM pl_t WHERE n <> 0)");
    assert_eq!(before, after, "plan changed something");
    // A wrong value is refused as in start.
    assert_eq!(
        db.sqlstate("SELECT * FROM drip.plan('pl', '{\"age\": \"x\"}')"),
        "22P02"
    );
}
