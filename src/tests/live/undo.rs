//! Undo data and drip.revert against the live worker: what a run with undo changed is taken
//! back row by row, rows changed since are left alone and reported, refusals, and row-level
//! security on the undo data and the conflicts. (Crash and kill faults: tests/undo_faults.rs.)

use std::time::Duration;

use postgres::Client;

use super::{connect_as, db, Db};

fn error(c: &mut Client, sql: &str) -> (String, String) {
    match c.batch_execute(sql) {
        Ok(()) => panic!("expected an error from: {sql}"),
        Err(e) => {
            let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e}"));
            (db.code().code().to_string(), db.message().to_string())
        }
    }
}

fn wait_completed(db: &mut Db, run: i64) {
    let status = db.wait_for(
        run,
        &["completed", "failed", "stopped"],
        Duration::from_secs(60),
    );
    assert_eq!(status, "completed", "run {run}");
}

/// The table's rows as text, in key order (to compare whole tables).
fn rows(db: &mut Db, table: &str, order: &str) -> String {
    db.text(&format!(
        "SELECT coalesce(string_agg(t::text, '|' ORDER BY {order}), '') FROM {table} t"
    ))
}

#[test]
fn a_set_run_with_undo_is_reverted_except_rows_changed_since() {
    let mut db = db();
    db.exec(
        "DROP TABLE IF EXISTS uv_set;
         CREATE TABLE uv_set (id int PRIMARY KEY, email text NOT NULL, n int NOT NULL DEFAULT 0,
                              doubled int GENERATED ALWAYS AS (n * 2) STORED);
         INSERT INTO uv_set (id, email) SELECT g, 'User' || g || '@X.COM' FROM generate_series(1, 300) g;
         SELECT drip.unregister(name) FROM drip.backfills WHERE name IN ('uv_set', 'uv_stmt', 'uv_plain', 'uv_slow') OR name LIKE 'revert:%';
         SELECT name FROM drip.register('uv_set', 'uv_set', 'SET email = lower(email), n = n + 1',
             scope => 'id % 2 = 0', batch_size => 25, sleep => '0');",
    );
    let original = rows(&mut db, "uv_set", "id");
    let run = db.start("SELECT drip.start('uv_set', undo => true)");
    wait_completed(&mut db, run);
    assert_eq!(
        db.i64("SELECT count(*) FROM uv_set WHERE email = lower(email)"),
        150
    );
    // Every changed row is saved.
    assert_eq!(
        db.i64(&format!("SELECT rows FROM drip.undo_size({run})")),
        150
    );
    assert!(db.i64(&format!("SELECT bytes FROM drip.undo_size({run})")) > 0);
    assert_eq!(
        db.text(&format!(
            "SELECT before::text || ' ' || written::text FROM drip.undo_rows WHERE run_id = {run} AND key = '{{4}}'"
        )),
        r#"{"n": 0, "id": 4, "email": "User4@X.COM"} {"n": 1, "email": "user4@x.com"}"#
    );
    // One drip.undo row per batch (holding its changed rows), saved with that batch.
    assert_eq!(
        db.i64(&format!(
            "SELECT count(*) FROM drip.undo WHERE run_id = {run} AND rows = pg_catalog.jsonb_array_length(items -> 'k')"
        )),
        12
    );

    // Edited and deleted since: left alone and reported.
    db.exec(
        "UPDATE uv_set SET email = 'edited' WHERE id = 10;
         UPDATE uv_set SET n = 7 WHERE id = 20;
         UPDATE uv_set SET email = 'odd row edited' WHERE id = 11;
         DELETE FROM uv_set WHERE id = 12;",
    );
    let revert = db.start(&format!("SELECT drip.revert({run}, note => 'wrong fix')"));
    wait_completed(&mut db, revert);
    assert_eq!(
        db.i64(&format!(
            "SELECT rows_done FROM drip.runs WHERE id = {revert}"
        )),
        147
    );
    let now = rows(&mut db, "uv_set", "id");
    let expected = db.text(&format!(
        "SELECT string_agg(r, '|' ORDER BY id) FROM (
           SELECT id, CASE id WHEN 10 THEN '(10,edited,1,2)' WHEN 20 THEN '(20,user20@x.com,7,14)'
                              WHEN 11 THEN '(11,\"odd row edited\",0,0)' ELSE t::text END AS r
           FROM unnest(string_to_array($${original}$$, '|')) AS t
           CROSS JOIN LATERAL (SELECT (regexp_match(t, '^\\((\\d+),'))[1]::int AS id) i
           WHERE id <> 12) s"
    ));
    assert_eq!(now, expected);
    assert_eq!(
        db.text(&format!(
            "SELECT string_agg(key::text || ' ' || reason || ' ' || coalesce(current->>'email', '-'), ', ' ORDER BY key)
             FROM drip.revert_conflicts WHERE run_id = {revert}"
        )),
        "{10} changed edited, {12} deleted -, {20} changed user20@x.com"
    );
    assert_eq!(
        db.text(&format!(
            "SELECT reverts || ' ' || (SELECT reverted_by FROM drip.runs WHERE id = {run}) || ' ' || note \
             FROM drip.runs WHERE id = {revert}"
        )),
        format!("{run} {revert} wrong fix")
    );

    // Refusals: again, a revert, a run without undo, an active run, a statement action.
    let (code, message) = error(&mut db.c, &format!("SELECT drip.revert({run})"));
    assert_eq!(code, "55000", "{message}");
    assert!(
        message.contains(&format!("reverted by run {revert}")),
        "{message}"
    );
    let (code, message) = error(&mut db.c, &format!("SELECT drip.revert({revert})"));
    assert_eq!(code, "55000", "{message}");
    assert!(message.contains("cannot be reverted"), "{message}");
    db.exec(
        "SELECT name FROM drip.register('uv_plain', 'uv_set', 'SET n = n + 1', sleep => '0');
         SELECT name FROM drip.register('uv_slow', 'uv_set', 'SET n = n + 1', batch_size => 1,
             sleep => '1 second', undo => true);",
    );
    let plain = db.start("SELECT drip.start('uv_plain')");
    wait_completed(&mut db, plain);
    assert_eq!(
        error(&mut db.c, &format!("SELECT drip.revert({plain})")),
        ("55000".into(), format!("run {plain} kept no undo data"))
    );
    let slow = db.start("SELECT drip.start('uv_slow')");
    db.wait_until(
        &format!("SELECT rows_done FROM drip.runs WHERE id = {slow}"),
        1,
        Duration::from_secs(30),
        "uv_slow did a batch",
    );
    let (code, message) = error(&mut db.c, &format!("SELECT drip.revert({slow})"));
    assert_eq!(code, "55000", "{message}");
    assert!(message.contains("cannot revert run"), "{message}");
    db.exec(&format!("SELECT drip.stop({slow})"));
    db.wait_for(slow, &["stopped"], Duration::from_secs(30));
    let (code, _) = error(
        &mut db.c,
        "SELECT drip.register('uv_stmt', 'uv_set', 'UPDATE uv_set t SET n = 0 FROM drip_batch b WHERE t.id = b.id', undo => true)",
    );
    assert_eq!(code, "22023");
    db.exec("SELECT name FROM drip.register('uv_stmt', 'uv_set', 'UPDATE uv_set t SET n = 0 FROM drip_batch b WHERE t.id = b.id')");
    assert_eq!(
        error(&mut db.c, "SELECT drip.start('uv_stmt', undo => true)").0,
        "22023"
    );
    // Purge: the undo data goes, and the run can no longer be reverted.
    assert!(db.i64(&format!("SELECT drip.purge_undo({slow})")) >= 1);
    assert_eq!(
        db.i64(&format!("SELECT rows FROM drip.undo_size({slow})")),
        0
    );
    let (code, message) = error(&mut db.c, &format!("SELECT drip.revert({slow})"));
    assert_eq!(code, "55000");
    assert!(message.contains("was purged at"), "{message}");
    assert_eq!(db.sqlstate("SELECT drip.revert(NULL)"), "22004");
}

#[test]
fn a_delete_run_in_element_mode_is_reverted_where_keys_are_free() {
    let mut db = db();
    db.exec(
        "DROP TABLE IF EXISTS uv_del;
         CREATE TABLE uv_del (a int NOT NULL, b text NOT NULL, v jsonb, at timestamptz, f float8,
                              PRIMARY KEY (a, b));
         INSERT INTO uv_del SELECT g / 2, 'k' || g % 2, jsonb_build_object('g', g, 'l', ARRAY[g, g]),
                                   timestamptz '2024-01-01 00:00:00.123456+00' + g * interval '1 hour', g / 3.0
           FROM generate_series(1, 120) g;
         SELECT drip.unregister(name) FROM drip.backfills WHERE name = 'uv_del' OR name LIKE 'revert:%';
         SELECT name FROM drip.register('uv_del', 'uv_del', 'DELETE', scope => 'a % 3 = 0',
             mode => 'row', batch_size => 7, sleep => '0', undo => true);",
    );
    let original = rows(&mut db, "uv_del", "a, b");
    let run = db.start("SELECT drip.start('uv_del', parallel => 2)");
    wait_completed(&mut db, run);
    let deleted = db.i64(&format!("SELECT rows FROM drip.undo_size({run})"));
    assert_eq!(deleted, 40);
    assert_eq!(db.i64("SELECT count(*) FROM uv_del"), 120 - 40);
    // A deleted key taken again: that row stays as it is now.
    db.exec("INSERT INTO uv_del (a, b, v) VALUES (3, 'k0', '\"new\"')");
    let revert = db.start(&format!("SELECT drip.revert({run})"));
    wait_completed(&mut db, revert);
    assert_eq!(
        db.text(&format!(
            "SELECT string_agg(key::text || ' ' || reason || ' ' || (current->>'v'), ', ') FROM drip.revert_conflicts WHERE run_id = {revert}"
        )),
        "{3,k0} key taken new"
    );
    let expected: String = original
        .split('|')
        .map(|r| {
            if r.starts_with("(3,k0,") {
                "(3,k0,\"\"\"new\"\"\",,)".to_string()
            } else {
                r.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("|");
    assert_eq!(rows(&mut db, "uv_del", "a, b"), expected);
}

#[test]
fn other_roles_see_neither_undo_data_nor_conflicts() {
    let mut db = db();
    db.exec(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'uv_alice') THEN
             CREATE ROLE uv_alice LOGIN;
             CREATE ROLE uv_bob LOGIN;
           END IF;
         END $$;
         GRANT USAGE ON SCHEMA drip TO uv_alice, uv_bob;
         DROP TABLE IF EXISTS uv_rls;
         CREATE TABLE uv_rls (id int PRIMARY KEY, v text);
         INSERT INTO uv_rls SELECT g, 'v' || g FROM generate_series(1, 20) g;
         GRANT SELECT, UPDATE ON uv_rls TO uv_alice;
         SELECT drip.unregister(name) FROM drip.backfills WHERE name = 'uv_rls' OR name LIKE 'revert:%';",
    );
    let mut alice = connect_as("uv_alice");
    let run: i64 = alice
        .query_one(
            "SELECT drip.start((drip.register('uv_rls', 'public.uv_rls', 'SET v = upper(v)', sleep => '0', undo => true)).name)",
            &[],
        )
        .unwrap()
        .get(0);
    wait_completed(&mut db, run);
    db.exec("UPDATE uv_rls SET v = 'mine' WHERE id = 1");
    let revert: i64 = alice
        .query_one(&format!("SELECT drip.revert({run})"), &[])
        .unwrap()
        .get(0);
    wait_completed(&mut db, revert);
    assert_eq!(
        db.i64("SELECT count(*) FROM uv_rls WHERE v = 'v' || id"),
        19
    );
    let count = |c: &mut Client, sql: &str| -> i64 { c.query_one(sql, &[]).unwrap().get(0) };
    let undo = format!("SELECT count(*) FROM drip.undo_rows WHERE run_id = {run}");
    let conflicts = format!("SELECT count(*) FROM drip.revert_conflicts WHERE run_id = {revert}");
    assert_eq!(count(&mut alice, &undo), 20);
    assert_eq!(count(&mut alice, &conflicts), 1);
    let mut bob = connect_as("uv_bob");
    assert_eq!(count(&mut bob, &undo), 0);
    assert_eq!(count(&mut bob, &conflicts), 0);
    assert_eq!(count(&mut bob, "SELECT count(*) FROM drip.undo"), 0);
    assert_eq!(count(&mut bob, "SELECT count(*) FROM drip.undo_rows"), 0);
    for sql in [
        format!("SELECT * FROM drip.undo_size({run})"),
        format!("SELECT drip.purge_undo({run})"),
    ] {
        assert_eq!(error(&mut bob, &sql).0, "42704", "{sql}");
    }
    // bob cannot forge conflicts for alice's revert either.
    let (code, _) = error(
        &mut bob,
        &format!("INSERT INTO drip.revert_conflicts (run_id, key, reason, expected) VALUES ({revert}, '{{1}}', 'changed', '{{}}')"),
    );
    assert_eq!(code, "42501");
}

#[test]
fn undo_in_the_foreground_with_follow_inserts_and_its_revert_in_the_foreground() {
    let mut db = db();
    db.exec(
        "DROP TABLE IF EXISTS uv_fg;
         CREATE TABLE uv_fg (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO uv_fg (id) SELECT g FROM generate_series(1, 250) g;
         SELECT drip.unregister(name) FROM drip.backfills WHERE name = 'uv_fg' OR name LIKE 'revert:%';
         SELECT name FROM drip.register('uv_fg', 'uv_fg', 'SET n = n + 10', batch_size => 30,
             sleep => '0', undo => true);",
    );
    // CALL drip.finish executes the batches in this session (the capture runs there too);
    // follow_inserts walks past the keys that existed at start.
    let run = db.start(
        "SELECT drip.start('uv_fg', follow_inserts => true, start_at => now() + interval '1 hour')",
    );
    db.exec("INSERT INTO uv_fg (id) SELECT g FROM generate_series(251, 300) g");
    db.exec(&format!("CALL drip.finish({run})"));
    assert_eq!(db.status(run), "completed");
    assert_eq!(db.i64("SELECT count(*) FROM uv_fg WHERE n = 10"), 300);
    assert_eq!(
        db.i64(&format!("SELECT rows FROM drip.undo_size({run})")),
        300
    );
    db.exec("UPDATE uv_fg SET n = 99 WHERE id = 300");
    // The revert is a run like any other: also finished in the foreground.
    let revert = db.start(&format!("SELECT drip.revert({run})"));
    db.exec(&format!("SELECT drip.pause({revert})"));
    db.wait_until(
        &format!(
            "SELECT count(*) FROM drip.runs WHERE id = {revert} AND status = 'paused' AND worker_pid IS NULL"
        ),
        1,
        Duration::from_secs(30),
        "the revert is paused and let go",
    );
    db.exec(&format!("CALL drip.finish({revert})"));
    assert_eq!(db.status(revert), "completed");
    assert_eq!(db.i64("SELECT count(*) FROM uv_fg WHERE n = 0"), 299);
    assert_eq!(db.i64("SELECT n::bigint FROM uv_fg WHERE id = 300"), 99);
    assert_eq!(
        db.text(&format!(
            "SELECT string_agg(key::text || ' ' || reason, ', ') FROM drip.revert_conflicts WHERE run_id = {revert}"
        )),
        "{300} changed"
    );
}

/// Resets `drip.undo_retention` in postgresql.auto.conf when the test ends, however it ends
/// (on its own connection: the test's holds the serial lock).
struct RetentionReset;

impl Drop for RetentionReset {
    fn drop(&mut self) {
        let mut c = super::connect();
        let _ = c.batch_execute("ALTER SYSTEM RESET drip.undo_retention");
        let _ = c.batch_execute("SELECT pg_reload_conf()");
    }
}

#[test]
fn the_scheduler_purges_undo_data_past_its_retention_and_revert_then_refuses() {
    let mut db = db();
    db.exec(
        "DROP TABLE IF EXISTS uv_ret;
         CREATE TABLE uv_ret (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO uv_ret (id) SELECT g FROM generate_series(1, 100) g;
         DROP TABLE IF EXISTS uv_ret_busy;
         CREATE TABLE uv_ret_busy (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO uv_ret_busy (id) SELECT g FROM generate_series(1, 200) g;
         SELECT drip.unregister(name) FROM drip.backfills WHERE name IN ('uv_ret', 'uv_ret_busy');
         SELECT name FROM drip.register('uv_ret', 'uv_ret', 'SET n = n + 1', batch_size => 30,
             sleep => '0', undo => true);
         SELECT name FROM drip.register('uv_ret_busy', 'uv_ret_busy', 'SET n = n + 1',
             batch_size => 1, sleep => '500 milliseconds');",
    );
    let old = db.start("SELECT drip.start('uv_ret')");
    wait_completed(&mut db, old);
    let recent = db.start("SELECT drip.start('uv_ret')");
    wait_completed(&mut db, recent);
    for run in [old, recent] {
        assert_eq!(
            db.i64(&format!("SELECT rows FROM drip.undo_size({run})")),
            100
        );
    }
    // The first run finished two hours ago, the second just now.
    db.exec(&format!(
        "UPDATE drip.runs SET finished_at = finished_at - interval '2 hours' WHERE id = {old}"
    ));
    // 0 keeps undo data for ever (a retention pass in this session, with the setting at 0).
    db.exec("SET drip.undo_retention = 0");
    db.i64("SELECT drip.purge_expired()");
    assert_eq!(
        db.i64(&format!("SELECT rows FROM drip.undo_size({old})")),
        100
    );
    db.exec("RESET drip.undo_retention");

    // A retention of one hour, for the schedulers (reloaded), while a slow run keeps one busy.
    let _reset = RetentionReset;
    db.exec("ALTER SYSTEM SET drip.undo_retention = '1h'");
    db.exec("SELECT pg_reload_conf()");
    let busy = db.start("SELECT drip.start('uv_ret_busy')");
    db.wait_until(
        &format!(
            "SELECT count(*) FROM drip.runs WHERE id = {old} AND undo_purged_at IS NOT NULL AND NOT undo"
        ),
        1,
        Duration::from_secs(90),
        "the scheduler purged the old run's undo data",
    );
    db.exec(&format!("SELECT drip.stop({busy})"));
    assert_eq!(
        db.text(&format!(
            "SELECT rows || ' ' || bytes FROM drip.undo_size({old})"
        )),
        "0 0"
    );
    assert_eq!(
        db.i64(&format!(
            "SELECT count(*) FROM drip.undo WHERE run_id = {old}"
        )),
        0
    );
    // The recent run keeps its undo data.
    assert_eq!(
        db.i64(&format!("SELECT rows FROM drip.undo_size({recent})")),
        100
    );
    let (code, message) = error(&mut db.c, &format!("SELECT drip.revert({old})"));
    assert_eq!(code, "55000", "{message}");
    assert!(
        message.contains(&format!("the undo data of run {old} was purged at")),
        "{message}"
    );
    db.wait_for(busy, &["stopped"], Duration::from_secs(30));
}
