//! Security with real non-superuser LOGIN roles against the live worker: backfills run with
//! their owner's privileges, and only owners, members of the owner role and superusers control
//! them.

use std::time::Duration;

use postgres::Client;

use super::{connect_as, db, Db};

/// Roles: an admin (not a superuser) who owns shared tables, alice, bob, carol (a member of
/// alice) and dave (dropped in one test). The superuser grants the admin the right to hand out
/// use of the API; the admin grants it to the others.
fn roles(db: &mut Db) {
    db.exec(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'sec_admin') THEN
             CREATE ROLE sec_admin LOGIN CREATEROLE;
             CREATE ROLE sec_alice LOGIN;
             CREATE ROLE sec_bob LOGIN;
             CREATE ROLE sec_carol LOGIN IN ROLE sec_alice;
           END IF;
         END $$;
         GRANT USAGE ON SCHEMA drip TO sec_admin WITH GRANT OPTION;
         CREATE SCHEMA IF NOT EXISTS sec AUTHORIZATION sec_admin;",
    );
    let mut admin = connect_as("sec_admin");
    admin
        .batch_execute(
            "GRANT USAGE ON SCHEMA drip TO sec_alice, sec_bob, sec_carol;
             GRANT USAGE, CREATE ON SCHEMA sec TO sec_alice, sec_bob, sec_carol;",
        )
        .unwrap();
}

fn code(c: &mut Client, sql: &str) -> String {
    match c.batch_execute(sql) {
        Ok(()) => "ok".into(),
        Err(e) => e
            .code()
            .map(|c| c.code().to_string())
            .unwrap_or_else(|| e.to_string()),
    }
}

fn one(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

#[test]
fn owners_run_with_their_own_privileges_and_control_their_own_runs() {
    let mut db = db();
    roles(&mut db);
    let mut alice = connect_as("sec_alice");
    let mut bob = connect_as("sec_bob");
    let mut carol = connect_as("sec_carol");

    alice
        .batch_execute(
            "CREATE TABLE sec.alice_t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
             INSERT INTO sec.alice_t (id) SELECT g FROM generate_series(1, 300) g;",
        )
        .unwrap();
    bob.batch_execute(
        "CREATE TABLE sec.bob_t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO sec.bob_t (id) SELECT g FROM generate_series(1, 10) g;",
    )
    .unwrap();

    // alice backfills her own table; she is its owner and its starter.
    let owner: String = alice
        .query_one(
            "SELECT owner::text FROM drip.register('sec_a', 'sec.alice_t', 'SET n = n + 1', batch_size => 100, sleep => '0')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(owner, "sec_alice");
    let run: i64 = alice
        .query_one("SELECT drip.start('sec_a')", &[])
        .unwrap()
        .get(0);
    assert_eq!(db.wait_done(run), "completed");
    assert_eq!(
        one(&mut alice, "SELECT count(*) FROM sec.alice_t WHERE n = 1"),
        300
    );
    assert_eq!(
        db.text(&format!(
            "SELECT started_by::text FROM drip.runs WHERE id = {run}"
        )),
        "sec_alice"
    );

    // alice cannot backfill bob's table: refused at register.
    assert_eq!(
        code(
            &mut alice,
            "SELECT drip.register('sec_x', 'sec.bob_t', 'SET n = n + 1')"
        ),
        "42501"
    );
    assert_eq!(
        code(
            &mut alice,
            "SELECT drip.register('sec_x', 'sec.bob_t', 'DELETE')"
        ),
        "42501"
    );
    assert_eq!(
        code(&mut alice, "SELECT drip.register('sec_x', 'sec.alice_t', 'INSERT INTO sec.bob_t SELECT id FROM drip_batch')"),
        "42501"
    );

    // bob cannot see alice's definition, runs or progress, nor control her run.
    assert_eq!(
        one(
            &mut bob,
            "SELECT count(*) FROM drip.backfills WHERE name = 'sec_a'"
        ),
        0
    );
    assert_eq!(
        one(
            &mut bob,
            &format!("SELECT count(*) FROM drip.runs WHERE id = {run}")
        ),
        0
    );
    assert_eq!(
        one(
            &mut bob,
            &format!("SELECT count(*) FROM drip.batches WHERE run_id = {run}")
        ),
        0
    );
    assert_eq!(
        one(
            &mut bob,
            &format!("SELECT count(*) FROM drip.progress WHERE run_id = {run}")
        ),
        0
    );
    alice
        .batch_execute("SELECT drip.register('sec_a', 'sec.alice_t', 'SET n = n + 1', replace => true, batch_size => 10, sleep => '1 second')")
        .unwrap();
    let run: i64 = alice
        .query_one("SELECT drip.start('sec_a')", &[])
        .unwrap()
        .get(0);
    db.wait_for(run, &["running"], Duration::from_secs(5));
    // A run bob may not see answers like one that does not exist (no name, no owner).
    for verb in ["pause", "stop", "resume", "retry"] {
        assert_eq!(
            code(&mut bob, &format!("SELECT drip.{verb}({run})")),
            "42704",
            "bob {verb}"
        );
    }
    assert_eq!(code(&mut bob, "SELECT drip.start('sec_a')"), "42501");
    assert_eq!(code(&mut bob, "SELECT drip.unregister('sec_a')"), "42501");
    assert_eq!(
        code(
            &mut bob,
            "SELECT drip.register('sec_a', 'sec.bob_t', 'DELETE', replace => true)"
        ),
        "42501"
    );
    // bob cannot write the catalog directly either.
    assert_eq!(
        code(
            &mut bob,
            &format!("UPDATE drip.runs SET status = 'stopped' WHERE id = {run}")
        ),
        "42501"
    );
    assert_eq!(code(&mut bob, "DELETE FROM drip.backfills"), "42501");

    // carol, a member of alice's role, can see and control it.
    assert_eq!(
        one(
            &mut carol,
            "SELECT count(*) FROM drip.backfills WHERE name = 'sec_a'"
        ),
        1
    );
    assert_eq!(
        one(
            &mut carol,
            &format!("SELECT count(*) FROM drip.progress WHERE run_id = {run}")
        ),
        1
    );
    let s: String = carol
        .query_one("SELECT drip.pause($1)", &[&run])
        .unwrap()
        .get(0);
    assert_eq!(s, "paused");
    let s: String = carol
        .query_one("SELECT drip.stop($1)", &[&run])
        .unwrap()
        .get(0);
    assert_eq!(s, "stopped");
    assert_eq!(db.status(run), "stopped");
}

#[test]
fn an_action_cannot_escape_its_owner() {
    let mut db = db();
    roles(&mut db);
    db.exec(
        "CREATE TABLE IF NOT EXISTS sec.secret (id int PRIMARY KEY);
         INSERT INTO sec.secret VALUES (1) ON CONFLICT DO NOTHING;
         REVOKE ALL ON sec.secret FROM PUBLIC;
         CREATE OR REPLACE FUNCTION sec.wipe_secret() RETURNS int LANGUAGE sql SECURITY DEFINER
             AS $$ DELETE FROM sec.secret RETURNING 1 $$;
         REVOKE ALL ON FUNCTION sec.wipe_secret() FROM PUBLIC;",
    );
    let mut alice = connect_as("sec_alice");
    alice
        .batch_execute(
            "CREATE TABLE sec.esc_t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
             INSERT INTO sec.esc_t (id) SELECT g FROM generate_series(1, 5) g;
             CREATE FUNCTION sec.reset_and_wipe() RETURNS int LANGUAGE plpgsql AS $$
             BEGIN RESET ROLE; DELETE FROM sec.secret; RETURN 1; END $$;
             CREATE FUNCTION sec.set_role_and_wipe() RETURNS int LANGUAGE plpgsql AS $$
             BEGIN SET ROLE postgres; DELETE FROM sec.secret; RETURN 1; END $$;
             CREATE FUNCTION sec.set_auth_and_wipe() RETURNS int LANGUAGE plpgsql AS $$
             BEGIN SET SESSION AUTHORIZATION postgres; DELETE FROM sec.secret; RETURN 1; END $$;
             CREATE FUNCTION sec.config_and_wipe() RETURNS int LANGUAGE plpgsql AS $$
             BEGIN PERFORM set_config('role', 'postgres', false); DELETE FROM sec.secret; RETURN 1; END $$;",
        )
        .unwrap();
    // The worker runs as superuser; the action must not.
    for (i, f) in [
        "reset_and_wipe",
        "set_role_and_wipe",
        "set_auth_and_wipe",
        "config_and_wipe",
    ]
    .iter()
    .enumerate()
    {
        let name = format!("sec_esc{i}");
        alice
            .execute(
                "SELECT drip.register($1, 'sec.esc_t', $2, max_attempts => 1)",
                &[&name, &format!("SELECT sec.{f}() FROM drip_batch")],
            )
            .unwrap();
        let run: i64 = alice
            .query_one("SELECT drip.start($1)", &[&name])
            .unwrap()
            .get(0);
        assert_eq!(db.wait_done(run), "failed", "{f}");
        let (status, state): (String, String) = {
            let r =
                db.c.query_one(
                    "SELECT status, sqlstate FROM drip.batches WHERE run_id = $1 AND batch_no = 1",
                    &[&run],
                )
                .unwrap();
            (r.get(0), r.get(1))
        };
        assert_eq!(
            (status.as_str(), state.as_str()),
            ("failed", "42501"),
            "{f}"
        );
        assert_eq!(
            db.i64("SELECT count(*) FROM sec.secret"),
            1,
            "{f} wiped the secret"
        );
    }
    // A SECURITY DEFINER function alice may not call is refused at register.
    assert_eq!(
        code(&mut alice, "SELECT drip.register('sec_esc9', 'sec.esc_t', 'SELECT sec.wipe_secret() FROM drip_batch')"),
        "42501"
    );
    // Planting objects for the worker's own SQL does not work: it pins search_path.
    assert_eq!(db.i64("SELECT count(*) FROM sec.secret"), 1);
}

#[test]
fn row_level_security_applies_to_the_backfill_as_to_its_owner() {
    let mut db = db();
    roles(&mut db);
    let mut admin = connect_as("sec_admin");
    admin
        .batch_execute(
            "CREATE TABLE sec.tenants (id int PRIMARY KEY, tenant text NOT NULL, n int NOT NULL DEFAULT 0);
             INSERT INTO sec.tenants SELECT g, CASE WHEN g % 5 < 2 THEN 'alice' ELSE 'other' END
               FROM generate_series(1, 500) g;
             ALTER TABLE sec.tenants ENABLE ROW LEVEL SECURITY;
             CREATE POLICY alice_rows ON sec.tenants USING (tenant = 'alice');
             GRANT SELECT, UPDATE ON sec.tenants TO sec_alice;",
        )
        .unwrap();
    let mut alice = connect_as("sec_alice");
    let seen = one(&mut alice, "SELECT count(*) FROM sec.tenants");
    assert_eq!(seen, 200);
    alice
        .batch_execute("SELECT drip.register('sec_rls', 'sec.tenants', 'SET n = n + 1', batch_size => 50, sleep => '0')")
        .unwrap();
    let run: i64 = alice
        .query_one("SELECT drip.start('sec_rls')", &[])
        .unwrap()
        .get(0);
    assert_eq!(db.wait_done(run), "completed");
    assert_eq!(
        db.i64("SELECT count(*) FROM sec.tenants WHERE tenant = 'alice' AND n = 1"),
        200
    );
    assert_eq!(
        db.i64("SELECT count(*) FROM sec.tenants WHERE tenant <> 'alice' AND n <> 0"),
        0
    );
    assert_eq!(
        db.i64(&format!("SELECT rows_done FROM drip.runs WHERE id = {run}")),
        200
    );
    // The key walk saw alice's rows only: no batch bound is a hidden row's key.
    assert_eq!(
        db.i64(&format!(
            "SELECT count(*) FROM drip.batches b JOIN sec.tenants t ON t.id = b.high_key[1]::int
             WHERE b.run_id = {run} AND t.tenant <> 'alice'"
        )),
        0
    );
}

#[test]
fn losing_a_privilege_or_the_owner_fails_the_run_cleanly() {
    let mut db = db();
    roles(&mut db);
    db.exec(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'sec_dave') THEN
             CREATE ROLE sec_dave LOGIN;
           END IF;
         END $$;
         GRANT USAGE ON SCHEMA drip, sec TO sec_dave;",
    );
    let mut admin = connect_as("sec_admin");
    admin
        .batch_execute(
            "CREATE TABLE sec.granted (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
             INSERT INTO sec.granted (id) SELECT g FROM generate_series(1, 200) g;
             GRANT SELECT, UPDATE ON sec.granted TO sec_alice, sec_dave;",
        )
        .unwrap();

    // UPDATE revoked mid-run: the next batch fails with 42501, is recorded, the run fails.
    let mut alice = connect_as("sec_alice");
    alice
        .batch_execute(
            "SELECT drip.register('sec_rev', 'sec.granted', 'SET n = n + 1', batch_size => 10,
                 sleep => '300 milliseconds', max_attempts => 2)",
        )
        .unwrap();
    let run: i64 = alice
        .query_one("SELECT drip.start('sec_rev')", &[])
        .unwrap()
        .get(0);
    db.wait_until(
        &format!("SELECT batches_done FROM drip.runs WHERE id = {run}"),
        2,
        Duration::from_secs(10),
        "no batches",
    );
    admin
        .batch_execute("REVOKE UPDATE ON sec.granted FROM sec_alice")
        .unwrap();
    assert_eq!(db.wait_done(run), "failed");
    let done = db.i64(&format!("SELECT rows_done FROM drip.runs WHERE id = {run}"));
    assert!((20..200).contains(&done), "{done}");
    assert_eq!(db.i64("SELECT count(*) FROM sec.granted WHERE n = 1"), done);
    assert_eq!(db.i64("SELECT count(*) FROM sec.granted WHERE n > 1"), 0);
    assert_eq!(
        db.i64(&format!("SELECT count(*) FROM drip.batches WHERE run_id = {run} AND status = 'failed' AND sqlstate = '42501'")),
        1
    );
    assert!(db
        .text(&format!("SELECT error FROM drip.runs WHERE id = {run}"))
        .contains("permission denied"));

    // The owner dropped mid-run: the worker neither crashes nor loops; the run fails.
    let mut dave = connect_as("sec_dave");
    dave.batch_execute(
        "SELECT drip.register('sec_dave', 'sec.granted', 'SET n = n + 100', batch_size => 10,
             sleep => '300 milliseconds', max_attempts => 2)",
    )
    .unwrap();
    let run: i64 = dave
        .query_one("SELECT drip.start('sec_dave')", &[])
        .unwrap()
        .get(0);
    db.wait_for(run, &["running"], Duration::from_secs(5));
    drop(dave);
    db.exec(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'sec_dave';
         REVOKE ALL ON sec.granted FROM sec_dave;
         REVOKE ALL ON SCHEMA drip, sec FROM sec_dave;
         DROP ROLE sec_dave;",
    );
    assert_eq!(db.wait_done(run), "failed");
    assert!(db
        .text(&format!("SELECT error FROM drip.runs WHERE id = {run}"))
        .contains("42501"));
    // The workers still serve other runs.
    db.exec("SELECT drip.register('sec_after', 'sec.granted', 'SET n = n', sleep => '0', replace => true)");
    let run2 = db.start("SELECT drip.start('sec_after')");
    assert_eq!(db.wait_done(run2), "completed");
}

#[test]
fn injection_strings_are_plain_values_in_every_parameter_type() {
    let mut db = db();
    db.exec(
        "CREATE TABLE inj_t (id int PRIMARY KEY);
         INSERT INTO inj_t VALUES (1);
         CREATE TABLE inj_sink (id int, kind text, v_text text, v_varchar varchar(200), v_name name,
             v_arr text[], v_json jsonb, v_char char(60));
         SELECT drip.register('inj', 'inj_t',
             'INSERT INTO inj_sink SELECT id, $kind, $t, $vc, $nm, $arr, $js, $ch FROM drip_batch',
             params => '{\"kind\": \"text\", \"t\": \"text\", \"vc\": \"varchar(200)\", \"nm\": \"name\",
                         \"arr\": \"text[]\", \"js\": \"jsonb\", \"ch\": \"char(60)\"}', sleep => '0');",
    );
    let attacks = [
        "'",
        "''",
        "'; DROP TABLE inj_t; --",
        "$$; DROP TABLE inj_t; $$",
        "$1",
        "/* comment */ -- trailing",
        "\\\\'; SELECT 1; --",
        "\" OR 1=1 --",
        "$tag$ x $tag$",
    ];
    for (i, attack) in attacks.iter().enumerate() {
        let values = serde_json::json!({
            "kind": format!("k{i}"), "t": attack, "vc": attack, "nm": attack,
            "arr": [attack, "x"], "js": {"k": attack}, "ch": attack,
        });
        let run: i64 =
            db.c.query_one(
                "SELECT drip.start('inj', $1::text::jsonb)",
                &[&values.to_string()],
            )
            .unwrap()
            .get(0);
        assert_eq!(db.wait_done(run), "completed", "{attack}");
        let row = db
            .c
            .query_one(
                "SELECT v_text, v_varchar::text, v_name::text, v_arr, v_json->>'k', rtrim(v_char) FROM inj_sink WHERE kind = $1",
                &[&format!("k{i}")],
            )
            .unwrap();
        let (t, vc, nm, arr, js, ch): (String, String, String, Vec<String>, String, String) = (
            row.get(0),
            row.get(1),
            row.get(2),
            row.get(3),
            row.get(4),
            row.get(5),
        );
        assert_eq!(t, *attack);
        assert_eq!(vc, *attack);
        assert_eq!(nm, *attack);
        assert_eq!(arr, vec![attack.to_string(), "x".to_string()]);
        assert_eq!(js, *attack);
        assert_eq!(ch, attack.trim_end());
    }
    assert_eq!(
        db.i64("SELECT count(*) FROM inj_t"),
        1,
        "the table survived"
    );
    // Typed parameters refuse them cleanly, and nothing is written.
    db.exec(
        "SELECT drip.register('inj2', 'inj_t', 'DELETE',
             scope => 'id = $i OR $d > now()::date OR $u IS NULL OR $b OR $n > 0 OR $ts < now()',
             params => '{\"i\": \"int\", \"d\": \"date\", \"u\": \"uuid\", \"b\": \"boolean\", \"n\": \"numeric\", \"ts\": \"timestamptz\"}');",
    );
    let runs_before = db.i64("SELECT count(*) FROM drip.runs");
    for p in ["i", "d", "u", "b", "n", "ts"] {
        for attack in &attacks {
            let values = serde_json::json!({ p: attack });
            let state = match db.c.query_one(
                "SELECT drip.start('inj2', $1::text::jsonb)",
                &[&values.to_string()],
            ) {
                Ok(_) => "ok".to_string(),
                Err(e) => e.code().map(|c| c.code().to_string()).unwrap_or_default(),
            };
            assert!(state.starts_with("22"), "{p} = {attack:?} gave {state}");
        }
    }
    assert_eq!(db.i64("SELECT count(*) FROM drip.runs"), runs_before);
    assert_eq!(db.i64("SELECT count(*) FROM inj_t"), 1);
}
