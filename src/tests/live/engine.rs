//! Actions, keys, parameters and scopes against committed data and the live worker.

use super::db;

#[test]
fn fix_emails_changes_exactly_the_rows_with_the_given_age() {
    let mut db = db();
    db.exec(
        "CREATE TABLE fe_users (id bigserial PRIMARY KEY, email text NOT NULL, age int NOT NULL);
         INSERT INTO fe_users (email, age) SELECT 'User' || g || '@Example.COM', g % 80
           FROM generate_series(1, 20000) g;
         SELECT drip.register('fix_emails', 'fe_users', action => 'SET email = lower(email)',
             scope => 'age = $age', params => '{\"age\": \"integer\"}', batch_size => 700,
             sleep => '0');",
    );
    let run = db.start("SELECT drip.start('fix_emails', '{\"age\": 30}')");
    assert_eq!(db.wait_done(run), "completed");
    assert_eq!(
        db.i64("SELECT count(*) FROM fe_users WHERE age = 30 AND email <> lower(email)"),
        0
    );
    assert_eq!(
        db.i64("SELECT count(*) FROM fe_users WHERE age <> 30 AND email = lower(email)"),
        0
    );
    assert_eq!(
        db.i64("SELECT count(*) FROM fe_users WHERE email = lower(email)"),
        250
    );
    let rows_done = db.i64(&format!("SELECT rows_done FROM drip.runs WHERE id = {run}"));
    assert_eq!(rows_done, 250);
    // 20000 keys in batches of 700 -> 29 batches, contiguous and non-overlapping.
    assert_eq!(
        db.i64(&format!(
            "SELECT batches_done FROM drip.runs WHERE id = {run}"
        )),
        29
    );
    assert_eq!(
        db.i64(&format!(
            "SELECT count(*) FROM drip.batches b WHERE run_id = {run} AND status = 'completed' AND
               low_key IS NOT DISTINCT FROM (SELECT high_key FROM drip.batches p
                 WHERE p.run_id = b.run_id AND p.batch_no = b.batch_no - 1)"
        )),
        29
    );
    assert_eq!(
        db.i64(&format!(
            "SELECT sum(rows)::bigint FROM drip.batches WHERE run_id = {run}"
        )),
        250
    );
    assert_eq!(
        db.text(&format!(
            "SELECT progress_bar FROM drip.progress WHERE run_id = {run}"
        )),
        "[####################] 100.0%"
    );
    // The first batch started within a second of the start committing.
    assert_eq!(
        db.i64(&format!(
            "SELECT count(*) FROM drip.runs WHERE id = {run} AND started_at - created_at < interval '1 second'"
        )),
        1
    );
}

#[test]
fn delete_action_removes_only_rows_in_scope() {
    let mut db = db();
    db.exec(
        "CREATE TABLE del_t (id int PRIMARY KEY, flag bool NOT NULL);
         INSERT INTO del_t SELECT g, g % 3 = 0 FROM generate_series(1, 3000) g;
         SELECT drip.register('del', 'del_t', action => 'DELETE', scope => 'flag', batch_size => 250, sleep => '0');",
    );
    let run = db.start("SELECT drip.start('del')");
    assert_eq!(db.wait_done(run), "completed");
    assert_eq!(db.i64("SELECT count(*) FROM del_t WHERE flag"), 0);
    assert_eq!(db.i64("SELECT count(*) FROM del_t"), 2000);
    assert_eq!(
        db.i64(&format!("SELECT rows_done FROM drip.runs WHERE id = {run}")),
        1000
    );
}

#[test]
fn drip_batch_statement_sees_every_column_of_the_batch() {
    let mut db = db();
    db.exec(
        "CREATE TABLE src_t (id int PRIMARY KEY, name text NOT NULL, n int NOT NULL);
         CREATE TABLE audit_t (id int, name text, n int, at timestamptz);
         INSERT INTO src_t SELECT g, 'n' || g, g * 2 FROM generate_series(1, 1000) g;
         SELECT drip.register('copy', 'src_t',
             action => 'INSERT INTO audit_t SELECT id, name, n, now() FROM drip_batch',
             scope => 'n > $min', params => '{\"min\": \"int\"}', batch_size => 64, sleep => '0');",
    );
    let run = db.start("SELECT drip.start('copy', '{\"min\": 1000}')");
    assert_eq!(db.wait_done(run), "completed");
    assert_eq!(db.i64("SELECT count(*) FROM audit_t"), 500);
    assert_eq!(db.i64("SELECT count(DISTINCT id) FROM audit_t"), 500);
    assert_eq!(
        db.i64("SELECT count(*) FROM audit_t a JOIN src_t s USING (id) WHERE a.name = s.name AND a.n = s.n AND s.n > 1000"),
        500
    );
    // An UPDATE ... FROM drip_batch, and a WITH statement, work too.
    db.exec(
        "SELECT drip.register('upd', 'src_t',
             action => 'WITH x AS (SELECT 1 AS one) UPDATE src_t s SET n = s.n + x.one FROM drip_batch b, x WHERE s.id = b.id',
             batch_size => 100, sleep => '0');",
    );
    let run = db.start("SELECT drip.start('upd')");
    assert_eq!(db.wait_done(run), "completed");
    assert_eq!(
        db.i64("SELECT count(*) FROM src_t WHERE n = id * 2 + 1"),
        1000
    );
}

#[test]
fn composite_text_and_uuid_keys() {
    let mut db = db();
    db.exec(
        "CREATE TABLE comp_t (a int NOT NULL, b text NOT NULL, n int NOT NULL DEFAULT 0, PRIMARY KEY (a, b));
         INSERT INTO comp_t (a, b) SELECT g % 7, 'k' || g FROM generate_series(1, 2000) g;
         SELECT drip.register('comp', 'comp_t', 'SET n = n + 1', batch_size => 33, sleep => '0');
         CREATE TABLE text_t (code text PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO text_t (code) SELECT md5(g::text) FROM generate_series(1, 1500) g;
         SELECT drip.register('txt', 'text_t', 'SET n = n + 1', batch_size => 100, sleep => '0');
         CREATE TABLE uuid_t (u uuid NOT NULL, n int NOT NULL DEFAULT 0);
         CREATE UNIQUE INDEX ON uuid_t (u);
         INSERT INTO uuid_t (u) SELECT md5(g::text)::uuid FROM generate_series(1, 1500) g;
         SELECT drip.register('uu', 'uuid_t', 'SET n = n + 1', key => '{u}', batch_size => 128, sleep => '0');",
    );
    for (name, table) in [("comp", "comp_t"), ("txt", "text_t"), ("uu", "uuid_t")] {
        let run = db.start(&format!("SELECT drip.start('{name}')"));
        assert_eq!(db.wait_done(run), "completed", "{name}");
        assert_eq!(
            db.i64(&format!("SELECT count(*) FROM {table} WHERE n <> 1")),
            0,
            "{name}: every row exactly once"
        );
        let total = db.i64(&format!("SELECT count(*) FROM {table}"));
        assert_eq!(
            db.i64(&format!("SELECT rows_done FROM drip.runs WHERE id = {run}")),
            total,
            "{name}"
        );
    }
}

#[test]
fn empty_table_completes_with_no_batches() {
    let mut db = db();
    db.exec(
        "CREATE TABLE empty_t (id int PRIMARY KEY, v int);
         SELECT drip.register('empty', 'empty_t', 'SET v = 1');",
    );
    let run = db.start("SELECT drip.start('empty')");
    assert_eq!(db.wait_done(run), "completed");
    assert_eq!(
        db.i64(&format!(
            "SELECT batches_done FROM drip.runs WHERE id = {run}"
        )),
        0
    );
    assert_eq!(
        db.i64(&format!(
            "SELECT count(*) FROM drip.batches WHERE run_id = {run}"
        )),
        0
    );
}

#[test]
fn null_default_and_required_parameters() {
    let mut db = db();
    db.exec(
        "CREATE TABLE par_t (id int PRIMARY KEY, age int, dom text, since date, tags text[], touched int NOT NULL DEFAULT 0);
         INSERT INTO par_t SELECT g, g % 10, 'd' || (g % 2), date '2024-01-01' + g, ARRAY['t' || (g % 4)] FROM generate_series(1, 400) g;
         SELECT drip.register('par', 'par_t', 'SET touched = touched + 1',
             scope => '($age IS NULL OR age = $age) AND dom = $dom AND since >= $since AND tags && $tags',
             params => '{\"age\": \"integer\", \"dom\": {\"type\": \"text\", \"default\": \"d1\"},
                         \"since\": {\"type\": \"date\", \"required\": true}, \"tags\": \"text[]\"}',
             batch_size => 50, sleep => '0');",
    );
    // age missing -> NULL -> every age; dom defaults to d1 (odd ids); tags bound as an array.
    let run = db.start(
        "SELECT drip.start('par', '{\"since\": \"2024-01-01\", \"tags\": [\"t1\", \"t3\"]}')",
    );
    assert_eq!(db.wait_done(run), "completed");
    assert_eq!(db.i64("SELECT count(*) FROM par_t WHERE touched = 1"), 200);
    assert_eq!(
        db.i64("SELECT count(*) FROM par_t WHERE touched = 1 AND id % 2 = 0"),
        0
    );
    // Now with age given: only those rows, and a required parameter missing is refused.
    assert_eq!(
        db.sqlstate("SELECT drip.start('par', '{\"age\": 3}')"),
        "22023"
    );
    let run = db.start("SELECT drip.start('par', '{\"age\": 3, \"since\": \"2024-01-01\", \"tags\": [\"t1\", \"t3\"], \"dom\": \"d1\"}')");
    assert_eq!(db.wait_done(run), "completed");
    assert_eq!(db.i64("SELECT count(*) FROM par_t WHERE touched = 2"), 40);
    // Injection-looking values are plain values.
    let run = db.start(
        "SELECT drip.start('par', '{\"since\": \"2024-01-01\", \"tags\": [\"x''; DROP TABLE par_t; --\"], \"dom\": \"$$ /* -- \\\\\"}')",
    );
    assert_eq!(db.wait_done(run), "completed");
    assert_eq!(
        db.i64(&format!("SELECT rows_done FROM drip.runs WHERE id = {run}")),
        0
    );
    assert_eq!(db.i64("SELECT count(*) FROM par_t"), 400);
}
