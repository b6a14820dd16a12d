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

async fn login(http: &mut Http, user: &str, password: &str) -> common::http::Page {
    let csrf = http.get("/login").await.csrf();
    http.post(
        "/login",
        &[("csrf", &csrf), ("user", user), ("password", password)],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_user_needs_a_login_path_that_checks_passwords() {
    let db = TestDb::new("x_trust").await;
    // The test cluster's Unix socket is `trust`: any password works there.
    let trusted = format!(
        "host={} port={} user={} dbname={}",
        db.cluster.host, db.cluster.port, db.bob, db.name
    );
    let refused = drip_dashboard::AppState::new(Config {
        multi_user: true,
        ..config(&trusted)
    })
    .await
    .err()
    .expect("multi-user over a trust path must not start");
    assert!(
        refused.contains("pg_hba.conf") && refused.contains("trust") && refused.contains("peer"),
        "{refused}"
    );
    // Single-user mode over the same path is the operator's choice.
    assert!(drip_dashboard::AppState::new(config(&trusted))
        .await
        .is_ok());
    // Over TCP (scram) it starts.
    assert!(drip_dashboard::AppState::new(Config {
        multi_user: true,
        ..config(&db.url(&db.bob))
    })
    .await
    .is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn superusers_sign_in_only_when_allowed_and_the_header_says_so() {
    let db = TestDb::new("x_super").await;
    let root = format!("{}_root", db.name);
    let s = db.superuser().await;
    s.batch_execute(&format!(
        "DROP ROLE IF EXISTS {root}; CREATE ROLE {root} SUPERUSER LOGIN PASSWORD '{}'",
        common::PASSWORD
    ))
    .await
    .unwrap();
    let server = Server::start(&db.url(&db.bob), true, false).await;
    let mut http = Http::new(&server.url(""));
    let page = login(&mut http, &root, common::PASSWORD).await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(page.body.contains("--allow-superuser"));
    assert_eq!(server.state.sessions.len(), 0);

    let server = Server::start_with(Config {
        multi_user: true,
        allow_superuser: true,
        ..config(&db.url(&db.bob))
    })
    .await;
    let mut http = Http::new(&server.url(""));
    assert_eq!(login(&mut http, &root, common::PASSWORD).await.status, 303);
    let page = http.get("/").await;
    assert!(page.body.contains(r#"id="superuser""#), "{}", page.body);
    // An ordinary role gets no badge.
    let mut http = Http::new(&server.url(""));
    assert_eq!(
        login(&mut http, &db.alice, common::PASSWORD).await.status,
        303
    );
    assert!(!http.get("/").await.body.contains(r#"id="superuser""#));
    s.batch_execute(&format!("DROP ROLE {root}")).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_exist_only_after_login_and_a_full_table_evicts_nobody() {
    let db = TestDb::new("x_sess").await;
    let server = Server::start_with(Config {
        multi_user: true,
        max_sessions: 2,
        ..config(&db.url(&db.bob))
    })
    .await;
    for _ in 0..50 {
        let mut anon = Http::new(&server.url(""));
        let page = anon.get("/login").await;
        assert!(page.headers.get("set-cookie").is_none());
        assert_eq!(anon.get("/").await.status, 303);
    }
    assert_eq!(
        server.state.sessions.len(),
        0,
        "anonymous requests made none"
    );

    let mut a = Http::new(&server.url(""));
    let mut b = Http::new(&server.url(""));
    assert_eq!(login(&mut a, &db.alice, common::PASSWORD).await.status, 303);
    assert_eq!(login(&mut b, &db.bob, common::PASSWORD).await.status, 303);
    let mut c = Http::new(&server.url(""));
    let full = login(&mut c, &db.alice, common::PASSWORD).await;
    assert_eq!(full.status, 503, "{}", full.body);
    // Nobody was signed out to make room.
    assert_eq!(a.get("/").await.status, 200);
    assert_eq!(b.get("/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_throttled_per_role_and_look_alike() {
    let db = TestDb::new("x_throttle").await;
    let server = Server::start(&db.url(&db.bob), true, false).await;
    let mut http = Http::new(&server.url(""));
    let unknown = login(&mut http, "x_throttle_nobody", "whatever").await;
    let wrong = login(&mut http, &db.alice, "wrong").await;
    assert_eq!(unknown.status, 401);
    assert_eq!(wrong.status, 401);
    let message = |p: &common::http::Page| {
        let at = p.body.find("Sign-in failed").expect("the generic message");
        p.body[at..at + 80].to_string()
    };
    assert_eq!(
        message(&unknown),
        message(&wrong),
        "the same words for both"
    );
    assert!(!wrong.body.contains("28P01") && !wrong.body.contains("password authentication"));

    for _ in 0..8 {
        assert_eq!(login(&mut http, &db.alice, "wrong").await.status, 401);
    }
    // The tenth failure for alice (and for this address) blocks: even her real password.
    let blocked = login(&mut http, &db.alice, common::PASSWORD).await;
    assert_eq!(blocked.status, 429, "{}", blocked.body);
    let retry: u64 = blocked
        .headers
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=61).contains(&retry), "{retry}");
    // Another role from this address is blocked too (the address had ten failures).
    assert_eq!(
        login(&mut http, &db.bob, common::PASSWORD).await.status,
        429
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pool_per_role_holds_at_most_its_cap() {
    let db = TestDb::new("x_pool").await;
    db.slow_backfill(&db.alice, "pooled", 10, 10, "0").await;
    let server = Server::start(&db.url(&db.bob), true, false).await;
    let mut clients = Vec::new();
    for _ in 0..40 {
        let mut http = Http::new(&server.url(""));
        assert_eq!(
            login(&mut http, &db.alice, common::PASSWORD).await.status,
            303
        );
        clients.push(http);
    }
    // Every session at once.
    let pages = futures_util::future::join_all(clients.iter_mut().map(|h| h.get("/"))).await;
    assert!(pages.iter().all(|p| p.status == 200));
    let s = db.superuser().await;
    let held: i64 = s
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND application_name LIKE 'drip-dashboard%'",
            &[&db.alice],
        )
        .await
        .unwrap()
        .get(0);
    assert!(held <= 4, "alice's 40 sessions hold {held} connections");
    assert!(server.state.pools.budget.open() <= 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_can_no_longer_log_in_is_signed_out_and_its_streams_end() {
    let db = TestDb::new("x_recheck").await;
    let server = Server::start_with(Config {
        multi_user: true,
        session_check: Duration::from_secs(1),
        ..config(&db.url(&db.bob))
    })
    .await;
    let mut http = Http::new(&server.url(""));
    assert_eq!(
        login(&mut http, &db.alice, common::PASSWORD).await.status,
        303
    );
    assert_eq!(http.get("/").await.status, 200);
    let cookie = http.cookie.clone().unwrap();
    let mut stream =
        common::sse::Sse::open_with_cookie(&server.url("/live"), None, Some(&cookie)).await;
    stream.next_event(Duration::from_secs(5)).await;

    db.superuser()
        .await
        .batch_execute(&format!("ALTER ROLE {} NOLOGIN", db.alice))
        .await
        .unwrap();
    assert!(
        stream.ends_within(Duration::from_secs(10)).await,
        "the stream ends when the role is signed out"
    );
    let page = http.get("/").await;
    assert_eq!(page.status, 303);
    assert_eq!(page.location(), "/login");
    assert_eq!(server.state.sessions.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_clears_the_cookie_and_ends_that_sessions_streams() {
    let db = TestDb::new("x_logout").await;
    let server = Server::start(&db.url(&db.bob), true, false).await;
    let mut http = Http::new(&server.url(""));
    assert_eq!(
        login(&mut http, &db.alice, common::PASSWORD).await.status,
        303
    );
    let csrf = http.get("/").await.csrf();
    let cookie = http.cookie.clone().unwrap();
    let mut stream =
        common::sse::Sse::open_with_cookie(&server.url("/live"), None, Some(&cookie)).await;
    stream.next_event(Duration::from_secs(5)).await;
    let out = http.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, 303);
    let removal = out.headers.get("set-cookie").unwrap().to_str().unwrap();
    assert!(
        removal.starts_with("drip_session=;") && removal.contains("Max-Age=0"),
        "{removal}"
    );
    assert!(stream.ends_within(Duration::from_secs(5)).await);
    // The old cookie is worth nothing now; logging out again (another tab) just clears it.
    let mut replay = Http::new(&server.url(""));
    replay.cookie = Some(cookie);
    assert_eq!(replay.get("/").await.status, 303);
    let again = replay.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(again.status, 303);
    assert_eq!(again.location(), "/login");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_time_out_and_one_address_has_a_connection_cap() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::new("x_conns").await;
    let server = Server::start_with(Config {
        header_timeout: Duration::from_secs(1),
        max_clients_per_address: 3,
        ..config(&db.url(&db.alice))
    })
    .await;
    // A half-sent request is closed after the header timeout.
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => return 0,
                Ok(_) => {} // a 408 before closing is fine
            }
        }
    })
    .await
    .expect("the server closes a connection whose headers never end");
    assert_eq!(n, 0);

    // Three idle connections from 127.0.0.1 are the cap: a fourth is closed at once.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fourth = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let _ = fourth
        .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await;
    let closed = tokio::time::timeout(Duration::from_millis(900), fourth.read(&mut buf))
        .await
        .expect("closed before the header timeout");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    drop(idle);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut http = Http::new(&server.url(""));
    assert_eq!(http.get("/").await.status, 200, "slots come back");
}
