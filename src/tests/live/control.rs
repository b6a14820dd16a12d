//! Pause, resume, stop, start_at, transactional start and drip.max_runs queueing.

use std::time::{Duration, Instant};

use super::{connect, db};

fn slow_table(db: &mut super::Db, table: &str, rows: i32) {
    db.exec(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO {table} (id) SELECT g FROM generate_series(1, {rows}) g;"
    ));
}

#[test]
fn pause_resume_and_stop() {
    let mut db = db();
    slow_table(&mut db, "ctl_t", 2000);
    db.exec("SELECT drip.register('ctl', 'ctl_t', 'SET n = n + 1', batch_size => 100, sleep => '2 seconds')");
    let run = db.start("SELECT drip.start('ctl')");
    db.wait_for(run, &["running"], Duration::from_secs(5));
    // Wait for the first batch, so the worker is in its 2 s sleep.
    db.wait_until(
        &format!("SELECT batches_done FROM drip.runs WHERE id = {run}"),
        1,
        Duration::from_secs(5),
        "first batch never completed",
    );
    assert_eq!(db.text(&format!("SELECT drip.pause({run})")), "paused");
    // The sleeping worker notices within a second and exits; no batch starts meanwhile.
    let t0 = Instant::now();
    loop {
        let workers = db.i64(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'data_drip runner: run {run}'"
        ));
        if workers == 0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "runner still alive 1 s after pause"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let batches = db.i64(&format!(
        "SELECT count(*) FROM drip.batches WHERE run_id = {run}"
    ));
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        db.i64(&format!(
            "SELECT count(*) FROM drip.batches WHERE run_id = {run}"
        )),
        batches
    );
    assert_eq!(db.status(run), "paused");

    // Wrong transitions name the current status.
    assert_eq!(db.sqlstate(&format!("SELECT drip.pause({run})")), "55000");
    let err =
        db.c.batch_execute(&format!("SELECT drip.pause({run})"))
            .unwrap_err();
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("it is paused"),
        "{err}"
    );

    assert_eq!(db.text(&format!("SELECT drip.resume({run})")), "enqueued");
    db.wait_for(run, &["running"], Duration::from_secs(3));
    db.wait_until(
        &format!("SELECT count(*) FROM drip.batches WHERE run_id = {run} AND status = 'completed'"),
        batches + 1,
        Duration::from_secs(10),
        "no batch after resume",
    );
    assert_eq!(db.text(&format!("SELECT drip.stop({run})")), "stopped");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(db.status(run), "stopped");
    assert_eq!(db.sqlstate(&format!("SELECT drip.resume({run})")), "55000");
    // Stopped part-way: the done rows are exactly those of the completed batches, each once.
    let done = db.i64(&format!("SELECT rows_done FROM drip.runs WHERE id = {run}"));
    assert!(done > 0 && done < 2000, "{done}");
    assert_eq!(db.i64("SELECT count(*) FROM ctl_t WHERE n = 1"), done);
    assert_eq!(db.i64("SELECT count(*) FROM ctl_t WHERE n > 1"), 0);
    assert_eq!(
        db.i64(&format!(
            "SELECT count(*) FROM drip.batches WHERE run_id = {run} AND status <> 'completed'"
        )),
        0
    );
    // A stopped run no longer blocks a new start.
    let run2 = db.start("SELECT drip.start('ctl', sleep => '0')");
    assert_eq!(db.wait_done(run2), "completed");
    // A new run starts from scratch: rows done by the stopped run are now at 2, the rest at 1.
    assert_eq!(db.i64("SELECT count(*) FROM ctl_t WHERE n = 2"), done);
    assert_eq!(
        db.i64("SELECT count(*) FROM ctl_t WHERE n = 1"),
        2000 - done
    );
}

#[test]
fn start_at_waits_as_pending() {
    let mut db = db();
    slow_table(&mut db, "sa_t", 100);
    db.exec("SELECT drip.register('sa', 'sa_t', 'SET n = n + 1', sleep => '0')");
    let run =
        db.start("SELECT drip.start('sa', start_at => clock_timestamp() + interval '2 seconds')");
    assert_eq!(db.status(run), "pending");
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(db.status(run), "pending");
    assert_eq!(db.i64("SELECT count(*) FROM sa_t WHERE n = 1"), 0);
    assert_eq!(db.wait_done(run), "completed");
    assert_eq!(db.i64("SELECT count(*) FROM sa_t WHERE n = 1"), 100);
    assert_eq!(
        db.i64(&format!(
            "SELECT count(*) FROM drip.runs WHERE id = {run} AND started_at >= start_at"
        )),
        1
    );
}

#[test]
fn start_inside_a_transaction_runs_only_after_commit() {
    let mut db = db();
    slow_table(&mut db, "tx_t", 300);
    db.exec("SELECT drip.register('txs', 'tx_t', 'SET n = n + 1', batch_size => 50, sleep => '0')");

    // Rolled back: the run never exists and nothing changes.
    let mut tx = db.c.transaction().unwrap();
    let run: i64 = tx
        .query_one("SELECT drip.start('txs')", &[])
        .unwrap()
        .get(0);
    std::thread::sleep(Duration::from_millis(1500));
    tx.rollback().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        db.i64(&format!("SELECT count(*) FROM drip.runs WHERE id = {run}")),
        0
    );
    assert_eq!(db.i64("SELECT count(*) FROM tx_t WHERE n <> 0"), 0);

    // Committed after a while: nothing happens before the commit, everything after it.
    let mut tx = db.c.transaction().unwrap();
    let run: i64 = tx
        .query_one("SELECT drip.start('txs')", &[])
        .unwrap()
        .get(0);
    std::thread::sleep(Duration::from_millis(1500));
    let mut other = connect();
    let untouched: i64 = other
        .query_one("SELECT count(*) FROM tx_t WHERE n = 0", &[])
        .unwrap()
        .get(0);
    assert_eq!(untouched, 300);
    tx.commit().unwrap();
    assert_eq!(db.wait_done(run), "completed");
    assert_eq!(db.i64("SELECT count(*) FROM tx_t WHERE n = 1"), 300);
}

#[test]
fn max_runs_queues_further_runs_as_enqueued() {
    let mut db = db();
    let mut runs = Vec::new();
    for i in 0..3 {
        slow_table(&mut db, &format!("mr_t{i}"), 400);
        db.exec(&format!(
            "SELECT drip.register('mr{i}', 'mr_t{i}', 'SET n = n + 1', batch_size => 100, sleep => '300 milliseconds')"
        ));
        runs.push(db.start(&format!("SELECT drip.start('mr{i}')")));
    }
    // drip.max_runs = 2: never more than two running at once, the third waits enqueued.
    let mut saw_queue = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let running = db.i64(&format!(
            "SELECT count(*) FROM drip.runs WHERE id IN ({}, {}, {}) AND status = 'running'",
            runs[0], runs[1], runs[2]
        ));
        let enqueued = db.i64(&format!(
            "SELECT count(*) FROM drip.runs WHERE id IN ({}, {}, {}) AND status = 'enqueued'",
            runs[0], runs[1], runs[2]
        ));
        assert!(
            running <= 2,
            "{running} runs executing with drip.max_runs = 2"
        );
        if running == 2 && enqueued == 1 {
            saw_queue = true;
        }
        let done = db.i64(&format!(
            "SELECT count(*) FROM drip.runs WHERE id IN ({}, {}, {}) AND status = 'completed'",
            runs[0], runs[1], runs[2]
        ));
        if done == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "runs did not finish");
        std::thread::sleep(Duration::from_millis(30));
    }
    assert!(saw_queue, "the third run never waited as enqueued");
    for i in 0..3 {
        assert_eq!(
            db.i64(&format!("SELECT count(*) FROM mr_t{i} WHERE n = 1")),
            400
        );
    }
}

#[test]
fn one_active_run_per_backfill_and_unregister() {
    let mut db = db();
    slow_table(&mut db, "one_t", 500);
    db.exec("SELECT drip.register('one', 'one_t', 'SET n = n + 1', batch_size => 10, sleep => '1 second')");
    let run = db.start("SELECT drip.start('one')");
    let err = db.c.batch_execute("SELECT drip.start('one')").unwrap_err();
    let dberr = err.as_db_error().unwrap();
    assert_eq!(dberr.code().code(), "55006");
    assert!(
        dberr.message().contains(&format!("run {run}")),
        "{}",
        dberr.message()
    );
    assert_eq!(db.sqlstate("SELECT drip.unregister('one')"), "55006");
    assert_eq!(db.text(&format!("SELECT drip.stop({run})")), "stopped");
    db.exec("SELECT drip.unregister('one')");
    assert_eq!(
        db.i64("SELECT count(*) FROM drip.backfills WHERE name = 'one'"),
        0
    );
    assert_eq!(db.sqlstate("SELECT drip.unregister('one')"), "42704");
}
