//! Hostile data stays small and harmless on the page: a 1 MB error text is cut (the full text
//! one click away), and names with `/` make links that stay in their path segment.

mod common;

use std::time::Duration;

use common::http::Http;
use common::{Server, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_megabyte_error_is_cut_on_pages_and_served_whole_on_request() {
    let db = TestDb::new("hd_err").await;
    let alice = db.as_role(&db.alice).await;
    alice
        .batch_execute(
            "CREATE TABLE big_t (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
             INSERT INTO big_t (id) SELECT g FROM generate_series(1, 20) g;
             CREATE FUNCTION big_fail(i bigint) RETURNS int LANGUAGE plpgsql AS
               $$ BEGIN RAISE EXCEPTION '%', 'start ' || repeat('x', 1000000) || ' end'; END $$;",
        )
        .await
        .unwrap();
    alice
        .execute(
            "SELECT drip.register('big_error', 'big_t', 'SET n = big_fail(id)', batch_size => 5,
                                  sleep => '0', max_attempts => 1)",
            &[],
        )
        .await
        .unwrap();
    let run = db.start(&db.alice, "big_error", "{}").await;
    db.wait_status(run, &["failed"], Duration::from_secs(30))
        .await;

    let server = Server::start(&db.url(&db.alice), false, false).await;
    let mut http = Http::new(&server.url(""));
    let page = http.get(&format!("/runs/{run}")).await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.len() < 100_000,
        "run page is {} bytes",
        page.body.len()
    );
    assert!(page.body.contains("start xxxx"));
    assert!(page.body.contains(&format!(r#"href="/runs/{run}/error""#)));
    let fragment = http.get(&format!("/runs/{run}?fragment=1")).await;
    assert!(
        fragment.body.len() < 100_000,
        "live refresh is {} bytes",
        fragment.body.len()
    );
    let list = http.get("/").await;
    assert!(
        list.body.len() < 50_000,
        "runs list is {} bytes",
        list.body.len()
    );
    assert!(list.body.contains(&format!(r#"href="/runs/{run}/error""#)));

    let full = http.get(&format!("/runs/{run}/error")).await;
    assert_eq!(full.status, 200);
    assert!(full
        .headers
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert!(full.body.len() > 1_000_000 && full.body.contains(" end"));
    let batch = http.get(&format!("/runs/{run}/error?batch=1")).await;
    assert_eq!(batch.status, 200);
    assert!(batch.body.len() > 1_000_000);

    // Another role: the full text of alice's run is as missing as a run that does not exist.
    let server_b = Server::start(&db.url(&db.bob), false, false).await;
    let mut bob = Http::new(&server_b.url(""));
    let hidden = bob.get(&format!("/runs/{run}/error")).await;
    assert_eq!(hidden.status, 404);
    assert!(!hidden.body.contains("xxxx"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_slashes_stay_in_their_path_segment() {
    let db = TestDb::new("hd_slash").await;
    let name = "../../runs/3/stop";
    let alice = db.as_role(&db.alice).await;
    alice
        .batch_execute(
            "CREATE TABLE slash_t (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
             INSERT INTO slash_t (id) SELECT g FROM generate_series(1, 5) g;",
        )
        .await
        .unwrap();
    alice
        .execute(
            "SELECT drip.register($1, 'slash_t', 'SET n = n + 1', sleep => '0')",
            &[&name],
        )
        .await
        .unwrap();
    let run = db.start(&db.alice, name, "{}").await;
    db.wait_status(run, &["completed"], Duration::from_secs(30))
        .await;
    let server = Server::start(&db.url(&db.alice), false, false).await;
    let mut http = Http::new(&server.url(""));
    let encoded = "..%2F..%2Fruns%2F3%2Fstop";
    for path in ["/", "/backfills", &format!("/runs/{run}")] {
        let page = http.get(path).await;
        assert!(
            !page.body.contains("href=\"/backfills/../"),
            "{path}: a raw slash in a link"
        );
        assert!(
            page.body.contains(&format!("href=\"/backfills/{encoded}")),
            "{path}: {}",
            page.body
        );
    }
    let page = http.get(&format!("/backfills/{encoded}")).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains(name));
    let form = http.get(&format!("/backfills/{encoded}/start")).await;
    assert_eq!(form.status, 200);
    assert!(form
        .body
        .contains(&format!("action=\"/backfills/{encoded}/start\"")));
}
