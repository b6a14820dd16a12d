//! Every row exactly once at the edges: session settings of the caller and of the worker, tiny
//! ranges split into parallel slices, and a catalog dropped or replaced under a running worker.

use std::time::{Duration, Instant};

use super::{connect, connect_db, db, poll_until, Db};

/// Settings under which text forms of keys look different from the defaults: a caller (and a
/// worker, through the database's defaults) with these must not change which rows a run does.
const CALLER_SETTINGS: &str = "SET DateStyle = 'SQL, DMY'; SET TimeZone = 'Asia/Kathmandu';
     SET IntervalStyle = 'sql_standard'; SET extra_float_digits = -15;
     SET bytea_output = 'escape'; SET lc_monetary = 'C';";

/// Key types and how to make ~120 distinct, awkward values of each from `g`.
const KEY_TYPES: &[(&str, &str, &str)] = &[
    (
        "timestamptz",
        "timestamptz",
        "CASE WHEN g = 1 THEN '-infinity'::timestamptz WHEN g = 2 THEN '0044-03-15 12:00:00+00 BC'::timestamptz \
         WHEN g = 120 THEN 'infinity'::timestamptz \
         ELSE '2024-01-31 23:59:59.999999+00'::timestamptz + g * interval '7 hours 13 min 0.000001 s' END",
    ),
    (
        "timestamp",
        "timestamp",
        "CASE WHEN g = 2 THEN '0044-03-15 12:00:00 BC'::timestamp \
         ELSE '2024-02-29 13:00:00.5'::timestamp + g * interval '1 day 1 hour 0.000001 s' END",
    ),
    (
        "date",
        "date",
        "CASE WHEN g = 1 THEN '4713-01-01 BC'::date WHEN g = 120 THEN 'infinity'::date \
         ELSE '2024-01-12'::date + g * 31 END",
    ),
    (
        "float4",
        "float4",
        "CASE WHEN g = 120 THEN '3.4028235e38'::float4 ELSE (g / 7.0::float8)::float4 END",
    ),
    (
        "float8",
        "float8",
        "CASE WHEN g = 120 THEN 1.7976931348623157e308::float8 WHEN g = 1 THEN 5e-324::float8 \
         ELSE g / 7.0::float8 + 1e-12 END",
    ),
    (
        "numeric",
        "numeric",
        "CASE WHEN g = 1 THEN 1e-30 ELSE g / 7.0 + 0.12345678901234567890123 END",
    ),
    (
        "interval",
        "interval",
        "g * interval '1 day 1 hour 1.5 s' - interval '3 days'",
    ),
    (
        "bytea",
        "bytea",
        "CASE WHEN g = 1 THEN '\\x00'::bytea ELSE decode(lpad(to_hex(g * 2654435), 8, '0'), 'hex') END",
    ),
    (
        "text_icu",
        "text COLLATE \"und-x-icu\"",
        "chr(65 + (g * 7) % 26) || chr(97 + g % 26) || CASE WHEN g % 3 = 0 THEN 'é' ELSE '' END || g",
    ),
    ("uuid", "uuid", "md5(g::text)::uuid"),
];

/// Undo ALTER DATABASE ... SET even when a test fails.
struct DatabaseSettings(String);

impl DatabaseSettings {
    fn set(db: &mut Db) -> DatabaseSettings {
        let name = db.text("SELECT current_database()::text");
        db.exec(&format!(
            "ALTER DATABASE \"{name}\" SET DateStyle = 'German, MDY';
             ALTER DATABASE \"{name}\" SET TimeZone = 'America/St_Johns';
             ALTER DATABASE \"{name}\" SET IntervalStyle = 'iso_8601';
             ALTER DATABASE \"{name}\" SET extra_float_digits = -10;
             ALTER DATABASE \"{name}\" SET bytea_output = 'escape';"
        ));
        DatabaseSettings(name)
    }
}

impl Drop for DatabaseSettings {
    fn drop(&mut self) {
        let _ = connect().batch_execute(&format!("ALTER DATABASE \"{}\" RESET ALL", self.0));
    }
}

/// Rows of `table` whose counter is not `want` (within `(from, to]` when given).
fn wrong_rows(db: &mut Db, table: &str, filter: &str) -> i64 {
    db.i64(&format!("SELECT count(*) FROM {table} WHERE {filter}"))
}

#[test]
fn keys_round_trip_whatever_the_settings_of_caller_and_worker() {
    let mut db = db();
    let _worker_settings = DatabaseSettings::set(&mut db);
    // A fresh connection: this session has the database's odd defaults, then odder ones.
    let mut db = Db {
        c: connect(),
        _serial: db._serial,
    };
    db.exec(CALLER_SETTINGS);
    let mut tables = Vec::new();
    // Builds without ICU (the PostgreSQL 16 wheel) test text keys with the C collation only.
    let has_icu = db.i64("SELECT count(*) FROM pg_collation WHERE collname = 'und-x-icu'") > 0;
    for (name, ty, value) in KEY_TYPES {
        if *name == "text_icu" && !has_icu {
            eprintln!("no ICU collations in this build: text keys use the C collation");
        }
        let ty = if *name == "text_icu" && !has_icu {
            "text"
        } else {
            ty
        };
        let t = format!("kt_{name}");
        db.exec(&format!(
            "CREATE TABLE {t} (k {ty} PRIMARY KEY, n int NOT NULL DEFAULT 0);
             INSERT INTO {t} (k) SELECT {value} FROM generate_series(1, 120) g;
             SELECT drip.register('{t}', '{t}', 'SET n = n + 1', batch_size => 7, sleep => '0');"
        ));
        tables.push((t, *name));
    }
    db.exec(
        "CREATE TABLE kt_composite (a timestamptz, b float8, n int NOT NULL DEFAULT 0, PRIMARY KEY (a, b));
         INSERT INTO kt_composite (a, b)
           SELECT '2024-03-31 01:30:00+00'::timestamptz + (g % 5) * interval '1.000001 s', g / 3.0::float8
           FROM generate_series(1, 120) g;
         SELECT drip.register('kt_composite', 'kt_composite', 'SET n = n + 1', batch_size => 7, sleep => '0');",
    );
    tables.push(("kt_composite".into(), "composite"));

    for (t, name) in &tables {
        let keys = db.i64(&format!("SELECT count(*) FROM {t}"));
        assert_eq!(keys, 120, "{t}: distinct values");
        for parallel in [1, 3] {
            db.exec(&format!("UPDATE {t} SET n = 0"));
            let run = db.start(&format!("SELECT drip.start('{t}', parallel => {parallel})"));
            assert_eq!(db.wait_done(run), "completed", "{name} parallel {parallel}");
            assert_eq!(
                wrong_rows(&mut db, t, "n <> 1"),
                0,
                "{name}, parallel {parallel}: rows not processed exactly once"
            );
            assert_eq!(
                db.i64(&format!("SELECT rows_done FROM drip.runs WHERE id = {run}")),
                120,
                "{name}, parallel {parallel}: rows_done"
            );
        }
        if *name == "composite" {
            continue;
        }
        // from_key and to_key written in the caller's own notation.
        db.exec(&format!("UPDATE {t} SET n = 0"));
        let from = db.text(&format!(
            "SELECT k::text FROM {t} ORDER BY {t}.k OFFSET 9 LIMIT 1"
        ));
        let to = db.text(&format!(
            "SELECT k::text FROM {t} ORDER BY {t}.k OFFSET 99 LIMIT 1"
        ));
        let run =
            db.c.query_one(
                "SELECT drip.start($1, from_key => $2, to_key => $3, parallel => 2)",
                &[t, &from, &to],
            )
            .unwrap_or_else(|e| panic!("{name}: start with from {from:?} to {to:?}: {e}"))
            .get::<_, i64>(0);
        assert_eq!(db.wait_done(run), "completed", "{name} range");
        // What the caller's session means by those texts decides the range (a lossy notation,
        // such as floats with extra_float_digits = -15, names a rounded value).
        let cast = if *name == "text_icu" { "text" } else { name };
        let (inside, outside): (i64, i64) = {
            let r = db
                .c
                .query_one(
                    &format!(
                        "SELECT count(*) FILTER (WHERE k > $1::text::{cast} AND k <= $2::text::{cast} AND n <> 1), \
                                count(*) FILTER (WHERE NOT (k > $1::text::{cast} AND k <= $2::text::{cast}) AND n <> 0) \
                         FROM {t}"
                    ),
                    &[&from, &to],
                )
                .unwrap();
            (r.get(0), r.get(1))
        };
        let in_range =
            db.c.query_one(
                &format!(
                    "SELECT count(*) FROM {t} WHERE k > $1::text::{cast} AND k <= $2::text::{cast}"
                ),
                &[&from, &to],
            )
            .unwrap()
            .get::<_, i64>(0);
        assert!(
            in_range > 50,
            "{name}: only {in_range} keys in ({from:?}, {to:?}]"
        );
        assert_eq!(
            (inside, outside),
            (0, 0),
            "{name}: from {from:?} to {to:?} in the caller's notation"
        );
    }
    // Stored keys are canonical: ISO timestamps in UTC, whatever the writer's settings.
    let stored = db.text(
        "SELECT r.to_key[1] FROM drip.runs r WHERE r.backfill = 'kt_timestamptz' ORDER BY r.id LIMIT 1",
    );
    assert_eq!(stored, "infinity");
    let cursor = db.text(
        "SELECT b.high_key[1] FROM drip.batches b JOIN drip.runs r ON r.id = b.run_id \
         WHERE r.backfill = 'kt_timestamptz' AND b.batch_no = 2 ORDER BY r.id LIMIT 1",
    );
    assert!(
        cursor.ends_with("+00"),
        "canonical timestamptz key: {cursor}"
    );
}

#[test]
fn a_key_value_error_names_the_key_column() {
    let mut db = db();
    db.exec(
        "CREATE TABLE ke_t (at timestamptz PRIMARY KEY, n int NOT NULL DEFAULT 0);
         SELECT drip.register('ke_t', 'ke_t', 'SET n = n + 1');",
    );
    let err =
        db.c.batch_execute("SELECT drip.start('ke_t', from_key => 'not a time')")
            .expect_err("bad from_key");
    let e = err.as_db_error().expect("db error");
    assert_eq!(e.code().code(), "22007");
    assert!(
        e.message().contains("key column") && e.message().contains("from_key.at"),
        "{}",
        e.message()
    );
    assert!(!e.message().contains("parameter"), "{}", e.message());
}

#[test]
fn parallel_runs_on_tiny_ranges_process_each_row_once() {
    let mut db = db();
    for keys in [0, 1, 2, 3, 7, 50] {
        db.exec(&format!(
            "CREATE TABLE pt_{keys} (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
             INSERT INTO pt_{keys} (id) SELECT generate_series(1, {keys});
             SELECT drip.register('pt_{keys}', 'pt_{keys}', 'SET n = n + 1', batch_size => 2, sleep => '0');"
        ));
    }
    for round in 0..3 {
        for keys in [0, 1, 2, 3, 7, 50] {
            for parallel in [2, 3, 4, 8] {
                db.exec(&format!("UPDATE pt_{keys} SET n = 0"));
                let run = db.start(&format!(
                    "SELECT drip.start('pt_{keys}', parallel => {parallel})"
                ));
                assert_eq!(db.wait_done(run), "completed");
                let ctx = format!("{keys} keys, parallel {parallel}, round {round}");
                assert_eq!(
                    db.i64(&format!("SELECT count(*) FROM pt_{keys} WHERE n <> 1")),
                    0,
                    "{ctx}: rows not processed exactly once"
                );
                // The stored slice count and the slice rows agree; never more slices than keys.
                let (stored, slices) = {
                    let r = db
                        .c
                        .query_one(
                            "SELECT parallel, (SELECT count(*) FROM drip.slices WHERE run_id = $1) \
                             FROM drip.runs WHERE id = $1",
                            &[&run],
                        )
                        .unwrap();
                    (r.get::<_, i32>(0), r.get::<_, i64>(1))
                };
                if stored == 1 {
                    assert_eq!(slices, 0, "{ctx}");
                } else {
                    assert_eq!(stored as i64, slices, "{ctx}");
                }
                assert!(
                    stored as i64 <= (keys as i64).max(1),
                    "{ctx}: {stored} slices"
                );
            }
        }
    }
}

/// Rows of `table` changed so far, polled until it stops moving for `quiet`.
fn settled_count(c: &mut postgres::Client, table: &str, quiet: Duration) -> i64 {
    let sql = format!("SELECT count(*) FROM {table} WHERE n > 0");
    let mut last: i64 = c.query_one(&sql, &[]).unwrap().get(0);
    let mut since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now: i64 = c.query_one(&sql, &[]).unwrap().get(0);
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return now;
        }
        assert!(Instant::now() < deadline, "{table} keeps changing");
    }
}

#[test]
fn a_worker_stops_touching_anything_once_its_catalog_is_dropped_or_replaced() {
    let mut db = db();
    db.exec("DROP DATABASE IF EXISTS drip_reinstall WITH (FORCE)");
    db.exec("CREATE DATABASE drip_reinstall");
    let mut c = connect_db("drip_reinstall");
    let setup = "CREATE EXTENSION data_drip;
         CREATE TABLE IF NOT EXISTS old_t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         TRUNCATE old_t;
         INSERT INTO old_t (id) SELECT generate_series(1, 100000);
         SELECT drip.register('slow', 'old_t', 'SET n = n + 1', batch_size => 100, sleep => '20 ms');";
    for recreate in [true, false] {
        c.batch_execute(setup).unwrap();
        let run: i64 = c
            .query_one("SELECT drip.start('slow')", &[])
            .unwrap()
            .get(0);
        // Let it get going.
        poll_until(
            &mut c,
            "SELECT count(*) FROM old_t WHERE n > 0",
            500,
            Duration::from_secs(30),
            &format!("run {run} made no progress"),
        );
        if recreate {
            // The new catalog's run gets the same id and works on another table.
            c.batch_execute(
                "BEGIN;
                 DROP EXTENSION data_drip CASCADE;
                 CREATE EXTENSION data_drip;
                 CREATE TABLE IF NOT EXISTS new_t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
                 INSERT INTO new_t (id) SELECT generate_series(1, 300);
                 SELECT drip.register('fresh', 'new_t', 'SET n = n + 1', batch_size => 50, sleep => '0');
                 SELECT drip.start('fresh');
                 COMMIT;",
            )
            .unwrap();
        } else {
            c.batch_execute("DROP EXTENSION data_drip CASCADE").unwrap();
        }
        let frozen = settled_count(&mut c, "old_t", Duration::from_millis(1500));
        std::thread::sleep(Duration::from_secs(1));
        let later: i64 = c
            .query_one("SELECT count(*) FROM old_t WHERE n > 0", &[])
            .unwrap()
            .get(0);
        assert_eq!(later, frozen, "old_t changed after its catalog was dropped");
        assert!(
            frozen < 100000,
            "the old run finished before the drop; test too slow"
        );
        assert_eq!(
            c.query_one("SELECT count(*) FROM old_t WHERE n > 1", &[])
                .unwrap()
                .get::<_, i64>(0),
            0
        );
        if recreate {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let s: String = c
                    .query_one("SELECT status FROM drip.runs WHERE backfill = 'fresh'", &[])
                    .unwrap()
                    .get(0);
                if s == "completed" {
                    break;
                }
                assert!(Instant::now() < deadline, "the new run is {s}");
                std::thread::sleep(Duration::from_millis(50));
            }
            assert_eq!(
                c.query_one("SELECT count(*) FROM new_t WHERE n <> 1", &[])
                    .unwrap()
                    .get::<_, i64>(0),
                0
            );
            c.batch_execute("DROP EXTENSION data_drip CASCADE").unwrap();
        }
    }
    drop(c);
    db.exec("DROP DATABASE drip_reinstall WITH (FORCE)");
}

#[test]
fn a_poison_error_text_is_recorded_and_bounds_the_run() {
    let mut db = db();
    // Control characters grow six-fold when JSON-escaped: past the NOTIFY limit in 0.1.0.
    db.exec(
        "CREATE FUNCTION pe_poison(i int) RETURNS int LANGUAGE plpgsql AS $$
         BEGIN
           IF i = 5 THEN RAISE EXCEPTION '%', repeat(chr(1) || chr(27) || '\"\\', 2500); END IF;
           RETURN 1;
         END $$;
         CREATE TABLE pe_t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO pe_t (id) SELECT generate_series(1, 20);
         SELECT drip.register('pe_t', 'pe_t', 'SET n = n + pe_poison(id)', batch_size => 3,
                              sleep => '0', max_attempts => 2);",
    );
    let run = db.start("SELECT drip.start('pe_t')");
    assert_eq!(db.wait_done(run), "failed");
    // Two attempts of the poisoned batch, no more; nothing left running.
    std::thread::sleep(Duration::from_millis(500));
    let r =
        db.c.query_one(
            "SELECT attempts, status, length(error) > 1000, sqlstate FROM drip.batches \
             WHERE run_id = $1 AND low_key = ARRAY['3']",
            &[&run],
        )
        .unwrap();
    assert_eq!(r.get::<_, i32>(0), 2);
    assert_eq!(r.get::<_, String>(1), "failed");
    assert!(r.get::<_, bool>(2), "the error text is kept");
    assert_eq!(r.get::<_, String>(3), "P0001");
    assert_eq!(
        db.i64(&format!(
            "SELECT count(*) FROM drip.batches WHERE run_id = {run} AND status = 'running'"
        )),
        0
    );
    assert_eq!(db.status(run), "failed");
    // The rows before the poisoned batch were done exactly once, the rest not at all.
    assert_eq!(
        db.i64("SELECT count(*) FROM pe_t WHERE id <= 3 AND n <> 1"),
        0
    );
    assert_eq!(
        db.i64("SELECT count(*) FROM pe_t WHERE id > 3 AND n <> 0"),
        0
    );
    let events = db.i64(&format!(
        "SELECT count(*) FROM drip.events WHERE run_id = {run} AND event = 'batch_failed'"
    ));
    assert_eq!(events, 2, "one batch_failed event per attempt");
}

#[test]
fn an_unschedulable_run_is_refused_and_a_broken_one_stalls_nothing() {
    let mut db = db();
    db.exec(
        "CREATE TABLE us_a (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         CREATE TABLE us_b (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO us_a (id) SELECT generate_series(1, 100);
         INSERT INTO us_b (id) SELECT generate_series(1, 100);
         SELECT drip.register('us_a', 'us_a', 'SET n = n + 1', batch_size => 10, sleep => '0');
         SELECT drip.register('us_b', 'us_b', 'SET n = n + 1', batch_size => 10, sleep => '0');",
    );
    for at in ["infinity", "-infinity"] {
        let err =
            db.c.batch_execute(&format!("SELECT drip.start('us_a', start_at => '{at}')"))
                .expect_err("start_at must be finite");
        let e = err.as_db_error().expect("db error");
        assert_eq!(e.code().code(), "22008", "{at}: {}", e.message());
        assert!(e.hint().is_some());
    }
    assert_eq!(
        db.i64("SELECT count(*) FROM drip.runs WHERE backfill = 'us_a'"),
        0,
        "nothing written"
    );
    // A run broken behind the API's back (a superuser's UPDATE): the scheduler must go on
    // launching the others.
    let broken = db.start("SELECT drip.start('us_a', start_at => now() + interval '1 hour')");
    db.exec(&format!(
        "UPDATE drip.runs SET start_at = 'infinity' WHERE id = {broken}"
    ));
    let run = db.start("SELECT drip.start('us_b')");
    assert_eq!(db.wait_done(run), "completed");
    assert_eq!(db.i64("SELECT count(*) FROM us_b WHERE n <> 1"), 0);
    assert_eq!(db.status(broken), "pending");
    db.exec(&format!("SELECT drip.stop({broken})"));
}

#[test]
fn values_arrive_exactly_and_start_uses_the_registered_search_path() {
    let mut db = db();
    db.exec(
        "CREATE TABLE nx_t (id int PRIMARY KEY, v numeric);
         INSERT INTO nx_t (id) SELECT generate_series(1, 5);
         SELECT drip.register('nx', 'nx_t', 'SET v = $x', params => '{\"x\": \"numeric\"}', sleep => '0');",
    );
    for (json, want) in [
        ("0.12345678901234567890123", "0.12345678901234567890123"),
        ("1e400", "1e400"),
        ("-12345678901234567890.5", "-12345678901234567890.5"),
    ] {
        let run = db.start(&format!("SELECT drip.start('nx', '{{\"x\": {json}}}')"));
        assert_eq!(db.wait_done(run), "completed", "{json}");
        assert_eq!(
            db.i64(&format!(
                "SELECT count(*) FROM nx_t WHERE v IS DISTINCT FROM '{want}'::numeric"
            )),
            0,
            "{json} arrived changed"
        );
    }
    // A function found through the search_path registered with the backfill.
    db.exec(
        "CREATE SCHEMA sp_fns;
         CREATE FUNCTION sp_fns.sp_even(i int) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT i % 2 = 0';
         CREATE TABLE sp_t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO sp_t (id) SELECT generate_series(1, 40);
         SET search_path = sp_fns, public;
         SELECT drip.register('sp', 'sp_t', 'SET n = n + 1', scope => 'sp_even(id)', sleep => '0');
         RESET search_path;",
    );
    // plan resolves sp_even the same way (42883 in 0.1.0).
    assert_eq!(
        db.i64("SELECT count(*) FROM drip.plan('sp') WHERE batch_sql LIKE '%sp_even(id)%'"),
        1
    );
    let run = db.start("SELECT drip.start('sp')");
    assert_eq!(db.wait_done(run), "completed");
    assert_eq!(
        db.i64("SELECT count(*) FROM sp_t WHERE n <> (1 - id % 2)"),
        0
    );
}

#[test]
fn the_deploy_script_pattern_fails_fast_and_never_hangs() {
    let mut db = db();
    db.exec(
        "CREATE TABLE ws_t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO ws_t (id) SELECT generate_series(1, 3000);
         SELECT drip.register('ws', 'ws_t', 'SET n = n + 1', batch_size => 10, sleep => '20 ms');",
    );
    // One statement: the run cannot start before it commits, so waiting on it must not block.
    let started = Instant::now();
    let err =
        db.c.batch_execute("SELECT drip.wait(drip.start('ws'))")
            .expect_err("waiting on an uncommitted run");
    let e = err.as_db_error().expect("db error");
    assert_eq!(e.code().code(), "25000", "{}", e.message());
    assert!(e.hint().unwrap_or_default().contains("drip.wait("), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        db.i64("SELECT count(*) FROM drip.runs WHERE backfill = 'ws'"),
        0
    );

    // A waiter whose client is killed ends, and its session goes away.
    let run = db.start("SELECT drip.start('ws')");
    let port: String = db.text("SELECT current_setting('port')");
    let user: String = db.text("SELECT current_user::text");
    let dbname: String = db.text("SELECT current_database()::text");
    let mut psql = std::process::Command::new("/usr/lib/postgresql/15/bin/psql")
        .args([
            "-X",
            "-h",
            "localhost",
            "-p",
            &port,
            "-U",
            &user,
            "-d",
            &dbname,
            "-c",
            &format!("SET application_name = 'ws_waiter'; SELECT drip.wait({run})"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .or_else(|_| {
            // Other majors: psql from PATH.
            std::process::Command::new("psql")
                .args([
                    "-X",
                    "-h",
                    "localhost",
                    "-p",
                    &port,
                    "-U",
                    &user,
                    "-d",
                    &dbname,
                    "-c",
                ])
                .arg(format!(
                    "SET application_name = 'ws_waiter'; SELECT drip.wait({run})"
                ))
                .spawn()
        })
        .expect("psql");
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ws_waiter'";
    db.wait_until(
        waiting,
        1,
        Duration::from_secs(10),
        "the waiter never showed up",
    );
    psql.kill().expect("kill psql");
    let _ = psql.wait();
    let deadline = Instant::now() + Duration::from_secs(5);
    while db.i64(waiting) > 0 {
        assert!(
            Instant::now() < deadline,
            "the waiter's session outlived its client"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    db.exec(&format!("SELECT drip.stop({run})"));
    assert_eq!(db.wait_done(run), "stopped");

    // CALL drip.finish honours after, as the workers do.
    let first = db.start("SELECT drip.start('ws')");
    db.exec(&format!("SELECT drip.pause({first})"));
    db.exec(
        "CREATE TABLE ws_u (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO ws_u (id) SELECT generate_series(1, 10);
         SELECT drip.register('ws_after', 'ws_u', 'SET n = n + 1', sleep => '0');",
    );
    let second = db.start(&format!("SELECT drip.start('ws_after', after => {first})"));
    let err =
        db.c.batch_execute(&format!("CALL drip.finish({second})"))
            .expect_err("finish must wait for the awaited run");
    assert_eq!(err.code().map(|c| c.code()), Some("55000"), "{err}");
    assert_eq!(db.i64("SELECT count(*) FROM ws_u WHERE n <> 0"), 0);
    db.exec(&format!("SELECT drip.stop({first})"));
}

/// pg_dump / pg_restore / psql of the running server.
fn server_tool(db: &mut Db, tool: &str) -> String {
    let bindir = db.text("SELECT setting FROM pg_config WHERE name = 'BINDIR'");
    format!("{bindir}/{tool}")
}

fn run_tool(cmd: &str, args: &[&str]) {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_paused_run_survives_dump_and_restore_and_resumes_on_the_right_table() {
    let mut db = db();
    let port = db.text("SELECT current_setting('port')");
    let user = db.text("SELECT current_user::text");
    let (pg_dump, pg_restore, psql) = (
        server_tool(&mut db, "pg_dump"),
        server_tool(&mut db, "pg_restore"),
        server_tool(&mut db, "psql"),
    );
    for d in ["drip_dump_src", "drip_dump_fc", "drip_dump_sql"] {
        db.exec(&format!("DROP DATABASE IF EXISTS {d} WITH (FORCE)"));
    }
    db.exec("CREATE DATABASE drip_dump_src");
    let mut src = connect_db("drip_dump_src");
    src.batch_execute(
        "CREATE EXTENSION data_drip;
         CREATE SCHEMA app;
         CREATE TABLE app.rs_t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO app.rs_t (id) SELECT generate_series(1, 3000);
         SELECT drip.register('rs', 'app.rs_t', 'SET n = n + 1', batch_size => 50, sleep => '20 ms');",
    )
    .unwrap();
    let run: i64 = src
        .query_one("SELECT drip.start('rs')", &[])
        .unwrap()
        .get(0);
    poll_until(
        &mut src,
        "SELECT count(*) FROM app.rs_t WHERE n > 0",
        300,
        Duration::from_secs(30),
        "no progress",
    );
    src.execute("SELECT drip.pause($1)", &[&run]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let busy: i64 = src
            .query_one(
                "SELECT count(*) FROM drip.runs WHERE id = $1 AND (status <> 'paused' OR worker_pid IS NOT NULL)",
                &[&run],
            )
            .unwrap()
            .get(0);
        if busy == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "run did not pause");
        std::thread::sleep(Duration::from_millis(20));
    }
    let done_before: i64 = src
        .query_one("SELECT count(*) FROM app.rs_t WHERE n = 1", &[])
        .unwrap()
        .get(0);
    assert!(done_before < 3000);
    drop(src);

    let dir = std::env::temp_dir().join(format!("drip_dump_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fc = dir.join("src.dump");
    let sql = dir.join("src.sql");
    let conn = ["-h", "localhost", "-p", &port, "-U", &user];
    let mut a: Vec<&str> = conn.to_vec();
    a.extend(["-Fc", "-f", fc.to_str().unwrap(), "drip_dump_src"]);
    run_tool(&pg_dump, &a);
    let mut a: Vec<&str> = conn.to_vec();
    a.extend(["-Fp", "-f", sql.to_str().unwrap(), "drip_dump_src"]);
    run_tool(&pg_dump, &a);
    db.exec("DROP DATABASE drip_dump_src WITH (FORCE)");

    for (target, restore) in [("drip_dump_fc", "custom"), ("drip_dump_sql", "plain")] {
        // Something else first, so the restored objects get other oids than in the source.
        db.exec(&format!("CREATE DATABASE {target}"));
        let mut t = connect_db(target);
        t.batch_execute("CREATE TABLE decoy_a (x int); CREATE TABLE decoy_b (x int);")
            .unwrap();
        let mut a: Vec<&str> = conn.to_vec();
        if restore == "custom" {
            a.extend(["-d", target, fc.to_str().unwrap()]);
            run_tool(&pg_restore, &a);
        } else {
            a.extend([
                "-v",
                "ON_ERROR_STOP=1",
                "-q",
                "-d",
                target,
                "-f",
                sql.to_str().unwrap(),
            ]);
            run_tool(&psql, &a);
        }
        let status: String = t
            .query_one("SELECT status FROM drip.runs WHERE id = $1", &[&run])
            .unwrap()
            .get(0);
        assert_eq!(status, "paused", "{restore}");
        t.execute("SELECT drip.resume($1)", &[&run]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (s, err): (String, Option<String>) = {
                let r = t
                    .query_one("SELECT status, error FROM drip.runs WHERE id = $1", &[&run])
                    .unwrap();
                (r.get(0), r.get(1))
            };
            if s == "completed" {
                break;
            }
            assert!(
                s != "failed" && Instant::now() < deadline,
                "{restore}: {s} {err:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let wrong: i64 = t
            .query_one("SELECT count(*) FROM app.rs_t WHERE n <> 1", &[])
            .unwrap()
            .get(0);
        assert_eq!(
            wrong, 0,
            "{restore}: rows not processed exactly once across the dump"
        );
        drop(t);
        db.exec(&format!("DROP DATABASE {target} WITH (FORCE)"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn smaller_surprises_are_refused_up_front() {
    let mut db = db();
    db.exec(
        "CREATE TABLE ss_t (id int, at timestamptz, \"Odd\" int NOT NULL, n int NOT NULL DEFAULT 0,
                            PRIMARY KEY (id, at));
         CREATE UNIQUE INDEX ON ss_t (\"Odd\");",
    );
    // A SET action that assigns a key column, in every spelling.
    for (action, key) in [
        ("SET at = at + interval '1 second'", "NULL"),
        ("SET (n, id) = (1, id + 1)", "NULL"),
        ("SET \"Odd\" = \"Odd\" + 1", "ARRAY['Odd']"),
    ] {
        let err =
            db.c.batch_execute(&format!(
                "SELECT drip.register('ss_key', 'ss_t', $a${action}$a$, key => {key})"
            ))
            .expect_err(action);
        let e = err.as_db_error().expect("db error");
        assert_eq!(e.code().code(), "0A000", "{action}: {}", e.message());
        assert!(
            e.message().contains("assigns key column"),
            "{}",
            e.message()
        );
    }
    // Assigning other columns is fine.
    db.exec("SELECT drip.register('ss_ok', 'ss_t', 'SET n = n + 1')");
    // Names of only whitespace or with control characters.
    for name in ["   ", "a\tb", "line\nbreak"] {
        let err =
            db.c.execute("SELECT drip.register($1, 'ss_t', 'SET n = 1')", &[&name])
                .expect_err("bad name");
        assert_eq!(
            err.code().map(|c| c.code()),
            Some("22023"),
            "{name:?}: {err}"
        );
    }
    assert_eq!(
        db.i64(
            "SELECT count(*) FROM drip.backfills WHERE name LIKE 'ss\\_%' OR name !~ '[[:graph:]]'"
        ),
        1,
        "only ss_ok was registered so far"
    );
    // throttle_query must return one boolean column; a data-modifying one is refused too.
    for (q, code) in [
        ("SELECT 1", "42804"),
        ("SELECT true, false", "42804"),
        ("SELECT 'yes'::text", "42804"),
    ] {
        assert_eq!(
            db.sqlstate(&format!(
                "SELECT drip.register('ss_th', 'ss_t', 'SET n = 1', throttle_query => $q${q}$q$)"
            )),
            code,
            "{q}"
        );
    }
    let code = db.sqlstate(
        "SELECT drip.register('ss_th', 'ss_t', 'SET n = 1', \
         throttle_query => 'WITH d AS (DELETE FROM ss_t RETURNING 1) SELECT true')",
    );
    assert_ne!(code, "XX000");
    assert_ne!(code, "ok");
    // No row means "do not hold": the run completes.
    db.exec(
        "INSERT INTO ss_t (id, at, \"Odd\") SELECT g, now(), g FROM generate_series(1, 30) g;
         SELECT drip.register('ss_norow', 'ss_t', 'SET n = n + 1', sleep => '0',
                              throttle_query => 'SELECT true WHERE false');",
    );
    let run = db.start("SELECT drip.start('ss_norow')");
    assert_eq!(db.wait_done(run), "completed");
    assert_eq!(db.i64("SELECT count(*) FROM ss_t WHERE n <> 1"), 0);
    // Timeouts Postgres cannot hold are refused once, at register and start, not by every batch.
    for sql in [
        "SELECT drip.register('ss_lt', 'ss_t', 'SET n = 1', lock_timeout => '30 days')",
        "SELECT drip.register('ss_st', 'ss_t', 'SET n = 1', statement_timeout => '25 days')",
        "SELECT drip.start('ss_ok', lock_timeout => '30 days')",
        "SELECT drip.start('ss_ok', statement_timeout => '1000 years')",
    ] {
        assert_eq!(db.sqlstate(sql), "22023", "{sql}");
    }
    assert_eq!(
        db.i64("SELECT count(*) FROM drip.runs WHERE backfill = 'ss_ok'"),
        0
    );
}

#[test]
fn a_concurrent_start_under_repeatable_read_gets_55006() {
    let mut db = db();
    db.exec(
        "CREATE TABLE rr_t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO rr_t (id) SELECT generate_series(1, 10);
         SELECT drip.register('rr', 'rr_t', 'SET n = n + 1', sleep => '0');",
    );
    for level in ["REPEATABLE READ", "SERIALIZABLE"] {
        let mut a = connect();
        let mut b = connect();
        a.batch_execute(&format!("BEGIN ISOLATION LEVEL {level}; SELECT 1"))
            .unwrap();
        b.batch_execute(&format!("BEGIN ISOLATION LEVEL {level}; SELECT 1"))
            .unwrap();
        let run: i64 = a
            .query_one(
                "SELECT drip.start('rr', start_at => now() + interval '1 hour')",
                &[],
            )
            .unwrap()
            .get(0);
        a.batch_execute("COMMIT").unwrap();
        let err = b
            .batch_execute("SELECT drip.start('rr')")
            .expect_err("second start");
        assert_eq!(
            err.code().map(|c| c.code()),
            Some("55006"),
            "{level}: {err}"
        );
        b.batch_execute("ROLLBACK").unwrap();
        db.exec(&format!("SELECT drip.stop({run})"));
    }
}

#[test]
fn helper_names_are_cut_by_bytes_and_never_collide() {
    let mut db = db();
    let table = "é".repeat(25);
    let col_a = format!("{}_alpha", "ö".repeat(20));
    let col_b = format!("{}_beta", "ö".repeat(20));
    db.exec(&format!(
        "CREATE TABLE \"{table}\" (id int PRIMARY KEY, \"{col_a}\" int, \"{col_b}\" int);
         INSERT INTO \"{table}\" (id) SELECT generate_series(1, 10);"
    ));
    let a = db.start(&format!(
        "SELECT drip.backfill_column('\"{table}\"', '{col_a}', '1')"
    ));
    let b = db.start(&format!(
        "SELECT drip.backfill_column('\"{table}\"', '{col_b}', '2')"
    ));
    assert_eq!(db.wait_done(a), "completed");
    assert_eq!(db.wait_done(b), "completed");
    let names: Vec<String> =
        db.c.query(
            "SELECT backfill FROM drip.runs WHERE id IN ($1, $2)",
            &[&a, &b],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names.len(), 2);
    assert_ne!(names[0], names[1]);
    for n in &names {
        assert!(n.len() <= 63, "{n} is {} bytes", n.len());
        assert!(n.starts_with("backfill_column:"), "{n}");
    }
    assert_eq!(
        db.i64(&format!(
            "SELECT count(*) FROM \"{table}\" WHERE \"{col_a}\" IS DISTINCT FROM 1 OR \"{col_b}\" IS DISTINCT FROM 2"
        )),
        0
    );
}

#[test]
fn progress_tells_the_truth_about_errors_rate_eta_and_cursor() {
    let mut db = db();
    // A batch that fails once, then succeeds on retry: no error is left to show.
    db.exec(
        "CREATE TABLE pg_flag (d int NOT NULL); INSERT INTO pg_flag VALUES (0);
         CREATE TABLE pg_t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO pg_t (id) SELECT generate_series(1, 100);
         SELECT drip.register('pg_retry', 'pg_t', 'SET n = n + 1 / (SELECT d FROM pg_flag)',
                              batch_size => 50, sleep => '0', max_attempts => 5);",
    );
    let run = db.start("SELECT drip.start('pg_retry')");
    db.wait_until(
        &format!("SELECT count(*) FROM drip.batches WHERE run_id = {run} AND status = 'failed'"),
        1,
        Duration::from_secs(20),
        "no failed attempt",
    );
    db.exec("UPDATE pg_flag SET d = 1");
    assert_eq!(db.wait_done(run), "completed");
    assert_eq!(
        db.i64(&format!(
            "SELECT count(*) FROM drip.progress WHERE run_id = {run} AND last_error IS NULL"
        )),
        1,
        "an error fixed by a retry still shows"
    );

    // Rate and ETA over recent batches, sleeps included; a long pause does not dilute them.
    db.exec(
        "CREATE TABLE pr_t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO pr_t (id) SELECT generate_series(1, 4000);
         ANALYZE pr_t;
         SELECT drip.register('pr', 'pr_t', 'SET n = n + 1', batch_size => 20, sleep => '50 ms');",
    );
    let run = db.start("SELECT drip.start('pr')");
    let batches = |db: &mut Db| {
        db.i64(&format!(
            "SELECT count(*) FROM drip.batches WHERE run_id = {run} AND status = 'completed'"
        ))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while batches(&mut db) < 5 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    db.exec(&format!("SELECT drip.pause({run})"));
    db.wait_for(run, &["paused"], Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(3));
    let before = batches(&mut db);
    db.exec(&format!("SELECT drip.resume({run})"));
    while batches(&mut db) < before + 25 {
        assert!(Instant::now() < deadline + Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = db
        .c
        .query_one(
            "SELECT rows_per_sec::float8, rows_done / extract(epoch FROM elapsed)::float8, \
                    extract(epoch FROM eta)::float8, ((rows_estimated - rows_done) / 20 * 0.05)::float8 \
             FROM drip.progress WHERE run_id = $1",
            &[&run],
        )
        .unwrap();
    let (rate, average, eta, sleeps): (f64, f64, f64, f64) =
        (r.get(0), r.get(1), r.get(2), r.get(3));
    assert!(
        rate > average * 1.3,
        "rate {rate} is diluted by the pause (average {average})"
    );
    assert!(eta >= sleeps, "eta {eta} s ignores {sleeps} s of sleep");
    db.exec(&format!("SELECT drip.stop({run})"));

    // A parallel run shows where it is.
    let run = db.start("SELECT drip.start('pr', parallel => 2, sleep => '0')");
    assert_eq!(db.wait_done(run), "completed");
    assert_eq!(
        db.i64(&format!(
            "SELECT count(*) FROM drip.progress WHERE run_id = {run} AND cursor IS NOT NULL"
        )),
        1
    );
}
