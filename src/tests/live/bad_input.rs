//! Every bad input gets a clear error with a proper SQLSTATE, and nothing is written.

use super::db;

/// (description, SQL, expected SQLSTATE, text the message must contain)
const REGISTER_CASES: &[(&str, &str, &str, &str)] = &[
    (
        "duplicate name",
        "SELECT drip.register('bi_dup', 'bi_t', 'SET v = 1')",
        "42710",
        "already exists",
    ),
    (
        "relation does not exist",
        "SELECT drip.register('bi_x', 'no_such_table', 'SET v = 1')",
        "42P01",
        "no_such_table",
    ),
    (
        "not a table",
        "SELECT drip.register('bi_x', 'bi_view', 'SET v = 1')",
        "42809",
        "not a table",
    ),
    (
        "no primary key and no key",
        "SELECT drip.register('bi_x', 'bi_nopk', 'SET v = 1')",
        "55000",
        "no primary key",
    ),
    (
        "key column without btree index",
        "SELECT drip.register('bi_x', 'bi_t', 'SET v = 1', key => '{v}')",
        "55000",
        "not covered by a btree index",
    ),
    (
        "key column does not exist",
        "SELECT drip.register('bi_x', 'bi_t', 'SET v = 1', key => '{nope}')",
        "42703",
        "nope",
    ),
    (
        "nullable key column",
        "SELECT drip.register('bi_x', 'bi_nopk', 'SET v = 1', key => '{k}')",
        "55000",
        "nullable",
    ),
    (
        "scope does not parse",
        "SELECT drip.register('bi_x', 'bi_t', 'SET v = 1', scope => 'v = = 1')",
        "42601",
        "scope is invalid",
    ),
    (
        "scope refers to an unknown column",
        "SELECT drip.register('bi_x', 'bi_t', 'SET v = 1', scope => 'nope = 1')",
        "42703",
        "scope is invalid",
    ),
    (
        "scope is not boolean",
        "SELECT drip.register('bi_x', 'bi_t', 'SET v = 1', scope => 'v + 1')",
        "42804",
        "scope is invalid",
    ),
    (
        "scope escapes its parentheses",
        "SELECT drip.register('bi_x', 'bi_t', 'SET v = 1', scope => 'true) OR (true')",
        "42601",
        "unbalanced",
    ),
    (
        "action does not parse",
        "SELECT drip.register('bi_x', 'bi_t', 'SET v = = 1')",
        "42601",
        "action is invalid",
    ),
    (
        "action refers to an unknown column",
        "SELECT drip.register('bi_x', 'bi_t', 'SET nope = 1')",
        "42703",
        "action is invalid",
    ),
    (
        "action is two statements",
        "SELECT drip.register('bi_x', 'bi_t', 'SET v = 1; DROP TABLE bi_t')",
        "42601",
        "single SQL statement",
    ),
    (
        "action is utility",
        "SELECT drip.register('bi_x', 'bi_t', 'VACUUM bi_t')",
        "42601",
        "cannot start with",
    ),
    (
        "undeclared parameter",
        "SELECT drip.register('bi_x', 'bi_t', 'SET v = $val')",
        "42P02",
        "$val",
    ),
    (
        "positional parameter",
        "SELECT drip.register('bi_x', 'bi_t', 'SET v = $1')",
        "42601",
        "$1",
    ),
    (
        "params not an object",
        "SELECT drip.register('bi_x', 'bi_t', 'SET v = 1', params => '[1]')",
        "22023",
        "expected a JSON object",
    ),
    (
        "unknown parameter type",
        "SELECT drip.register('bi_x', 'bi_t', 'SET v = $a', params => '{\"a\": \"no_such_type\"}')",
        "42704",
        "no_such_type",
    ),
    (
        "batch_size < 1",
        "SELECT drip.register('bi_x', 'bi_t', 'SET v = 1', batch_size => 0)",
        "22023",
        "batch_size",
    ),
    (
        "negative sleep",
        "SELECT drip.register('bi_x', 'bi_t', 'SET v = 1', sleep => '-1 second')",
        "22023",
        "sleep",
    ),
    (
        "max_attempts < 1",
        "SELECT drip.register('bi_x', 'bi_t', 'SET v = 1', max_attempts => 0)",
        "22023",
        "max_attempts",
    ),
];

const START_CASES: &[(&str, &str, &str, &str)] = &[
    (
        "unknown backfill",
        "SELECT drip.start('no_such_backfill')",
        "42704",
        "does not exist",
    ),
    (
        "values not an object",
        "SELECT drip.start('bi_dup', '[30]')",
        "22023",
        "JSON object",
    ),
    (
        "unknown parameter",
        "SELECT drip.start('bi_dup', '{\"age\": 30, \"colour\": 1}')",
        "22023",
        "colour",
    ),
    (
        "wrong type",
        "SELECT drip.start('bi_dup', '{\"age\": \"thirty\"}')",
        "22P02",
        "age",
    ),
    (
        "required missing",
        "SELECT drip.start('bi_req')",
        "22023",
        "since",
    ),
    (
        "batch_size < 1",
        "SELECT drip.start('bi_dup', batch_size => 0)",
        "22023",
        "batch_size",
    ),
    (
        "negative sleep",
        "SELECT drip.start('bi_dup', sleep => '-5 ms')",
        "22023",
        "sleep",
    ),
];

const CONTROL_CASES: &[(&str, &str, &str, &str)] = &[
    (
        "pause unknown run",
        "SELECT drip.pause(987654321)",
        "42704",
        "run 987654321 does not exist",
    ),
    (
        "resume unknown run",
        "SELECT drip.resume(987654321)",
        "42704",
        "does not exist",
    ),
    (
        "stop unknown run",
        "SELECT drip.stop(987654321)",
        "42704",
        "does not exist",
    ),
    (
        "unregister unknown backfill",
        "SELECT drip.unregister('no_such_backfill')",
        "42704",
        "does not exist",
    ),
];

fn check(db: &mut super::Db, cases: &[(&str, &str, &str, &str)]) {
    for (what, sql, state, needle) in cases {
        let before = db.text("SELECT (SELECT count(*) FROM drip.backfills) || '/' || (SELECT count(*) FROM drip.runs)");
        let err = match db.c.batch_execute(sql) {
            Ok(()) => panic!("{what}: no error from {sql}"),
            Err(e) => e,
        };
        let dberr = err.as_db_error().unwrap_or_else(|| panic!("{what}: {err}"));
        assert_eq!(dberr.code().code(), *state, "{what}: {}", dberr.message());
        assert!(
            dberr.message().contains(needle),
            "{what}: message {:?} lacks {needle:?}",
            dberr.message()
        );
        let after = db.text("SELECT (SELECT count(*) FROM drip.backfills) || '/' || (SELECT count(*) FROM drip.runs)");
        assert_eq!(before, after, "{what}: something was written");
    }
}

#[test]
fn bad_input_is_refused_with_a_sqlstate_and_writes_nothing() {
    let mut db = db();
    db.exec(
        "CREATE TABLE bi_t (id int PRIMARY KEY, v int, age int);
         CREATE VIEW bi_view AS SELECT * FROM bi_t;
         CREATE TABLE bi_nopk (k int, v int);
         CREATE INDEX ON bi_nopk (k);
         SELECT drip.register('bi_dup', 'bi_t', 'SET v = 1', scope => 'age = $age', params => '{\"age\": \"integer\"}');
         SELECT drip.register('bi_req', 'bi_t', 'SET v = 1', scope => 'age > $since',
             params => '{\"since\": {\"type\": \"integer\", \"required\": true}}');",
    );
    check(&mut db, REGISTER_CASES);
    check(&mut db, START_CASES);
    check(&mut db, CONTROL_CASES);

    // Errors carry hints.
    let err =
        db.c.batch_execute("SELECT drip.register('bi_x', 'bi_nopk', 'SET v = 1')")
            .unwrap_err();
    assert!(err
        .as_db_error()
        .unwrap()
        .hint()
        .unwrap_or("")
        .contains("key =>"));
    let err =
        db.c.batch_execute("SELECT drip.start('bi_dup', '{\"colour\": 1}')")
            .unwrap_err();
    assert!(err
        .as_db_error()
        .unwrap()
        .hint()
        .unwrap_or("")
        .contains("age"));

    // A completed run refuses pause, resume and stop, naming its status.
    let run = db.start("SELECT drip.start('bi_dup', '{\"age\": 1}')");
    assert_eq!(db.wait_done(run), "completed");
    for verb in ["pause", "resume", "stop"] {
        let err =
            db.c.batch_execute(&format!("SELECT drip.{verb}({run})"))
                .unwrap_err();
        let e = err.as_db_error().unwrap();
        assert_eq!(e.code().code(), "55000");
        assert!(e.message().contains("it is completed"), "{}", e.message());
    }
}
