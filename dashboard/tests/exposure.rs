//! Exposing the dashboard to a team: Host and Origin checks (DNS rebinding), the login path,
//! bounded sessions, connections and guessing, and runs that are not the viewer's.

mod common;

use std::time::Duration;

use common::http::Http;
use common::{config, Server, TestDb};
use drip_dashboard::config::Config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_host_gets_nothing_and_a_foreign_origin_cannot_act() {
    let db = TestDb::new("x_host").await;
    db.slow_backfill(&db.alice, "slow", 3000, 10, "200ms").await;
    let run = db.start(&db.alice, "slow", r#"{"step": 1}"#).await;
    db.wait_status(run, &["running"], Duration::from_secs(20))
        .await;
    let server = Server::start(&db.url(&db.alice), false, false).await;
    let port = server.addr.port();
    let mut http = Http::new(&server.url(""));
    let evil = format!("evil.example:{port}");

    // A rebinding page's requests: refused before any page, token or cookie exists.
    for path in ["/", &format!("/runs/{run}"), "/backfills", "/live"] {
        let page = http.get_with(path, &[("host", &evil)]).await;
        assert_eq!(page.status, 421, "{path}");
        assert!(!page.body.contains("csrf") && !page.body.contains("slow"));
        assert!(page.headers.get("set-cookie").is_none());
    }
    // The names it does answer to.
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("LocalHost:{port}"),
    ] {
        assert_eq!(
            http.get_with("/", &[("host", &host)]).await.status,
            200,
            "{host}"
        );
    }
    assert_eq!(
        http.get_with("/", &[("host", &format!("127.0.0.1:{}", port + 1))])
            .await
            .status,
        421
    );

    // A POST with the right token, from another origin: 403, nothing changes.
    let csrf = http.get(&format!("/runs/{run}")).await.csrf();
    let pause = format!("/runs/{run}/pause");
    let form = [("csrf", csrf.as_str())];
    let evil_origin = format!("http://{evil}");
    let refused = http
        .post_with(&pause, &form, &[("origin", &evil_origin)])
        .await;
    assert_eq!(refused.status, 403);
    let refused = http
        .post_with(&pause, &form, &[("referer", &format!("{evil_origin}/x"))])
        .await;
    assert_eq!(refused.status, 403, "Referer when Origin is absent");
    let refused = http.post_with(&pause, &form, &[("origin", "null")]).await;
    assert_eq!(refused.status, 403);
    let refused = http
        .post_with(&pause, &form, &[("host", &evil), ("origin", &evil_origin)])
        .await;
    assert_eq!(refused.status, 421);
    assert_eq!(db.status(run).await, "running", "nothing changed");

    // The same POST from our own origin works.
    let own = format!("http://127.0.0.1:{port}");
    let done = http.post_with(&pause, &form, &[("origin", &own)]).await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(db.status(run).await, "paused");
    db.superuser()
        .await
        .execute("SELECT drip.stop($1)", &[&run])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_hosts_and_the_public_url_add_names() {
    let db = TestDb::new("x_names").await;
    db.slow_backfill(&db.alice, "names", 10, 10, "0").await;
    let server = Server::start_with(Config {
        allowed_hosts: vec!["dash.internal".into()],
        public_url: Some("https://drip.example.com/".into()),
        ..config(&db.url(&db.alice))
    })
    .await;
    let port = server.addr.port();
    let mut http = Http::new(&server.url(""));
    for host in [
        format!("dash.internal:{port}"),
        "dash.internal".to_string(),
        "drip.example.com".to_string(),
        "drip.example.com:443".to_string(),
    ] {
        assert_eq!(
            http.get_with("/", &[("host", &host)]).await.status,
            200,
            "{host}"
        );
    }
    for host in ["drip.example.com:8443", "example.com", "internal"] {
        assert_eq!(
            http.get_with("/", &[("host", host)]).await.status,
            421,
            "{host}"
        );
    }
    // The public origin may post (a logout changes nothing here, but passes every check).
    let token = http.get("/backfills/names/start").await.csrf();
    let out = http
        .post_with(
            "/logout",
            &[("csrf", &token)],
            &[("origin", "https://drip.example.com")],
        )
        .await;
    assert_eq!(out.status, 303);
    let cookie = out.headers.get("set-cookie").unwrap().to_str().unwrap();
    assert!(
        cookie.contains("Max-Age=0") && cookie.contains("Secure"),
        "{cookie}"
    );
}
