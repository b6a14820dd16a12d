//! A PostgreSQL cluster owned by a test: `target/NAME`, loopback only, its own socket
//! directory, run as `postgres` when the test runs as root, stopped when dropped.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};

/// The 3-node Citus cluster of tests/citus.rs.
pub mod citus;

/// The server's bin directory: `DRIP_PG_BIN` (scripts/test.sh sets it per major version), else
/// Debian's PostgreSQL 15.
pub fn pg_bin() -> String {
    std::env::var("DRIP_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".to_string())
}

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    pub owner: Option<&'static str>,
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(55432)
}

impl Cluster {
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
    pub fn sock(&self) -> PathBuf {
        self.dir.join("sock")
    }

    /// Run a Postgres binary as the cluster owner.
    pub fn pg(&self, bin: &str, args: &[&str]) -> std::process::Output {
        let path = format!("{}/{bin}", pg_bin());
        let mut cmd = match self.owner {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--", &path]);
                c
            }
            None => Command::new(&path),
        };
        cmd.args(args).current_dir("/");
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"))
    }

    pub fn create(name: &str) -> Cluster {
        Cluster::create_in(
            &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"),
            name,
        )
    }

    /// A new cluster in `parent/name`.
    pub fn create_in(parent: &std::path::Path, name: &str) -> Cluster {
        let root = parent.join(name);
        let owner = is_root().then_some("postgres");
        let c = Cluster {
            dir: root,
            port: free_port(),
            owner,
        };
        // Stop what an earlier, killed run may have left, then start clean.
        if c.data().join("postmaster.pid").exists() {
            c.pg(
                "pg_ctl",
                &["stop", "-m", "immediate", "-D", c.data().to_str().unwrap()],
            );
        }
        let _ = std::fs::remove_dir_all(&c.dir);
        std::fs::create_dir_all(c.sock()).unwrap();
        if let Some(user) = owner {
            let ok = Command::new("chown")
                .args(["-R", &format!("{user}:"), c.dir.to_str().unwrap()])
                .status();
            assert!(
                ok.map(|s| s.success()).unwrap_or(false),
                "chown {}",
                c.dir.display()
            );
        }
        let out = c.pg(
            "initdb",
            &[
                "-D",
                c.data().to_str().unwrap(),
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = format!(
            "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             max_worker_processes = 32\nfsync = off\nlog_min_messages = log\n\
             drip.launcher_interval = 1\n",
            c.port,
            c.sock().display()
        );
        let conf_path = c.data().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).unwrap();
        text.push_str(&conf);
        std::fs::write(&conf_path, text).unwrap();
        c
    }

    /// Append settings to postgresql.auto.conf (read at the next start).
    pub fn set_conf(&self, lines: &str) {
        let path = self.data().join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&path).unwrap_or_default();
        text.push_str(lines);
        text.push('\n');
        std::fs::write(&path, text).unwrap();
        if let Some(user) = self.owner {
            let _ = Command::new("chown")
                .args([&format!("{user}:"), path.to_str().unwrap()])
                .status();
        }
    }

    /// The superuser name to connect as.
    pub fn user(&self) -> String {
        self.owner
            .map(str::to_string)
            .unwrap_or_else(|| std::env::var("USER").unwrap_or_default())
    }

    /// A streaming hot standby of `primary` (pg_basebackup -R), not started yet.
    pub fn standby_of(primary: &Cluster, name: &str) -> Cluster {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join(name);
        let c = Cluster {
            dir: root,
            port: free_port(),
            owner: primary.owner,
        };
        if c.data().join("postmaster.pid").exists() {
            c.pg(
                "pg_ctl",
                &["stop", "-m", "immediate", "-D", c.data().to_str().unwrap()],
            );
        }
        let _ = std::fs::remove_dir_all(&c.dir);
        std::fs::create_dir_all(c.sock()).unwrap();
        if let Some(user) = c.owner {
            let ok = Command::new("chown")
                .args(["-R", &format!("{user}:"), c.dir.to_str().unwrap()])
                .status();
            assert!(ok.map(|s| s.success()).unwrap_or(false));
        }
        let out = c.pg(
            "pg_basebackup",
            &[
                "-D",
                c.data().to_str().unwrap(),
                "-R",
                "-X",
                "stream",
                "-h",
                primary.sock().to_str().unwrap(),
                "-p",
                &primary.port.to_string(),
                "-U",
                &primary.user(),
            ],
        );
        assert!(
            out.status.success(),
            "pg_basebackup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conf_path = c.data().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).unwrap();
        text.push_str(&format!(
            "\nport = {}\nunix_socket_directories = '{}'\nhot_standby = on\nwal_receiver_status_interval = 1s\n",
            c.port,
            c.sock().display()
        ));
        std::fs::write(&conf_path, text).unwrap();
        c
    }

    pub fn set_preload(&self, on: bool) {
        let path = self.data().join("postgresql.auto.conf");
        let line = if on {
            "shared_preload_libraries = 'data_drip'\n"
        } else {
            ""
        };
        std::fs::write(&path, line).unwrap();
        if let Some(user) = self.owner {
            let _ = Command::new("chown")
                .args([&format!("{user}:"), path.to_str().unwrap()])
                .status();
        }
    }

    pub fn start(&self) {
        let log = self.dir.join("postgres.log");
        let out = self.pg(
            "pg_ctl",
            &[
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                self.data().to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn stop(&self, mode: &str) {
        self.pg(
            "pg_ctl",
            &[
                "stop",
                "-w",
                "-t",
                "60",
                "-m",
                mode,
                "-D",
                self.data().to_str().unwrap(),
            ],
        );
    }

    pub fn connect(&self, db: &str) -> Client {
        let user = self.user();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = postgres::Config::new()
                .host_path(self.sock())
                .port(self.port)
                .user(&user)
                .dbname(db)
                .connect_timeout(Duration::from_secs(5))
                .connect(NoTls);
            match r {
                Ok(c) => return c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("cannot connect to {db}: {e}"),
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop("immediate");
    }
}

pub fn kill9(pid: i32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}
