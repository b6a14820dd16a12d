//! Which `Host` this dashboard answers to, and which `Origin` may act on it.
//!
//! A DNS-rebinding page (`http://evil.example:8080`, resolved to 127.0.0.1) reaches the
//! dashboard with `Host: evil.example:8080`: it is refused (421) before any page, token or
//! cookie is produced. A state-changing request must also come from an allowed origin
//! (`Origin`, else `Referer`); a foreign one gets 403 and nothing changes.
//!
//! Allowed by default: the listen address, `localhost`, `127.0.0.1` and `[::1]`, each with the
//! listen port. `--allowed-host NAME[:PORT]` and `--public-url URL` add the names a reverse
//! proxy uses (a NAME without a port matches it on any port).

use std::net::SocketAddr;

/// One allowed host: a lower-case name (IPv6 in brackets) and optionally a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowed {
    pub name: String,
    pub port: Option<u16>,
}

/// `host[:port]` split, lower-cased; `None` for anything that is not a plain authority.
fn split_authority(s: &str) -> Option<(String, Option<u16>)> {
    let s = s.trim();
    if s.is_empty()
        || s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || "/@?#\\".contains(c))
    {
        return None;
    }
    let (name, port) = if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']')?;
        let name = format!("[{}]", &rest[..end]);
        match &rest[end + 1..] {
            "" => (name, None),
            p => (name, Some(p.strip_prefix(':')?.parse::<u16>().ok()?)),
        }
    } else {
        match s.rsplit_once(':') {
            Some((n, p)) => (n.to_string(), Some(p.parse::<u16>().ok()?)),
            None => (s.to_string(), None),
        }
    };
    if name.is_empty() || name.contains(':') && !name.starts_with('[') {
        return None;
    }
    Some((name.to_ascii_lowercase(), port))
}

impl Allowed {
    pub fn parse(s: &str) -> Result<Allowed, String> {
        let (name, port) =
            split_authority(s).ok_or("expected a host name, optionally with :PORT")?;
        Ok(Allowed { name, port })
    }
}

/// `--public-url`: scheme, host and port of the address people use.
#[derive(Clone, Debug)]
pub struct PublicUrl {
    pub https: bool,
    pub host: Allowed,
}

impl PublicUrl {
    pub fn parse(s: &str) -> Result<PublicUrl, String> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or("expected http://HOST[:PORT] or https://HOST[:PORT]")?;
        let https = match scheme.to_ascii_lowercase().as_str() {
            "https" => true,
            "http" => false,
            other => return Err(format!("scheme {other}: expected http or https")),
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let host = Allowed::parse(authority)?;
        Ok(PublicUrl { https, host })
    }

    fn default_port(&self) -> u16 {
        if self.https {
            443
        } else {
            80
        }
    }
}

/// The hosts and origins of one server.
#[derive(Clone, Debug)]
pub struct HostPolicy {
    allowed: Vec<Allowed>,
    /// An https `--public-url`: cookies get `Secure`.
    pub secure_cookies: bool,
}

impl HostPolicy {
    /// The defaults for `local` (the bound address) plus the configured names.
    pub fn new(
        local: SocketAddr,
        extra: &[String],
        public_url: Option<&str>,
    ) -> Result<HostPolicy, String> {
        let port = Some(local.port());
        let mut allowed = vec![
            Allowed {
                name: "localhost".into(),
                port,
            },
            Allowed {
                name: "127.0.0.1".into(),
                port,
            },
            Allowed {
                name: "[::1]".into(),
                port,
            },
        ];
        let ip = match local {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        };
        if !local.ip().is_unspecified() {
            allowed.push(Allowed { name: ip, port });
        }
        for e in extra {
            allowed.push(Allowed::parse(e)?);
        }
        let mut secure_cookies = false;
        if let Some(u) = public_url {
            let u = PublicUrl::parse(u)?;
            secure_cookies = u.https;
            // The proxy sends the public name, with or without the default port.
            let port = Some(u.host.port.unwrap_or(u.default_port()));
            allowed.push(Allowed {
                name: u.host.name,
                port,
            });
        }
        Ok(HostPolicy {
            allowed,
            secure_cookies,
        })
    }

    /// Whether a `Host` header value names this dashboard.
    pub fn host_ok(&self, host: &str) -> bool {
        let Some((name, port)) = split_authority(host) else {
            return false;
        };
        self.allowed.iter().any(|a| {
            a.name == name
                && match (a.port, port) {
                    // A NAME without a port in the list: any port (the operator's name).
                    (None, _) => true,
                    (Some(p), Some(q)) => p == q,
                    // `Host: name` without a port means the scheme's default port.
                    (Some(p), None) => p == 80 || p == 443,
                }
        })
    }

    /// Whether an `Origin` (`scheme://host[:port]`) or a `Referer` URL is one of ours.
    pub fn origin_ok(&self, origin_or_referer: &str) -> bool {
        let Some((scheme, rest)) = origin_or_referer.split_once("://") else {
            return false;
        };
        if !matches!(scheme, "http" | "https") {
            return false;
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if authority.contains('@') {
            return false;
        }
        let with_port = match split_authority(authority) {
            Some((name, Some(p))) => format!("{name}:{p}"),
            Some((name, None)) => {
                let p = if scheme == "https" { 443 } else { 80 };
                format!("{name}:{p}")
            }
            None => return false,
        };
        self.host_ok(&with_port)
    }
}

/// The middleware: a foreign `Host` gets 421 before anything else happens; a state-changing
/// request from a foreign `Origin` (or `Referer`) gets 403.
pub async fn guard(
    axum::extract::State(policy): axum::extract::State<std::sync::Arc<HostPolicy>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::{header, Method, StatusCode};
    use axum::response::IntoResponse;

    // In a block: the borrow of `req` must not live across the await below.
    let (host, from, changes) = {
        let header_str = |name: header::HeaderName| {
            req.headers()
                .get(name)
                .map(|v| v.to_str().unwrap_or("\u{fffd}").to_string())
        };
        let host = header_str(header::HOST)
            .or_else(|| req.uri().authority().map(|a| a.to_string()))
            .unwrap_or_default();
        let from = header_str(header::ORIGIN).or_else(|| header_str(header::REFERER));
        let changes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
        (host, from, changes)
    };
    if !policy.host_ok(&host) {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            "421 Misdirected Request: this dashboard does not answer to that host name. \
             An operator adds the names it is reached by with --allowed-host or --public-url.\n",
        )
            .into_response();
    }
    if changes {
        if let Some(from) = from {
            if !policy.origin_ok(&from) {
                return crate::error::AppError::forbidden(
                    "this request comes from a page of another origin: refused",
                )
                .into_response();
            }
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> SocketAddr {
        "127.0.0.1:8080".parse().unwrap()
    }

    #[test]
    fn defaults_are_loopback_names_with_the_port() {
        let p = HostPolicy::new(local(), &[], None).unwrap();
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST:8080",
            "[::1]:8080",
        ] {
            assert!(p.host_ok(ok), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "127.0.0.1:8081",
            "localhost",
            "",
            "127.0.0.1:8080@evil",
            "evil.example",
            "localhost.evil.example:8080",
        ] {
            assert!(!p.host_ok(bad), "{bad}");
        }
        assert!(p.origin_ok("http://127.0.0.1:8080"));
        assert!(p.origin_ok("http://localhost:8080/runs/1?x=1"));
        assert!(!p.origin_ok("http://evil.example:8080"));
        assert!(!p.origin_ok("null"));
        assert!(!p.origin_ok("http://127.0.0.1"));
        assert!(!p.origin_ok("http://evil@127.0.0.1:8080"));
    }

    #[test]
    fn allowed_hosts_and_public_url() {
        let p = HostPolicy::new(
            "0.0.0.0:8080".parse().unwrap(),
            &["dash.internal".into(), "other.example:9000".into()],
            Some("https://drip.example.com/dashboard"),
        )
        .unwrap();
        assert!(p.secure_cookies);
        assert!(p.host_ok("dash.internal:8080") && p.host_ok("dash.internal"));
        assert!(p.host_ok("other.example:9000") && !p.host_ok("other.example:9001"));
        assert!(p.host_ok("drip.example.com") && p.host_ok("drip.example.com:443"));
        assert!(!p.host_ok("drip.example.com:8443"));
        assert!(p.origin_ok("https://drip.example.com"));
        assert!(!p.origin_ok("http://drip.example.com:8443"));
        assert!(
            !p.host_ok("0.0.0.0:8080"),
            "the wildcard address is no name"
        );
        assert!(Allowed::parse("a b").is_err() && Allowed::parse("x/y").is_err());
        assert!(PublicUrl::parse("ftp://x").is_err() && PublicUrl::parse("x").is_err());
    }
}
