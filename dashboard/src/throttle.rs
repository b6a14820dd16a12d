//! Login throttling: after `LIMIT` failed logins within `WINDOW` for one role name, or from one
//! client address, further logins for it are refused with 429 for `WINDOW`. An unknown role
//! and a wrong password count alike (and look alike to the visitor).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const LIMIT: usize = 10;
pub const WINDOW: Duration = Duration::from_secs(60);
/// Keys remembered at most; beyond it the stalest are forgotten (an attacker inventing role
/// names must not grow memory without bound). Blocked keys are kept.
const MAX_KEYS: usize = 50_000;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Role(String),
    Addr(IpAddr),
}

#[derive(Default)]
struct Record {
    failures: VecDeque<Instant>,
    blocked_until: Option<Instant>,
}

#[derive(Default)]
pub struct LoginThrottle {
    map: Mutex<HashMap<Key, Record>>,
}

fn keys(role: &str, addr: Option<IpAddr>) -> Vec<Key> {
    // Role names longer than PostgreSQL's 63 bytes cannot exist: one key for all of them.
    let role: String = role.chars().take(64).collect();
    let mut k = vec![Key::Role(role)];
    if let Some(a) = addr {
        k.push(Key::Addr(a));
    }
    k
}

impl LoginThrottle {
    /// `Err(seconds)` while this role or address is blocked.
    pub fn check(&self, role: &str, addr: Option<IpAddr>) -> Result<(), u64> {
        let now = Instant::now();
        let Ok(map) = self.map.lock() else {
            return Ok(());
        };
        let wait = keys(role, addr)
            .iter()
            .filter_map(|k| map.get(k)?.blocked_until)
            .filter(|until| *until > now)
            .map(|until| (until - now).as_secs() + 1)
            .max();
        match wait {
            Some(s) => Err(s),
            None => Ok(()),
        }
    }

    pub fn failed(&self, role: &str, addr: Option<IpAddr>) {
        let now = Instant::now();
        let Ok(mut map) = self.map.lock() else {
            return;
        };
        if map.len() >= MAX_KEYS {
            map.retain(|_, r| {
                r.blocked_until.is_some_and(|u| u > now)
                    || r.failures.back().is_some_and(|t| now - *t < WINDOW)
            });
        }
        for k in keys(role, addr) {
            if map.len() >= MAX_KEYS && !map.contains_key(&k) {
                continue;
            }
            let r = map.entry(k).or_default();
            while r.failures.front().is_some_and(|t| now - *t >= WINDOW) {
                r.failures.pop_front();
            }
            r.failures.push_back(now);
            if r.failures.len() >= LIMIT {
                r.blocked_until = Some(now + WINDOW);
                r.failures.clear();
            }
        }
    }

    /// A successful login clears its role's failures (not its address's).
    pub fn succeeded(&self, role: &str) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(&Key::Role(role.chars().take(64).collect()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_failures_block_the_role_and_the_address() {
        let t = LoginThrottle::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..LIMIT - 1 {
            t.failed("alice", Some(a));
        }
        assert!(t.check("alice", Some(a)).is_ok());
        t.failed("alice", Some(a));
        let wait = t.check("alice", Some(b)).unwrap_err();
        assert!(wait > 50 && wait <= 61, "{wait}");
        assert!(
            t.check("bob", Some(a)).is_err(),
            "the address is blocked too"
        );
        assert!(t.check("bob", Some(b)).is_ok());
        // Many role names from one address: the address blocks.
        for i in 0..LIMIT {
            t.failed(&format!("r{i}"), Some(b));
        }
        assert!(t.check("carol", Some(b)).is_err());
    }
}
