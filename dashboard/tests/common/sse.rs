//! Reads a Server-Sent Events stream the way EventSource does (for handler tests).
#![allow(dead_code)]

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(Debug, Default, Clone)]
pub struct SseEvent {
    pub event: String,
    pub id: String,
    pub data: String,
}

pub struct Sse {
    body: hyper::body::Incoming,
    buf: String,
}

impl Sse {
    pub async fn open(url: &str, last_event_id: Option<&str>) -> Sse {
        Sse::open_with_cookie(url, last_event_id, None).await
    }

    /// A stream of a signed-in session (`cookie` is `name=value`).
    pub async fn open_with_cookie(
        url: &str,
        last_event_id: Option<&str>,
        cookie: Option<&str>,
    ) -> Sse {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<axum::body::Bytes>>();
        let mut req = axum::http::Request::get(url).header("accept", "text/event-stream");
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = client
            .request(req.body(Empty::new()).unwrap())
            .await
            .expect("open stream");
        assert_eq!(resp.status(), 200, "event stream status");
        let ct = resp
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        Sse {
            body: resp.into_body(),
            buf: String::new(),
        }
    }

    /// The next event (comments and keep-alives skipped); panics after `limit`.
    pub async fn next_event(&mut self, limit: Duration) -> SseEvent {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = SseEvent::default();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        ev.event = v.trim_start().to_string();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        ev.id = v.trim_start().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if !ev.data.is_empty() {
                            ev.data.push('\n');
                        }
                        ev.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if ev.event.is_empty() && ev.data.is_empty() {
                    continue;
                }
                return ev;
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .unwrap_or_else(|_| panic!("no event within {limit:?}"))
                .expect("stream ended")
                .expect("stream error");
            if let Ok(data) = frame.into_data() {
                self.buf.push_str(&String::from_utf8_lossy(&data));
            }
        }
    }

    /// Whether the server ends the stream within `limit` (events before the end are skipped).
    pub async fn ends_within(&mut self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => return false,
                Ok(None) | Ok(Some(Err(_))) => return true,
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}
