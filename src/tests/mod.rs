//! Tests that need Postgres.
//!
//! - `#[pg_test]` functions run inside a transaction that is rolled back: good for validation.
//! - `live` tests are plain `#[test]`s that boot the same test cluster, then drive it through an
//!   autocommit client, so the background workers see committed data and really run.

#[cfg(test)]
mod live;

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// Does nothing; live tests call it to boot the test cluster.
    #[pg_test]
    fn boot() {}

    #[pg_test]
    fn register_stores_the_canonical_definition() {
        Spi::run("CREATE TABLE t_reg (id int PRIMARY KEY, v int)").unwrap();
        let params = Spi::get_one::<pgrx::JsonB>(
            "SELECT params FROM drip.register('r1', 't_reg', 'SET v = $x', params => '{\"x\": \"int\"}')",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            params.0,
            serde_json::json!({"x": {"type": "int", "required": false}})
        );
        let key = Spi::get_one::<Vec<String>>("SELECT key FROM drip.backfills WHERE name = 'r1'")
            .unwrap()
            .unwrap();
        assert_eq!(key, vec!["id".to_string()]);
    }

    #[pg_test]
    fn start_copies_the_definition_and_applies_defaults() {
        Spi::run("CREATE TABLE t_def (id int PRIMARY KEY, v text)").unwrap();
        Spi::run(
            "SELECT drip.register('d1', 't_def', 'SET v = $dom', \
             params => '{\"dom\": {\"type\": \"text\", \"default\": \"example.com\"}}')",
        )
        .unwrap();
        let id = Spi::get_one::<i64>("SELECT drip.start('d1', note => 'hello')")
            .unwrap()
            .unwrap();
        let (params, status) = Spi::get_two_with_args::<pgrx::JsonB, String>(
            "SELECT params, status FROM drip.runs WHERE id = $1",
            &[id.into()],
        )
        .unwrap();
        assert_eq!(params.unwrap().0, serde_json::json!({"dom": "example.com"}));
        assert_eq!(status.as_deref(), Some("enqueued"));
        // Redefining the backfill does not change the run's copy.
        Spi::run("SELECT drip.register('d1', 't_def', 'DELETE', replace => true)").unwrap();
        let action = Spi::get_one_with_args::<String>(
            "SELECT definition->>'action' FROM drip.runs WHERE id = $1",
            &[id.into()],
        )
        .unwrap();
        assert_eq!(action.as_deref(), Some("SET v = $dom"));
    }
}
