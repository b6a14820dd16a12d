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

    /// The hash a shard sub-run computes for its keys is PostgreSQL's own hashint8 (which Citus
    /// uses to place integer values), for every kind of value: small, negative, past 32 bits,
    /// and the extremes.
    #[pg_test]
    fn shard_walk_hash_is_hashint8() {
        use crate::distribution::shard_walk::int_key_hash;
        let mut values: Vec<i64> = (-5000..5000).collect();
        for shift in 0..63 {
            values.push(1i64 << shift);
            values.push(-(1i64 << shift));
            values.push((1i64 << shift) + 12345);
        }
        values.extend([
            i64::MIN,
            i64::MAX,
            i64::MIN + 1,
            i64::MAX - 1,
            i32::MIN as i64,
            i32::MAX as i64,
        ]);
        let expected = Spi::get_one_with_args::<Vec<i32>>(
            "SELECT array_agg(hashint8(v) ORDER BY o) FROM unnest($1::bigint[]) WITH ORDINALITY AS u(v, o)",
            &[values.clone().into()],
        )
        .unwrap()
        .unwrap();
        let ours: Vec<i32> = values.iter().map(|v| int_key_hash(*v)).collect();
        assert_eq!(ours, expected);
        // Narrower integer types hash alike (Citus uses the column type's own hash function).
        let narrow = Spi::get_one::<bool>(
            "SELECT bool_and(hashint4(v::int4) = hashint8(v) AND (v NOT BETWEEN -32768 AND 32767 OR hashint2(v::int2) = hashint8(v))) \
             FROM generate_series(-100000, 100000) v",
        )
        .unwrap()
        .unwrap();
        assert!(narrow);
    }

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
