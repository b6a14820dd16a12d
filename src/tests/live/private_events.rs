//! Events that leak nothing to other roles, an opt-in full payload, and a commit-ordered cursor
//! over the event log that a poller can trust.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use serde_json::Value;

use super::{connect, connect_as, db, Db};

fn roles(db: &mut Db) {
    db.exec(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pe_alice') THEN
             CREATE ROLE pe_alice LOGIN;
             CREATE ROLE pe_bob LOGIN;
           END IF;
         END $$;
         GRANT USAGE ON SCHEMA drip TO pe_alice, pe_bob;
         CREATE SCHEMA IF NOT EXISTS pe AUTHORIZATION pe_alice;",
    );
}

/// Every notification `listener` has received so far, as text.
fn heard(listener: &mut postgres::Client) -> Vec<String> {
    listener.batch_execute("SELECT 1").unwrap();
    let mut out = Vec::new();
    let mut notifications = listener.notifications();
    let mut it = notifications.timeout_iter(Duration::from_millis(300));
    while let Some(n) = it.next().unwrap() {
        out.push(n.payload().to_string());
    }
    out
}

/// alice's backfill fails on a unique violation whose message carries her row data.
fn alices_failing_run(alice: &mut postgres::Client, name: &str) -> i64 {
    alice
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS pe.{name} (id int PRIMARY KEY, email text UNIQUE, n int NOT NULL DEFAULT 0);
             TRUNCATE pe.{name};
             INSERT INTO pe.{name} (id, email) VALUES (1, 'alice@corp.example'), (2, 'carol@corp.example');
             SELECT drip.register('{name}', 'pe.{name}', 'SET email = $mail', scope => 'id = 2',
                                  params => '{{\"mail\": \"text\"}}', sleep => '0', max_attempts => 1,
                                  replace => true);"
        ))
        .unwrap();
    alice
        .query_one(
            &format!("SELECT drip.start('{name}', '{{\"mail\": \"alice@corp.example\"}}')"),
            &[],
        )
        .unwrap()
        .get(0)
}

fn wait_status(run: i64, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s: String = connect()
            .query_one("SELECT status FROM drip.runs WHERE id = $1", &[&run])
            .unwrap()
            .get(0);
        if s == want {
            return;
        }
        assert!(Instant::now() < deadline, "run {run} is {s}, not {want}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn another_role_hears_ids_and_statuses_but_no_names_errors_or_values() {
    let mut db = db();
    roles(&mut db);
    let mut alice = connect_as("pe_alice");
    let mut bob = connect_as("pe_bob");
    bob.batch_execute("LISTEN drip_events").unwrap();
    let run = alices_failing_run(&mut alice, "pe_secret_backfill");
    wait_status(run, "failed");
    let payloads = heard(&mut bob);
    let mine: Vec<&String> = payloads
        .iter()
        .filter(|p| serde_json::from_str::<Value>(p).unwrap()["run_id"] == run)
        .collect();
    assert!(
        mine.len() >= 4,
        "bob heard {} events of run {run}",
        mine.len()
    );
    for p in &mine {
        for secret in [
            "pe_secret_backfill",
            "alice@corp.example",
            "corp.example",
            "duplicate key",
            "email",
        ] {
            assert!(!p.contains(secret), "bob heard {secret:?} in {p}");
        }
        let v: Value = serde_json::from_str(p).unwrap();
        for key in v.as_object().unwrap().keys() {
            assert!(
                ["id", "event", "run_id", "batch", "status"].contains(&key.as_str()),
                "{key} in {p}"
            );
        }
    }
    assert!(mine.iter().any(|p| p.contains("\"batch_failed\"")));
    // The details are in the log, which row-level security keeps from bob.
    let id = serde_json::from_str::<Value>(mine[0]).unwrap()["id"]
        .as_i64()
        .unwrap();
    let bob_sees: i64 = bob
        .query_one("SELECT count(*) FROM drip.events WHERE id = $1", &[&id])
        .unwrap()
        .get(0);
    assert_eq!(bob_sees, 0);
    let alice_sees: String = alice
        .query_one(
            "SELECT payload->>'backfill' FROM drip.events WHERE run_id = $1 AND event = 'run_failed'",
            &[&run],
        )
        .unwrap()
        .get(0);
    assert_eq!(alice_sees, "pe_secret_backfill");
    // Only a superuser may choose the full payload.
    let err = alice
        .batch_execute("SET drip.notify_payload = 'full'")
        .expect_err("a non-superuser cannot turn on full payloads");
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{err}");
}

/// Undo ALTER DATABASE ... SET drip.notify_payload even when the test fails.
struct FullPayload(String);

impl Drop for FullPayload {
    fn drop(&mut self) {
        let _ = connect().batch_execute(&format!(
            "ALTER DATABASE \"{}\" RESET drip.notify_payload",
            self.0
        ));
    }
}

#[test]
fn a_superuser_can_turn_on_full_payloads() {
    let mut db = db();
    roles(&mut db);
    let name = db.text("SELECT current_database()::text");
    db.exec(&format!(
        "ALTER DATABASE \"{name}\" SET drip.notify_payload = 'full'"
    ));
    let _reset = FullPayload(name);
    // New sessions (and new workers) take the database's setting.
    let mut alice = connect_as("pe_alice");
    let mut listener = connect();
    listener.batch_execute("LISTEN drip_events").unwrap();
    let run = alices_failing_run(&mut alice, "pe_full_backfill");
    wait_status(run, "failed");
    let payloads = heard(&mut listener);
    let mine: Vec<Value> = payloads
        .iter()
        .map(|p| serde_json::from_str::<Value>(p).unwrap())
        .filter(|v| v["run_id"] == run)
        .collect();
    assert!(mine.iter().all(|v| v["backfill"] == "pe_full_backfill"
        && (v["id"].is_i64() || v["event"] == "batch_running")));
    let failed = mine
        .iter()
        .find(|v| v["event"] == "batch_failed")
        .expect("a batch_failed event");
    assert!(
        failed["error"]
            .as_str()
            .unwrap_or_default()
            .contains("duplicate key"),
        "{failed}"
    );
}

#[test]
fn a_poller_with_the_commit_ordered_cursor_gets_every_event_exactly_once() {
    let mut db = db();
    db.exec(
        "CREATE TABLE cur_t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO cur_t (id) SELECT generate_series(1, 20000);
         SELECT drip.register('cur', 'cur_t', 'SET n = n + 1', batch_size => 10, sleep => '0');",
    );
    let poller = std::thread::spawn(|| {
        let mut c = connect();
        let mut cursor: Option<String> = None;
        let mut seen: Vec<i64> = Vec::new();
        let mut quiet_since: Option<Instant> = None;
        let deadline = Instant::now() + Duration::from_secs(180);
        // Poll until the run is over and the log has been quiet for a while.
        loop {
            assert!(Instant::now() < deadline, "poller gave up");
            let rows = c
                .query(
                    "SELECT id, cursor FROM drip.events_since($1, 500)",
                    &[&cursor],
                )
                .unwrap();
            for r in &rows {
                seen.push(r.get(0));
                cursor = Some(r.get(1));
            }
            let done: bool = c
                .query_one(
                    "SELECT coalesce(bool_and(status = 'completed'), false) FROM drip.runs WHERE backfill = 'cur'",
                    &[],
                )
                .unwrap()
                .get(0);
            if rows.is_empty() && done {
                if quiet_since.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(1) {
                    return seen;
                }
            } else {
                quiet_since = None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let run = db.start("SELECT drip.start('cur', parallel => 4)");
    assert_eq!(
        db.wait_for(run, &["completed", "failed"], Duration::from_secs(150)),
        "completed"
    );
    let seen = poller.join().expect("poller");
    let logged: Vec<i64> =
        db.c.query(
            "SELECT id FROM drip.events WHERE run_id = $1 ORDER BY id",
            &[&run],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // One logged event per batch (2,000 batches) plus the run's own.
    assert!(logged.len() > 2000, "only {} events", logged.len());
    let mut unique = HashSet::new();
    let dups: Vec<i64> = seen
        .iter()
        .copied()
        .filter(|id| !unique.insert(*id))
        .collect();
    assert!(dups.is_empty(), "delivered twice: {dups:?}");
    let missing: Vec<&i64> = logged.iter().filter(|id| !unique.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} events never delivered: {:?}",
        missing.len(),
        logged.len(),
        &missing[..missing.len().min(20)]
    );
    // The cursor reads in commit order, not id order: ids did commit out of order.
    let out_of_order = seen.windows(2).filter(|w| w[1] < w[0]).count();
    println!(
        "events: {}, delivered out of id order: {out_of_order}",
        logged.len()
    );
}
