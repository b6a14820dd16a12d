//! Command-line flags.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

pub const USAGE: &str = "\
usage: drip-dashboard [--database-url URL | --database-url-file PATH] [--listen ADDR] [options]

  --database-url URL       postgres://role@host:port/db (or key=value form). Single-user mode acts
                           as this role; multi-user mode uses it for the host and database of every
                           login and for the one LISTEN drip_events connection. Also $DATABASE_URL,
                           which keeps a password out of `ps`. `?sslmode=` (disable, prefer,
                           require, verify-ca, verify-full) and `sslrootcert=` are honoured.
  --database-url-file PATH read the URL from this file (first line)
  --listen ADDR            address to bind (default 127.0.0.1:8080; port 0 picks a free port)
  --public-url URL         the URL people use (behind a reverse proxy): its host is served, its
                           origin may post, and an https URL marks the cookie Secure
  --allowed-host NAME      another Host this dashboard answers to (NAME or NAME:PORT; repeatable).
                           By default only the listen address, localhost, 127.0.0.1 and [::1]
  --multi-user             log in with a Postgres role name and password; each request runs as
                           that role. Refused when the login path does not check passwords
  --allow-superuser        let superusers sign in (multi-user mode; refused otherwise)
  --read-only              hide every control and refuse every action on the server
  --max-connections N      database connections of all viewers together (default 20)
  --max-connections-per-role N
                           database connections of one role (default 4)
  --max-sessions N         signed-in sessions (default 1000); logins beyond it are refused
  --max-clients-per-address N
                           open HTTP connections from one client address (default 64)
  --session-check SECS     re-check each signed-in role against the database this often
                           (default 120)
  --header-timeout SECS    close a connection that has not sent its request headers (default 10)
  --metrics                serve GET /metrics (Prometheus text format)
  --metrics-role ROLE      read /metrics as this role (default: the --database-url role)
  -h, --help               this text";

#[derive(Clone, Debug)]
pub struct Config {
    pub database_url: String,
    pub listen: SocketAddr,
    pub multi_user: bool,
    pub read_only: bool,
    pub allow_superuser: bool,
    /// `--allowed-host`, as given (NAME or NAME:PORT).
    pub allowed_hosts: Vec<String>,
    pub public_url: Option<String>,
    pub max_connections: usize,
    pub max_connections_per_role: usize,
    pub max_sessions: usize,
    pub max_clients_per_address: usize,
    pub session_check: Duration,
    pub header_timeout: Duration,
    pub metrics: bool,
    pub metrics_role: Option<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            database_url: String::new(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            multi_user: false,
            read_only: false,
            allow_superuser: false,
            allowed_hosts: Vec::new(),
            public_url: None,
            max_connections: 20,
            max_connections_per_role: 4,
            max_sessions: 1000,
            max_clients_per_address: 64,
            session_check: Duration::from_secs(120),
            header_timeout: Duration::from_secs(10),
            metrics: false,
            metrics_role: None,
        }
    }
}

pub enum Parsed {
    Run(Config),
    Help(&'static str),
}

fn number(flag: &str, v: &str) -> Result<u64, String> {
    match v.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{flag} {v}: expected a whole number above 0")),
    }
}

impl Config {
    pub fn from_args(args: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
        let mut c = Config::default();
        let mut database_url = std::env::var("DATABASE_URL").ok();
        let mut url_file: Option<String> = None;
        let mut url_flag: Option<String> = None;
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                _ => (arg.clone(), None),
            };
            let mut value = |name: &str| {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match flag.as_str() {
                "--database-url" => url_flag = Some(value("--database-url")?),
                "--database-url-file" => url_file = Some(value("--database-url-file")?),
                "--listen" => {
                    let v = value("--listen")?;
                    c.listen = SocketAddr::from_str(&v)
                        .map_err(|e| format!("--listen {v}: {e} (expected IP:PORT)"))?;
                }
                "--public-url" => {
                    let v = value("--public-url")?;
                    crate::host::PublicUrl::parse(&v)
                        .map_err(|e| format!("--public-url {v}: {e}"))?;
                    c.public_url = Some(v);
                }
                "--allowed-host" => {
                    let v = value("--allowed-host")?;
                    crate::host::Allowed::parse(&v)
                        .map_err(|e| format!("--allowed-host {v}: {e}"))?;
                    c.allowed_hosts.push(v);
                }
                "--multi-user" => c.multi_user = true,
                "--allow-superuser" => c.allow_superuser = true,
                "--read-only" => c.read_only = true,
                "--max-connections" => {
                    c.max_connections = number(&flag, &value(&flag)?)? as usize;
                }
                "--max-connections-per-role" => {
                    c.max_connections_per_role = number(&flag, &value(&flag)?)? as usize;
                }
                "--max-sessions" => c.max_sessions = number(&flag, &value(&flag)?)? as usize,
                "--max-clients-per-address" => {
                    c.max_clients_per_address = number(&flag, &value(&flag)?)? as usize;
                }
                "--session-check" => {
                    c.session_check = Duration::from_secs(number(&flag, &value(&flag)?)?);
                }
                "--header-timeout" => {
                    c.header_timeout = Duration::from_secs(number(&flag, &value(&flag)?)?);
                }
                "--metrics" => c.metrics = true,
                "--metrics-role" => c.metrics_role = Some(value("--metrics-role")?),
                "-h" | "--help" => return Ok(Parsed::Help(USAGE)),
                other => return Err(format!("unknown argument {other}")),
            }
        }
        if url_flag.is_some() && url_file.is_some() {
            return Err("give --database-url or --database-url-file, not both".into());
        }
        if let Some(path) = url_file {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("--database-url-file {path}: {e}"))?;
            let line = text.lines().next().unwrap_or("").trim().to_string();
            if line.is_empty() {
                return Err(format!("--database-url-file {path}: the file is empty"));
            }
            database_url = Some(line);
        }
        if let Some(u) = url_flag {
            database_url = Some(u);
        }
        c.database_url = database_url
            .ok_or("--database-url, --database-url-file or $DATABASE_URL is required")?;
        crate::db::connect::ConnectSpec::parse(&c.database_url)
            .map_err(|e| format!("database URL: {e}"))?;
        if c.max_connections_per_role > c.max_connections {
            return Err(format!(
                "--max-connections-per-role {} exceeds --max-connections {}",
                c.max_connections_per_role, c.max_connections
            ));
        }
        Ok(Parsed::Run(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        match Config::from_args(args.iter().map(|s| s.to_string()))? {
            Parsed::Run(c) => Ok(c),
            Parsed::Help(_) => Err("help".into()),
        }
    }

    #[test]
    fn loopback_by_default_and_flags() {
        let c = parse(&["--database-url", "postgres://alice@localhost/db"]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert!(!c.multi_user && !c.read_only && !c.allow_superuser && !c.metrics);
        assert_eq!((c.max_connections, c.max_connections_per_role), (20, 4));
        let c = parse(&[
            "--database-url=postgres://a@h/d",
            "--listen=0.0.0.0:9000",
            "--multi-user",
            "--read-only",
            "--allowed-host",
            "dash.example",
            "--allowed-host=other.example:8443",
            "--public-url",
            "https://drip.example.com/",
            "--max-connections-per-role",
            "2",
        ])
        .unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:9000");
        assert!(c.multi_user && c.read_only);
        assert_eq!(c.allowed_hosts, ["dash.example", "other.example:8443"]);
        assert_eq!(c.max_connections_per_role, 2);
    }

    #[test]
    fn the_url_from_a_file() {
        let path = std::env::temp_dir().join(format!("drip-url-{}", std::process::id()));
        std::fs::write(&path, "postgres://filed@h/d\n").unwrap();
        let c = parse(&["--database-url-file", path.to_str().unwrap()]).unwrap();
        assert_eq!(c.database_url, "postgres://filed@h/d");
        std::fs::write(&path, "\n").unwrap();
        assert!(parse(&["--database-url-file", path.to_str().unwrap()])
            .unwrap_err()
            .contains("empty"));
        let _ = std::fs::remove_file(&path);
        assert!(parse(&["--database-url-file", "/nonexistent/drip-url"]).is_err());
    }

    #[test]
    fn rejects_bad_input() {
        assert!(parse(&["--database-url", "postgres://a@h/d", "--listen", "nope"]).is_err());
        assert!(parse(&["--database-url", "postgres://a@h/d", "--bogus"]).is_err());
        assert!(parse(&[
            "--database-url",
            "postgres://a@h/d",
            "--max-connections",
            "0"
        ])
        .is_err());
        assert!(parse(&["--database-url", "postgres://a@h/d", "--public-url", "nope"]).is_err());
        assert!(parse(&[
            "--database-url",
            "postgres://a@h/d",
            "--allowed-host",
            "a b"
        ])
        .is_err());
        assert!(parse(&["--database-url", "postgres://a@h/d?sslmode=bogus"]).is_err());
    }
}
