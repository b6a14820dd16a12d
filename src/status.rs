//! Run and batch lifecycles: the statuses and the transitions the SQL API may make.

use crate::error::{DripError, DripResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// Waiting for `start_at`.
    Pending,
    /// Ready, waiting for a worker slot.
    Enqueued,
    Running,
    Paused,
    Completed,
    Failed,
    Stopped,
}

impl RunStatus {
    pub const ALL: [RunStatus; 7] = [
        RunStatus::Pending,
        RunStatus::Enqueued,
        RunStatus::Running,
        RunStatus::Paused,
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Enqueued => "enqueued",
            RunStatus::Running => "running",
            RunStatus::Paused => "paused",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Stopped => "stopped",
        }
    }

    pub fn parse(s: &str) -> DripResult<RunStatus> {
        RunStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| DripError::Internal(format!("unknown run status \"{s}\"")))
    }

    /// Active runs block a second start and unregister.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            RunStatus::Pending | RunStatus::Enqueued | RunStatus::Running | RunStatus::Paused
        )
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Stopped
        )
    }
}

/// A control request from the SQL API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Pause,
    Resume,
    Stop,
    /// A failed or stopped run goes on from its cursor.
    Retry,
}

impl Control {
    pub fn verb(self) -> &'static str {
        match self {
            Control::Pause => "pause",
            Control::Resume => "resume",
            Control::Stop => "stop",
            Control::Retry => "retry",
        }
    }

    /// The status a run moves to, or the error naming its current status.
    pub fn apply(self, run_id: i64, from: RunStatus) -> DripResult<RunStatus> {
        use RunStatus::*;
        let to = match (self, from) {
            (Control::Pause, Enqueued | Running) => Paused,
            (Control::Resume, Paused) => Enqueued,
            (Control::Stop, Pending | Enqueued | Running | Paused) => Stopped,
            (Control::Retry, Failed | Stopped) => Enqueued,
            _ => {
                return Err(DripError::WrongStatus {
                    action: self.verb(),
                    run_id,
                    status: from.as_str().to_string(),
                })
            }
        };
        Ok(to)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchStatus {
    /// Committed and visible while the batch's work is in flight.
    Running,
    Completed,
    Failed,
}

impl BatchStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Running => "running",
            BatchStatus::Completed => "completed",
            BatchStatus::Failed => "failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_transitions() {
        use RunStatus::*;
        assert_eq!(Control::Pause.apply(1, Running).unwrap(), Paused);
        assert_eq!(Control::Pause.apply(1, Enqueued).unwrap(), Paused);
        assert_eq!(Control::Resume.apply(1, Paused).unwrap(), Enqueued);
        for s in [Pending, Enqueued, Running, Paused] {
            assert_eq!(Control::Stop.apply(1, s).unwrap(), Stopped);
            assert!(Control::Retry.apply(1, s).is_err());
        }
        assert_eq!(Control::Retry.apply(1, Failed).unwrap(), Enqueued);
        assert_eq!(Control::Retry.apply(1, Stopped).unwrap(), Enqueued);
        assert!(Control::Retry.apply(1, Completed).is_err());
    }

    #[test]
    fn refused_transitions_name_the_status() {
        use RunStatus::*;
        for s in [Completed, Failed, Stopped] {
            for c in [Control::Pause, Control::Resume, Control::Stop] {
                let e = c.apply(3, s).unwrap_err();
                assert!(e.to_string().contains(s.as_str()), "{e}");
            }
        }
        assert!(Control::Pause.apply(1, Pending).is_err());
        assert!(Control::Pause.apply(1, Paused).is_err());
        assert!(Control::Resume.apply(1, Running).is_err());
    }

    #[test]
    fn status_names_round_trip() {
        for s in RunStatus::ALL {
            assert_eq!(RunStatus::parse(s.as_str()).unwrap(), s);
        }
        assert!(RunStatus::parse("bogus").is_err());
    }
}
