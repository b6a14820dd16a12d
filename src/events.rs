//! Events: one `NOTIFY drip_events` per status change, with a JSON payload.
//!
//! Payloads are built here in plain Rust; `notify` sends them with `drip.emit` (pg_notify on
//! the `drip_events` channel plus a `drip.events` row) inside the transaction that makes the
//! change, so an event is never sent, nor logged, for work that rolled back.

use pgrx::prelude::*;
use serde_json::{json, Map, Value};

use crate::error::DripResult;

/// NOTIFY payloads must be shorter than 8000 bytes; leave room for the other fields.
pub const MAX_PAYLOAD: usize = 7900;
const MAX_ERROR: usize = 2000;

/// What a run event says about its run.
pub struct RunInfo<'a> {
    pub run_id: i64,
    pub backfill: &'a str,
    pub rows_done: i64,
    pub batches_done: i64,
}

pub fn run_event(status: &str, run: &RunInfo, error: Option<&str>, at: &str) -> String {
    let mut m = base(
        &format!("run_{status}"),
        run.run_id,
        run.backfill,
        status,
        at,
    );
    m.insert("rows_done".into(), json!(run.rows_done));
    m.insert("batches_done".into(), json!(run.batches_done));
    if let Some(e) = error {
        m.insert("error".into(), json!(truncate(e, MAX_ERROR)));
    }
    finish(m)
}

/// `run_throttled`: the run holds on a health signal; its status stays `running`.
pub fn throttled_event(run: &RunInfo, reason: &str, at: &str) -> String {
    let mut m = base("run_throttled", run.run_id, run.backfill, "running", at);
    m.insert("rows_done".into(), json!(run.rows_done));
    m.insert("batches_done".into(), json!(run.batches_done));
    m.insert("reason".into(), json!(truncate(reason, MAX_ERROR)));
    finish(m)
}

pub fn batch_event(
    status: &str,
    run_id: i64,
    backfill: &str,
    batch: i64,
    rows: i64,
    error: Option<&str>,
    at: &str,
) -> String {
    let mut m = base(&format!("batch_{status}"), run_id, backfill, status, at);
    m.insert("batch".into(), json!(batch));
    m.insert("rows".into(), json!(rows));
    if let Some(e) = error {
        m.insert("error".into(), json!(truncate(e, MAX_ERROR)));
    }
    finish(m)
}

fn base(event: &str, run_id: i64, backfill: &str, status: &str, at: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("event".into(), json!(event));
    m.insert("run_id".into(), json!(run_id));
    m.insert("backfill".into(), json!(truncate(backfill, 200)));
    m.insert("status".into(), json!(status));
    m.insert("at".into(), json!(at));
    m
}

/// Serialize, guaranteeing the NOTIFY limit whatever the texts hold: JSON escaping can grow a
/// text six-fold (control characters become `\u00XX`), so the free-text fields are cut further
/// until the whole payload fits. A failure must always be recordable.
fn finish(mut m: Map<String, Value>) -> String {
    loop {
        let s = Value::Object(m.clone()).to_string();
        if s.len() < MAX_PAYLOAD {
            return s;
        }
        let mut shortened = false;
        for field in ["error", "reason", "backfill"] {
            if let Some(Value::String(text)) = m.get(field) {
                if !text.is_empty() {
                    let cut = if text.len() <= 8 {
                        String::new()
                    } else {
                        truncate(text, text.len() / 2)
                    };
                    m.insert(field.into(), json!(cut));
                    shortened = true;
                    break;
                }
            }
        }
        if !shortened {
            // Nothing left to cut (cannot happen with our fields); never exceed the limit.
            m.retain(|k, _| matches!(k.as_str(), "event" | "run_id" | "status" | "batch"));
            return Value::Object(m).to_string();
        }
    }
}

/// Cut `s` to at most `max` bytes on a character boundary, marking the cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Queue the notification (and its drip.events row) in the current transaction.
pub fn notify(payload: &str) -> DripResult<()> {
    Spi::connect_mut(|c| {
        c.update("SELECT drip.emit($1)", None, &[payload.into()])
            .map(|_| ())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_event_fields() {
        let run = RunInfo {
            run_id: 4,
            backfill: "fix",
            rows_done: 10,
            batches_done: 2,
        };
        let v: Value = serde_json::from_str(&run_event("failed", &run, Some("boom"), "t")).unwrap();
        assert_eq!(v["event"], "run_failed");
        assert_eq!(v["status"], "failed");
        assert_eq!(v["run_id"], 4);
        assert_eq!(v["rows_done"], 10);
        assert_eq!(v["batches_done"], 2);
        assert_eq!(v["error"], "boom");
        let v: Value = serde_json::from_str(&run_event("running", &run, None, "t")).unwrap();
        assert!(v.get("error").is_none());
    }

    #[test]
    fn throttled_event_fields() {
        let run = RunInfo {
            run_id: 2,
            backfill: "b",
            rows_done: 5,
            batches_done: 1,
        };
        let v: Value = serde_json::from_str(&throttled_event(&run, "replica lag", "t")).unwrap();
        assert_eq!(v["event"], "run_throttled");
        assert_eq!(v["status"], "running");
        assert_eq!(v["reason"], "replica lag");
    }

    #[test]
    fn batch_event_fields() {
        let v: Value =
            serde_json::from_str(&batch_event("completed", 1, "b", 3, 500, None, "t")).unwrap();
        assert_eq!(v["event"], "batch_completed");
        assert_eq!(v["batch"], 3);
        assert_eq!(v["rows"], 500);
    }

    #[test]
    fn any_error_text_fits_the_notify_limit() {
        // Control characters escape to six bytes each; multi-byte characters, quotes and
        // backslashes too must never push a payload past the limit.
        let cases = [
            "\u{1}".repeat(20_000),
            "\\\"".repeat(5_000),
            "\u{7f}\u{1b}[31mé😀".repeat(3_000),
            "x".repeat(100_000),
        ];
        for text in &cases {
            let run = RunInfo {
                run_id: i64::MAX,
                backfill: text,
                rows_done: i64::MAX,
                batches_done: i64::MAX,
            };
            for p in [
                run_event("failed", &run, Some(text), text),
                throttled_event(&run, text, "t"),
                batch_event("failed", 1, text, i64::MAX, i64::MAX, Some(text), "t"),
            ] {
                assert!(p.len() < MAX_PAYLOAD, "{} bytes", p.len());
                let v: Value = serde_json::from_str(&p).unwrap();
                assert!(v.get("event").is_some());
            }
        }
    }

    #[test]
    fn long_errors_are_truncated_below_the_notify_limit() {
        let huge = "é".repeat(10_000);
        let run = RunInfo {
            run_id: 1,
            backfill: &"n".repeat(300),
            rows_done: 0,
            batches_done: 0,
        };
        let p = run_event("failed", &run, Some(&huge), "2026-01-01");
        assert!(p.len() < MAX_PAYLOAD, "{}", p.len());
        assert!(serde_json::from_str::<Value>(&p).is_ok());
        let p = batch_event("failed", 1, "b", 1, 0, Some(&huge), "t");
        assert!(p.len() < MAX_PAYLOAD);
    }
}
