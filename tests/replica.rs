//! Throttling on replication lag, with a real streaming standby on loopback: pausing its replay
//! makes a run hold with `run_throttled` once the lag passes `max_replica_lag`, and the run goes
//! on after replay resumes.
//!
//! Owns two clusters (`target/replica_primary`, `target/replica_standby`); needs the extension
//! installed in the system PostgreSQL (`scripts/test.sh faults` runs it).
//!
//! ```sh
//! cargo test --test replica -- --ignored --nocapture
//! ```

mod common;

use std::time::{Duration, Instant};

use common::Cluster;
use postgres::fallible_iterator::FallibleIterator;

#[test]
#[ignore = "needs its own clusters: run by scripts/test.sh faults"]
fn a_run_holds_while_the_standby_lags_and_continues_after() {
    let primary = Cluster::create("replica_primary");
    primary.start();
    let standby = Cluster::standby_of(&primary, "replica_standby");
    standby.start();

    let mut admin = primary.connect("postgres");
    admin.batch_execute("CREATE DATABASE lagdb").unwrap();
    let mut p = primary.connect("lagdb");
    p.batch_execute(
        "CREATE EXTENSION data_drip;
         CREATE TABLE t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0, pad text NOT NULL DEFAULT repeat('x', 500));
         INSERT INTO t (id) SELECT g FROM generate_series(1, 60000) g;
         SELECT drip.register('lag', 't', 'SET n = n + 1', batch_size => 200, sleep => '20 milliseconds',
             max_replica_lag => '1 second');",
    )
    .unwrap();
    // Let the standby catch up with the setup, then pause its replay.
    let mut s = standby.connect("postgres");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lagging: bool = p
            .query_one(
                "SELECT coalesce((SELECT replay_lsn < pg_current_wal_lsn() FROM pg_stat_replication), true)",
                &[],
            )
            .unwrap()
            .get(0);
        if !lagging {
            break;
        }
        assert!(Instant::now() < deadline, "standby never caught up");
        std::thread::sleep(Duration::from_millis(100));
    }
    s.batch_execute("SELECT pg_wal_replay_pause()").unwrap();

    let mut listener = primary.connect("lagdb");
    listener.batch_execute("LISTEN drip_events").unwrap();
    let run: i64 = p.query_one("SELECT drip.start('lag')", &[]).unwrap().get(0);

    // The run holds once the lag passes 1 s: status stays running, no batch completes.
    let deadline = Instant::now() + Duration::from_secs(60);
    let reason = loop {
        let r: Option<String> = p
            .query_one("SELECT throttled FROM drip.runs WHERE id = $1", &[&run])
            .unwrap()
            .get(0);
        if let Some(r) = r {
            break r;
        }
        let status: String = p
            .query_one("SELECT status FROM drip.runs WHERE id = $1", &[&run])
            .unwrap()
            .get(0);
        assert_ne!(status, "completed", "the run finished without ever holding");
        assert!(Instant::now() < deadline, "the run never held");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(reason.contains("replica lag"), "{reason}");
    let held_at: i64 = p
        .query_one("SELECT batches_done FROM drip.runs WHERE id = $1", &[&run])
        .unwrap()
        .get(0);
    std::thread::sleep(Duration::from_secs(3));
    let row = p
        .query_one(
            "SELECT batches_done, status FROM drip.runs WHERE id = $1",
            &[&run],
        )
        .unwrap();
    let (still, status): (i64, String) = (row.get(0), row.get(1));
    assert_eq!(status, "running");
    assert!(
        still <= held_at + 1,
        "batches went on while holding: {held_at} -> {still}"
    );

    // Replay resumes: the lag drops and the run completes.
    s.batch_execute("SELECT pg_wal_replay_resume()").unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status: String = p
            .query_one("SELECT status FROM drip.runs WHERE id = $1", &[&run])
            .unwrap()
            .get(0);
        if status == "completed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not continue after replay resumed ({status})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let wrong: i64 = p
        .query_one("SELECT count(*) FROM t WHERE n <> 1", &[])
        .unwrap()
        .get(0);
    assert_eq!(wrong, 0);
    listener.batch_execute("SELECT 1").unwrap();
    let mut notes = listener.notifications();
    let mut it = notes.timeout_iter(Duration::from_millis(300));
    let mut throttled = Vec::new();
    while let Some(n) = it.next().unwrap() {
        let v: serde_json::Value = serde_json::from_str(n.payload()).unwrap();
        if v["event"] == "run_throttled" {
            throttled.push(v["id"].as_i64().expect("event id"));
        }
    }
    drop(it);
    drop(notes);
    // Notifications carry ids; the reason is in the event's row.
    let throttled: Vec<String> = throttled
        .iter()
        .map(|id| {
            p.query_one(
                "SELECT payload->>'reason' FROM drip.events WHERE id = $1",
                &[id],
            )
            .unwrap()
            .get(0)
        })
        .collect();
    assert!(!throttled.is_empty(), "no run_throttled event");
    println!(
        "replica lag throttling: held at batch {held_at} with \"{}\", {} run_throttled event(s), completed after replay resumed",
        throttled[0],
        throttled.len()
    );
    drop(standby);
}
