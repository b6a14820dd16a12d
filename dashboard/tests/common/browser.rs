//! Debian's chromium driven through Debian's chromedriver (WebDriver). Nothing is downloaded:
//! both come from the `chromium` and `chromium-driver` packages.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub struct Browser {
    pub c: Client,
    driver: Child,
    profile: std::path::PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver runs in a process group of its own, with the browser it started: end
        // that group (ours, by its id), so a failed test leaves no chromium behind.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Browser {
    pub async fn start() -> Browser {
        Browser::start_with_args(&[]).await
    }

    /// A browser with extra command-line switches (e.g. `--host-resolver-rules=...`).
    pub async fn start_with_args(extra: &[String]) -> Browser {
        for f in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(f).exists(),
                "{f} is missing: apt-get install chromium chromium-driver (scripts/test.sh dashboard does it as root)"
            );
        }
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile =
            std::env::temp_dir().join(format!("drip-dash-chromium-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).expect("profile dir");
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), "chrome".into());
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1400,1000",
                    "--disable-crash-reporter", "--disable-breakpad",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }),
        );
        if let Some(args) = caps
            .get_mut("goog:chromeOptions")
            .and_then(|o| o.get_mut("args"))
            .and_then(|a| a.as_array_mut())
        {
            args.extend(extra.iter().cloned().map(serde_json::Value::from));
        }
        let url = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        let c = loop {
            match ClientBuilder::new(HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) => {
                    assert!(
                        start.elapsed() < Duration::from_secs(30),
                        "chromedriver session: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        Browser { c, driver, profile }
    }

    /// Polls the DOM (not the network: an open EventSource never idles) until `check` returns
    /// Some, or fails naming `what`.
    pub async fn wait_for<T, F, Fut>(&self, what: &str, limit: Duration, mut check: F) -> T
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let start = Instant::now();
        loop {
            if let Some(v) = check(self.c.clone()).await {
                return v;
            }
            if start.elapsed() > limit {
                let src = self.c.source().await.unwrap_or_default();
                panic!(
                    "timed out after {limit:?} waiting for {what}; page:\n{}",
                    &src[..src.len().min(4000)]
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the element matching `css`. The live region is re-rendered whenever events
    /// arrive, so an element found a moment ago may be gone: find it again and retry.
    pub async fn click(&self, css: &str) {
        let start = Instant::now();
        loop {
            let res = match self.c.find(Locator::Css(css)).await {
                Ok(el) => el.click().await,
                Err(e) => Err(e),
            };
            match res {
                Ok(()) => return,
                Err(e) => {
                    assert!(
                        start.elapsed() < Duration::from_secs(20),
                        "click {css}: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    pub async fn attr(&self, css: &str, attr: &str) -> Option<String> {
        attr_of(&self.c, css, attr).await
    }

    pub async fn text(&self, css: &str) -> Option<String> {
        text_of(&self.c, css).await
    }

    pub async fn js(&self, script: &str) -> serde_json::Value {
        self.c.execute(script, vec![]).await.expect("script")
    }
}

// Reads go through one script call each: the live region is replaced as events arrive, so a
// WebDriver element reference can go stale between "find" and "read".

/// `attr` of the first element matching `css` (None if there is none).
pub async fn attr_of(c: &Client, css: &str, attr: &str) -> Option<String> {
    let v = c
        .execute(
            "const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null;",
            vec![css.into(), attr.into()],
        )
        .await
        .ok()?;
    v.as_str().map(str::to_string)
}

/// The rendered text of the first element matching `css`.
pub async fn text_of(c: &Client, css: &str) -> Option<String> {
    let v = c
        .execute(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText.trim() : null;",
            vec![css.into()],
        )
        .await
        .ok()?;
    v.as_str().map(str::to_string)
}

/// Whether the first element matching `css` exists and is not disabled.
pub async fn enabled(c: &Client, css: &str) -> Option<bool> {
    let v = c
        .execute(
            "const e = document.querySelector(arguments[0]); return e ? !e.disabled : null;",
            vec![css.into()],
        )
        .await
        .ok()?;
    v.as_bool()
}
