//! TLS to the database: the test makes a CA and a server certificate with openssl, turns
//! `ssl = on` in the test cluster (a reload is enough), and connects the dashboard with each
//! `sslmode`; pg_stat_ssl says whether its connections are encrypted.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::http::Http;
use common::{config, Server, TestDb};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for IP 127.0.0.1 only (no DNS name) signed by it, and another
/// CA that signed nothing. Readable by the cluster's OS user.
fn certificates(owner: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("drip-dash-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for ca in ["ca", "other"] {
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=drip test {ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.crt"),
            ],
        );
    }
    std::fs::write(dir.join("san.cnf"), "subjectAltName = IP:127.0.0.1\n").unwrap();
    openssl(
        &dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.cnf",
            "-out",
            "server.crt",
        ],
    );
    // An X.509 v1 self-signed certificate (no extensions), as Citus makes on every node.
    openssl(
        &dir,
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=v1", "-keyout", "v1.key", "-out",
            "v1.csr",
        ],
    );
    openssl(
        &dir,
        &[
            "x509", "-req", "-in", "v1.csr", "-signkey", "v1.key", "-days", "2", "-out", "v1.crt",
        ],
    );
    // The server refuses a key others can read, and must own it (or root with group read).
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if is_root {
        let status = Command::new("chown")
            .args(["-R", owner])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success());
    }
    let status = Command::new("chmod")
        .args(["600"])
        .arg(dir.join("server.key"))
        .arg(dir.join("v1.key"))
        .status()
        .unwrap();
    assert!(status.success());
    dir
}

/// Whether the server's LISTEN connection and its pool's connections are encrypted.
async fn ssl_of_dashboard(s: &tokio_postgres::Client, server: &Server) -> Vec<bool> {
    let listener = server.state.hub.listener_pid();
    s.query(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
          WHERE a.pid = $1 OR (a.application_name = 'drip-dashboard' AND a.usename = $2
                               AND a.backend_start > now() - interval '2 seconds')",
        &[&listener, &"unused"],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

async fn serve_and_count(url: &str) -> Server {
    let server = Server::start_with(config(url)).await;
    let mut http = Http::new(&server.url(""));
    assert_eq!(http.get("/").await.status, 200);
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_and_sslrootcert_are_honoured() {
    let db = TestDb::new("tls").await;
    let dir = certificates(&db.cluster.superuser);
    let s = db.superuser().await;
    // One statement per call: ALTER SYSTEM refuses a multi-statement (implicit) transaction.
    for stmt in [
        format!(
            "ALTER SYSTEM SET ssl_cert_file = '{}'",
            dir.join("server.crt").display()
        ),
        format!(
            "ALTER SYSTEM SET ssl_key_file = '{}'",
            dir.join("server.key").display()
        ),
        "ALTER SYSTEM SET ssl = on".to_string(),
        "SELECT pg_reload_conf()".to_string(),
    ] {
        s.batch_execute(&stmt)
            .await
            .unwrap_or_else(|e| panic!("{stmt}: {e}"));
    }
    common::eventually("ssl = on", std::time::Duration::from_secs(10), || async {
        let c = db.superuser().await;
        let on: String = c.query_one("SHOW ssl", &[]).await.ok()?.get(0);
        (on == "on").then_some(())
    })
    .await;

    let url = |host: &str, query: &str| {
        format!(
            "postgres://{}:{}@{host}:{}/{}?{query}",
            db.alice,
            common::PASSWORD.replace(' ', "%20"),
            db.cluster.port,
            db.name
        )
    };
    let ca = dir.join("ca.crt").display().to_string();
    let other = dir.join("other.crt").display().to_string();

    // require: encrypted (no certificate check, as libpq).
    let mut server = serve_and_count(&url("127.0.0.1", "sslmode=require")).await;
    let seen = ssl_of_dashboard(&s, &server).await;
    assert!(!seen.is_empty() && seen.iter().all(|on| *on), "{seen:?}");
    server.stop().await;
    drop(server);

    // verify-full against our CA, by the IP the certificate names.
    let mut server = serve_and_count(&url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await;
    server.stop().await;
    drop(server);

    // verify-full by a name the certificate does not carry: refused; verify-ca accepts it.
    let wrong_name = drip_dashboard::AppState::new(config(&url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    )))
    .await
    .err()
    .expect("verify-full checks the host name");
    assert!(wrong_name.contains("cannot connect"), "{wrong_name}");
    let mut server = serve_and_count(&url(
        "localhost",
        &format!("sslmode=verify-ca&sslrootcert={ca}"),
    ))
    .await;
    server.stop().await;
    drop(server);

    // A CA that did not sign the server's certificate: refused.
    let wrong_ca = drip_dashboard::AppState::new(config(&url(
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={other}"),
    )))
    .await
    .err()
    .expect("verify-ca checks the chain");
    assert!(wrong_ca.contains("cannot connect"), "{wrong_ca}");

    // A certificate rustls cannot read (X.509 v1, as Citus makes): prefer falls back to a plain
    // connection, as libpq does; require refuses.
    for stmt in [
        format!(
            "ALTER SYSTEM SET ssl_cert_file = '{}'",
            dir.join("v1.crt").display()
        ),
        format!(
            "ALTER SYSTEM SET ssl_key_file = '{}'",
            dir.join("v1.key").display()
        ),
        "SELECT pg_reload_conf()".to_string(),
    ] {
        s.batch_execute(&stmt).await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let v1_require = drip_dashboard::AppState::new(config(&url("127.0.0.1", "sslmode=require")))
        .await
        .err()
        .expect("require needs a TLS connection");
    assert!(v1_require.contains("cannot connect"), "{v1_require}");
    let server = serve_and_count(&url("127.0.0.1", "sslmode=prefer")).await;
    let seen = ssl_of_dashboard(&s, &server).await;
    assert!(!seen.is_empty() && seen.iter().all(|on| !*on), "{seen:?}");
    drop(server);

    // disable: plain.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let server = serve_and_count(&url("127.0.0.1", "sslmode=disable")).await;
    let seen = ssl_of_dashboard(&s, &server).await;
    assert!(!seen.is_empty() && seen.iter().all(|on| !*on), "{seen:?}");
    drop(server);

    for stmt in [
        "ALTER SYSTEM RESET ssl",
        "ALTER SYSTEM RESET ssl_cert_file",
        "ALTER SYSTEM RESET ssl_key_file",
        "SELECT pg_reload_conf()",
    ] {
        s.batch_execute(stmt).await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
