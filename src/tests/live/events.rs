//! Events as a real `LISTEN drip_events` client receives them.

use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use serde_json::Value;

use super::{connect, db};

/// The only keys a notification may carry by default (drip.notify_payload = 'minimal').
const MINIMAL_KEYS: &[&str] = &["id", "event", "run_id", "batch", "status"];

/// Drain the notifications a listening client has received so far for `run`, and read each
/// event's full payload from drip.events by the notification's id, as a listener is told to
/// (`batch_running` has no log row: its notification is returned as it came).
fn received(listener: &mut postgres::Client, run: i64) -> Vec<Value> {
    // Any round trip makes the client read what the server has sent.
    listener.batch_execute("SELECT 1").unwrap();
    let mut notes = Vec::new();
    {
        let mut notifications = listener.notifications();
        let mut it = notifications.timeout_iter(Duration::from_millis(200));
        while let Some(n) = it.next().unwrap() {
            assert_eq!(n.channel(), "drip_events");
            let v: Value = serde_json::from_str(n.payload()).expect("payload is JSON");
            assert!(n.payload().len() < 8000);
            for key in v.as_object().expect("an object").keys() {
                assert!(MINIMAL_KEYS.contains(&key.as_str()), "{key} in {v}");
            }
            if v["run_id"] == run {
                notes.push(v);
            }
        }
    }
    notes
        .iter()
        .map(|n| {
            if n["event"] == "batch_running" {
                // Only sent, not logged: no id, and the notification is the whole event.
                assert!(n.get("id").is_none(), "batch_running has no log row: {n}");
                assert!(n["batch"].is_i64() && n["status"] == "running", "{n}");
                return n.clone();
            }
            let id = n["id"].as_i64().expect("an event id");
            let row = listener
                .query_one(
                    "SELECT payload::text FROM drip.events WHERE id = $1",
                    &[&id],
                )
                .unwrap();
            let full: Value = serde_json::from_str(row.get::<_, &str>(0)).unwrap();
            assert_eq!(full["event"], n["event"]);
            assert_eq!(full["status"], n["status"]);
            full
        })
        .collect()
}

fn names(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[test]
fn a_completed_run_sends_every_status_change_in_order() {
    let mut db = db();
    let mut listener = connect();
    listener.batch_execute("LISTEN drip_events").unwrap();
    db.exec(
        "CREATE TABLE ev_t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO ev_t (id) SELECT g FROM generate_series(1, 230) g;
         SELECT drip.register('ev', 'ev_t', 'SET n = n + 1', scope => 'id % 2 = 0', batch_size => 50, sleep => '0');",
    );
    let run = db.start("SELECT drip.start('ev')");
    assert_eq!(db.wait_done(run), "completed");
    let events = received(&mut listener, run);
    let mut expected = vec!["run_enqueued".to_string(), "run_running".to_string()];
    for _ in 0..5 {
        expected.push("batch_running".into());
        expected.push("batch_completed".into());
    }
    expected.push("run_completed".into());
    assert_eq!(names(&events), expected);

    let completed: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "batch_completed")
        .collect();
    let rows: Vec<i64> = completed
        .iter()
        .map(|e| e["rows"].as_i64().unwrap())
        .collect();
    assert_eq!(rows, vec![25, 25, 25, 25, 15]);
    let batches: Vec<i64> = completed
        .iter()
        .map(|e| e["batch"].as_i64().unwrap())
        .collect();
    assert_eq!(batches, vec![1, 2, 3, 4, 5]);
    let last = events.last().unwrap();
    assert_eq!(last["status"], "completed");
    assert_eq!(last["backfill"], "ev");
    assert_eq!(last["rows_done"], 115);
    assert_eq!(last["batches_done"], 5);
    for e in events.iter().filter(|e| e["event"] != "batch_running") {
        assert!(e["at"].is_string() && e["status"].is_string(), "{e}");
    }
}

#[test]
fn pause_resume_stop_and_failure_events() {
    let mut db = db();
    let mut listener = connect();
    listener.batch_execute("LISTEN drip_events").unwrap();
    db.exec(
        "CREATE TABLE ev2_t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO ev2_t (id) SELECT g FROM generate_series(1, 100) g;
         SELECT drip.register('ev2', 'ev2_t', 'SET n = n + 1', batch_size => 10, sleep => '5 seconds');",
    );
    let run = db.start("SELECT drip.start('ev2')");
    db.wait_for(run, &["running"], Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    db.exec(&format!("SELECT drip.pause({run})"));
    db.exec(&format!("SELECT drip.resume({run})"));
    db.wait_for(run, &["running"], Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    db.exec(&format!("SELECT drip.stop({run})"));
    std::thread::sleep(Duration::from_millis(500));
    let runs: Vec<String> = names(&received(&mut listener, run))
        .into_iter()
        .filter(|n| n.starts_with("run_"))
        .collect();
    assert_eq!(
        runs,
        vec![
            "run_enqueued",
            "run_running",
            "run_paused",
            "run_enqueued",
            "run_running",
            "run_stopped"
        ]
    );

    // A batch that always fails: recorded, retried up to max_attempts, then the run fails.
    db.exec(
        "CREATE TABLE ev3_t (id int PRIMARY KEY, d int NOT NULL);
         INSERT INTO ev3_t SELECT g, CASE WHEN g = 15 THEN 0 ELSE 1 END FROM generate_series(1, 30) g;
         SELECT drip.register('ev3', 'ev3_t', 'SET d = 10 / d', batch_size => 10, sleep => '0', max_attempts => 2);",
    );
    let run = db.start("SELECT drip.start('ev3')");
    assert_eq!(db.wait_done(run), "failed");
    let events = received(&mut listener, run);
    assert_eq!(
        names(&events),
        vec![
            "run_enqueued",
            "run_running",
            "batch_running",
            "batch_completed",
            "batch_running",
            "batch_failed",
            "batch_running",
            "batch_failed",
            "run_failed"
        ]
    );
    let failed = &events[5];
    assert_eq!(failed["batch"], 2);
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("division by zero"),
        "{failed}"
    );
    assert!(events[8]["error"]
        .as_str()
        .unwrap()
        .contains("division by zero"));
    // The failed batch rolled back entirely; the first batch stays done.
    assert_eq!(db.i64("SELECT count(*) FROM ev3_t WHERE d = 10"), 10);
    assert_eq!(
        db.text(&format!("SELECT sqlstate || ' ' || attempts FROM drip.batches WHERE run_id = {run} AND batch_no = 2")),
        "22012 2"
    );
    assert!(db
        .text(&format!("SELECT error FROM drip.runs WHERE id = {run}"))
        .contains("division by zero"));
}
