//! Handlers and rendering against a real cluster and the real extension.

mod common;

use std::time::Duration;

use common::http::Http;
use common::{eventually, Server, TestDb};

/// Every page: the CSP header, and nothing the CSP would have to allow (inline script,
/// inline style, event-handler attributes).
fn assert_csp_clean(page: &common::http::Page) {
    let csp = page
        .headers
        .get("content-security-policy")
        .expect("CSP header");
    let csp = csp.to_str().unwrap();
    assert!(csp.contains("default-src 'self'") && csp.contains("script-src 'self'"));
    assert!(!csp.contains("unsafe-inline"));
    let b = &page.body;
    assert!(!b.contains(" style="), "inline style attribute in page");
    assert!(!b.contains("<style"), "inline style element in page");
    assert!(
        !b.contains(" onclick=") && !b.contains(" onload="),
        "inline handler"
    );
    for (i, _) in b.match_indices("<script") {
        let tag = &b[i..i + b[i..].find('>').unwrap()];
        assert!(tag.contains(" src="), "inline script: {tag}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_page_lists_runs_with_counts_and_filters() {
    let db = TestDb::new("h_runs").await;
    db.slow_backfill(&db.alice, "orders_fix", 200, 1000, "0")
        .await;
    db.slow_backfill(&db.alice, "users_fix", 200, 1000, "0")
        .await;
    let r1 = db.start(&db.alice, "orders_fix", r#"{"step": 1}"#).await;
    db.wait_status(r1, &["completed"], Duration::from_secs(30))
        .await;
    let r2 = db.start(&db.alice, "users_fix", r#"{"step": 1}"#).await;
    db.wait_status(r2, &["completed"], Duration::from_secs(30))
        .await;

    let server = Server::start(&db.url(&db.alice), false, false).await;
    let mut http = Http::new(&server.url(""));
    let page = http.get("/").await;
    assert_eq!(page.status, 200);
    assert_csp_clean(&page);
    assert!(
        page.headers.get("set-cookie").is_none(),
        "anonymous visitors get no session"
    );
    assert!(page.body.contains(&format!(r#"href="/runs/{r1}""#)));
    assert!(
        page.body.contains(r#"data-count="finished">2<"#),
        "finished tab counts 2"
    );
    assert!(page.body.contains(r#"data-count="running">0<"#));

    // Search by name is in the URL and survives a reload; the fragment is the live region.
    let page = http.get("/?q=orders").await;
    assert!(page.body.contains("orders_fix") && !page.body.contains(r#">users_fix<"#));
    assert!(page.body.contains(r#"value="orders""#));
    let frag = http.get("/?q=orders&fragment=1").await;
    assert!(!frag.body.contains("<html") && frag.body.contains("orders_fix"));
    let page = http.get("/?tab=failed").await;
    assert!(
        page.body.contains("Nothing failed"),
        "designed empty state per tab"
    );

    // Backfills screen and permalinks.
    let page = http.get("/backfills").await;
    assert_csp_clean(&page);
    assert!(page.body.contains("A slow test backfill"));
    assert!(page.body.contains("<code>$step</code> integer"));
    let page = http.get("/backfills/orders_fix").await;
    assert_eq!(page.status, 200);
    let page = http.get(&format!("/runs/{r1}")).await;
    assert_eq!(page.status, 200);
    assert_csp_clean(&page);
    assert!(page.body.contains(r#"data-status="completed""#));
    assert!(page.body.contains("class=\"timeline\""));
    assert!(page.body.contains("run_completed"));
    assert_eq!(http.get("/runs/999999").await.status, 404);
    assert_eq!(http.get("/assets/app.js").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_need_the_csrf_token_and_read_only_refuses_them() {
    let db = TestDb::new("h_csrf").await;
    db.slow_backfill(&db.alice, "slow", 2000, 10, "200ms").await;
    let run = db.start(&db.alice, "slow", r#"{"step": 1}"#).await;
    db.wait_status(run, &["running"], Duration::from_secs(20))
        .await;

    let server = Server::start(&db.url(&db.alice), false, false).await;
    let mut http = Http::new(&server.url(""));
    let page = http.get(&format!("/runs/{run}")).await;
    let csrf = page.csrf();
    let path = format!("/runs/{run}/pause");
    let refused = http.post(&path, &[("csrf", "forged")]).await;
    assert_eq!(refused.status, 403);
    assert_eq!(http.post(&path, &[]).await.status, 403);
    assert_eq!(
        db.status(run).await,
        "running",
        "a forged POST changed nothing"
    );

    let done = http
        .post(&path, &[("csrf", &csrf), ("return_to", "//evil.example")])
        .await;
    assert_eq!(done.status, 303);
    assert_eq!(done.location(), format!("/runs/{run}"), "no open redirect");
    assert_eq!(db.status(run).await, "paused");

    // A transition the database refuses comes back with its SQLSTATE.
    let again = http.post(&path, &[("csrf", &csrf)]).await;
    assert_eq!(again.status, 409);
    assert!(again.body.contains("55000"), "{}", again.body);

    // drip.alter from the run page.
    let altered = http
        .post(
            &format!("/runs/{run}/alter"),
            &[("csrf", &csrf), ("batch_size", "7"), ("sleep", "10ms")],
        )
        .await;
    assert_eq!(altered.status, 303);
    let c = db.superuser().await;
    let bs: i32 = c
        .query_one("SELECT batch_size FROM drip.runs WHERE id = $1", &[&run])
        .await
        .unwrap()
        .get(0);
    assert_eq!(bs, 7);

    // Read-only: no controls drawn, and a POST with a valid token is still refused.
    let ro = Server::start(&db.url(&db.alice), false, true).await;
    let mut http = Http::new(&ro.url(""));
    let page = http.get(&format!("/runs/{run}")).await;
    assert!(
        !page.body.contains("/resume\""),
        "no control form in read-only mode"
    );
    assert!(!page.body.contains("Start a run"));
    let csrf = page.csrf_or_empty();
    let resp = http
        .post(&format!("/runs/{run}/resume"), &[("csrf", &csrf)])
        .await;
    assert_eq!(resp.status, 403);
    assert!(
        resp.body.contains("--read-only"),
        "refused because of read-only mode"
    );
    assert_eq!(db.status(run).await, "paused");
    c.execute("SELECT drip.stop($1)", &[&run]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_form_is_generated_from_declared_types_and_shows_drip_start_errors() {
    let db = TestDb::new("h_start").await;
    db.slow_backfill(&db.alice, "typed", 100, 1000, "0").await;
    let server = Server::start(&db.url(&db.alice), false, false).await;
    let mut http = Http::new(&server.url(""));
    let page = http.get("/backfills/typed/start").await;
    assert_eq!(page.status, 200);
    assert_csp_clean(&page);
    let b = &page.body;
    assert!(
        b.contains(r#"name="p.step" type="number" step="1""#),
        "integer input"
    );
    assert!(
        b.contains(r#"<abbr class="req" title="required">*</abbr>"#),
        "required mark"
    );
    assert!(
        b.contains(r#"<select id="p-dry" name="p.dry">"#),
        "boolean select"
    );
    assert!(
        b.contains(r#"<textarea id="p-tags" name="p.tags""#),
        "array textarea"
    );
    assert!(
        b.contains("time zone <b>"),
        "timestamptz shows the time zone"
    );
    assert!(b.contains("default: <code>web</code>"), "default shown");

    // drip.start validates: a wrong value comes back with its message and SQLSTATE.
    let csrf = page.csrf();
    let bad = http
        .post(
            "/backfills/typed/start",
            &[("csrf", &csrf), ("p.step", "1"), ("p.until", "not a time")],
        )
        .await;
    assert_eq!(bad.status, 422);
    assert!(bad.body.contains("SQLSTATE 22007"), "{}", bad.body);
    assert!(
        bad.body.contains(r#"value="not a time""#),
        "typed values are kept"
    );
    let missing = http
        .post("/backfills/typed/start", &[("csrf", &csrf)])
        .await;
    assert_eq!(missing.status, 422);
    assert!(
        missing.body.contains("SQLSTATE 22023"),
        "required parameter missing"
    );

    let ok = http
        .post(
            "/backfills/typed/start",
            &[
                ("csrf", &csrf),
                ("p.step", "2"),
                ("p.min", "10"),
                ("p.dry", "true"),
                ("p.tags", "a\nb c"),
                ("p.until", "2030-01-02 03:04"),
                ("batch_size", "25"),
                ("note", "from the form"),
            ],
        )
        .await;
    assert_eq!(ok.status, 303, "{}", ok.body);
    let run: i64 = ok.location().trim_start_matches("/runs/").parse().unwrap();
    let c = db.superuser().await;
    let row = c
        .query_one(
            "SELECT params, batch_size, note FROM drip.runs WHERE id = $1",
            &[&run],
        )
        .await
        .unwrap();
    let params: serde_json::Value = row.get(0);
    assert_eq!(params["step"], 2);
    assert_eq!(params["dry"], true);
    assert_eq!(params["tags"], serde_json::json!(["a", "b c"]));
    assert_eq!(row.get::<_, i32>(1), 25);
    assert_eq!(
        row.get::<_, Option<String>>(2).as_deref(),
        Some("from the form")
    );
    db.wait_status(run, &["completed"], Duration::from_secs(30))
        .await;

    // Re-run with the same parameters: the form comes back filled in.
    let again = http
        .get(&format!("/backfills/typed/start?from_run={run}"))
        .await;
    assert!(again
        .body
        .contains(r#"name="p.step" type="number" step="1" value="2""#));
    assert!(again.body.contains("a\nb c</textarea>"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_user_login_runs_every_request_as_that_role() {
    let db = TestDb::new("h_login").await;
    db.slow_backfill(&db.alice, "alices", 100, 1000, "0").await;
    let arun = db.start(&db.alice, "alices", r#"{"step": 1}"#).await;
    db.wait_status(arun, &["completed"], Duration::from_secs(30))
        .await;
    db.slow_backfill(&db.bob, "bobs", 2000, 10, "100ms").await;
    let brun = db.start(&db.bob, "bobs", r#"{"step": 1}"#).await;
    // Only alice may pause (the administrator revoked it from everyone else).
    let s = db.superuser().await;
    s.batch_execute(&format!(
        "REVOKE EXECUTE ON FUNCTION drip.pause(bigint) FROM PUBLIC;
         GRANT EXECUTE ON FUNCTION drip.pause(bigint) TO {};",
        db.alice
    ))
    .await
    .unwrap();

    // The dashboard's own URL role is unprivileged: it only LISTENs.
    let server = Server::start(&db.url(&db.bob), true, false).await;
    let mut http = Http::new(&server.url(""));
    let first = http.get("/").await;
    assert_eq!(first.status, 303);
    assert_eq!(first.location(), "/login");
    let form = http.get("/login").await;
    let csrf = form.csrf();
    let wrong = http
        .post(
            "/login",
            &[("csrf", &csrf), ("user", &db.bob), ("password", "nope")],
        )
        .await;
    assert_eq!(wrong.status, 401);
    assert!(
        wrong.body.contains("Sign-in failed") && !wrong.body.contains("28P01"),
        "one generic message, no PostgreSQL detail: {}",
        wrong.body
    );
    let ok = http
        .post(
            "/login",
            &[
                ("csrf", &csrf),
                ("user", &db.bob),
                ("password", common::PASSWORD),
            ],
        )
        .await;
    assert_eq!(ok.status, 303);
    let cookie = ok.headers.get("set-cookie").unwrap().to_str().unwrap();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));

    let page = http.get("/").await;
    assert_eq!(page.status, 200);
    assert!(page
        .body
        .contains(&format!(r#"<b id="role">{}</b>"#, db.bob)));
    assert!(
        page.body.contains("bobs") && !page.body.contains("alices"),
        "RLS decides"
    );
    assert_eq!(http.get(&format!("/runs/{arun}")).await.status, 404);
    assert!(!http.get("/backfills").await.body.contains("alices"));

    // Pause is drawn disabled with the database's reason; the server refuses it anyway.
    let page = http.get(&format!("/runs/{brun}")).await;
    assert!(
        page.body
            .contains(r#"data-action="pause" data-refused="role "#),
        "{}",
        page.body
    );
    assert!(page.body.contains("may not execute drip.pause"));
    let csrf = page.csrf();
    let refused = http
        .post(&format!("/runs/{brun}/pause"), &[("csrf", &csrf)])
        .await;
    assert_eq!(refused.status, 403);
    assert!(refused.body.contains("42501"));
    // Stop is allowed to bob, on his own run.
    let stop = http
        .post(&format!("/runs/{brun}/stop"), &[("csrf", &csrf)])
        .await;
    assert_eq!(stop.status, 303);
    assert_eq!(db.status(brun).await, "stopped");
    // ... and refused (42501) on alice's run even by a hand-made POST.
    let foreign = http
        .post(&format!("/runs/{arun}/retry"), &[("csrf", &csrf)])
        .await;
    assert!(
        foreign.status == 403 || foreign.status == 404,
        "{}",
        foreign.status
    );

    let out = http.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.location(), "/login");
    assert_eq!(http.get("/").await.status, 303);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_batches_are_grouped_by_sqlstate() {
    let db = TestDb::new("h_fail").await;
    let c = db.as_role(&db.alice).await;
    c.batch_execute(
        "CREATE TABLE div_t (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO div_t SELECT g FROM generate_series(1, 100) g;
         SELECT drip.register('div', 'div_t', action => 'SET n = 100 / (id - 55)', batch_size => 10,
                              sleep => '0', max_attempts => 2);",
    )
    .await
    .unwrap();
    let run = db.start(&db.alice, "div", "{}").await;
    db.wait_status(run, &["failed"], Duration::from_secs(30))
        .await;
    let server = Server::start(&db.url(&db.alice), false, false).await;
    let mut http = Http::new(&server.url(""));
    let page = http.get(&format!("/runs/{run}")).await;
    assert!(
        page.body.contains(r#"<tr data-sqlstate="22012">"#),
        "{}",
        page.body
    );
    assert!(page.body.contains("division by zero"));
    assert!(
        page.body.contains(r#"class="tl failed""#),
        "timeline marks the failed batch"
    );
    let only = http.get(&format!("/runs/{run}?errors=1")).await;
    assert_eq!(
        only.body.matches("<tr data-batch=").count(),
        1,
        "only the failed batch"
    );
    let list = http.get("/?tab=failed").await;
    assert!(list.body.contains(&format!(r#"data-run-id="{run}""#)));
    assert!(list.body.contains("Retry"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_is_filtered_by_rls_and_resumes_from_last_event_id() {
    let db = TestDb::new("h_sse").await;
    db.slow_backfill(&db.alice, "a_sse", 100, 50, "0").await;
    db.slow_backfill(&db.bob, "b_sse", 100, 50, "0").await;
    let server = Server::start(&db.url(&db.bob), false, false).await;

    let mut stream = common::sse::Sse::open(&server.url("/live"), None).await;
    let ready = stream.next_event(Duration::from_secs(5)).await;
    assert_eq!(ready.event, "ready");
    let start_cursor = ready.id.clone();

    let arun = db.start(&db.alice, "a_sse", r#"{"step": 1}"#).await;
    db.wait_status(arun, &["completed"], Duration::from_secs(30))
        .await;
    let brun = db.start(&db.bob, "b_sse", r#"{"step": 1}"#).await;
    db.wait_status(brun, &["completed"], Duration::from_secs(30))
        .await;

    // Bob's stream carries all of bob's events and none of alice's.
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !seen
        .iter()
        .any(|(_, r, e): &(i64, i64, String)| *r == brun && e == "run_completed")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "bob's run_completed never arrived: {seen:?}"
        );
        let ev = stream.next_event(Duration::from_secs(20)).await;
        if ev.event != "drip" {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
        for e in v["events"].as_array().unwrap() {
            seen.push((
                e["id"].as_i64().unwrap(),
                e["run_id"].as_i64().unwrap(),
                e["event"].as_str().unwrap().to_string(),
            ));
        }
    }
    assert!(
        seen.iter().all(|(_, r, _)| *r == brun),
        "only bob's events: {seen:?}"
    );
    let c = db.superuser().await;
    let expected: Vec<i64> = c
        .query(
            "SELECT id FROM drip.events WHERE run_id = $1 ORDER BY id",
            &[&brun],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut got: Vec<i64> = seen.iter().map(|(id, _, _)| *id).collect();
    got.sort();
    assert_eq!(got, expected, "every one of bob's events exactly once");
    drop(stream);

    // Reconnect with Last-Event-ID = the start cursor: the same events again, in the same order.
    let mut again = common::sse::Sse::open(&server.url("/live"), Some(&start_cursor)).await;
    assert_eq!(
        again.next_event(Duration::from_secs(5)).await.event,
        "ready"
    );
    let mut replay = Vec::new();
    while replay.len() < expected.len() {
        let ev = again.next_event(Duration::from_secs(5)).await;
        let v: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
        replay.extend(
            v["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_i64().unwrap()),
        );
    }
    replay.sort();
    assert_eq!(replay, expected);

    // The LISTEN connection is killed: the server listens again and events keep coming.
    let old_pid = server.state.hub.listener_pid();
    c.execute("SELECT pg_terminate_backend($1)", &[&old_pid])
        .await
        .unwrap();
    let new_pid = eventually("a new LISTEN connection", Duration::from_secs(10), || {
        let pid = server.state.hub.listener_pid();
        async move { (pid != 0 && pid != old_pid).then_some(pid) }
    })
    .await;
    assert_ne!(new_pid, old_pid);
    let brun2 = db.start(&db.bob, "b_sse", r#"{"step": 2}"#).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no event of run {brun2} after re-LISTEN"
        );
        let ev = again.next_event(Duration::from_secs(20)).await;
        if ev.data.contains(&format!("\"run_id\":{brun2}")) {
            break;
        }
    }
}

trait CsrfOrEmpty {
    fn csrf_or_empty(&self) -> String;
}

impl CsrfOrEmpty for common::http::Page {
    fn csrf_or_empty(&self) -> String {
        if self.body.contains(r#"name="csrf" value=""#) {
            self.csrf()
        } else {
            String::new()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_usage_gets_the_database_refusal_not_an_empty_page() {
    let db = TestDb::new("h_nousage").await;
    let s = db.superuser().await;
    s.batch_execute(&format!("REVOKE USAGE ON SCHEMA drip FROM {}", db.bob))
        .await
        .unwrap();
    let server = Server::start(&db.url(&db.bob), false, false).await;
    let mut http = Http::new(&server.url(""));
    let page = http.get("/").await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(
        page.body.contains(r#"id="error-sqlstate">42501<"#),
        "{}",
        page.body
    );
    assert!(page.body.contains("permission denied for schema drip"));

    // Multi-user: the event stream needs a login too.
    let multi = Server::start(&db.url(&db.alice), true, false).await;
    let mut http = Http::new(&multi.url(""));
    assert_eq!(http.get("/live").await.status, 401);
    assert_eq!(http.get("/runs/1?fragment=1").await.status, 303);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_on_the_start_form_and_revert_with_a_confirmation_and_its_conflicts() {
    let db = TestDb::new("h_undo").await;
    db.slow_backfill(&db.alice, "ufix", 100, 1000, "0").await;
    let server = Server::start(&db.url(&db.alice), false, false).await;
    let mut http = Http::new(&server.url(""));
    let form = http.get("/backfills/ufix/start").await;
    assert!(
        form.body
            .contains(r#"id="preview-submit" formaction="/backfills/ufix/preview""#),
        "Preview next to Start"
    );
    let csrf = form.csrf();

    // Preview: before and after of the first rows, the new values highlighted, nothing written.
    let su = db.superuser().await;
    let preview = http
        .post(
            "/backfills/ufix/preview",
            &[("csrf", &csrf), ("p.step", "5"), ("batch_size", "7")],
        )
        .await;
    assert_eq!(preview.status, 200, "{}", preview.body);
    assert_csp_clean(&preview);
    let b = &preview.body;
    assert!(b.contains(r#"id="preview-table""#), "{b}");
    assert!(
        b.contains(r#"<td><code>1</code></td>"#),
        "the first key: {b}"
    );
    assert!(b.contains(r#"<td class="before">0</td>"#), "{b}");
    assert!(
        b.contains(r#"<td class="after"><mark class="changed">5</mark></td>"#),
        "the changed value is highlighted: {b}"
    );
    assert!(b.contains(r#"value="7""#), "typed values are kept");
    let unchanged: i64 = su
        .query_one("SELECT count(*) FROM ufix_t WHERE n = 0", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(unchanged, 100, "a preview writes nothing");
    // drip.preview's own refusal (a required parameter missing), with its SQLSTATE.
    let refused = http
        .post("/backfills/ufix/preview", &[("csrf", &csrf)])
        .await;
    assert_eq!(refused.status, 422);
    assert!(
        refused.body.contains("drip.preview refused"),
        "{}",
        refused.body
    );
    assert!(refused.body.contains("SQLSTATE 22023"), "{}", refused.body);
    // Without the CSRF token: refused before drip.preview is asked.
    let forged = http
        .post(
            "/backfills/ufix/preview",
            &[("csrf", "forged"), ("p.step", "5")],
        )
        .await;
    assert_eq!(forged.status, 403);

    // A run without undo data: said so, no Revert.
    let plain = db.start(&db.alice, "ufix", r#"{"step": 1}"#).await;
    db.wait_status(plain, &["completed"], Duration::from_secs(30))
        .await;
    let page = http.get(&format!("/runs/{plain}")).await;
    assert!(page.body.contains(r#"id="undo-none""#));
    assert!(!page.body.contains(&format!("/runs/{plain}/revert")));

    // A run with undo: its size, and Revert.
    let alice = db.as_role(&db.alice).await;
    let run: i64 = alice
        .query_one(
            "SELECT drip.start('ufix', '{\"step\": 10}', undo => true)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    db.wait_status(run, &["completed"], Duration::from_secs(30))
        .await;
    let page = http.get(&format!("/runs/{run}")).await;
    assert_csp_clean(&page);
    assert!(
        page.body.contains(r#"<b id="undo-rows">100</b>"#),
        "{}",
        page.body
    );
    assert!(page
        .body
        .contains(&format!(r#"href="/runs/{run}/revert" id="revert-link""#)));

    // The confirmation names the run and the row count; the POST needs the token.
    let confirm = http.get(&format!("/runs/{run}/revert")).await;
    assert_eq!(confirm.status, 200);
    assert_csp_clean(&confirm);
    assert!(
        confirm
            .body
            .contains(&format!("Revert run #{run} (100 rows)")),
        "{}",
        confirm.body
    );
    let path = format!("/runs/{run}/revert");
    assert_eq!(http.post(&path, &[("csrf", "forged")]).await.status, 403);
    let reverted_by: Option<i64> = su
        .query_one("SELECT reverted_by FROM drip.runs WHERE id = $1", &[&run])
        .await
        .unwrap()
        .get(0);
    assert_eq!(reverted_by, None, "a forged POST reverted nothing");

    // Another role: the run does not exist for it, and it cannot revert it.
    let bob_server = Server::start(&db.url(&db.bob), false, false).await;
    let mut bob = Http::new(&bob_server.url(""));
    db.slow_backfill(&db.bob, "bobfix", 10, 10, "0").await;
    let bob_csrf = bob.get("/backfills/bobfix/start").await.csrf();
    assert_eq!(bob.get(&path).await.status, 404);
    assert_eq!(bob.post(&path, &[("csrf", &bob_csrf)]).await.status, 404);

    // A row edited since the run: left alone by the revert, listed on its page.
    su.batch_execute("UPDATE ufix_t SET n = 77 WHERE id = 3")
        .await
        .unwrap();
    let started = http.post(&path, &[("csrf", &csrf)]).await;
    assert_eq!(started.status, 303, "{}", started.body);
    let revert: i64 = started
        .location()
        .strip_prefix("/runs/")
        .and_then(|s| s.parse().ok())
        .expect("redirect to the revert run");
    db.wait_status(revert, &["completed"], Duration::from_secs(30))
        .await;
    let restored: i64 = su
        .query_one("SELECT count(*) FROM ufix_t WHERE n = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(restored, 99, "every row but the edited one is back");
    let page = http.get(&format!("/runs/{revert}")).await;
    assert_csp_clean(&page);
    assert!(page
        .body
        .contains(&format!(r#"<a href="/runs/{run}">run #{run}</a>"#)));
    assert!(page.body.contains(r#"id="conflicts""#), "{}", page.body);
    assert!(
        page.body
            .contains("<td><code>3</code></td><td>changed</td>"),
        "{}",
        page.body
    );
    let page = http.get(&format!("/runs/{run}")).await;
    assert!(page
        .body
        .contains(&format!(r#"<a href="/runs/{revert}" id="reverted-by">"#)));
    // Asking again: drip.revert refuses, with its SQLSTATE.
    let again = http.post(&path, &[("csrf", &csrf)]).await;
    assert_eq!(again.status, 409, "{}", again.body);
    assert!(again.body.contains("55000"), "{}", again.body);
}
