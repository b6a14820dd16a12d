//! Throttling on database health: before each batch the runner reads signals from Postgres
//! itself; when one trips, the run holds (keeping its status and cursor), sends `run_throttled`
//! with the reason, and looks again after a backoff.

use std::time::Duration;

/// Why a run holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Hold {
    /// This server is a hot standby (`pg_is_in_recovery()`): nothing can be written.
    Standby,
    /// A streaming standby lags more than `max_replica_lag`.
    ReplicaLag { lag: Duration, limit: Duration },
    /// The backfill's `throttle_query` returned true.
    ThrottleQuery,
}

impl Hold {
    /// Which signal tripped; a run announces a hold once per kind, however the numbers move.
    pub fn kind(&self) -> &'static str {
        match self {
            Hold::Standby => "standby",
            Hold::ReplicaLag { .. } => "replica_lag",
            Hold::ThrottleQuery => "throttle_query",
        }
    }

    pub fn reason(&self) -> String {
        match self {
            Hold::Standby => "server is a hot standby".into(),
            Hold::ReplicaLag { lag, limit } => format!(
                "replica lag {} ms exceeds max_replica_lag {} ms",
                lag.as_millis(),
                limit.as_millis()
            ),
            Hold::ThrottleQuery => "throttle_query returned true".into(),
        }
    }
}

/// The signals read before a batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Signals {
    pub in_recovery: bool,
    /// Largest write/flush/replay lag of any streaming standby, if there is one.
    pub replica_lag: Option<Duration>,
    /// What the throttle query said (false when there is none).
    pub throttle_query: bool,
}

/// Decide whether to hold. `max_replica_lag` of zero turns the lag signal off.
pub fn decide(s: &Signals, max_replica_lag: Duration) -> Option<Hold> {
    if s.in_recovery {
        return Some(Hold::Standby);
    }
    if let Some(lag) = s.replica_lag {
        if !max_replica_lag.is_zero() && lag > max_replica_lag {
            return Some(Hold::ReplicaLag {
                lag,
                limit: max_replica_lag,
            });
        }
    }
    if s.throttle_query {
        return Some(Hold::ThrottleQuery);
    }
    None
}

/// How long to wait before looking again, after `times` consecutive holds (1-based):
/// 0.5 s, 1 s, 2 s, then every 5 s.
pub fn recheck_after(times: u32) -> Duration {
    let ms = 500u64.saturating_mul(1 << times.clamp(1, 8).saturating_sub(1));
    Duration::from_millis(ms.min(5000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standby_holds_first() {
        let s = Signals {
            in_recovery: true,
            replica_lag: None,
            throttle_query: false,
        };
        assert_eq!(decide(&s, Duration::from_secs(10)), Some(Hold::Standby));
    }

    #[test]
    fn replica_lag_over_the_limit_holds_and_zero_turns_it_off() {
        let s = Signals {
            replica_lag: Some(Duration::from_secs(12)),
            ..Default::default()
        };
        let h = decide(&s, Duration::from_secs(10)).unwrap();
        assert!(
            h.reason()
                .contains("12000 ms exceeds max_replica_lag 10000 ms"),
            "{}",
            h.reason()
        );
        assert_eq!(h.kind(), "replica_lag");
        assert_eq!(decide(&s, Duration::from_secs(15)), None);
        assert_eq!(decide(&s, Duration::ZERO), None);
        let s = Signals {
            replica_lag: None,
            ..Default::default()
        };
        assert_eq!(decide(&s, Duration::from_secs(1)), None);
    }

    #[test]
    fn throttle_query_holds() {
        let s = Signals {
            throttle_query: true,
            ..Default::default()
        };
        assert_eq!(
            decide(&s, Duration::from_secs(10)),
            Some(Hold::ThrottleQuery)
        );
    }

    #[test]
    fn recheck_backs_off_to_five_seconds() {
        let d: Vec<u64> = (1..=6)
            .map(|t| recheck_after(t).as_millis() as u64)
            .collect();
        assert_eq!(d, vec![500, 1000, 2000, 4000, 5000, 5000]);
    }
}
