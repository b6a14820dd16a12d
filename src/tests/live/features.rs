//! The features users bring from the Ruby and Elixir tools: bounded and frozen ranges, after =>
//! run_id, drip.wait, drip.assert_completed, the durable event log, and the ready-made helpers.

use std::time::{Duration, Instant};

use super::{connect, db};

#[test]
fn bounded_range_from_key_to_key() {
    let mut db = db();
    db.exec(
        "CREATE TABLE br_t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO br_t (id) SELECT g FROM generate_series(1, 1000) g;
         SELECT drip.register('br', 'br_t', 'SET n = n + 1', batch_size => 70, sleep => '0');
         CREATE TABLE brc_t (a int NOT NULL, b text NOT NULL, n int NOT NULL DEFAULT 0, PRIMARY KEY (a, b));
         INSERT INTO brc_t (a, b) SELECT g / 10, 'k' || (g % 10) FROM generate_series(0, 999) g;
         SELECT drip.register('brc', 'brc_t', 'SET n = n + 1', batch_size => 33, sleep => '0');",
    );
    // from_key exclusive, to_key inclusive.
    let run = db.start("SELECT drip.start('br', from_key => '100', to_key => '250')");
    assert_eq!(db.wait_done(run), "completed");
    assert_eq!(db.i64("SELECT count(*) FROM br_t WHERE n = 1"), 150);
    assert_eq!(db.i64("SELECT min(id)::bigint FROM br_t WHERE n = 1"), 101);
    assert_eq!(db.i64("SELECT max(id)::bigint FROM br_t WHERE n = 1"), 250);
    // Composite keys take a JSON array.
    let run =
        db.start("SELECT drip.start('brc', from_key => '[10, \"k5\"]', to_key => '[20, \"k2\"]')");
    assert_eq!(db.wait_done(run), "completed");
    assert_eq!(
        db.i64("SELECT count(*) FROM brc_t WHERE n = 1"),
        db.i64("SELECT count(*) FROM brc_t WHERE (a, b) > (10, 'k5') AND (a, b) <= (20, 'k2')")
    );
    assert_eq!(db.i64("SELECT count(*) FROM brc_t WHERE n = 1 AND NOT ((a, b) > (10, 'k5') AND (a, b) <= (20, 'k2'))"), 0);
    // Bad bounds are refused.
    assert_eq!(
        db.sqlstate("SELECT drip.start('br', from_key => 'abc')"),
        "22P02"
    );
    assert_eq!(
        db.sqlstate("SELECT drip.start('brc', from_key => '5')"),
        "22023"
    );
}

#[test]
fn frozen_upper_end_and_follow_inserts() {
    let mut db = db();
    db.exec(
        "CREATE TABLE fz_t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO fz_t (id) SELECT g FROM generate_series(1, 300) g;
         SELECT drip.register('fz', 'fz_t', 'SET n = n + 1', batch_size => 50, sleep => '300 milliseconds');",
    );
    // Frozen at start: rows inserted later, above the largest key, are not touched.
    let run = db.start("SELECT drip.start('fz')");
    db.exec("INSERT INTO fz_t (id) SELECT g FROM generate_series(301, 400) g");
    assert_eq!(db.wait_done(run), "completed");
    assert_eq!(db.i64("SELECT count(*) FROM fz_t WHERE n = 1"), 300);
    assert_eq!(
        db.i64("SELECT count(*) FROM fz_t WHERE id > 300 AND n <> 0"),
        0
    );
    assert_eq!(
        db.text(&format!(
            "SELECT to_key::text FROM drip.runs WHERE id = {run}"
        )),
        "{300}"
    );
    // follow_inserts keeps going until it catches up.
    let run = db.start("SELECT drip.start('fz', follow_inserts => true, sleep => '200 milliseconds', batch_size => 100)");
    std::thread::sleep(Duration::from_millis(250));
    db.exec("INSERT INTO fz_t (id) SELECT g FROM generate_series(401, 500) g");
    assert_eq!(db.wait_done(run), "completed");
    assert_eq!(
        db.i64("SELECT count(*) FROM fz_t WHERE id > 400 AND n = 1"),
        100
    );
}

#[test]
fn after_waits_for_another_run_and_fails_with_it() {
    let mut db = db();
    db.exec(
        "CREATE TABLE af_t (id int PRIMARY KEY, d int NOT NULL DEFAULT 1, n int NOT NULL DEFAULT 0, m int NOT NULL DEFAULT 0);
         INSERT INTO af_t (id) SELECT g FROM generate_series(1, 200) g;
         SELECT drip.register('af1', 'af_t', 'SET n = n + 1', batch_size => 50, sleep => '200 milliseconds');
         SELECT drip.register('af2', 'af_t', 'SET m = n', batch_size => 50, sleep => '0');",
    );
    let first = db.start("SELECT drip.start('af1')");
    let second = db.start(&format!("SELECT drip.start('af2', after => {first})"));
    assert_eq!(db.status(second), "pending");
    assert_eq!(db.wait_done(first), "completed");
    assert_eq!(db.wait_done(second), "completed");
    // af2 ran after af1 had set every n: it copied the final values.
    assert_eq!(db.i64("SELECT count(*) FROM af_t WHERE m = 1"), 200);
    assert_eq!(
        db.i64(&format!(
            "SELECT count(*) FROM drip.runs a, drip.runs b WHERE a.id = {first} AND b.id = {second} AND b.started_at >= a.finished_at"
        )),
        1
    );
    // If the awaited run fails, the waiting one fails with a clear reason.
    db.exec(
        "UPDATE af_t SET d = 0 WHERE id = 120;
         SELECT drip.register('af3', 'af_t', 'SET n = n / d', batch_size => 50, sleep => '0', max_attempts => 1);",
    );
    let failing = db.start("SELECT drip.start('af3')");
    let waiting = db.start(&format!("SELECT drip.start('af2', after => {failing})"));
    assert_eq!(db.wait_done(failing), "failed");
    assert_eq!(db.wait_done(waiting), "failed");
    assert_eq!(
        db.text(&format!("SELECT error FROM drip.runs WHERE id = {waiting}")),
        format!("run {failing}, which this run waits for, ended failed")
    );
    assert_eq!(
        db.sqlstate("SELECT drip.start('af1', after => 987654321)"),
        "42704"
    );
}

#[test]
fn wait_blocks_until_the_run_ends_and_assert_completed_gates() {
    let mut db = db();
    db.exec(
        "CREATE TABLE wt_t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO wt_t (id) SELECT g FROM generate_series(1, 300) g;
         SELECT drip.register('wt', 'wt_t', 'SET n = n + 1', batch_size => 100, sleep => '300 milliseconds');",
    );
    assert_eq!(db.sqlstate("SELECT drip.assert_completed('wt')"), "55000");
    let run = db.start("SELECT drip.start('wt')");
    assert_eq!(db.sqlstate("SELECT drip.assert_completed('wt')"), "55000");
    let t0 = Instant::now();
    assert_eq!(db.text(&format!("SELECT drip.wait({run})")), "completed");
    // It returned promptly once the run completed (woken, not a long poll).
    let finished_ago = db.i64(&format!(
        "SELECT (extract(epoch FROM clock_timestamp() - finished_at) * 1000)::bigint FROM drip.runs WHERE id = {run}"
    ));
    assert!(
        finished_ago < 500,
        "wait returned {finished_ago} ms after the run finished"
    );
    assert!(t0.elapsed() >= Duration::from_millis(500));
    assert_eq!(db.i64("SELECT count(*) FROM wt_t WHERE n = 1"), 300);
    db.exec("SELECT drip.assert_completed('wt')");
    // A timeout raises; a cancel interrupts.
    let run = db.start("SELECT drip.start('wt', sleep => '10 seconds')");
    let t0 = Instant::now();
    assert_eq!(
        db.sqlstate(&format!("SELECT drip.wait({run}, '300 milliseconds')")),
        "57014"
    );
    assert!(t0.elapsed() < Duration::from_secs(2));
    let t0 = Instant::now();
    assert_eq!(
        db.sqlstate(&format!(
            "SET statement_timeout = '400ms'; SELECT drip.wait({run}); RESET statement_timeout"
        )),
        "57014"
    );
    db.exec("RESET statement_timeout");
    assert!(t0.elapsed() < Duration::from_secs(2));
    // A stop wakes a waiter too.
    let mut other = connect();
    let waiter = std::thread::spawn(move || {
        other
            .query_one("SELECT drip.wait($1)", &[&run])
            .map(|r| r.get::<_, String>(0))
    });
    std::thread::sleep(Duration::from_millis(300));
    db.exec(&format!("SELECT drip.stop({run})"));
    assert_eq!(waiter.join().unwrap().unwrap(), "stopped");
    assert_eq!(db.sqlstate("SELECT drip.wait(987654321)"), "42704");
    assert_eq!(
        db.sqlstate("SELECT drip.assert_completed('no_such_backfill')"),
        "42704"
    );
}

#[test]
fn every_event_is_also_in_the_durable_log() {
    let mut db = db();
    db.exec(
        "CREATE TABLE el_t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO el_t (id) SELECT g FROM generate_series(1, 100) g;
         SELECT drip.register('el', 'el_t', 'SET n = n + 1', batch_size => 40, sleep => '0');",
    );
    let run = db.start("SELECT drip.start('el')");
    assert_eq!(db.wait_done(run), "completed");
    let events: Vec<String> =
        db.c.query(
            "SELECT event FROM drip.events WHERE run_id = $1 ORDER BY id",
            &[&run],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // batch_running is sent but not logged: one row per batch.
    let mut expected = vec!["run_enqueued".to_string(), "run_running".to_string()];
    for _ in 0..3 {
        expected.push("batch_completed".into());
    }
    expected.push("run_completed".into());
    assert_eq!(events, expected);
    assert_eq!(
        db.i64(&format!("SELECT (payload->>'rows_done')::bigint FROM drip.events WHERE run_id = {run} AND event = 'run_completed'")),
        100
    );
    // Nothing is logged for work that rolled back.
    let before = db.i64("SELECT count(*) FROM drip.events");
    let mut tx = db.c.transaction().unwrap();
    tx.query_one("SELECT drip.start('el')", &[]).unwrap();
    tx.rollback().unwrap();
    assert_eq!(db.i64("SELECT count(*) FROM drip.events"), before);
    // Users cannot forge events.
    db.exec(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'el_user') THEN CREATE ROLE el_user LOGIN; END IF; END $$;
         GRANT USAGE ON SCHEMA drip TO el_user;",
    );
    let mut user = super::connect_as("el_user");
    let err = user
        .batch_execute("SELECT drip.emit('{\"event\":\"run_completed\",\"run_id\":1}')")
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42501");
    let seen: i64 = user
        .query_one("SELECT count(*) FROM drip.events", &[])
        .unwrap()
        .get(0);
    assert_eq!(seen, 0, "other roles' events are hidden");
}

#[test]
fn ready_made_helpers() {
    let mut db = db();
    db.exec(
        "CREATE TABLE hp_parent (id int PRIMARY KEY, kids int NOT NULL DEFAULT 0);
         INSERT INTO hp_parent (id) SELECT g FROM generate_series(1, 50) g;
         CREATE TABLE hp_child (id int PRIMARY KEY, parent_id int, email text, email_copy text, tier text);
         INSERT INTO hp_child SELECT g, CASE WHEN g % 10 = 0 THEN 1000 + g ELSE g % 50 + 1 END, 'e' || g,
             NULL, CASE WHEN g % 3 = 0 THEN 'gold' END FROM generate_series(1, 500) g;",
    );
    let run = db.start("SELECT drip.backfill_column('hp_child', 'tier', '''basic''')");
    assert_eq!(db.wait_done(run), "completed");
    assert_eq!(
        db.i64("SELECT count(*) FROM hp_child WHERE tier IS NULL"),
        0
    );
    assert_eq!(
        db.i64("SELECT count(*) FROM hp_child WHERE tier = 'gold'"),
        166
    );
    let run = db.start("SELECT drip.copy_column('hp_child', 'email', 'email_copy')");
    assert_eq!(db.wait_done(run), "completed");
    assert_eq!(
        db.i64("SELECT count(*) FROM hp_child WHERE email_copy IS DISTINCT FROM email"),
        0
    );
    let run = db.start("SELECT drip.delete_orphans('hp_child', 'parent_id', 'hp_parent')");
    assert_eq!(db.wait_done(run), "completed");
    assert_eq!(db.i64("SELECT count(*) FROM hp_child"), 450);
    assert_eq!(db.i64("SELECT count(*) FROM hp_child c WHERE NOT EXISTS (SELECT 1 FROM hp_parent p WHERE p.id = c.parent_id)"), 0);
    let run = db.start("SELECT drip.reset_counter('hp_parent', 'kids', 'hp_child', 'parent_id')");
    assert_eq!(db.wait_done(run), "completed");
    assert_eq!(
        db.i64("SELECT count(*) FROM hp_parent p WHERE kids <> (SELECT count(*) FROM hp_child c WHERE c.parent_id = p.id)"),
        0
    );
    assert_eq!(db.i64("SELECT sum(kids)::bigint FROM hp_parent"), 450);
    // The helpers register ordinary backfills, owned by the caller.
    assert_eq!(db.i64("SELECT count(*) FROM drip.backfills WHERE name LIKE '%hp_child%' OR name LIKE '%hp_parent%'"), 4);
}

#[test]
fn retention_removes_old_events_and_batches_of_finished_runs() {
    let mut db = db();
    db.exec(
        "CREATE TABLE rt2_t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO rt2_t (id) SELECT g FROM generate_series(1, 100) g;
         SELECT drip.register('rt2', 'rt2_t', 'SET n = n + 1', batch_size => 10, sleep => '0');",
    );
    let old = db.start("SELECT drip.start('rt2')");
    assert_eq!(db.wait_done(old), "completed");
    let recent = db.start("SELECT drip.start('rt2')");
    assert_eq!(db.wait_done(recent), "completed");
    // Make the first run look 60 days old (the default retention is 30 days).
    db.exec(&format!(
        "UPDATE drip.events SET at = at - interval '60 days' WHERE run_id = {old};
         UPDATE drip.runs SET finished_at = finished_at - interval '60 days' WHERE id = {old};"
    ));
    let removed = db.i64("SELECT drip.purge_expired()");
    // 10 batch rows and 13 events (run_enqueued, run_running, 10 batch_completed,
    // run_completed; batch_running is not logged).
    assert!(removed >= 10 + 13, "{removed}");
    assert_eq!(
        db.i64(&format!(
            "SELECT count(*) FROM drip.events WHERE run_id = {old}"
        )),
        0
    );
    assert_eq!(
        db.i64(&format!(
            "SELECT count(*) FROM drip.batches WHERE run_id = {old}"
        )),
        0
    );
    assert!(
        db.i64(&format!(
            "SELECT count(*) FROM drip.events WHERE run_id = {recent}"
        )) > 0
    );
    assert_eq!(
        db.i64(&format!(
            "SELECT count(*) FROM drip.batches WHERE run_id = {recent}"
        )),
        10
    );
    // The run itself is kept.
    assert_eq!(
        db.i64(&format!("SELECT count(*) FROM drip.runs WHERE id = {old}")),
        1
    );
}

#[test]
fn element_mode_runs_each_row_in_its_own_subtransaction() {
    let mut db = db();
    db.exec(
        "CREATE TABLE em_t (id int PRIMARY KEY, v int NOT NULL, fixed int);
         INSERT INTO em_t SELECT g, CASE WHEN g IN (13, 77, 150) THEN 0 ELSE g END, NULL FROM generate_series(1, 200) g;
         CREATE FUNCTION em_fix(r em_t) RETURNS int LANGUAGE sql AS
             $$ UPDATE em_t SET fixed = 1000 / r.v WHERE id = r.id RETURNING 1 $$;
         SELECT drip.register('em_skip', 'em_t', 'SELECT em_fix(drip_row) FROM drip_row',
             mode => 'row', on_row_error => 'skip', batch_size => 50, sleep => '0');",
    );
    // skip: the failing rows are recorded, every other row is done, the run completes.
    let run = db.start("SELECT drip.start('em_skip')");
    assert_eq!(db.wait_done(run), "completed");
    assert_eq!(
        db.i64("SELECT count(*) FROM em_t WHERE fixed IS NOT NULL"),
        197
    );
    assert_eq!(
        db.i64(&format!(
            "SELECT rows_failed FROM drip.runs WHERE id = {run}"
        )),
        3
    );
    assert_eq!(
        db.i64(&format!("SELECT rows_done FROM drip.runs WHERE id = {run}")),
        197
    );
    assert_eq!(
        db.text(&format!(
            "SELECT string_agg(key[1] || ':' || sqlstate || ':' || batch_no, ',' ORDER BY key[1]::int) FROM drip.row_errors WHERE run_id = {run}"
        )),
        "13:22012:1,77:22012:2,150:22012:3"
    );
    assert!(db
        .text(&format!(
            "SELECT error FROM drip.row_errors WHERE run_id = {run} AND key = '{{13}}'"
        ))
        .contains("division by zero"));
    // retry_rows processes again only those rows.
    db.exec("UPDATE em_t SET v = 4 WHERE v = 0");
    assert_eq!(db.i64(&format!("SELECT drip.retry_rows({run})")), 3);
    assert_eq!(db.i64("SELECT count(*) FROM em_t WHERE fixed IS NULL"), 0);
    assert_eq!(
        db.i64("SELECT count(*) FROM em_t WHERE id IN (13, 77, 150) AND fixed = 250"),
        3
    );
    assert_eq!(
        db.i64(&format!(
            "SELECT count(*) FROM drip.row_errors WHERE run_id = {run} AND resolved_at IS NULL"
        )),
        0
    );
    assert_eq!(
        db.i64(&format!(
            "SELECT rows_failed FROM drip.runs WHERE id = {run}"
        )),
        0
    );

    // fail: the batch still completes its other rows, then the run fails naming the rows.
    db.exec(
        "CREATE TABLE em2_t (id int PRIMARY KEY, v int NOT NULL, fixed int);
         INSERT INTO em2_t SELECT g, CASE WHEN g = 60 THEN 0 ELSE g END, NULL FROM generate_series(1, 200) g;
         SELECT drip.register('em_fail', 'em2_t', 'SET fixed = 1000 / v', mode => 'row', batch_size => 50, sleep => '0');",
    );
    let run = db.start("SELECT drip.start('em_fail')");
    assert_eq!(db.wait_done(run), "failed");
    assert_eq!(
        db.i64("SELECT count(*) FROM em2_t WHERE fixed IS NOT NULL"),
        99
    );
    assert_eq!(
        db.i64("SELECT count(*) FROM em2_t WHERE id > 100 AND fixed IS NOT NULL"),
        0
    );
    assert!(db
        .text(&format!("SELECT error FROM drip.runs WHERE id = {run}"))
        .contains("drip.row_errors"));
    assert_eq!(
        db.i64(&format!(
            "SELECT count(*) FROM drip.row_errors WHERE run_id = {run}"
        )),
        1
    );
    // Fix the row, retry it, and let the run go on from its cursor.
    db.exec("UPDATE em2_t SET v = 10 WHERE id = 60");
    assert_eq!(db.i64(&format!("SELECT drip.retry_rows({run})")), 1);
    db.exec(&format!("SELECT drip.retry({run})"));
    assert_eq!(db.wait_done(run), "completed");
    assert_eq!(db.i64("SELECT count(*) FROM em2_t WHERE fixed IS NULL"), 0);
    // Bad modes are refused.
    assert_eq!(
        db.sqlstate("SELECT drip.register('em_bad', 'em2_t', 'SET fixed = 1', mode => 'rows')"),
        "22023"
    );
    assert_eq!(db.sqlstate("SELECT drip.retry_rows(987654321)"), "42704");
}

#[test]
fn finish_runs_the_rest_in_the_foreground() {
    let mut db = db();
    db.exec(
        "CREATE TABLE fin_t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO fin_t (id) SELECT g FROM generate_series(1, 400) g;
         SELECT drip.register('fin', 'fin_t', 'SET n = n + 1 + (SELECT 0 FROM pg_sleep(0.05))',
             batch_size => 20, sleep => '0');",
    );
    // Pending for an hour; finish runs it now, in this session.
    let run = db.start("SELECT drip.start('fin', start_at => now() + interval '1 hour')");
    let mut watcher = connect();
    let caller = std::thread::spawn(move || {
        let mut c = connect();
        c.batch_execute(&format!("CALL drip.finish({run})"))
    });
    // Meanwhile no background runner touches the run.
    let mut saw_running = false;
    while !caller.is_finished() {
        let bg: i64 = watcher
            .query_one(
                &format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'data_drip runner: run {run}'"),
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(bg, 0, "a background runner took the run");
        let status: String = watcher
            .query_one("SELECT status FROM drip.runs WHERE id = $1", &[&run])
            .unwrap()
            .get(0);
        saw_running |= status == "running";
        std::thread::sleep(Duration::from_millis(50));
    }
    caller.join().unwrap().unwrap();
    assert!(saw_running);
    assert_eq!(db.status(run), "completed");
    assert_eq!(db.i64("SELECT count(*) FROM fin_t WHERE n = 1"), 400);
    assert_eq!(
        db.i64(&format!(
            "SELECT count(*) FROM drip.batches WHERE run_id = {run} AND status = 'completed'"
        )),
        20
    );
    assert_eq!(
        db.i64(&format!(
            "SELECT count(*) FROM drip.events WHERE run_id = {run} AND event = 'batch_completed'"
        )),
        20
    );
    // A run a background worker is executing is refused; a finished one too.
    db.exec("SELECT drip.register('fin2', 'fin_t', 'SET n = n + 1', batch_size => 10, sleep => '1 second')");
    let run2 = db.start("SELECT drip.start('fin2')");
    db.wait_for(run2, &["running"], Duration::from_secs(5));
    assert_eq!(db.sqlstate(&format!("CALL drip.finish({run2})")), "55006");
    db.exec(&format!("SELECT drip.pause({run2})"));
    std::thread::sleep(Duration::from_millis(600));
    db.exec(&format!("CALL drip.finish({run2})"));
    assert_eq!(db.status(run2), "completed");
    assert_eq!(db.i64("SELECT count(*) FROM fin_t WHERE n = 2"), 400);
    assert_eq!(db.sqlstate(&format!("CALL drip.finish({run})")), "55000");
}

#[test]
fn parallel_slices_split_the_range_between_workers() {
    let mut db = db();
    db.exec(
        "CREATE TABLE par2_t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0, who int);
         INSERT INTO par2_t (id) SELECT g FROM generate_series(1, 3000) g;
         SELECT drip.register('par2', 'par2_t', 'SET n = n + 1, who = pg_backend_pid()',
             batch_size => 100, sleep => '50 milliseconds');",
    );
    let run = db.start("SELECT drip.start('par2', parallel => 2)");
    // Two workers at once, one per slice.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut both = false;
    while !both && Instant::now() < deadline {
        both = db.i64(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'data_drip runner: run {run} slice %'"
        )) == 2;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(both, "never saw two slice workers");
    // Pause and resume act on the whole run.
    assert_eq!(db.text(&format!("SELECT drip.pause({run})")), "paused");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        db.i64(&format!("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'data_drip runner: run {run}%'")),
        0
    );
    assert_eq!(db.text(&format!("SELECT drip.resume({run})")), "enqueued");
    assert_eq!(db.wait_done(run), "completed");
    // Every row exactly once, by two processes; batches record their slice; slices are
    // contiguous, and each one's batches are contiguous within it.
    assert_eq!(db.i64("SELECT count(*) FROM par2_t WHERE n <> 1"), 0);
    assert!(
        db.i64("SELECT count(DISTINCT who) FROM par2_t") >= 2,
        "one process did it all"
    );
    assert_eq!(
        db.i64(&format!("SELECT rows_done FROM drip.runs WHERE id = {run}")),
        3000
    );
    assert_eq!(
        db.i64(&format!(
            "SELECT count(*) FROM drip.slices WHERE run_id = {run} AND done"
        )),
        2
    );
    assert_eq!(
        db.i64(&format!(
            "SELECT count(DISTINCT slice) FROM drip.batches WHERE run_id = {run}"
        )),
        2
    );
    assert_eq!(
        db.i64(&format!(
            "SELECT count(*) FROM drip.batches b WHERE run_id = {run} AND status = 'completed' AND
               low_key IS DISTINCT FROM coalesce(
                 (SELECT p.high_key FROM drip.batches p WHERE p.run_id = b.run_id AND p.slice = b.slice
                    AND p.status = 'completed' AND p.high_key[1]::int < b.high_key[1]::int
                  ORDER BY p.high_key[1]::int DESC LIMIT 1),
                 (SELECT s.low_key FROM drip.slices s WHERE s.run_id = b.run_id AND s.slice = b.slice))"
        )),
        0
    );
    assert_eq!(
        db.i64(&format!(
            "SELECT count(DISTINCT batch_no) FROM drip.batches WHERE run_id = {run}"
        )),
        db.i64(&format!(
            "SELECT count(*) FROM drip.batches WHERE run_id = {run}"
        ))
    );
    assert_eq!(
        db.sqlstate("SELECT drip.start('par2', parallel => 0)"),
        "22023"
    );
    let run2 =
        db.start("SELECT drip.start('par2', parallel => 3, start_at => now() + interval '1 hour')");
    assert_eq!(db.sqlstate(&format!("CALL drip.finish({run2})")), "22023");
    db.exec(&format!("SELECT drip.stop({run2})"));
}
