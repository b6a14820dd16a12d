//! Timeouts, retries, drip.retry and prompt termination, against the live worker.

use std::time::{Duration, Instant};

use super::{connect, db};

#[test]
fn statement_timeout_really_fires_in_the_worker() {
    let mut db = db();
    db.exec(
        "CREATE TABLE st_t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO st_t (id) SELECT g FROM generate_series(1, 10) g;
         SELECT drip.register('st', 'st_t', 'SET n = n + (SELECT 1 FROM pg_sleep(2))',
             max_attempts => 1, statement_timeout => '200 milliseconds');",
    );
    let run = db.start("SELECT drip.start('st')");
    assert_eq!(db.wait_done(run), "failed");
    assert_eq!(
        db.text(&format!(
            "SELECT sqlstate FROM drip.batches WHERE run_id = {run} AND batch_no = 1"
        )),
        "57014"
    );
    // Cancelled at about 200 ms, not after the 2 s sleep.
    assert_eq!(
        db.i64(&format!(
            "SELECT count(*) FROM drip.batches WHERE run_id = {run} AND duration < interval '1 second'"
        )),
        1
    );
    assert!(db
        .text(&format!("SELECT error FROM drip.runs WHERE id = {run}"))
        .contains("statement timeout"));
    assert_eq!(db.i64("SELECT count(*) FROM st_t WHERE n <> 0"), 0);
    // Overridden at start, the same backfill completes.
    let run = db.start("SELECT drip.start('st', statement_timeout => '10 seconds')");
    assert_eq!(db.wait_done(run), "completed");
    assert_eq!(db.i64("SELECT count(*) FROM st_t WHERE n = 1"), 10);
}

#[test]
fn a_batch_loses_a_lock_fight_then_retries() {
    let mut db = db();
    db.exec(
        "CREATE TABLE lt_t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO lt_t (id) SELECT g FROM generate_series(1, 100) g;
         SELECT drip.register('lt', 'lt_t', 'SET n = n + 1', batch_size => 100,
             lock_timeout => '100 milliseconds', max_attempts => 5);",
    );
    let mut holder = connect();
    let mut tx = holder.transaction().unwrap();
    tx.batch_execute("SELECT * FROM lt_t WHERE id = 50 FOR UPDATE")
        .unwrap();
    let run = db.start("SELECT drip.start('lt')");
    // The first attempt fails on the lock after ~100 ms instead of waiting behind live traffic.
    db.wait_until(
        &format!("SELECT count(*) FROM drip.batches WHERE run_id = {run} AND sqlstate = '55P03'"),
        1,
        Duration::from_secs(5),
        "no lock timeout recorded",
    );
    tx.rollback().unwrap();
    assert_eq!(db.wait_done(run), "completed");
    assert_eq!(db.i64("SELECT count(*) FROM lt_t WHERE n = 1"), 100);
    // One batch, several attempts, the lock timeout kept as its last error.
    assert_eq!(
        db.text(&format!(
            "SELECT status || ' ' || (attempts > 1) || ' ' || sqlstate FROM drip.batches WHERE run_id = {run}"
        )),
        "completed true 55P03"
    );
}

#[test]
fn retry_continues_a_failed_or_stopped_run_from_its_cursor() {
    let mut db = db();
    db.exec(
        "CREATE TABLE rt_t (id int PRIMARY KEY, d int NOT NULL, n int NOT NULL DEFAULT 0);
         INSERT INTO rt_t (id, d) SELECT g, CASE WHEN g = 55 THEN 0 ELSE 1 END FROM generate_series(1, 100) g;
         SELECT drip.register('rt', 'rt_t', 'SET n = n + 1 + 0 * (1 / d)', batch_size => 10,
             sleep => '0', max_attempts => 2);",
    );
    let run = db.start("SELECT drip.start('rt')");
    assert_eq!(db.wait_done(run), "failed");
    assert_eq!(db.i64("SELECT count(*) FROM rt_t WHERE n = 1"), 50);
    assert_eq!(db.sqlstate(&format!("SELECT drip.resume({run})")), "55000");
    db.exec("UPDATE rt_t SET d = 1 WHERE id = 55");
    assert_eq!(db.text(&format!("SELECT drip.retry({run})")), "enqueued");
    assert_eq!(db.wait_done(run), "completed");
    assert_eq!(db.i64("SELECT count(*) FROM rt_t WHERE n = 1"), 100);
    assert_eq!(
        db.i64(&format!("SELECT rows_done FROM drip.runs WHERE id = {run}")),
        100
    );
    assert_eq!(
        db.i64(&format!(
            "SELECT count(*) FROM drip.batches WHERE run_id = {run} AND status = 'completed'"
        )),
        10
    );
    assert_eq!(db.sqlstate(&format!("SELECT drip.retry({run})")), "55000");
    assert_eq!(db.sqlstate("SELECT drip.retry(987654321)"), "42704");
}

#[test]
fn terminating_a_worker_mid_statement_rolls_the_batch_back_and_redoes_it() {
    let mut db = db();
    db.exec(
        "CREATE TABLE tb_flag (slow bool NOT NULL);
         INSERT INTO tb_flag VALUES (true);
         CREATE FUNCTION tb_pause() RETURNS int LANGUAGE sql AS
           $$ SELECT CASE WHEN (SELECT slow FROM tb_flag) THEN (SELECT 0 FROM pg_sleep(30)) ELSE 0 END $$;
         CREATE TABLE tb_t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO tb_t (id) SELECT g FROM generate_series(1, 300) g;
         SELECT drip.register('tb', 'tb_t', 'SET n = n + 1 + tb_pause()', batch_size => 100, sleep => '0');",
    );
    let run = db.start("SELECT drip.start('tb')");
    let deadline = Instant::now() + Duration::from_secs(5);
    let pid = loop {
        let pid = db.i64(&format!(
            "SELECT coalesce((SELECT pid FROM pg_stat_activity WHERE application_name = 'data_drip runner: run {run}' \
               AND wait_event = 'PgSleep'), 0)::bigint"
        ));
        if pid != 0 {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "runner never reached the slow statement"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    db.exec(&format!("SELECT pg_terminate_backend({pid})"));
    let t0 = Instant::now();
    while db.i64(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"
    )) > 0
    {
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "worker still alive 1 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        db.i64("SELECT count(*) FROM tb_t WHERE n <> 0"),
        0,
        "the batch rolled back"
    );
    db.exec("UPDATE tb_flag SET slow = false");
    assert_eq!(db.wait_done(run), "completed");
    assert_eq!(db.i64("SELECT count(*) FROM tb_t WHERE n = 1"), 300);
    // The interrupted attempt is recorded, and each key range has one completed batch.
    assert_eq!(
        db.text(&format!(
            "SELECT error FROM drip.batches WHERE run_id = {run} AND batch_no = 1"
        )),
        "interrupted"
    );
    assert_eq!(
        db.i64(&format!(
            "SELECT count(*) FROM drip.batches WHERE run_id = {run} AND status = 'completed'"
        )),
        3
    );
}

/// A next batch whose key range cannot be read (here: its owner lost SELECT between batches) is
/// on record like a failed batch: a failed `drip.batches` row with the error and its
/// SQLSTATE, a `batch_failed` event, `drip.progress.last_error`; after `max_attempts` such
/// failures the run fails.
#[test]
fn a_failure_to_find_the_next_batch_is_recorded_like_a_batch_failure() {
    let mut db = db();
    db.exec(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bf_owner') THEN
             CREATE ROLE bf_owner LOGIN;
           END IF;
         END $$;
         GRANT USAGE ON SCHEMA drip TO bf_owner;
         CREATE TABLE bf_t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO bf_t (id) SELECT g FROM generate_series(1, 100) g;
         GRANT SELECT, UPDATE ON bf_t TO bf_owner;",
    );
    let mut owner = super::connect_as("bf_owner");
    owner
        .batch_execute(
            "SELECT drip.register('bf', 'public.bf_t', 'SET n = n + 1', batch_size => 10,
                 sleep => '1 second', max_attempts => 2)",
        )
        .unwrap();
    let run: i64 = owner
        .query_one("SELECT drip.start('bf')", &[])
        .unwrap()
        .get(0);
    db.wait_until(
        &format!("SELECT count(*) FROM drip.batches WHERE run_id = {run} AND status = 'completed'"),
        2,
        Duration::from_secs(10),
        "no batch completed",
    );
    // Revoked while the runner sleeps between batches (1 s, against a batch of a millisecond):
    // the next thing it does is look for the next batch's range. (Revoked while the run is
    // paused, the runner could not even start: that is on record as the run's error.)
    db.exec("REVOKE SELECT ON bf_t FROM bf_owner");
    assert_eq!(db.wait_done(run), "failed");
    // Two attempts at finding the next batch, each on record.
    assert_eq!(
        db.i64(&format!(
            "SELECT count(*) FROM drip.batches WHERE run_id = {run} AND status = 'failed' \
               AND sqlstate = '42501' AND error LIKE 'finding the next batch failed: permission denied%' \
               AND rows = 0 AND high_key = low_key"
        )),
        2
    );
    assert_eq!(
        db.i64(&format!(
            "SELECT count(*) FROM drip.events e JOIN drip.batches b \
               ON b.run_id = e.run_id AND b.batch_no = (e.payload->>'batch')::bigint \
             WHERE e.run_id = {run} AND e.event = 'batch_failed' AND b.sqlstate = '42501'"
        )),
        2
    );
    assert!(db
        .text(&format!(
            "SELECT last_error FROM drip.progress WHERE run_id = {run}"
        ))
        .contains("permission denied"));
    // Nothing was done twice or skipped: the batches before the pause, and no other row.
    let done = db.i64(&format!(
        "SELECT coalesce(sum(rows), 0)::bigint FROM drip.batches WHERE run_id = {run} AND status = 'completed'"
    ));
    assert_eq!(db.i64("SELECT count(*) FROM bf_t WHERE n = 1"), done);
    assert_eq!(db.i64("SELECT count(*) FROM bf_t WHERE n > 1"), 0);
}
