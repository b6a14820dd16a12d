//! The one error type of data_drip, and the one place where each error gets its SQLSTATE.
//!
//! Domain code returns `Result<_, DripError>`; the SQL API turns an `Err` into an `ereport(ERROR)`
//! with the SQLSTATE, message, detail and hint chosen here. Nothing user input can reach panics.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

pub type DripResult<T> = Result<T, DripError>;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DripError {
    #[error("backfill \"{0}\" does not exist")]
    UnknownBackfill(String),
    #[error("backfill \"{0}\" already exists")]
    DuplicateBackfill(String),
    #[error("run {0} does not exist")]
    UnknownRun(i64),
    #[error("relation {0} is not a table")]
    NotATable(String),
    #[error("relation {0} is a temporary table")]
    TemporaryTable(String),
    #[error("relation {0} has no primary key")]
    NoPrimaryKey(String),
    #[error("column \"{column}\" of relation {relation} does not exist")]
    UnknownKeyColumn { relation: String, column: String },
    #[error("key ({key}) of relation {relation} is not covered by a btree index")]
    KeyNotIndexed { relation: String, key: String },
    #[error("key column \"{column}\" of relation {relation} is nullable")]
    KeyNullable { relation: String, column: String },
    #[error("key must name at least one column, each once")]
    BadKey,
    #[error("{what} is invalid: {message}")]
    BadSql {
        what: &'static str,
        message: String,
        sqlstate: PgSqlErrorCode,
    },
    #[error("{what} uses undeclared parameter ${name}")]
    UndeclaredParameter { what: &'static str, name: String },
    #[error("{what} uses positional parameter {text}")]
    PositionalParameter { what: &'static str, text: String },
    #[error("{what} must be a single SQL statement")]
    MultipleStatements { what: &'static str },
    #[error("{0}")]
    BadAction(String),
    #[error("params declaration is invalid: {0}")]
    BadParamDeclaration(String),
    #[error("type \"{type_name}\" of parameter \"{param}\" does not exist")]
    UnknownParamType { param: String, type_name: String },
    #[error("parameter values must be a JSON object, not {0}")]
    ValuesNotAnObject(String),
    #[error("unknown parameter \"{name}\"")]
    UnknownParameter { name: String, declared: Vec<String> },
    #[error("required parameter \"{0}\" is missing")]
    MissingParameter(String),
    #[error("invalid value for parameter \"{name}\": {message}")]
    BadParamValue {
        name: String,
        message: String,
        sqlstate: PgSqlErrorCode,
    },
    #[error("invalid value for key column \"{column}\": {message}")]
    BadKeyValue {
        column: String,
        message: String,
        sqlstate: PgSqlErrorCode,
    },
    #[error("run {0} was created or changed by this transaction, so it cannot start before the transaction commits")]
    WaitInOwnTransaction(i64),
    #[error("run {run_id} waits for run {after}, which is {status}")]
    WaitsForRun {
        run_id: i64,
        after: i64,
        status: String,
    },
    #[error("backfill \"{0}\" already has an active run, started by a concurrent transaction")]
    ConcurrentStart(String),
    #[error("the action assigns key column \"{0}\"")]
    ActionAssignsKey(String),
    #[error("argument \"{0}\" must not be NULL")]
    NullArgument(&'static str),
    #[error("start_at {0} cannot be scheduled")]
    UnschedulableStartAt(String),
    #[error("{0}")]
    BadOption(String),
    #[error("backfill \"{backfill}\" already has an active run {run_id} ({status})")]
    ActiveRunExists {
        backfill: String,
        run_id: i64,
        status: String,
    },
    #[error("cannot {action} run {run_id}: it is {status}")]
    WrongStatus {
        action: &'static str,
        run_id: i64,
        status: String,
    },
    #[error("permission denied for backfill \"{backfill}\"")]
    PermissionDenied { backfill: String, owner: String },
    /// A name with a zero-width, bidirectional or control character (see `security`).
    #[error("{0}")]
    InvisibleName(String),
    #[error("owner role of backfill \"{0}\" no longer exists")]
    OwnerGone(String),
    #[error("timed out waiting for run {run_id} (it is {status})")]
    WaitTimedOut { run_id: i64, status: String },
    #[error("backfill \"{backfill}\" has not completed: {detail}")]
    NotCompleted { backfill: String, detail: String },
    #[error("run {0} is being executed by a background worker or another session")]
    RunBusy(i64),
    #[error("the data_drip library is version {library} but this database's catalog is version {catalog}")]
    CatalogVersion { library: String, catalog: String },
    #[error("undo => true is not supported on {relation}, a Citus {kind} table")]
    UndoOnCitus {
        relation: String,
        kind: &'static str,
    },
    /// Citus refused to create data_drip's commit anchor (see `distribution::citus`).
    #[error("cannot prepare Citus for data_drip's batches: {0}")]
    CitusSetup(String),
    /// An ERROR the action (or the key walk, as the owner) raised in `drip.preview`, passed
    /// on with its own SQLSTATE, message, detail and hint.
    #[error("{message}")]
    PreviewFailed {
        backfill: String,
        message: String,
        sqlstate: PgSqlErrorCode,
        detail: Option<String>,
        hint: Option<String>,
    },
    #[error("undo => true is not supported for a statement action")]
    UndoUnsupported,
    #[error("run {0} kept no undo data")]
    NoUndoData(i64),
    #[error("the undo data of run {run_id} was purged at {at}; it can no longer be reverted")]
    UndoPurged { run_id: i64, at: String },
    #[error("run {run_id} is a revert (of run {of}); a revert cannot be reverted")]
    RevertOfRevert { run_id: i64, of: i64 },
    #[error("run {run_id} is reverted by run {by}, which is {status}")]
    AlreadyReverted {
        run_id: i64,
        by: i64,
        status: String,
    },
    #[error("{0}")]
    Internal(String),
}

impl DripError {
    /// The SQLSTATE of each error. Keep this the only place that decides one.
    pub fn sqlstate(&self) -> PgSqlErrorCode {
        use PgSqlErrorCode::*;
        match self {
            DripError::UnknownBackfill(_) | DripError::UnknownRun(_) => ERRCODE_UNDEFINED_OBJECT,
            DripError::DuplicateBackfill(_) => ERRCODE_DUPLICATE_OBJECT,
            DripError::NotATable(_) => ERRCODE_WRONG_OBJECT_TYPE,
            DripError::TemporaryTable(_) => ERRCODE_FEATURE_NOT_SUPPORTED,
            DripError::NoPrimaryKey(_)
            | DripError::KeyNotIndexed { .. }
            | DripError::KeyNullable { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            DripError::UnknownKeyColumn { .. } => ERRCODE_UNDEFINED_COLUMN,
            DripError::BadKey => ERRCODE_INVALID_PARAMETER_VALUE,
            DripError::BadSql { sqlstate, .. } => *sqlstate,
            DripError::UndeclaredParameter { .. } => ERRCODE_UNDEFINED_PARAMETER,
            DripError::PositionalParameter { .. }
            | DripError::MultipleStatements { .. }
            | DripError::BadAction(_) => ERRCODE_SYNTAX_ERROR,
            DripError::BadParamDeclaration(_) => ERRCODE_INVALID_PARAMETER_VALUE,
            DripError::UnknownParamType { .. } => ERRCODE_UNDEFINED_OBJECT,
            DripError::ValuesNotAnObject(_)
            | DripError::UnknownParameter { .. }
            | DripError::MissingParameter(_)
            | DripError::BadOption(_) => ERRCODE_INVALID_PARAMETER_VALUE,
            DripError::BadParamValue { sqlstate, .. } | DripError::BadKeyValue { sqlstate, .. } => {
                *sqlstate
            }
            DripError::ActiveRunExists { .. } => ERRCODE_OBJECT_IN_USE,
            DripError::WrongStatus { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            DripError::PermissionDenied { .. } | DripError::OwnerGone(_) => {
                ERRCODE_INSUFFICIENT_PRIVILEGE
            }
            DripError::InvisibleName(_) => ERRCODE_INVALID_NAME,
            DripError::WaitTimedOut { .. } => ERRCODE_QUERY_CANCELED,
            DripError::NotCompleted { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            DripError::RunBusy(_) => ERRCODE_OBJECT_IN_USE,
            DripError::CatalogVersion { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            DripError::UnschedulableStartAt(_) => ERRCODE_DATETIME_FIELD_OVERFLOW,
            DripError::NullArgument(_) => ERRCODE_NULL_VALUE_NOT_ALLOWED,
            DripError::ActionAssignsKey(_) => ERRCODE_FEATURE_NOT_SUPPORTED,
            DripError::ConcurrentStart(_) => ERRCODE_OBJECT_IN_USE,
            DripError::WaitInOwnTransaction(_) => ERRCODE_INVALID_TRANSACTION_STATE,
            DripError::WaitsForRun { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            DripError::CitusSetup(_) => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            DripError::UndoOnCitus { .. } => ERRCODE_FEATURE_NOT_SUPPORTED,
            DripError::PreviewFailed { sqlstate, .. } => *sqlstate,
            DripError::UndoUnsupported => ERRCODE_INVALID_PARAMETER_VALUE,
            DripError::NoUndoData(_)
            | DripError::UndoPurged { .. }
            | DripError::RevertOfRevert { .. }
            | DripError::AlreadyReverted { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            DripError::Internal(_) => ERRCODE_INTERNAL_ERROR,
        }
    }

    /// A hint telling the user what to do instead.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            DripError::UnknownBackfill(_) => "See SELECT name FROM drip.backfills.".into(),
            DripError::DuplicateBackfill(_) => "Pass replace => true to redefine it.".into(),
            DripError::UnknownRun(_) => "See SELECT id, backfill, status FROM drip.runs.".into(),
            DripError::NotATable(_) => "Backfills walk ordinary or partitioned tables.".into(),
            DripError::TemporaryTable(_) => {
                "A background worker cannot see another session's temporary tables.".into()
            }
            DripError::NoPrimaryKey(_) => {
                "Pass key => ARRAY['column', ...] naming columns covered by a btree index.".into()
            }
            DripError::KeyNotIndexed { relation, key } => {
                format!("Create one, e.g. CREATE INDEX ON {relation} ({key}).")
            }
            DripError::KeyNullable { relation, column } => format!(
                "Rows with a NULL key would be skipped. ALTER TABLE {relation} ALTER COLUMN {column} SET NOT NULL, or choose another key."
            ),
            DripError::UndeclaredParameter { name, .. } => {
                format!("Declare it, e.g. params => '{{\"{name}\": \"integer\"}}'.")
            }
            DripError::PositionalParameter { .. } => {
                "Use named parameters such as $age, declared in params.".into()
            }
            DripError::MultipleStatements { .. } => "Remove the extra statements.".into(),
            DripError::BadAction(_) => "An action is SET <assignments>, DELETE, or one SELECT/INSERT/UPDATE/DELETE statement that reads the batch from drip_batch.".into(),
            DripError::BadParamDeclaration(_) | DripError::UnknownParamType { .. } => {
                "Declare params as {\"name\": \"type\"} or {\"name\": {\"type\": \"type\", \"default\": ..., \"required\": true}}.".into()
            }
            DripError::ValuesNotAnObject(_) => "Pass values like '{\"age\": 30}'.".into(),
            DripError::UnknownParameter { declared, .. } => {
                if declared.is_empty() {
                    "This backfill declares no parameters.".into()
                } else {
                    format!("Declared parameters: {}.", declared.join(", "))
                }
            }
            DripError::MissingParameter(name) => {
                format!("Pass it in the values, e.g. '{{\"{name}\": ...}}'.")
            }
            DripError::ActiveRunExists { run_id, .. } => {
                format!("Stop it first with SELECT drip.stop({run_id}), or wait for it to finish.")
            }
            DripError::WrongStatus { .. } => {
                "pause applies to enqueued or running runs, resume to paused runs, stop to pending, enqueued, running or paused runs, retry to failed or stopped runs, alter to pending, enqueued, running or paused runs, revert to completed, failed or stopped runs.".into()
            }
            DripError::PermissionDenied { owner, .. } => format!(
                "Only its owner ({owner}), members of that role and superusers may control it."
            ),
            DripError::OwnerGone(_) => {
                "Register the backfill again as an existing role.".into()
            }
            DripError::UndoOnCitus { .. } => "Undo data is saved from the batch's own snapshot on this node, which a Citus table's reads do not share. Start without undo; preview the change with drip.preview first.".into(),
            DripError::CitusSetup(_) => "Batches on Citus tables need the coordinator in Citus's metadata, e.g. SELECT citus_set_coordinator_host('<coordinator host>', <port>).".into(),
            DripError::WaitTimedOut { run_id, .. } => {
                format!("Call SELECT drip.wait({run_id}) again, or see drip.progress.")
            }
            DripError::NotCompleted { backfill, .. } => format!(
                "Start or finish it first, e.g. SELECT drip.wait(drip.start('{backfill}'))."
            ),
            DripError::RunBusy(run_id) => format!(
                "Pause it first (SELECT drip.pause({run_id})), then CALL drip.finish({run_id})."
            ),
            DripError::WaitInOwnTransaction(run_id) => format!(
                "Start the run in one statement and wait in the next, outside a transaction block: SELECT drip.start(...); then SELECT drip.wait({run_id});"
            ),
            DripError::WaitsForRun { after, .. } => format!(
                "It starts once run {after} has completed: finish that one first (CALL drip.finish({after})), or let the workers run both."
            ),
            DripError::ConcurrentStart(name) => format!(
                "See SELECT id, status FROM drip.runs WHERE backfill = '{name}'; stop it first or wait for it."
            ),
            DripError::ActionAssignsKey(column) => format!(
                "The key is the run's position: changing {column} moves rows ahead of the cursor (processed twice) or behind it (skipped). Walk another key (key => ARRAY[...]) or write the new values elsewhere."
            ),
            DripError::NullArgument(name) => format!(
                "Pass a value for {name}. The README's reference lists the arguments that accept NULL and what NULL means for each."
            ),
            DripError::UnschedulableStartAt(_) => {
                "Pass a finite time such as now() + interval '1 hour', or NULL to start at once.".into()
            }
            DripError::BadKeyValue { .. } => {
                "Give key values in the key column's type, e.g. from_key => '2024-01-01'; a composite key as a JSON array.".into()
            }
            DripError::CatalogVersion { library, .. } => format!(
                "Run ALTER EXTENSION data_drip UPDATE TO '{library}' in this database (the package was upgraded, the catalog not yet)."
            ),
            DripError::BadOption(_) => "batch_size must be at least 1 and sleep must not be negative.".into(),
            DripError::UndoUnsupported => "The engine cannot know what a statement changed. Write the action as SET <assignments> or DELETE (with a scope), or start without undo.".into(),
            DripError::NoUndoData(_) => "Only runs started with undo => true (or of a backfill registered with it) can be reverted, until drip.purge_undo removes their undo data.".into(),
            DripError::UndoPurged { .. } => "drip.purge_undo or the drip.undo_retention setting (days after a run finished; 0 keeps undo data) removed it. Raise drip.undo_retention to keep the undo data of future runs longer.".into(),
            DripError::RevertOfRevert { of, .. } => format!("To redo run {of}'s changes, start its backfill again."),
            DripError::AlreadyReverted { by, .. } => format!("See SELECT * FROM drip.progress WHERE run_id = {by}; a failed or stopped revert goes on with SELECT drip.retry({by})."),
            DripError::PreviewFailed { hint: Some(hint), .. } => hint.clone(),
            DripError::PreviewFailed { backfill, .. } => format!(
                "drip.preview ran the action of backfill \"{backfill}\" as its owner and rolled it back: nothing was changed. A run would fail the same way."
            ),
            _ => return None,
        })
    }

    /// Detail for the error report, where there is one to pass on.
    pub fn detail(&self) -> Option<String> {
        match self {
            DripError::PreviewFailed { detail, .. } => detail.clone(),
            _ => None,
        }
    }

    /// Raise as a Postgres ERROR. Does not return.
    pub fn raise(&self) -> ! {
        let mut report = ErrorReport::new(self.sqlstate(), self.to_string(), "data_drip");
        if let Some(hint) = self.hint() {
            report = report.set_hint(hint);
        }
        if let Some(detail) = self.detail() {
            report = report.set_detail(detail);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("ereport(ERROR) returned")
    }
}

/// A SQL argument that has no meaning as NULL: its value, or 22004 naming it.
pub fn required<T>(value: Option<T>, argument: &'static str) -> DripResult<T> {
    value.ok_or(DripError::NullArgument(argument))
}

/// Unwrap a domain result inside a SQL function, raising the error as a Postgres ERROR.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for DripResult<T> {
    fn or_raise(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => e.raise(),
        }
    }
}

impl From<pgrx::spi::SpiError> for DripError {
    fn from(e: pgrx::spi::SpiError) -> Self {
        DripError::Internal(format!("SPI: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_user_error_has_a_specific_sqlstate() {
        let cases = [
            DripError::UnknownBackfill("x".into()),
            DripError::DuplicateBackfill("x".into()),
            DripError::UnknownRun(1),
            DripError::NoPrimaryKey("t".into()),
            DripError::MissingParameter("age".into()),
            DripError::WrongStatus {
                action: "pause",
                run_id: 1,
                status: "completed".into(),
            },
            DripError::CitusSetup("coordinator not in metadata".into()),
            DripError::UndoOnCitus {
                relation: "public.users".into(),
                kind: "distributed",
            },
        ];
        for e in cases {
            assert_ne!(e.sqlstate(), PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "{e}");
            assert!(e.hint().is_some(), "{e} has no hint");
        }
    }

    #[test]
    fn undo_refusals_name_the_reason() {
        let e = DripError::UndoOnCitus {
            relation: "public.rates".into(),
            kind: "reference",
        };
        assert_eq!(e.sqlstate(), PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED);
        assert_eq!(
            e.to_string(),
            "undo => true is not supported on public.rates, a Citus reference table"
        );
        assert!(e.hint().is_some());
        let e = DripError::UndoPurged {
            run_id: 3,
            at: "2026-12-05 06:00:00 UTC".into(),
        };
        assert_eq!(
            e.sqlstate(),
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
        );
        assert!(e.to_string().contains("run 3 was purged at 2026-12-05"));
        assert!(e.hint().unwrap().contains("drip.undo_retention"));
    }

    #[test]
    fn wrong_status_names_the_current_status() {
        let e = DripError::WrongStatus {
            action: "resume",
            run_id: 7,
            status: "running".into(),
        };
        assert_eq!(e.to_string(), "cannot resume run 7: it is running");
    }
}
