//! Command-line flags.

use std::net::SocketAddr;
use std::str::FromStr;

pub const USAGE: &str = "\
usage: drip-dashboard --database-url URL [--listen ADDR] [--multi-user] [--read-only]

  --database-url URL  postgres://role@host:port/db (or key=value form). Single-user mode acts as
                      this role; multi-user mode uses it for the host and database of every login
                      and for the one LISTEN drip_events connection. Also $DATABASE_URL.
  --listen ADDR       address to bind (default 127.0.0.1:8080; port 0 picks a free port)
  --multi-user        log in with a Postgres role name and password; each request runs as that role
  --read-only         hide every control and refuse every action on the server
  -h, --help          this text";

#[derive(Clone, Debug)]
pub struct Config {
    pub database_url: String,
    pub listen: SocketAddr,
    pub multi_user: bool,
    pub read_only: bool,
}

pub enum Parsed {
    Run(Config),
    Help(&'static str),
}

impl Config {
    pub fn from_args(args: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
        let mut database_url = std::env::var("DATABASE_URL").ok();
        let mut listen = SocketAddr::from(([127, 0, 0, 1], 8080));
        let (mut multi_user, mut read_only) = (false, false);
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
                "--database-url" => database_url = Some(value("--database-url")?),
                "--listen" => {
                    let v = value("--listen")?;
                    listen = SocketAddr::from_str(&v)
                        .map_err(|e| format!("--listen {v}: {e} (expected IP:PORT)"))?;
                }
                "--multi-user" => multi_user = true,
                "--read-only" => read_only = true,
                "-h" | "--help" => return Ok(Parsed::Help(USAGE)),
                other => return Err(format!("unknown argument {other}")),
            }
        }
        let database_url = database_url.ok_or("--database-url (or $DATABASE_URL) is required")?;
        tokio_postgres::Config::from_str(&database_url)
            .map_err(|e| format!("--database-url: {e}"))?;
        Ok(Parsed::Run(Config {
            database_url,
            listen,
            multi_user,
            read_only,
        }))
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
        assert!(!c.multi_user && !c.read_only);
        let c = parse(&[
            "--database-url=postgres://a@h/d",
            "--listen=0.0.0.0:9000",
            "--multi-user",
            "--read-only",
        ])
        .unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:9000");
        assert!(c.multi_user && c.read_only);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(parse(&["--database-url", "postgres://a@h/d", "--listen", "nope"]).is_err());
        assert!(parse(&["--database-url", "postgres://a@h/d", "--bogus"]).is_err());
    }
}
