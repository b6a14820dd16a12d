//! `GET /metrics` with `--metrics`: Prometheus text as the dashboard's role (RLS decides which
//! runs appear), bounded to active and recently finished runs; and the Grafana dashboard in
//! dashboard/grafana/ only uses metrics the endpoint serves.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::http::Http;
use common::{config, Server, TestDb};
use drip_dashboard::config::Config;

/// The metric names a scrape declares (`# TYPE name kind`).
fn served(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Every `drip_...` name in a PromQL expression.
fn named(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("drip_") {
        let before = rest[..at].chars().last();
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.push(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out
}

fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_only_when_asked_scoped_by_rls_and_bounded() {
    let db = TestDb::new("m_metrics").await;
    db.slow_backfill(&db.alice, "m_orders", 3000, 10, "200ms")
        .await;
    db.slow_backfill(&db.alice, "m_old", 10, 10, "0").await;
    db.slow_backfill(&db.bob, "m_bobs_secret", 10, 10, "0")
        .await;
    let old = db.start(&db.alice, "m_old", r#"{"step": 1}"#).await;
    db.wait_status(old, &["completed"], Duration::from_secs(30))
        .await;
    let bobs = db.start(&db.bob, "m_bobs_secret", r#"{"step": 1}"#).await;
    db.wait_status(bobs, &["completed"], Duration::from_secs(30))
        .await;
    let run = db.start(&db.alice, "m_orders", r#"{"step": 1}"#).await;
    db.wait_status(run, &["running"], Duration::from_secs(20))
        .await;
    // A run finished long ago drops out of the per-run series (still counted in drip_runs).
    let s = db.superuser().await;
    s.execute(
        "UPDATE drip.runs SET finished_at = now() - interval '3 hours' WHERE id = $1",
        &[&old],
    )
    .await
    .unwrap();

    let without = Server::start(&db.url(&db.alice), false, false).await;
    assert_eq!(
        Http::new(&without.url("")).get("/metrics").await.status,
        404
    );

    let server = Server::start_with(Config {
        metrics: true,
        ..config(&db.url(&db.alice))
    })
    .await;
    let mut http = Http::new(&server.url(""));
    let scrape = http.get("/metrics").await;
    assert_eq!(scrape.status, 200);
    let ct = scrape
        .headers
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = scrape.body;
    let labels = format!(r#"run_id="{run}",backfill="m_orders",owner="{}""#, db.alice);
    for line in [
        format!("drip_run_rows_done{{{labels}}} "),
        format!("drip_run_rows_estimated{{{labels}}} 3000"),
        format!("drip_run_rows_per_second{{{labels}}} "),
        format!("drip_run_throttled{{{labels},reason=\"\"}} 0"),
        format!("drip_run_status{{{labels},status=\"running\"}} 1"),
        format!("drip_run_batches_total{{{labels},status=\"completed\"}} "),
        "drip_runs{status=\"running\"} 1".to_string(),
        "drip_runs{status=\"completed\"} 1".to_string(),
        "drip_dashboard_sessions 0".to_string(),
        "drip_dashboard_db_connections ".to_string(),
    ] {
        assert!(text.contains(&line), "missing {line:?} in\n{text}");
    }
    assert!(
        !text.contains("m_bobs_secret"),
        "RLS: bob's run is not alice's to see"
    );
    assert!(
        !text.contains(&format!("run_id=\"{old}\"")),
        "a run finished hours ago has no series"
    );

    // The Grafana dashboard only asks for what is served.
    let served = served(&text);
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/grafana/data_drip.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("grafana json"))
            .expect("valid JSON");
    let panels = json["panels"].as_array().expect("panels");
    assert!(panels.len() >= 5);
    for p in panels {
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(
            p["targets"].as_array().is_some_and(|t| !t.is_empty()),
            "{p}"
        );
    }
    let mut all = Vec::new();
    exprs(&json, &mut all);
    assert!(all.len() >= panels.len());
    let mut used = BTreeSet::new();
    for e in &all {
        let names = named(e);
        assert!(
            !names.is_empty(),
            "an expression without a data_drip metric: {e}"
        );
        for n in names {
            assert!(
                served.contains(&n),
                "{e} asks for {n}, not served: {served:?}"
            );
            used.insert(n);
        }
    }
    for core in ["drip_runs", "drip_run_rows_done", "drip_run_throttled"] {
        assert!(used.contains(core), "the dashboard shows {core}");
    }

    // --metrics-role: read as another role (the URL's role must be a member; here a superuser).
    let as_bob = Server::start_with(Config {
        metrics: true,
        metrics_role: Some(db.bob.clone()),
        ..config(&db.cluster.superuser_conn(&db.name))
    })
    .await;
    let text = Http::new(&as_bob.url("")).get("/metrics").await.body;
    assert!(
        text.contains("m_bobs_secret") && !text.contains("m_orders"),
        "{text}"
    );
    s.execute("SELECT drip.stop($1)", &[&run]).await.unwrap();
}

#[test]
fn metric_names_are_found_in_expressions() {
    assert_eq!(
        named("100 * drip_a / on (x) (drip_b_c > 0) and xdrip_no"),
        ["drip_a", "drip_b_c"]
    );
}
