//! Pages stay fast with 10,000 runs and 1,000,000 batch rows: pagination, counts from
//! drip.runs and drip.progress, and nothing that counts over drip.batches. The catalog is
//! seeded directly (as superuser) with finished runs copied from a real one.

mod common;

use std::time::{Duration, Instant};

use common::http::Http;
use common::{Server, TestDb};

/// Generous for a debug build on a 2-core CI machine; the figures are printed.
const LIMIT: Duration = Duration::from_millis(1500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_fast_with_10000_runs_and_a_million_batches() {
    let db = TestDb::new("scale").await;
    db.slow_backfill(&db.alice, "big", 100, 1000, "0").await;
    db.slow_backfill(&db.alice, "other", 100, 1000, "0").await;
    let first = db.start(&db.alice, "big", r#"{"step": 1}"#).await;
    db.wait_status(first, &["completed"], Duration::from_secs(30))
        .await;
    let s = db.superuser().await;
    let t = Instant::now();
    // 10,000 finished runs with 50 batches each, and one run of 500,000 batches: 1,000,000
    // batch rows in all (plus the real run's).
    s.batch_execute(&format!(
        "INSERT INTO drip.runs (backfill, owner, status, params, batch_size, sleep, lock_timeout,
                statement_timeout, min_batch_size, max_batch_size, max_replica_lag, definition,
                rows_done, batches_done, rows_estimated, created_at, started_at, finished_at,
                error, next_batch_no)
         SELECT CASE WHEN g % 2 = 0 THEN 'big' ELSE 'other' END, r.owner,
                (ARRAY['completed', 'failed', 'stopped'])[1 + g % 3], r.params, 10, r.sleep,
                r.lock_timeout, r.statement_timeout, r.min_batch_size, r.max_batch_size,
                r.max_replica_lag, r.definition, 500, 50, 500,
                now() - make_interval(mins => g), now() - make_interval(mins => g),
                now() - make_interval(mins => g) + interval '30 s',
                CASE WHEN g % 3 = 1 THEN 'batch 50 failed: division by zero (SQLSTATE 22012)' END,
                CASE WHEN g = 10001 THEN 500001 ELSE 51 END
           FROM drip.runs r, generate_series(1, 10001) g WHERE r.id = {first};
         UPDATE drip.runs SET batches_done = 500000, rows_done = 5000000, rows_estimated = 5000000,
                status = 'completed', error = NULL
          WHERE id = (SELECT max(id) FROM drip.runs);
         INSERT INTO drip.batches (run_id, batch_no, low_key, high_key, rows, batch_size, status,
                attempts, started_at, finished_at, error, sqlstate)
         SELECT r.id, g, CASE WHEN g > 1 THEN ARRAY[((g - 1) * 10)::text] END, ARRAY[(g * 10)::text],
                10, 10, CASE WHEN r.status = 'failed' AND g = 50 THEN 'failed' ELSE 'completed' END, 1,
                r.started_at + make_interval(secs => g * 0.5), r.started_at + make_interval(secs => g * 0.5 + 0.01),
                CASE WHEN r.status = 'failed' AND g = 50 THEN 'division by zero' END,
                CASE WHEN r.status = 'failed' AND g = 50 THEN '22012' END
           FROM drip.runs r, generate_series(1, 50) g
          WHERE r.id > {first} AND r.next_batch_no = 51;
         INSERT INTO drip.batches (run_id, batch_no, low_key, high_key, rows, batch_size, status,
                attempts, started_at, finished_at, error, sqlstate)
         SELECT r.id, g, CASE WHEN g > 1 THEN ARRAY[((g - 1) * 10)::text] END, ARRAY[(g * 10)::text],
                10, 10, 'completed', CASE WHEN g % 50000 = 7 THEN 2 ELSE 1 END,
                r.started_at + make_interval(secs => g * 0.007),
                r.started_at + make_interval(secs => g * 0.007 + 0.002 + (g % 1000) * 0.000004),
                CASE WHEN g % 50000 = 7 THEN 'canceling statement due to lock timeout' END,
                CASE WHEN g % 50000 = 7 THEN '55P03' END
           FROM drip.runs r, generate_series(1, 500000) g WHERE r.id = (SELECT max(id) FROM drip.runs);
         ANALYZE drip.runs; ANALYZE drip.batches;"
    ))
    .await
    .expect("seed");
    let big: i64 = s
        .query_one("SELECT max(id) FROM drip.runs", &[])
        .await
        .unwrap()
        .get(0);
    let (runs, batches): (i64, i64) = {
        let r = s
            .query_one(
                "SELECT (SELECT count(*) FROM drip.runs), (SELECT count(*) FROM drip.batches)",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    eprintln!(
        "seeded {runs} runs and {batches} batches in {:?}",
        t.elapsed()
    );
    assert!(runs > 10_000 && batches >= 1_000_000);

    // As alice (row-level security applies), the way a user would look.
    let server = Server::start(&db.url(&db.alice), false, false).await;
    let mut http = Http::new(&server.url(""));
    http.get("/").await; // session and warm-up
    let pages = [
        "/".to_string(),
        "/?tab=failed".into(),
        "/?tab=finished&q=oth".into(),
        "/?mine=1".into(),
        format!("/?before={}", big - 5000),
        "/?fragment=1".into(),
        "/backfills".into(),
        "/backfills/big".into(),
        "/backfills/big/start".into(),
        format!("/runs/{big}"),
        format!("/runs/{big}?fragment=1"),
        format!("/runs/{big}?errors=1"),
        format!("/runs/{big}?before=250000"),
        format!("/runs/{}", big - 1),
    ];
    // The first look at the 500,000-batch run reads all of its batches once (timeline and
    // errors by SQLSTATE); it is bounded separately and printed.
    let t = Instant::now();
    assert_eq!(http.get(&format!("/runs/{big}")).await.status, 200);
    let first_look = t.elapsed();
    eprintln!(
        "{:>6} ms  /runs/{big} (first look: reads its 500,000 batches once)",
        first_look.as_millis()
    );
    assert!(
        first_look < Duration::from_secs(6),
        "first look took {first_look:?}"
    );
    let mut slow = Vec::new();
    for p in &pages {
        let t = Instant::now();
        let page = http.get(p).await;
        let took = t.elapsed();
        eprintln!("{:>6} ms  {p}", took.as_millis());
        assert_eq!(page.status, 200, "{p}: {}", page.body);
        if took > LIMIT {
            slow.push(format!("{p} took {took:?}"));
        }
    }
    let page = http.get(&format!("/runs/{big}")).await;
    assert!(page
        .body
        .contains("500,000 batches in key order, one mark per ~1,250 batches"));
    assert!(page.body.contains(r#"<tr data-sqlstate="55P03">"#));
    assert_eq!(
        page.body.matches("<rect class=\"tl ").count(),
        400,
        "400 marks"
    );
    let list = http.get("/").await;
    assert!(
        list.body.contains(r#"data-count="all">10,002<"#),
        "counts over all runs"
    );
    assert_eq!(
        list.body.matches("<tr data-run-id=").count(),
        50,
        "one page of 50"
    );
    assert!(slow.is_empty(), "slow pages: {slow:?}");
}
