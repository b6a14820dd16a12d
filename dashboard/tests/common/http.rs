//! A minimal HTTP client for handler tests: keeps the session cookie like a browser would.
#![allow(dead_code)]

use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

type Body = Full<axum::body::Bytes>;

pub struct Http {
    base: String,
    client: Client<HttpConnector, Body>,
    pub cookie: Option<String>,
}

pub struct Page {
    pub status: u16,
    pub headers: axum::http::HeaderMap,
    pub body: String,
}

impl Page {
    /// The CSRF token of the first form on the page.
    pub fn csrf(&self) -> String {
        let marker = r#"name="csrf" value=""#;
        let at = self.body.find(marker).expect("page has a csrf field") + marker.len();
        self.body[at..].split('"').next().unwrap().to_string()
    }

    pub fn location(&self) -> String {
        self.headers
            .get("location")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }
}

impl Http {
    pub fn new(base: &str) -> Http {
        Http {
            base: base.trim_end_matches('/').to_string(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            cookie: None,
        }
    }

    async fn send(&mut self, req: axum::http::request::Builder, body: Body) -> Page {
        let req = match &self.cookie {
            Some(c) => req.header("cookie", c.as_str()),
            None => req,
        };
        let resp = self
            .client
            .request(req.body(body).unwrap())
            .await
            .expect("http request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        if let Some(sc) = headers.get("set-cookie") {
            let v = sc.to_str().unwrap();
            self.cookie = Some(v.split(';').next().unwrap().to_string());
        }
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        Page {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        self.get_with(path, &[]).await
    }

    /// A GET with extra headers (`host`, `origin`, ...).
    pub async fn get_with(&mut self, path: &str, headers: &[(&str, &str)]) -> Page {
        let mut req = axum::http::Request::get(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req, Body::default()).await
    }

    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        self.post_with(path, form, &[]).await
    }

    /// A form POST with extra headers.
    pub async fn post_with(
        &mut self,
        path: &str,
        form: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Page {
        let body = serde_urlencoded::to_string(form).unwrap();
        let mut req = axum::http::Request::post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req, Full::new(body.into())).await
    }
}
