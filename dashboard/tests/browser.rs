//! End-to-end in a real browser (Debian's chromium, headless, through chromedriver). Every
//! wait is on DOM state (`data-status`, `data-event-id`, `data-last-event`...), never on network
//! idleness: the page keeps an EventSource open.

mod common;

use std::time::Duration;

use common::browser::{attr_of, enabled, text_of, Browser};
use common::{Server, TestDb};
use fantoccini::Locator;

const LIMIT: Duration = Duration::from_secs(60);

fn count(text: &str) -> i64 {
    text.chars()
        .filter(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap_or(0)
}

/// 1. Start a backfill from the generated form; its progress advances and its status turns
///    `completed` on the page, without a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_from_the_form_and_watch_it_complete_without_reload() {
    let db = TestDb::new("b_start").await;
    db.slow_backfill(&db.alice, "emails", 600, 20, "150ms")
        .await;
    let server = Server::start(&db.url(&db.alice), false, false).await;
    let b = Browser::start().await;

    b.c.goto(&server.url("/backfills/emails/start"))
        .await
        .unwrap();
    let step = b.c.find(Locator::Css("#p-step")).await.unwrap();
    assert_eq!(step.attr("type").await.unwrap().as_deref(), Some("number"));
    step.send_keys("3").await.unwrap();
    b.c.find(Locator::Css("#note"))
        .await
        .unwrap()
        .send_keys("browser test")
        .await
        .unwrap();
    b.c.find(Locator::Css("#start-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    let run: i64 = b
        .wait_for("the run page", LIMIT, |c| async move {
            let url = c.current_url().await.ok()?;
            url.path().strip_prefix("/runs/")?.parse().ok()
        })
        .await;
    // A reload would drop this marker.
    b.js("window.__sameDocument = 'yes'; return true").await;
    let first_cursor = b.attr("body", "data-last-event").await.unwrap();

    let seen = b
        .wait_for("some batches done", LIMIT, |c| async move {
            let n = count(&text_of(&c, "#run-batches").await?);
            (n > 0).then_some(n)
        })
        .await;
    b.wait_for("progress to advance", LIMIT, |c| async move {
        let n = count(&text_of(&c, "#run-batches").await?);
        (n > seen).then_some(())
    })
    .await;
    b.wait_for("status completed", LIMIT, |c| async move {
        (attr_of(&c, "#run-status", "data-status").await? == "completed").then_some(())
    })
    .await;
    assert_eq!(b.text("#run-percent").await.unwrap(), "100.0%");
    assert_eq!(
        b.js("return window.__sameDocument").await,
        "yes",
        "the page was never reloaded"
    );
    assert_ne!(
        b.attr("body", "data-last-event").await.unwrap(),
        first_cursor
    );
    assert_eq!(db.status(run).await, "completed");
    let c = db.superuser().await;
    let changed: i64 = c
        .query_one("SELECT count(*) FROM emails_t WHERE n = 3", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        changed, 600,
        "the parameter from the form reached the action"
    );
    b.c.clone().close().await.unwrap();
}

/// 2. Pause from the page; the page and drip.runs both say `paused`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_from_the_page() {
    let db = TestDb::new("b_pause").await;
    db.slow_backfill(&db.alice, "slowly", 3000, 10, "300ms")
        .await;
    let run = db.start(&db.alice, "slowly", r#"{"step": 1}"#).await;
    db.wait_status(run, &["running"], LIMIT).await;
    let server = Server::start(&db.url(&db.alice), false, false).await;
    let b = Browser::start().await;
    b.c.goto(&server.url(&format!("/runs/{run}")))
        .await
        .unwrap();
    b.click(r#"button[data-action="pause"]"#).await;
    b.wait_for("paused on the page", LIMIT, |c| async move {
        (attr_of(&c, "#run-status", "data-status").await? == "paused").then_some(())
    })
    .await;
    assert_eq!(db.status(run).await, "paused");
    // The runs list offers Resume for it, live.
    b.c.goto(&server.url("/?tab=paused")).await.unwrap();
    let row = format!(r#"tr[data-run-id="{run}"] button[data-action="resume"]"#);
    b.click(&row).await;
    assert_ne!(
        db.wait_status(run, &["enqueued", "running"], LIMIT).await,
        "paused"
    );
    db.superuser()
        .await
        .execute("SELECT drip.stop($1)", &[&run])
        .await
        .unwrap();
    b.c.clone().close().await.unwrap();
}

/// 3. A second role sees none of the first role's runs, and gets a disabled control where the
///    database would refuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_role_sees_nothing_of_the_first_and_gets_disabled_controls() {
    let db = TestDb::new("b_roles").await;
    db.slow_backfill(&db.alice, "alice_secret", 3000, 10, "300ms")
        .await;
    let arun = db.start(&db.alice, "alice_secret", r#"{"step": 1}"#).await;
    db.slow_backfill(&db.bob, "bob_own", 3000, 10, "300ms")
        .await;
    let brun = db.start(&db.bob, "bob_own", r#"{"step": 1}"#).await;
    let s = db.superuser().await;
    s.batch_execute(&format!(
        "REVOKE EXECUTE ON FUNCTION drip.pause(bigint) FROM PUBLIC;
         GRANT EXECUTE ON FUNCTION drip.pause(bigint) TO {};",
        db.alice
    ))
    .await
    .unwrap();

    let server = Server::start(&db.url(&db.bob), true, false).await;
    let b = Browser::start().await;
    b.c.goto(&server.url("/")).await.unwrap();
    b.wait_for("the login form", LIMIT, |c| async move {
        c.find(Locator::Css("#login-form")).await.ok().map(|_| ())
    })
    .await;
    b.c.find(Locator::Css("#user"))
        .await
        .unwrap()
        .send_keys(&db.bob)
        .await
        .unwrap();
    b.c.find(Locator::Css("#password"))
        .await
        .unwrap()
        .send_keys(common::PASSWORD)
        .await
        .unwrap();
    b.c.find(Locator::Css("#login-form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let bob = db.bob.clone();
    b.wait_for("signed in as bob", LIMIT, |c| {
        let bob = bob.clone();
        async move { (text_of(&c, "#role").await? == bob).then_some(()) }
    })
    .await;

    let src = b.c.source().await.unwrap();
    assert!(
        !src.contains("alice_secret"),
        "nothing of alice's is on bob's page"
    );
    assert!(
        src.contains(&format!(r#"data-run-id="{brun}""#)),
        "bob sees his own run"
    );
    let rows = b
        .js("return document.querySelectorAll('tr[data-run-id]').length")
        .await;
    assert_eq!(rows, 1);
    b.c.goto(&server.url(&format!("/runs/{arun}")))
        .await
        .unwrap();
    let msg = b
        .wait_for("the not-found page", LIMIT, |c| async move {
            text_of(&c, "#error-message").await
        })
        .await;
    assert_eq!(
        msg,
        format!("run {arun} does not exist"),
        "as if it did not exist"
    );
    assert!(!b.c.source().await.unwrap().contains("alice_secret"));

    b.c.goto(&server.url(&format!("/runs/{brun}")))
        .await
        .unwrap();
    let pause = r#"button[data-action="pause"]"#;
    assert_eq!(
        enabled(&b.c, pause).await,
        Some(false),
        "pause is disabled for bob"
    );
    let why = b.attr(pause, "title").await.unwrap_or_default();
    assert!(why.contains("may not execute drip.pause"), "{why}");
    let stop = r#"button[data-action="stop"]"#;
    assert_eq!(
        enabled(&b.c, stop).await,
        Some(true),
        "stop is allowed to bob on his own run"
    );
    // The database indeed refuses bob.
    let err = db
        .as_role(&db.bob)
        .await
        .query_one("SELECT drip.pause($1)", &[&brun])
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"));

    // While alice's run goes on, bob's live page never shows it.
    b.c.goto(&server.url("/")).await.unwrap();
    s.execute("SELECT drip.alter($1, sleep => '0')", &[&arun])
        .await
        .unwrap();
    db.wait_status(arun, &["completed"], LIMIT).await;
    s.execute("SELECT drip.stop($1)", &[&brun]).await.unwrap();
    b.wait_for(
        "bob's run stopped on his live page",
        LIMIT,
        |c| async move {
            (attr_of(&c, &format!(r#"tr[data-run-id="{brun}"]"#), "data-status").await?
                == "stopped")
                .then_some(())
        },
    )
    .await;
    assert!(!b.c.source().await.unwrap().contains("alice_secret"));
    b.c.clone().close().await.unwrap();
}

/// 4. After a failing batch, the page shows the error with its SQLSTATE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_batch_shows_its_sqlstate() {
    let db = TestDb::new("b_fail").await;
    let c = db.as_role(&db.alice).await;
    c.batch_execute(
        "CREATE TABLE div_t (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO div_t SELECT g FROM generate_series(1, 300) g;
         SELECT drip.register('divide', 'div_t', action => 'SET n = 100 / (id - 250)', batch_size => 10,
                              sleep => '100ms', max_attempts => 1);",
    )
    .await
    .unwrap();
    let server = Server::start(&db.url(&db.alice), false, false).await;
    let run = db.start(&db.alice, "divide", "{}").await;
    let b = Browser::start().await;
    b.c.goto(&server.url(&format!("/runs/{run}")))
        .await
        .unwrap();
    b.wait_for("the failed status", LIMIT, |c| async move {
        (attr_of(&c, "#run-status", "data-status").await? == "failed").then_some(())
    })
    .await;
    let group = b
        .wait_for("the 22012 error group", LIMIT, |c| async move {
            text_of(&c, r#"#error-groups tr[data-sqlstate="22012"]"#).await
        })
        .await;
    assert!(group.contains("division by zero"), "{group}");
    let banner = b.text("#run-error").await.unwrap();
    assert!(banner.contains("22012"), "{banner}");
    assert_eq!(
        b.text(r#"tr[data-status="failed"] .sqlstate"#)
            .await
            .as_deref(),
        Some("22012")
    );
    assert_eq!(
        enabled(&b.c, r#"button[data-action="retry"]"#).await,
        Some(true)
    );
    b.c.clone().close().await.unwrap();
}

/// 5. The event stream drops (the dashboard stops serving, and its LISTEN connection is
///    killed) while the run changes; when it comes back, the page shows every event that
///    happened meanwhile, and live updates go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_stream_drops_every_missed_event_is_shown() {
    let db = TestDb::new("b_drop").await;
    db.slow_backfill(&db.alice, "dropped", 5000, 10, "200ms")
        .await;
    let run = db.start(&db.alice, "dropped", r#"{"step": 1}"#).await;
    db.wait_status(run, &["running"], LIMIT).await;
    let s = db.superuser().await;
    s.execute("SELECT drip.pause($1)", &[&run]).await.unwrap();
    let mut server = Server::start(&db.url(&db.alice), false, false).await;
    let b = Browser::start().await;
    b.c.goto(&server.url(&format!("/runs/{run}")))
        .await
        .unwrap();
    b.wait_for("the stream to be live", LIMIT, |c| async move {
        (attr_of(&c, "body", "data-live-state").await? == "live").then_some(())
    })
    .await;
    let before: i64 = s
        .query_one(
            "SELECT coalesce(max(id), 0) FROM drip.events WHERE run_id = $1",
            &[&run],
        )
        .await
        .unwrap()
        .get(0);

    server.stop().await;
    b.wait_for("the page to notice", LIMIT, |c| async move {
        (attr_of(&c, "body", "data-live-state").await? != "live").then_some(())
    })
    .await;
    let listener = server.state.hub.listener_pid();
    s.execute("SELECT pg_terminate_backend($1)", &[&listener])
        .await
        .unwrap();

    // Meanwhile: resume, a few batches, pause again.
    let alice = db.as_role(&db.alice).await;
    let done: i64 = s
        .query_one("SELECT batches_done FROM drip.runs WHERE id = $1", &[&run])
        .await
        .unwrap()
        .get(0);
    alice
        .execute("SELECT drip.resume($1)", &[&run])
        .await
        .unwrap();
    common::eventually("three more batches", LIMIT, || {
        let s = &s;
        async move {
            let n: i64 = s
                .query_one("SELECT batches_done FROM drip.runs WHERE id = $1", &[&run])
                .await
                .ok()?
                .get(0);
            (n >= done + 3).then_some(())
        }
    })
    .await;
    alice
        .execute("SELECT drip.pause($1)", &[&run])
        .await
        .unwrap();
    let missed: Vec<i64> = s
        .query(
            "SELECT id FROM drip.events WHERE run_id = $1 AND id > $2 ORDER BY id",
            &[&run, &before],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        missed.len() >= 6,
        "enqueued, running, 3 batches, paused: {missed:?}"
    );
    assert!(missed.len() < 100, "the page lists the latest 100 events");

    server.restart().await;
    for id in &missed {
        let css = format!(r#"li[data-event-id="{id}"]"#);
        b.wait_for(&format!("missed event {id}"), LIMIT, |c| {
            let css = css.clone();
            async move { c.find(Locator::Css(&css)).await.ok().map(|_| ()) }
        })
        .await;
    }
    assert_eq!(
        b.attr("#run-status", "data-status").await.as_deref(),
        Some("paused")
    );
    assert_ne!(
        server.state.hub.listener_pid(),
        listener,
        "listening again on a new connection"
    );
    // And it stays live: a change now shows up without a reload.
    b.js("window.__sameDocument = 'yes'; return true").await;
    alice
        .execute("SELECT drip.stop($1)", &[&run])
        .await
        .unwrap();
    b.wait_for("stopped, live", LIMIT, |c| async move {
        (attr_of(&c, "#run-status", "data-status").await? == "stopped").then_some(())
    })
    .await;
    assert_eq!(b.js("return window.__sameDocument").await, "yes");
    b.c.clone().close().await.unwrap();
}

/// The Live button pauses updates (the page stays as it was while the run changes) and
/// resuming catches up from the page's cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_toggle_pauses_and_resumes_updates() {
    let db = TestDb::new("b_toggle").await;
    db.slow_backfill(&db.alice, "toggled", 3000, 10, "300ms")
        .await;
    let run = db.start(&db.alice, "toggled", r#"{"step": 1}"#).await;
    db.wait_status(run, &["running"], LIMIT).await;
    let server = Server::start(&db.url(&db.alice), false, false).await;
    let b = Browser::start().await;
    b.c.goto(&server.url(&format!("/runs/{run}")))
        .await
        .unwrap();
    b.wait_for("the stream to be live", LIMIT, |c| async move {
        (attr_of(&c, "body", "data-live-state").await? == "live").then_some(())
    })
    .await;
    b.click("#live-toggle").await;
    assert_eq!(
        b.attr("body", "data-live-state").await.as_deref(),
        Some("paused")
    );
    assert_eq!(
        b.attr("#live-toggle", "aria-pressed").await.as_deref(),
        Some("false")
    );
    let frozen = b.attr("body", "data-last-event").await.unwrap();
    db.superuser()
        .await
        .execute("SELECT drip.pause($1)", &[&run])
        .await
        .unwrap();
    // Evidence the stream would have delivered by now: the event is in the log...
    common::eventually("run_paused in the log", LIMIT, || {
        let db = &db;
        async move {
            let n: i64 = db
                .superuser()
                .await
                .query_one(
                    "SELECT count(*) FROM drip.events WHERE run_id = $1 AND event = 'run_paused'",
                    &[&run],
                )
                .await
                .ok()?
                .get(0);
            (n > 0).then_some(())
        }
    })
    .await;
    // ... and a second page that is live shows it (so the first one would have, too).
    let other = Browser::start().await;
    other
        .c
        .goto(&server.url(&format!("/runs/{run}")))
        .await
        .unwrap();
    other
        .wait_for("paused on a live page", LIMIT, |c| async move {
            (attr_of(&c, "#run-status", "data-status").await? == "paused").then_some(())
        })
        .await;
    assert_eq!(
        b.attr("#run-status", "data-status").await.as_deref(),
        Some("running")
    );
    assert_eq!(b.attr("body", "data-last-event").await.unwrap(), frozen);
    b.click("#live-toggle").await;
    b.wait_for("caught up after resuming", LIMIT, |c| async move {
        (attr_of(&c, "#run-status", "data-status").await? == "paused").then_some(())
    })
    .await;
    assert_eq!(
        b.attr("body", "data-live-state").await.as_deref(),
        Some("live")
    );
    db.superuser()
        .await
        .execute("SELECT drip.stop($1)", &[&run])
        .await
        .unwrap();
    b.c.clone().close().await.unwrap();
    other.c.clone().close().await.unwrap();
}

/// 7. DNS rebinding: a page of `http://evil.example:PORT` (resolved to 127.0.0.1 by the
///    browser) gets no data from the dashboard and cannot act on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebinding_page_gets_no_data_and_cannot_act() {
    let db = TestDb::new("b_rebind").await;
    db.slow_backfill(&db.alice, "alice_secret", 3000, 10, "200ms")
        .await;
    let run = db.start(&db.alice, "alice_secret", r#"{"step": 1}"#).await;
    db.wait_status(run, &["running"], LIMIT).await;
    let server = Server::start(&db.url(&db.alice), false, false).await;
    let port = server.addr.port();
    let b = Browser::start_with_args(&["--host-resolver-rules=MAP evil.example 127.0.0.1".into()])
        .await;

    // The attacker's page is served by the dashboard's port under the attacker's name.
    b.c.goto(&format!("http://evil.example:{port}/runs/{run}"))
        .await
        .unwrap();
    let src = b.c.source().await.unwrap();
    assert!(src.contains("421"), "{src}");
    assert!(
        !src.contains("alice_secret") && !src.contains("csrf"),
        "{src}"
    );

    // Its script reads and posts to its own origin (which is the dashboard): refused.
    let out =
        b.c.execute_async(
            "const done = arguments[arguments.length - 1];
             (async () => {
               const page = await fetch('/runs/' + arguments[0]);
               const text = await page.text();
               const post = await fetch('/runs/' + arguments[0] + '/pause', {
                 method: 'POST',
                 headers: {'content-type': 'application/x-www-form-urlencoded'},
                 body: 'csrf=guess'});
               done([page.status, text.includes('alice_secret'), post.status]);
             })().catch(e => done(String(e)));",
            vec![run.into()],
        )
        .await
        .unwrap();
    assert_eq!(out, serde_json::json!([421, false, 421]), "{out}");
    assert_eq!(db.status(run).await, "running", "nothing changed");

    // The real name still works in the same browser.
    b.c.goto(&server.url(&format!("/runs/{run}")))
        .await
        .unwrap();
    b.wait_for("the run page", LIMIT, |c| async move {
        (attr_of(&c, "#run-status", "data-status").await? == "running").then_some(())
    })
    .await;
    db.superuser()
        .await
        .execute("SELECT drip.stop($1)", &[&run])
        .await
        .unwrap();
}

/// 8. Preview on the start form: a before/after table of the first rows, the changed value
///    highlighted, and nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_shows_the_first_rows_with_the_changed_values_highlighted() {
    let db = TestDb::new("b_preview").await;
    db.slow_backfill(&db.alice, "bump", 50, 10, "0").await;
    let server = Server::start(&db.url(&db.alice), false, false).await;
    let b = Browser::start().await;
    b.c.goto(&server.url("/backfills/bump/start"))
        .await
        .unwrap();
    b.c.find(Locator::Css("#p-step"))
        .await
        .unwrap()
        .send_keys("4")
        .await
        .unwrap();
    b.click("#preview-submit").await;
    let first = b
        .wait_for("the preview table", LIMIT, |c| async move {
            text_of(
                &c,
                "#preview-table tbody tr:first-child td.after mark.changed",
            )
            .await
        })
        .await;
    assert_eq!(first, "4");
    assert_eq!(
        b.text("#preview-table tbody tr:first-child td.before")
            .await
            .as_deref(),
        Some("0")
    );
    // Still the start form (Start is next to Preview), and the typed value is kept.
    assert_eq!(b.attr("#p-step", "value").await.as_deref(), Some("4"));
    assert!(b.text("#start-submit").await.is_some());
    let written: i64 = db
        .superuser()
        .await
        .query_one("SELECT count(*) FROM bump_t WHERE n <> 0", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(written, 0, "a preview writes nothing");
    b.c.clone().close().await.unwrap();
}
