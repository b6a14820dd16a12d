//! Citus suite, part two: what one sub-run per shard promises on a real 3-node cluster
//! (tests/common/citus.rs): the per-node cap, per-shard progress, `drip.plan`'s distribution,
//! control (pause, resume, stop, retry) of a run with sub-runs, element mode and colocated joins
//! per shard, and the fallback of too-sparse keys to a walk from the coordinator. Every run is
//! checked exactly once (`SET n = n + 1`: every row ends with n = 1).
//!
//! Run by `scripts/test.sh citus`, like tests/citus.rs:
//!
//! ```sh
//! cargo test --test citus_subruns -- --ignored --nocapture --test-threads=1
//! ```

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::citus::{exact, start_run, wait_finished, CitusCluster};
use postgres::Client;

const RUN_TIMEOUT: Duration = Duration::from_secs(240);

fn table(c: &mut Client, name: &str, rows: i64) {
    c.batch_execute(&format!(
        "CREATE TABLE {name} (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
         SELECT create_distributed_table('{name}', 'id', shard_count => 32);
         INSERT INTO {name} (id) SELECT g FROM generate_series(1, {rows}) g;
         ANALYZE {name};"
    ))
    .unwrap();
}

fn set_system(c: &mut Client, settings: &[(&str, &str)]) {
    for (name, value) in settings {
        c.batch_execute(&format!("ALTER SYSTEM SET {name} = '{value}'"))
            .unwrap();
    }
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_millis(300));
}

/// Running sub-runs per node group, sampled until the run finishes; returns the largest count
/// seen on one node and in all.
fn sample_running(c: &mut Client, run: i64) -> (i64, i64) {
    let deadline = Instant::now() + RUN_TIMEOUT;
    let (mut per_node, mut total) = (0i64, 0i64);
    while Instant::now() < deadline {
        let rows = c
            .query(
                "SELECT node_group, count(*) FROM drip.shard_progress \
                 WHERE run_id = $1 AND status = 'running' GROUP BY node_group",
                &[&run],
            )
            .unwrap();
        let counts: HashMap<Option<i32>, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        per_node = per_node.max(counts.values().copied().max().unwrap_or(0));
        total = total.max(counts.values().sum());
        let status: String = c
            .query_one("SELECT status FROM drip.runs WHERE id = $1", &[&run])
            .unwrap()
            .get(0);
        if matches!(status.as_str(), "completed" | "failed" | "stopped") {
            break;
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    (per_node, total)
}

/// One sub-run per shard, at most drip.max_runs_per_node per node at once (1, then 2), with
/// per-shard progress that adds up to the run's.
#[test]
#[ignore]
fn sub_runs_respect_the_per_node_cap_and_report_per_shard_progress() {
    let cc = CitusCluster::start("subrun_cap");
    let mut c = cc.connect();
    table(&mut c, "cap_t", 60_000);
    set_system(&mut c, &[("drip.max_runs", "8")]);

    let run = start_run(
        &mut c,
        "cap",
        "cap_t",
        "SET n = n + 1",
        500,
        "10 milliseconds",
        1,
        "",
    );
    let parallel: i32 = c
        .query_one("SELECT parallel FROM drip.runs WHERE id = $1", &[&run])
        .unwrap()
        .get(0);
    assert_eq!(parallel, 32, "one sub-run per shard");
    let (per_node, total) = sample_running(&mut c, run);
    assert_eq!(
        wait_finished(&cc.coord, run, RUN_TIMEOUT).unwrap(),
        "completed"
    );
    assert!(
        per_node <= 1,
        "{per_node} sub-runs wrote to one node at once (cap 1)"
    );
    assert!(total <= 2, "{total} sub-runs at once on 2 nodes with cap 1");
    assert!(total >= 1, "no sub-run was ever seen running");
    exact(&mut c, "cap_t", run).assert_ok("cap 1");
    // Per-shard progress adds up to the run's, every sub-run done.
    let r = c
        .query_one(
            "SELECT p.sub_runs, p.sub_runs_done, \
                    (SELECT sum(rows_done)::bigint FROM drip.shard_progress s WHERE s.run_id = p.run_id), \
                    (SELECT count(*) FROM drip.shard_progress s WHERE s.run_id = p.run_id AND s.status = 'done'), \
                    (SELECT count(DISTINCT node_group) FROM drip.shard_progress s WHERE s.run_id = p.run_id) \
             FROM drip.progress p WHERE p.run_id = $1",
            &[&run],
        )
        .unwrap();
    assert_eq!(r.get::<_, Option<i32>>(0), Some(32));
    assert_eq!(r.get::<_, Option<i32>>(1), Some(32));
    assert_eq!(r.get::<_, i64>(2), 60_000);
    assert_eq!(r.get::<_, i64>(3), 32);
    assert_eq!(r.get::<_, i64>(4), 2, "the shards are on both workers");
    // The sub-runs' hash ranges partition the hash space, one per shard as Citus has them.
    let ranges: Vec<(i32, i32)> = c
        .query(
            "SELECT hash_min, hash_max FROM drip.slices WHERE run_id = $1 ORDER BY hash_min",
            &[&run],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let shards: Vec<(i32, i32)> = c
        .query(
            "SELECT shardminvalue::int, shardmaxvalue::int FROM pg_dist_shard \
             WHERE logicalrelid = 'cap_t'::regclass ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(ranges, shards);
    assert_eq!(ranges.first().map(|r| r.0), Some(i32::MIN));
    assert_eq!(ranges.last().map(|r| r.1), Some(i32::MAX));
    assert!(ranges
        .windows(2)
        .all(|w| w[0].1 as i64 + 1 == w[1].0 as i64));

    // Cap 2: up to two sub-runs per node.
    set_system(&mut c, &[("drip.max_runs_per_node", "2")]);
    c.batch_execute("UPDATE cap_t SET n = 0").unwrap();
    let run = c
        .query_one("SELECT drip.start('cap')", &[])
        .unwrap()
        .get::<_, i64>(0);
    let (per_node, total) = sample_running(&mut c, run);
    assert_eq!(
        wait_finished(&cc.coord, run, RUN_TIMEOUT).unwrap(),
        "completed"
    );
    assert!(per_node <= 2, "{per_node} sub-runs on one node with cap 2");
    assert!(total <= 4, "{total} sub-runs at once on 2 nodes with cap 2");
    assert!(
        per_node >= 2,
        "cap 2 never ran two sub-runs on one node (saw {per_node})"
    );
    exact(&mut c, "cap_t", run).assert_ok("cap 2");
}

/// drip.plan says how a run walks a Citus table, and shows a sub-run's routed batch.
#[test]
#[ignore]
fn plan_shows_the_distribution_and_sparse_keys_fall_back() {
    let cc = CitusCluster::start("subrun_plan");
    let mut c = cc.connect();
    table(&mut c, "plan_t", 20_000);
    c.batch_execute(
        "CREATE TABLE plan_text (k text PRIMARY KEY, n int NOT NULL DEFAULT 0);
         SELECT create_distributed_table('plan_text', 'k');
         INSERT INTO plan_text (k) SELECT 'k' || g FROM generate_series(1, 5000) g;
         CREATE TABLE plan_sparse (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
         SELECT create_distributed_table('plan_sparse', 'id');
         INSERT INTO plan_sparse (id) SELECT g * 1000 FROM generate_series(1, 5000) g;
         ANALYZE plan_text; ANALYZE plan_sparse;
         SELECT drip.register('p_int', 'plan_t', 'SET n = n + 1');
         SELECT drip.register('p_text', 'plan_text', 'SET n = n + 1', sleep => '0');
         SELECT drip.register('p_sparse', 'plan_sparse', 'SET n = n + 1', sleep => '0');",
    )
    .unwrap();
    let r = c
        .query_one(
            "SELECT distribution, batch_sql, batch_plan, warning FROM drip.plan('p_int')",
            &[],
        )
        .unwrap();
    let (dist, sql, plan, warning): (String, String, String, Option<String>) =
        (r.get(0), r.get(1), r.get(2), r.get(3));
    assert!(dist.contains("32 shard(s) on 2 node(s)"), "{dist}");
    assert!(dist.contains("one sub-run per shard"), "{dist}");
    assert!(sql.contains("= ANY($"), "{sql}");
    assert!(
        plan.contains("Task Count: 1"),
        "a sub-run's batch is one task: {plan}"
    );
    assert_eq!(warning, None);

    let r = c
        .query_one("SELECT distribution, warning FROM drip.plan('p_text')", &[])
        .unwrap();
    let (dist, warning): (String, Option<String>) = (r.get(0), r.get(1));
    assert!(
        dist.contains("walked as one key range from the coordinator"),
        "{dist}"
    );
    assert!(
        warning
            .unwrap_or_default()
            .contains("every batch reaches all 32 shards"),
        "a walk from the coordinator warns about the fan-out"
    );
    let run: i64 = c
        .query_one("SELECT drip.start('p_text')", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        wait_finished(&cc.coord, run, RUN_TIMEOUT).unwrap(),
        "completed"
    );
    let done: i64 = c
        .query_one("SELECT count(*) FROM plan_text WHERE n = 1", &[])
        .unwrap()
        .get(0);
    assert_eq!(done, 5000);

    // One key value in a thousand is a row: walked from the coordinator, with a notice.
    let run: i64 = c
        .query_one("SELECT drip.start('p_sparse')", &[])
        .unwrap()
        .get(0);
    let parallel: i32 = c
        .query_one("SELECT parallel FROM drip.runs WHERE id = $1", &[&run])
        .unwrap()
        .get(0);
    assert_eq!(parallel, 1);
    assert_eq!(
        wait_finished(&cc.coord, run, RUN_TIMEOUT).unwrap(),
        "completed"
    );
    exact(&mut c, "plan_sparse", run).assert_ok("sparse keys");
}

/// Pause, resume, stop and retry a run with sub-runs; element mode and a colocated join per
/// shard: every row once.
#[test]
#[ignore]
fn sub_runs_are_controlled_like_runs_and_take_every_action_form() {
    let cc = CitusCluster::start("subrun_control");
    let mut c = cc.connect();
    table(&mut c, "ctl_t", 40_000);
    let run = start_run(
        &mut c,
        "ctl",
        "ctl_t",
        "SET n = n + 1",
        200,
        "20 milliseconds",
        1,
        "",
    );
    let done = |c: &mut Client| -> i64 {
        c.query_one("SELECT rows_done FROM drip.runs WHERE id = $1", &[&run])
            .unwrap()
            .get(0)
    };
    let wait_more = |c: &mut Client, than: i64| {
        let deadline = Instant::now() + RUN_TIMEOUT;
        while done(c) <= than && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_more(&mut c, 2_000);
    c.batch_execute(&format!("SELECT drip.pause({run})"))
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let paused_at = done(&mut c);
    let running: i64 = c
        .query_one(
            "SELECT count(*) FROM drip.shard_progress WHERE run_id = $1 AND status = 'running'",
            &[&run],
        )
        .unwrap()
        .get(0);
    assert_eq!(running, 0, "a paused run has no sub-run running");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(done(&mut c), paused_at, "nothing moves while paused");
    c.batch_execute(&format!("SELECT drip.resume({run})"))
        .unwrap();
    wait_more(&mut c, paused_at + 2_000);
    c.batch_execute(&format!("SELECT drip.stop({run})"))
        .unwrap();
    assert_eq!(
        wait_finished(&cc.coord, run, RUN_TIMEOUT).unwrap(),
        "stopped"
    );
    c.batch_execute(&format!("SELECT drip.retry({run})"))
        .unwrap();
    assert_eq!(
        wait_finished(&cc.coord, run, RUN_TIMEOUT).unwrap(),
        "completed"
    );
    exact(&mut c, "ctl_t", run).assert_ok("pause, resume, stop, retry");

    // Element mode per shard, and a statement action joining a colocated table.
    c.batch_execute(
        "CREATE TABLE cust (id bigint PRIMARY KEY, tier int NOT NULL);
         SELECT create_distributed_table('cust', 'id', colocate_with => 'ctl_t');
         INSERT INTO cust SELECT g, g % 7 FROM generate_series(1, 40000) g;
         ALTER TABLE ctl_t ADD COLUMN tier int;
         UPDATE ctl_t SET n = 0;",
    )
    .unwrap();
    let run = start_run(
        &mut c,
        "ctl_join",
        "ctl_t",
        "UPDATE ctl_t t SET tier = c.tier, n = t.n + 1 FROM drip_batch b JOIN cust c ON c.id = b.id WHERE t.id = b.id",
        1000,
        "0",
        1,
        "",
    );
    assert_eq!(
        wait_finished(&cc.coord, run, RUN_TIMEOUT).unwrap(),
        "completed"
    );
    exact(&mut c, "ctl_t", run).assert_ok("colocated join");
    let wrong: i64 = c
        .query_one(
            "SELECT count(*) FROM ctl_t WHERE tier IS DISTINCT FROM id % 7",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(wrong, 0);
    c.batch_execute("UPDATE ctl_t SET n = 0").unwrap();
    c.batch_execute(
        "SELECT drip.register('ctl_rows', 'ctl_t', 'SET n = n + 1', mode => 'row', batch_size => 500, sleep => '0')",
    )
    .unwrap();
    let run: i64 = c
        .query_one("SELECT drip.start('ctl_rows')", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        wait_finished(&cc.coord, run, RUN_TIMEOUT).unwrap(),
        "completed"
    );
    exact(&mut c, "ctl_t", run).assert_ok("element mode");
}

/// Undo data cannot be kept for a Citus table (its before-images would not be trustworthy): a
/// clear refusal at register and at start, nothing written. drip.preview works there, and
/// changes nothing.
#[test]
#[ignore]
fn undo_is_refused_on_citus_tables_and_preview_works() {
    let cc = CitusCluster::start("subrun_undo");
    let mut c = cc.connect();
    table(&mut c, "undo_t", 1000);
    c.batch_execute(
        "CREATE TABLE undo_ref (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
         SELECT create_reference_table('undo_ref');
         SELECT drip.register('u_plain', 'undo_t', 'SET n = n + 1');",
    )
    .unwrap();
    for sql in [
        "SELECT drip.register('u_reg', 'undo_t', 'SET n = n + 1', undo => true)",
        "SELECT drip.register('u_ref', 'undo_ref', 'SET n = n + 1', undo => true)",
        "SELECT drip.start('u_plain', undo => true)",
    ] {
        let e = c.batch_execute(sql).expect_err(sql);
        let db = e.as_db_error().expect("a database error");
        assert_eq!(db.code().code(), "0A000", "{sql}: {db:?}");
        assert!(
            db.message().contains("undo => true is not supported"),
            "{}",
            db.message()
        );
        assert!(db.hint().is_some_and(|h| h.contains("drip.preview")));
    }
    let written: i64 = c
        .query_one(
            "SELECT (SELECT count(*) FROM drip.runs) + (SELECT count(*) FROM drip.backfills WHERE name <> 'u_plain')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(written, 0, "nothing was written");

    let rows = c
        .query(
            "SELECT key, before->>'n', after->>'n' FROM drip.preview('u_plain', rows => 5)",
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), 5);
    for r in &rows {
        assert_eq!(r.get::<_, Option<String>>(1).as_deref(), Some("0"));
        assert_eq!(r.get::<_, Option<String>>(2).as_deref(), Some("1"));
    }
    let changed: i64 = c
        .query_one("SELECT count(*) FROM undo_t WHERE n <> 0", &[])
        .unwrap()
        .get(0);
    assert_eq!(changed, 0, "the preview was rolled back on the workers");
}
