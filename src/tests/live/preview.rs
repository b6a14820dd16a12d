//! `drip.preview`: the real action as the backfill's owner, rolled back. The table, the catalog
//! and the caller's transaction are left as they were; bad input gets drip.start's errors; a
//! failing action gets its own SQLSTATE.

use std::time::{Duration, Instant};

use postgres::Client;
use serde_json::{json, Value};

use super::{connect, connect_as, db, Db};

/// (key joined with ',', before, after) of each row a preview returns.
type Change = (String, Option<Value>, Option<Value>);

fn preview(c: &mut Client, call: &str) -> Vec<Change> {
    let sql =
        format!("SELECT array_to_string(key, ','), before::text, after::text FROM {call} AS p");
    c.query(&sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| {
            let parse = |s: Option<String>| s.map(|s| serde_json::from_str::<Value>(&s).unwrap());
            (r.get(0), parse(r.get(1)), parse(r.get(2)))
        })
        .collect()
}

/// Everything a preview must not change about a table: its rows with their xmin and ctid (a
/// committed change, even to the same values, gives a row a new version). Not xmax: a row the
/// preview updated or deleted keeps the rolled-back subtransaction's id there, which every
/// reader ignores, as for any rolled-back change.
fn table_state(db: &mut Db, table: &str) -> String {
    db.text(&format!(
        "SELECT count(*) || ':' || coalesce(md5(string_agg(t::text || xmin::text || ':' || ctid::text, '|' ORDER BY t::text)), '') FROM {table} t"
    ))
}

/// What a preview must not change in the catalog for backfill `name`: its row (and row
/// version), and its runs, batches and events.
fn catalog_state(db: &mut Db, name: &str) -> String {
    db.text(&format!(
        "SELECT (SELECT b::text || b.xmin::text || b.xmax::text FROM drip.backfills b WHERE name = '{name}') \
         || '|' || (SELECT count(*) FROM drip.runs WHERE backfill = '{name}') \
         || '|' || (SELECT count(*) FROM drip.batches WHERE run_id IN (SELECT id FROM drip.runs WHERE backfill = '{name}')) \
         || '|' || (SELECT count(*) FROM drip.events WHERE payload->>'backfill' = '{name}')"
    ))
}

/// (n_tup_ins, n_tup_upd, n_tup_del) of a table, once this session's counts are flushed.
fn tuple_stats(db: &mut Db, table: &str) -> (i64, i64, i64) {
    db.exec("SELECT pg_stat_force_next_flush()");
    let r =
        db.c.query_one(
            &format!(
                "SELECT pg_stat_clear_snapshot(), n_tup_ins, n_tup_upd, n_tup_del \
                 FROM pg_stat_user_tables WHERE relid = '{table}'::regclass"
            ),
            &[],
        )
        .unwrap();
    (r.get(1), r.get(2), r.get(3))
}

/// `tuple_stats` once it reaches `want` (stats are flushed when the session goes idle).
fn tuple_stats_reaching(db: &mut Db, table: &str, want: (i64, i64, i64)) -> (i64, i64, i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = tuple_stats(db, table);
        if s == want || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn error(c: &mut Client, sql: &str) -> (String, String) {
    match c.batch_execute(sql) {
        Ok(()) => panic!("expected an error from: {sql}"),
        Err(e) => {
            let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e}"));
            (db.code().code().to_string(), db.message().to_string())
        }
    }
}

#[test]
fn preview_of_a_set_action_shows_changed_columns_and_changes_nothing() {
    let mut db = db();
    db.exec(
        "DROP TABLE IF EXISTS pv_set;
         CREATE TABLE pv_set (id int PRIMARY KEY, email text NOT NULL, n int NOT NULL DEFAULT 0, note text);
         INSERT INTO pv_set (id, email) SELECT g, 'User' || g || '@X.COM' FROM generate_series(1, 100) g;
         SELECT drip.unregister(name) FROM drip.backfills WHERE name = 'pv_set';
         SELECT name FROM drip.register('pv_set', 'pv_set', 'SET email = lower(email), n = n + $by',
             scope => 'id % 2 = 0', params => '{\"by\": {\"type\": \"int\", \"default\": 1}}',
             batch_size => 10);",
    );
    let table = table_state(&mut db, "pv_set");
    let catalog = catalog_state(&mut db, "pv_set");
    let stats = tuple_stats(&mut db, "pv_set");
    let backfills = tuple_stats(&mut db, "drip.backfills");

    let rows = preview(&mut db.c, "drip.preview('pv_set', rows => 5)");
    let expect = |id: i64| -> Change {
        (
            id.to_string(),
            Some(json!({"email": format!("User{id}@X.COM"), "n": 0})),
            Some(json!({"email": format!("user{id}@x.com"), "n": 1})),
        )
    };
    assert_eq!(
        rows,
        vec![expect(2), expect(4), expect(6), expect(8), expect(10)]
    );

    // Parameters and from_key as drip.start takes them (from_key is exclusive).
    let rows = preview(
        &mut db.c,
        "drip.preview('pv_set', '{\"by\": 5}', 2, from_key => '90')",
    );
    assert_eq!(
        rows.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        ["92", "94"]
    );
    assert_eq!(rows[0].2, Some(json!({"email": "user92@x.com", "n": 5})));
    // Past the last key: nothing.
    assert!(preview(&mut db.c, "drip.preview('pv_set', from_key => '100')").is_empty());

    assert_eq!(table_state(&mut db, "pv_set"), table, "the table changed");
    assert_eq!(
        catalog_state(&mut db, "pv_set"),
        catalog,
        "the catalog changed"
    );
    // The statistics count the rolled-back updates (5 + 2: what the two previews updated), as
    // Postgres counts every attempted change; nothing was inserted or deleted, and the catalog
    // was not written at all.
    let after = tuple_stats_reaching(&mut db, "pv_set", (stats.0, stats.1 + 7, stats.2));
    assert_eq!(after, (stats.0, stats.1 + 7, stats.2));
    assert_eq!(tuple_stats(&mut db, "drip.backfills"), backfills);

    // Inside the caller's transaction: the rows are back as they were right after the call,
    // and the preview's row and table locks are gone although the transaction goes on.
    db.exec("BEGIN");
    assert_eq!(
        preview(&mut db.c, "drip.preview('pv_set', rows => 3)").len(),
        3
    );
    let mut other = connect();
    other
        .batch_execute(
            "SET lock_timeout = '2s'; BEGIN; UPDATE pv_set SET note = 'other' WHERE id = 2; \
             LOCK TABLE pv_set IN ACCESS EXCLUSIVE MODE NOWAIT; ROLLBACK",
        )
        .expect("the preview holds no lock once it has returned");
    assert_eq!(
        db.i64("SELECT count(*) FROM pv_set WHERE email <> lower(email)"),
        100
    );
    db.exec("COMMIT");
    assert_eq!(table_state(&mut db, "pv_set"), table, "the table changed");
}

#[test]
fn preview_of_delete_element_and_statement_actions() {
    let mut db = db();
    db.exec(
        "DROP TABLE IF EXISTS pv_del, pv_row, pv_stmt, pv_log;
         CREATE TABLE pv_del (id int PRIMARY KEY, v text);
         INSERT INTO pv_del SELECT g, 'v' || g FROM generate_series(1, 50) g;
         CREATE TABLE pv_row (a int, b text, n int NOT NULL DEFAULT 0, PRIMARY KEY (a, b));
         INSERT INTO pv_row SELECT g / 3, 'k' || g % 3, g FROM generate_series(3, 32) g;
         CREATE TABLE pv_stmt (id int PRIMARY KEY, n int NOT NULL);
         INSERT INTO pv_stmt SELECT g * 10, g FROM generate_series(1, 20) g;
         CREATE TABLE pv_log (id int);
         SELECT drip.unregister(name) FROM drip.backfills WHERE name LIKE 'pv\\_%' AND name IN ('pv_del', 'pv_row', 'pv_stmt');
         SELECT name FROM drip.register('pv_del', 'pv_del', 'DELETE', scope => 'id > 45');
         SELECT name FROM drip.register('pv_row', 'pv_row', 'SET n = -n', mode => 'row', batch_size => 4);
         SELECT name FROM drip.register('pv_stmt', 'pv_stmt',
             'WITH up AS (UPDATE pv_stmt t SET n = t.n * 100 FROM drip_batch b WHERE t.id = b.id AND b.n % 2 = 1 RETURNING t.id) \
              INSERT INTO pv_stmt (id, n) SELECT id + 1, 0 FROM up', batch_size => 5);",
    );
    let states: Vec<(String, String)> = ["pv_del", "pv_row", "pv_stmt"]
        .iter()
        .map(|t| (table_state(&mut db, t), catalog_state(&mut db, t)))
        .collect();

    // DELETE: the whole row before, nothing after.
    let rows = preview(&mut db.c, "drip.preview('pv_del')");
    assert_eq!(rows.len(), 5);
    assert_eq!(
        rows[0],
        ("46".into(), Some(json!({"id": 46, "v": "v46"})), None)
    );
    assert!(rows.iter().all(|r| r.2.is_none()));

    // Element mode, composite key: one row per row, keys as drip.batches shows them.
    let rows = preview(&mut db.c, "drip.preview('pv_row', rows => 4)");
    assert_eq!(
        rows,
        vec![
            ("1,k0".into(), Some(json!({"n": 3})), Some(json!({"n": -3}))),
            ("1,k1".into(), Some(json!({"n": 4})), Some(json!({"n": -4}))),
            ("1,k2".into(), Some(json!({"n": 5})), Some(json!({"n": -5}))),
            ("2,k0".into(), Some(json!({"n": 6})), Some(json!({"n": -6}))),
        ]
    );
    let rows = preview(
        &mut db.c,
        "drip.preview('pv_row', rows => 1, from_key => '[\"2\", \"k0\"]')",
    );
    assert_eq!(rows[0].0, "2,k1");

    // A statement: the rows it updated and the rows it inserted into the batch's key range
    // (a batch of 4 keys, 10 to 40: it updates 10 and 30 and inserts 11 and 31).
    let rows = preview(&mut db.c, "drip.preview('pv_stmt', rows => 4)");
    assert_eq!(
        rows,
        vec![
            ("10".into(), Some(json!({"n": 1})), Some(json!({"n": 100}))),
            ("30".into(), Some(json!({"n": 3})), Some(json!({"n": 300}))),
            ("11".into(), None, Some(json!({"id": 11, "n": 0}))),
            ("31".into(), None, Some(json!({"id": 31, "n": 0}))),
        ]
    );

    for (t, (table, catalog)) in ["pv_del", "pv_row", "pv_stmt"].iter().zip(&states) {
        assert_eq!(&table_state(&mut db, t), table, "{t} changed");
        assert_eq!(
            &catalog_state(&mut db, t),
            catalog,
            "catalog of {t} changed"
        );
    }
}

#[test]
fn preview_refuses_bad_input_exactly_like_start() {
    let mut db = db();
    db.exec(
        "DROP TABLE IF EXISTS pv_bad;
         CREATE TABLE pv_bad (id int PRIMARY KEY, d date, a text NOT NULL, b int NOT NULL);
         CREATE UNIQUE INDEX ON pv_bad (a, b);
         INSERT INTO pv_bad VALUES (1, '2024-01-01', 'x', 1);
         SELECT drip.unregister(name) FROM drip.backfills WHERE name IN ('pv_bad', 'pv_bad2');
         SELECT name FROM drip.register('pv_bad', 'pv_bad', 'SET d = $day',
             params => '{\"day\": {\"type\": \"date\", \"required\": true}}');
         SELECT name FROM drip.register('pv_bad2', 'pv_bad', 'SET d = NULL', key => '{a,b}');",
    );
    // The same (SQLSTATE, message) from drip.start and drip.preview for the same input.
    let cases: &[(&str, &str, &str)] = &[
        ("'no_such_backfill', '{}'", "", "42704"),
        ("'pv_bad', '{}'", "", "22023"),
        (
            "'pv_bad', '{\"day\": \"2024-01-01\", \"nope\": 1}'",
            "",
            "22023",
        ),
        ("'pv_bad', '[1]'", "", "22023"),
        ("'pv_bad', '{\"day\": \"not a date\"}'", "", "22007"),
        (
            "'pv_bad', '{\"day\": \"2024-01-01\"}'",
            "from_key => 'abc'",
            "22P02",
        ),
        ("'pv_bad2', '{}'", "from_key => '[\"x\"]'", "22023"),
        ("'pv_bad2', '{}'", "from_key => '[\"x\", \"y\"]'", "22P02"),
    ];
    for (args, extra, code) in cases {
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!(", {extra}")
        };
        let start = error(&mut db.c, &format!("SELECT drip.start({args}{extra})"));
        let preview = error(
            &mut db.c,
            &format!("SELECT * FROM drip.preview({args}{extra})"),
        );
        assert_eq!(preview, start, "{args}{extra}");
        assert_eq!(&preview.0, code, "{args}{extra}: {}", preview.1);
    }
    // Its own arguments.
    assert_eq!(db.sqlstate("SELECT * FROM drip.preview(NULL)"), "22004");
    assert_eq!(
        db.sqlstate("SELECT * FROM drip.preview('pv_bad2', rows => NULL)"),
        "22004"
    );
    assert_eq!(
        error(
            &mut db.c,
            "SELECT * FROM drip.preview('pv_bad2', rows => 0)"
        ),
        ("22023".into(), "rows must be at least 1, got 0".into())
    );
    // Nothing was started.
    assert_eq!(
        db.i64("SELECT count(*) FROM drip.runs WHERE backfill IN ('pv_bad', 'pv_bad2')"),
        0
    );
}

#[test]
fn a_failing_action_returns_its_own_error_and_changes_nothing() {
    let mut db = db();
    db.exec(
        "DROP TABLE IF EXISTS pv_fail;
         CREATE TABLE pv_fail (id int PRIMARY KEY, n int NOT NULL CHECK (n < 1000));
         INSERT INTO pv_fail SELECT g, g FROM generate_series(1, 40) g;
         SELECT drip.unregister(name) FROM drip.backfills WHERE name LIKE 'pv\\_fail%';
         SELECT name FROM drip.register('pv_fail_div', 'pv_fail', 'SET n = n / (id - 7)', batch_size => 5);
         SELECT name FROM drip.register('pv_fail_check', 'pv_fail', 'SET n = n * 100', batch_size => 5);
         SELECT name FROM drip.register('pv_fail_row', 'pv_fail', 'SET n = n / (id - 3)', mode => 'row');
         SELECT name FROM drip.register('pv_fail_lock', 'pv_fail', 'SET n = n + 1', lock_timeout => '100ms');
         SELECT name FROM drip.register('pv_fail_slow', 'pv_fail', 'SET n = n + (SELECT 0 FROM pg_sleep(0.3))',
             statement_timeout => '200ms');
         SELECT name FROM drip.register('pv_fail_ok', 'pv_fail', 'SET n = n + 1', statement_timeout => '1s');
         DROP TABLE IF EXISTS pv_defer;
         CREATE TABLE pv_defer (id int PRIMARY KEY, u int UNIQUE DEFERRABLE INITIALLY DEFERRED);
         INSERT INTO pv_defer SELECT g, g FROM generate_series(1, 10) g;
         SELECT name FROM drip.register('pv_fail_defer', 'pv_defer', 'SET u = 1');",
    );
    let table = table_state(&mut db, "pv_fail");

    let (code, message) = error(&mut db.c, "SELECT * FROM drip.preview('pv_fail_div')");
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("22012", "division by zero")
    );
    // Rows 1..5 were fine; the error is the action's, not a half preview.
    let (code, message) = error(
        &mut db.c,
        "SELECT * FROM drip.preview('pv_fail_check', rows => 40)",
    );
    assert_eq!(code, "23514", "{message}");
    // Element mode: the failing row's error, and which row it was.
    match db.c.query("SELECT * FROM drip.preview('pv_fail_row')", &[]) {
        Ok(_) => panic!("expected division by zero"),
        Err(e) => {
            let e = e.as_db_error().expect("a server error");
            assert_eq!(e.code().code(), "22012");
            assert!(
                e.detail().unwrap_or_default().contains("[\"3\"]"),
                "{:?}",
                e.detail()
            );
        }
    }

    // A deferred constraint: the action runs in a security-restricted operation, where
    // Postgres refuses deferred triggers, exactly as in a run's batch (which fails the same way).
    let (code, message) = error(&mut db.c, "SELECT * FROM drip.preview('pv_fail_defer')");
    assert_eq!(
        (code.as_str(), message.as_str()),
        (
            "42501",
            "cannot fire deferred trigger within security-restricted operation"
        )
    );
    assert_eq!(db.i64("SELECT count(DISTINCT u) FROM pv_defer"), 10);

    // The backfill's lock_timeout: a row locked by another session stops the preview promptly.
    let mut holder = connect();
    holder
        .batch_execute("BEGIN; SELECT * FROM pv_fail WHERE id = 3 FOR UPDATE")
        .unwrap();
    let started = Instant::now();
    let (code, _) = error(&mut db.c, "SELECT * FROM drip.preview('pv_fail_lock')");
    assert_eq!(code, "55P03");
    assert!(started.elapsed() < Duration::from_secs(5));
    holder.batch_execute("ROLLBACK").unwrap();

    // The backfill's statement_timeout applies to the action; the caller's own
    // statement_timeout is back in force afterwards for the rest of the statement.
    let (code, message) = error(&mut db.c, "SELECT * FROM drip.preview('pv_fail_slow')");
    assert_eq!(code, "57014", "{message}");
    db.exec("SET statement_timeout = '1500ms'");
    let started = Instant::now();
    let (code, _) = error(
        &mut db.c,
        "SELECT (SELECT count(*) FROM drip.preview('pv_fail_ok')), pg_sleep(4)",
    );
    assert_eq!(code, "57014");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the caller's statement_timeout was lost: {:?}",
        started.elapsed()
    );
    // A caller's timeout shorter than the backfill's stays in force during the action.
    db.exec("SET statement_timeout = '100ms'");
    let (code, _) = error(
        &mut db.c,
        "SELECT * FROM drip.preview('pv_fail_slow', rows => 1)",
    );
    assert_eq!(code, "57014");
    db.exec("RESET statement_timeout");

    assert_eq!(table_state(&mut db, "pv_fail"), table, "the table changed");
    assert_eq!(
        preview(&mut db.c, "drip.preview('pv_fail_ok', rows => 2)").len(),
        2
    );
}

#[test]
fn preview_runs_as_the_owner_under_row_level_security() {
    let mut db = db();
    db.exec(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pv_alice') THEN
             CREATE ROLE pv_alice LOGIN;
             CREATE ROLE pv_bob LOGIN;
           END IF;
         END $$;
         GRANT USAGE ON SCHEMA drip TO pv_alice, pv_bob;
         DROP TABLE IF EXISTS pv_rls;
         CREATE TABLE pv_rls (id int PRIMARY KEY, tenant name NOT NULL, touched_by name);
         INSERT INTO pv_rls SELECT g, CASE WHEN g % 3 = 0 THEN 'pv_alice' ELSE 'someone' END FROM generate_series(1, 30) g;
         ALTER TABLE pv_rls ENABLE ROW LEVEL SECURITY;
         CREATE POLICY mine ON pv_rls USING (tenant = current_user);
         GRANT SELECT, UPDATE ON pv_rls TO pv_alice;
         SELECT drip.unregister(name) FROM drip.backfills WHERE name = 'pv_rls';",
    );
    let mut alice = connect_as("pv_alice");
    alice
        .batch_execute(
            "SET search_path = public; \
             SELECT name FROM drip.register('pv_rls', 'pv_rls', 'SET touched_by = current_user')",
        )
        .unwrap();
    let table = table_state(&mut db, "pv_rls");
    // A superuser previews alice's backfill: it runs as alice, so her policy decides the rows.
    let rows = preview(&mut db.c, "drip.preview('pv_rls', rows => 3)");
    assert_eq!(
        rows,
        ["3", "6", "9"]
            .iter()
            .map(|k| (
                k.to_string(),
                Some(json!({"touched_by": null})),
                Some(json!({"touched_by": "pv_alice"}))
            ))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        preview(&mut alice, "drip.preview('pv_rls', rows => 100)").len(),
        10
    );
    // bob may not control it: the same refusal as drip.start.
    let mut bob = connect_as("pv_bob");
    let start = error(&mut bob, "SELECT drip.start('pv_rls')");
    let refused = error(&mut bob, "SELECT * FROM drip.preview('pv_rls')");
    assert_eq!(refused, start);
    assert_eq!(refused.0, "42501");
    // The owner's privileges, not the caller's: without UPDATE the action fails for alice even
    // when a superuser previews it.
    db.exec("REVOKE UPDATE ON pv_rls FROM pv_alice");
    let (code, _) = error(&mut db.c, "SELECT * FROM drip.preview('pv_rls')");
    assert_eq!(code, "42501");
    assert_eq!(table_state(&mut db, "pv_rls"), table, "the table changed");
}

#[test]
fn preview_of_a_partitioned_table_with_a_timestamp_key() {
    let mut db = db();
    db.exec(
        "DROP TABLE IF EXISTS pv_part;
         CREATE TABLE pv_part (at timestamptz NOT NULL, id int NOT NULL, v numeric NOT NULL,
                               PRIMARY KEY (at, id)) PARTITION BY RANGE (at);
         CREATE TABLE pv_part_1 PARTITION OF pv_part FOR VALUES FROM ('2024-01-01') TO ('2024-02-01');
         CREATE TABLE pv_part_2 PARTITION OF pv_part FOR VALUES FROM ('2024-02-01') TO ('2024-03-01');
         INSERT INTO pv_part SELECT timestamptz '2024-01-30 00:00:00+00' + g * interval '1 day', g, 1.0
           FROM generate_series(1, 6) g;
         SELECT drip.unregister(name) FROM drip.backfills WHERE name = 'pv_part';
         SELECT name FROM drip.register('pv_part', 'pv_part', 'SET v = v * 1.50', scope => 'id % 2 = 1');",
    );
    let table = table_state(&mut db, "pv_part");
    db.exec("SET TimeZone = 'America/New_York'");
    // Keys as drip.batches shows them (canonical, in UTC, whatever the session's TimeZone);
    // rows from both partitions; numbers with their exact text.
    let rows = preview(&mut db.c, "drip.preview('pv_part', rows => 2)");
    let (old, new): (Value, Value) = (
        serde_json::from_str(r#"{"v": 1.0}"#).unwrap(),
        serde_json::from_str(r#"{"v": 1.500}"#).unwrap(),
    );
    assert_eq!(
        rows,
        vec![
            (
                "2024-01-31 00:00:00+00,1".into(),
                Some(old.clone()),
                Some(new.clone())
            ),
            ("2024-02-02 00:00:00+00,3".into(), Some(old), Some(new)),
        ]
    );
    // from_key in the caller's notation (here the session's time zone), exclusive.
    let rows = preview(
        &mut db.c,
        "drip.preview('pv_part', from_key => '[\"2024-02-01 19:00:00-05\", 3]')",
    );
    assert_eq!(
        rows.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        ["2024-02-04 00:00:00+00,5"]
    );
    db.exec("RESET TimeZone");
    assert_eq!(table_state(&mut db, "pv_part"), table, "the table changed");
}
