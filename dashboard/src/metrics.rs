//! `GET /metrics` (with `--metrics`): Prometheus text format, read as the dashboard's own role
//! (or `--metrics-role`, taken with `SET ROLE`), so row-level security decides which runs
//! appear.
//!
//! Per run (labels `run_id`, `backfill`, `owner`): rows done and estimated, batches by status,
//! rows per second, whether it is throttled (with the reason), and its status. Only active runs
//! and runs finished within `WINDOW` appear, at most `MAX_RUNS` of them, so the number of
//! series stays bounded however many runs the catalog keeps. Plus run counts by status over
//! all visible runs, and the dashboard's own sessions and database connections.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

use crate::error::{AppError, AppResult};
use crate::AppState;

/// Finished runs stay in the per-run series for this long.
pub const WINDOW: &str = "1 hour";
/// At most this many runs get per-run series (the most recent ones).
pub const MAX_RUNS: i64 = 500;

/// Every metric this endpoint serves, with its type and help text.
pub const METRICS: [(&str, &str, &str); 10] = [
    (
        "drip_runs",
        "gauge",
        "Runs the metrics role may see, by status.",
    ),
    ("drip_run_rows_done", "gauge", "Rows a run has processed."),
    (
        "drip_run_rows_estimated",
        "gauge",
        "The planner's estimate of the rows in a run's scope.",
    ),
    (
        "drip_run_batches_total",
        "counter",
        "A run's batches by status.",
    ),
    (
        "drip_run_rows_per_second",
        "gauge",
        "A run's recent throughput (its last 20 batches, sleeps included).",
    ),
    (
        "drip_run_throttled",
        "gauge",
        "1 while a run holds back on database health (the reason is a label), else 0.",
    ),
    ("drip_run_status", "gauge", "1 for a run's current status."),
    (
        "drip_run_info",
        "gauge",
        "1 per run in the per-run series (active, or finished within the window).",
    ),
    (
        "drip_dashboard_sessions",
        "gauge",
        "Signed-in dashboard sessions.",
    ),
    (
        "drip_dashboard_db_connections",
        "gauge",
        "Open database connections of the dashboard's pools.",
    ),
];

const STATUSES: [&str; 7] = [
    "pending",
    "enqueued",
    "running",
    "paused",
    "completed",
    "failed",
    "stopped",
];

/// A label value, escaped as the text format wants.
fn label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

struct RunSeries {
    id: i64,
    backfill: String,
    owner: String,
    status: String,
    rows_done: i64,
    rows_estimated: Option<i64>,
    rows_per_sec: Option<f64>,
    throttled: Option<String>,
    batches: Vec<(String, i64)>,
}

pub async fn serve(State(state): State<Arc<AppState>>) -> AppResult<Response> {
    let Some(pool) = state.metrics_pool.clone() else {
        return Err(AppError::not_found("There is no page at this address."));
    };
    let mut db = pool.get().await?;
    let tx = db.transaction().await?;
    if let Some(role) = &state.config.metrics_role {
        // A quoted identifier: the role name is never SQL.
        let quoted = format!("\"{}\"", role.replace('"', "\"\""));
        tx.batch_execute(&format!("SET LOCAL ROLE {quoted}"))
            .await?;
    }
    let counts = tx
        .query(
            "SELECT status, count(*) FROM drip.runs GROUP BY status",
            &[],
        )
        .await?;
    let rows = tx
        .query(
            &format!(
                "SELECT r.id, r.backfill, r.owner::text, r.status, r.rows_done, r.rows_estimated,
                        p.rows_per_sec::float8, r.throttled, r.batches_done
                   FROM drip.runs r JOIN drip.progress p ON p.run_id = r.id
                  WHERE r.finished_at IS NULL OR r.finished_at > now() - interval '{WINDOW}'
                  ORDER BY r.id DESC LIMIT {MAX_RUNS}"
            ),
            &[],
        )
        .await?;
    let mut runs = Vec::with_capacity(rows.len());
    for r in &rows {
        let done: i64 = r.try_get(8)?;
        runs.push(RunSeries {
            id: r.try_get(0)?,
            backfill: r.try_get(1)?,
            owner: r.try_get(2)?,
            status: r.try_get(3)?,
            rows_done: r.try_get(4)?,
            rows_estimated: r.try_get(5)?,
            rows_per_sec: r.try_get(6)?,
            throttled: r.try_get(7)?,
            batches: vec![("completed".to_string(), done)],
        });
    }
    let ids: Vec<i64> = runs.iter().map(|r| r.id).collect();
    // Completed batches come from the run's own counter; the rest are few.
    let others = tx
        .query(
            "SELECT run_id, status, count(*) FROM drip.batches
              WHERE run_id = ANY($1) AND status <> 'completed' GROUP BY 1, 2",
            &[&ids],
        )
        .await?;
    for r in &others {
        let id: i64 = r.try_get(0)?;
        if let Some(run) = runs.iter_mut().find(|x| x.id == id) {
            run.batches.push((r.try_get(1)?, r.try_get(2)?));
        }
    }
    tx.commit().await?;
    drop(db);

    let mut counts_by_status: Vec<(String, i64)> = Vec::new();
    for r in &counts {
        counts_by_status.push((r.try_get(0)?, r.try_get(1)?));
    }
    let text = render(
        &counts_by_status,
        &runs,
        state.sessions.len(),
        state.pools.budget.open(),
    );
    Ok((
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response())
}

fn render(counts: &[(String, i64)], runs: &[RunSeries], sessions: usize, conns: usize) -> String {
    let mut out = String::new();
    let head = |out: &mut String, name: &str| {
        if let Some((_, kind, help)) = METRICS.iter().find(|m| m.0 == name) {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        }
    };
    head(&mut out, "drip_runs");
    for s in STATUSES {
        let n = counts
            .iter()
            .find(|(st, _)| st == s)
            .map(|(_, n)| *n)
            .unwrap_or(0);
        let _ = writeln!(out, "drip_runs{{status=\"{s}\"}} {n}");
    }
    let labels = |r: &RunSeries| {
        format!(
            "run_id=\"{}\",backfill=\"{}\",owner=\"{}\"",
            r.id,
            label(&r.backfill),
            label(&r.owner)
        )
    };
    head(&mut out, "drip_run_info");
    for r in runs {
        let _ = writeln!(out, "drip_run_info{{{}}} 1", labels(r));
    }
    head(&mut out, "drip_run_rows_done");
    for r in runs {
        let _ = writeln!(out, "drip_run_rows_done{{{}}} {}", labels(r), r.rows_done);
    }
    head(&mut out, "drip_run_rows_estimated");
    for r in runs {
        if let Some(e) = r.rows_estimated {
            let _ = writeln!(out, "drip_run_rows_estimated{{{}}} {e}", labels(r));
        }
    }
    head(&mut out, "drip_run_batches_total");
    for r in runs {
        for (status, n) in &r.batches {
            let _ = writeln!(
                out,
                "drip_run_batches_total{{{},status=\"{}\"}} {n}",
                labels(r),
                label(status)
            );
        }
    }
    head(&mut out, "drip_run_rows_per_second");
    for r in runs {
        let v = r.rows_per_sec.unwrap_or(0.0);
        let _ = writeln!(out, "drip_run_rows_per_second{{{}}} {v}", labels(r));
    }
    head(&mut out, "drip_run_throttled");
    for r in runs {
        let (on, reason) = match &r.throttled {
            Some(reason) => (1, reason.as_str()),
            None => (0, ""),
        };
        let _ = writeln!(
            out,
            "drip_run_throttled{{{},reason=\"{}\"}} {on}",
            labels(r),
            label(reason)
        );
    }
    head(&mut out, "drip_run_status");
    for r in runs {
        let _ = writeln!(
            out,
            "drip_run_status{{{},status=\"{}\"}} 1",
            labels(r),
            label(&r.status)
        );
    }
    head(&mut out, "drip_dashboard_sessions");
    let _ = writeln!(out, "drip_dashboard_sessions {sessions}");
    head(&mut out, "drip_dashboard_db_connections");
    let _ = writeln!(out, "drip_dashboard_db_connections {conns}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_every_metric_has_a_type() {
        let run = RunSeries {
            id: 7,
            backfill: "a\"b\\c\nd".into(),
            owner: "alice".into(),
            status: "running".into(),
            rows_done: 10,
            rows_estimated: Some(100),
            rows_per_sec: Some(2.5),
            throttled: Some("replica lag".into()),
            batches: vec![("completed".into(), 3), ("failed".into(), 1)],
        };
        let text = render(&[("running".into(), 1)], &[run], 2, 3);
        assert!(text.contains(r#"backfill="a\"b\\c\nd""#), "{text}");
        assert!(text.contains(r#"drip_run_throttled{run_id="7",backfill="a\"b\\c\nd",owner="alice",reason="replica lag"} 1"#));
        assert!(text.contains(r#"drip_runs{status="running"} 1"#));
        assert!(text.contains(r#"drip_runs{status="failed"} 0"#));
        assert!(text.contains("drip_dashboard_db_connections 3"));
        for (name, _, _) in METRICS {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
    }
}
