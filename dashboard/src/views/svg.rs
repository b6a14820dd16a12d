//! Charts drawn on the server as inline SVG: no script, no style attributes (the CSP forbids
//! them), colours come from CSS classes.

use std::fmt::Write;

use crate::db::queries::TimelineMark;
use crate::views::fmt;

/// Escapes text for SVG/HTML content and attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A progress bar: `percent` of the width filled, classed by status.
pub fn progress_bar(percent: f64, status: &str) -> String {
    let p = percent.clamp(0.0, 100.0);
    format!(
        r#"<svg class="bar" viewBox="0 0 100 6" preserveAspectRatio="none" role="img" aria-label="{p:.1}%"><rect class="bar-bg" width="100" height="6" rx="3"/><rect class="bar-fill st-{}" width="{p:.2}" height="6" rx="3"/></svg>"#,
        esc(status)
    )
}

/// Throughput of the last completed batches (rows/s), oldest to newest.
pub fn sparkline(values: &[f64]) -> String {
    let (w, h) = (240.0_f64, 40.0_f64);
    if values.len() < 2 {
        return r#"<p class="muted">Not enough completed batches for a throughput chart yet.</p>"#
            .into();
    }
    let max = values.iter().cloned().fold(0.0_f64, f64::max).max(1e-9);
    let step = w / (values.len() - 1) as f64;
    let mut pts = String::new();
    for (i, v) in values.iter().enumerate() {
        let x = i as f64 * step;
        let y = h - 2.0 - (v / max) * (h - 4.0);
        let _ = write!(pts, "{x:.1},{y:.1} ");
    }
    let last = values.last().copied().unwrap_or(0.0);
    format!(
        r#"<svg class="spark" viewBox="0 0 {w} {h}" role="img" aria-label="throughput of the last {n} batches"><title>rows/s of the last {n} completed batches (peak {peak}, latest {latest})</title><polyline class="spark-line" points="{pts}"/></svg>"#,
        n = values.len(),
        peak = esc(&fmt::rate(Some(max))),
        latest = esc(&fmt::rate(Some(last))),
        pts = pts.trim_end()
    )
}

/// The batch timeline: one mark per batch (or per stretch of batches when there are many) in
/// key order; colour = status, height = duration relative to the slowest mark. A parallel run
/// (slices, or a Citus run's sub-runs, one per shard) gets one lane per slice, stacked.
pub fn timeline(marks: &[TimelineMark]) -> String {
    if marks.is_empty() {
        return r#"<p class="muted empty-inline">No batches yet.</p>"#.into();
    }
    let mut lanes: Vec<Option<i32>> = marks.iter().map(|m| m.lane).collect();
    lanes.dedup();
    let laned = lanes.len() > 1 || lanes.first().is_some_and(Option::is_some);
    let lane_h = if laned { 14.0_f64 } else { 48.0_f64 };
    let h = lane_h * lanes.len() as f64;
    let per_lane = |lane: Option<i32>| marks.iter().filter(|m| m.lane == lane).count();
    let widest = lanes.iter().map(|l| per_lane(*l)).max().unwrap_or(0);
    let gap = if widest > 150 { 0.0 } else { 1.0 };
    let bw = 4.0_f64;
    let w = (widest as f64 * (bw + gap)).max(bw);
    let slowest = marks
        .iter()
        .filter_map(|m| m.max_secs)
        .fold(0.0_f64, f64::max)
        .max(1e-6);
    let class = if laned { "timeline lanes" } else { "timeline" };
    // Lanes: as tall as they are many, 10 px each (app.css leaves a laned timeline's height
    // to this attribute).
    let height = if laned {
        format!(r#" height="{}""#, 10 * lanes.len())
    } else {
        String::new()
    };
    let mut out = format!(
        r#"<svg class="{class}" viewBox="0 0 {w} {h}" preserveAspectRatio="none" role="img" aria-label="batch timeline"{height}>"#
    );
    let mut lane_no = 0usize;
    let mut index = 0usize;
    let mut current = marks.first().map(|m| m.lane).unwrap_or(None);
    for m in marks.iter() {
        if m.lane != current {
            current = m.lane;
            lane_no += 1;
            index = 0;
        }
        let i = index;
        index += 1;
        let top = lane_no as f64 * lane_h;
        let class = if m.failed {
            "failed"
        } else if m.running {
            "running"
        } else if m.retried {
            "retried"
        } else {
            "completed"
        };
        let secs = m.max_secs.unwrap_or(0.0);
        let room = if laned { lane_h - 2.0 } else { lane_h };
        let bar_h = if m.running && m.max_secs.is_none() {
            room
        } else {
            (2.0 + (secs / slowest) * (room - 2.0)).min(room)
        };
        let x = i as f64 * (bw + gap);
        let mut what = if m.count == 1 {
            format!("batch {}", m.first)
        } else {
            format!("batches {}–{} ({})", m.first, m.last, m.count)
        };
        if let Some(lane) = m.lane {
            what = format!("slice {lane}, {what}");
        }
        let took = match (m.count, m.avg_secs, m.max_secs) {
            (_, None, _) => "still running".to_string(),
            (1, Some(a), _) => fmt::duration(a),
            (_, Some(a), Some(mx)) => {
                format!("avg {}, slowest {}", fmt::duration(a), fmt::duration(mx))
            }
            (_, Some(a), None) => fmt::duration(a),
        };
        let rows = m.rows.map(fmt::count).unwrap_or_else(|| "–".into());
        let _ = write!(
            out,
            r#"<rect class="tl {class}" data-first="{first}" x="{x:.1}" y="{y:.1}" width="{bw}" height="{bar_h:.1}"><title>{what}: {class}, {took}, {rows} rows</title></rect>"#,
            first = m.first,
            y = top + lane_h - bar_h,
            what = esc(&what),
            took = esc(&took),
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(first: i64, failed: bool, secs: f64) -> TimelineMark {
        TimelineMark {
            first,
            last: first,
            count: 1,
            failed,
            running: false,
            retried: false,
            avg_secs: Some(secs),
            max_secs: Some(secs),
            rows: Some(10),
            lane: None,
        }
    }

    #[test]
    fn a_parallel_run_gets_one_lane_per_slice() {
        let in_lane = |lane: i32, first: i64| TimelineMark {
            lane: Some(lane),
            ..mark(first, false, 0.1)
        };
        let marks = [in_lane(0, 1), in_lane(0, 3), in_lane(1, 2), in_lane(2, 4)];
        let svg = timeline(&marks);
        assert!(svg.contains(r#"class="timeline lanes""#));
        assert!(svg.contains(r#"viewBox="0 0 10 42""#), "{svg}");
        assert_eq!(svg.matches("<rect").count(), 4);
        // Each lane starts at x = 0, one lane height (14) further down; bars stand on the
        // lane's floor (the slowest mark is 12 high).
        assert!(svg.contains(r#"data-first="3" x="5.0" y="2.0""#), "{svg}");
        assert!(svg.contains(r#"data-first="2" x="0.0" y="16.0""#), "{svg}");
        assert!(svg.contains(r#"data-first="4" x="0.0" y="30.0""#), "{svg}");
        assert!(svg.contains("slice 1, batch 2"));
    }

    #[test]
    fn timeline_has_one_mark_per_batch_coloured_by_status() {
        let svg = timeline(&[mark(1, false, 0.1), mark(2, true, 0.4), mark(3, false, 0.2)]);
        assert_eq!(svg.matches("<rect").count(), 3);
        assert!(svg.contains(r#"class="tl failed" data-first="2""#));
        assert!(svg.contains("batch 2: failed, 400 ms, 10 rows"));
        assert!(!svg.contains("style="));
    }

    #[test]
    fn escaping_and_bars() {
        assert_eq!(
            esc(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert!(progress_bar(150.0, "running").contains(r#"width="100.00""#));
        assert!(sparkline(&[1.0]).contains("Not enough"));
        assert!(sparkline(&[1.0, 2.0, 3.0]).contains("polyline"));
    }
}
