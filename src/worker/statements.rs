//! Prepared statements kept for the life of a runner: each batch executes the same dozen
//! statements, and parsing and planning them every time costs more than running them.
//!
//! Plans are prepared on first use with the argument types of that call and kept across
//! transactions (`SPI_keepplan`); Postgres revalidates them when the objects they use change.

use std::collections::HashMap;

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::PgOid;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiResult, SpiTupleTable};

#[derive(Default)]
pub struct StatementCache {
    plans: HashMap<String, OwnedPreparedStatement>,
}

impl StatementCache {
    /// Execute `sql` (preparing it on first use) and hand the result to `f`.
    pub fn run<R>(
        &mut self,
        sql: &str,
        args: &[DatumWithOid],
        f: impl FnOnce(SpiTupleTable) -> SpiResult<R>,
    ) -> SpiResult<R> {
        Spi::connect_mut(|c| {
            if !self.plans.contains_key(sql) {
                let types: Vec<PgOid> = args.iter().map(|a| PgOid::from(a.oid())).collect();
                let plan = c.prepare_mut(sql, &types)?.keep();
                self.plans.insert(sql.to_string(), plan);
            }
            let plan = &self.plans[sql];
            let t = c.update(plan, None, args)?;
            f(t)
        })
    }

    /// Execute `sql` for its effect; returns the number of rows it processed.
    pub fn exec(&mut self, sql: &str, args: &[DatumWithOid]) -> SpiResult<i64> {
        self.run(sql, args, |t| Ok(t.len() as i64))
    }
}
