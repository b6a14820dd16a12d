//! Keyset batching: the SQL that finds a batch's upper bound and the SQL that does its work.
//!
//! A batch is the key range `(low, high]` holding at most `batch_size` keys. The boundary query
//! walks the key's btree index from the cursor; the work statement touches the rows in the range
//! that match the scope. Composite keys use row comparison, which btree indexes serve directly.
//!
//! Everything here is string building from identifiers that were quoted by Postgres
//! (`quote_ident`) and from user fragments that Postgres parses; values are always bound
//! parameters. User fragments are wrapped in parentheses and newlines so a trailing `--` comment
//! cannot swallow our clauses.

use crate::action::ActionKind;

/// The statements of one backfill, ready to execute through SPI.
///
/// Parameter numbering of the work statement: the user's parameters `$1..$P`, then the low
/// bound `$P+1..$P+K`, then the high bound `$P+K+1..$P+2K` (K key columns). The boundary query
/// takes the low bound as `$1..$K` and the batch size as `$K+1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSql {
    /// First batch: no lower bound. Params: `$1` = batch size. Returns the last key and the
    /// number of keys; used for the last (short) batch.
    pub boundary_first: String,
    /// Later batches. Params: low bound `$1..$K`, batch size `$K+1`.
    pub boundary_next: String,
    /// The fast path for a full batch: the `batch size`-th key after the low bound, read by
    /// skipping along the index (no sort). No row means fewer keys are left: then the
    /// `boundary_*` query finds the last one. Same parameters as the matching `boundary_*`.
    pub full_first: String,
    pub full_next: String,
    /// First batch's work (the low-bound parameters are declared but unused).
    pub work_first: String,
    pub work_next: String,
    /// Element mode: the keys of the batch's rows in scope (same parameters as `work_*`).
    pub rows_first: String,
    pub rows_next: String,
    /// Element mode: the action for one row, whose key is passed as the low bound (the high
    /// bound parameters are declared but unused). A statement action reads `drip_row`.
    pub work_row: String,
}

/// Inputs: the quoted relation name, quoted key columns, the number of user parameters, and the
/// already-rewritten scope and action texts.
pub struct Spec<'a> {
    pub relation: &'a str,
    pub keys: &'a [String],
    /// Per key column: its type's text output is the same under any session settings.
    pub plain_text: &'a [bool],
    pub n_params: usize,
    pub scope: Option<&'a str>,
    pub action: &'a str,
    pub kind: &'a ActionKind,
    /// The range has a fixed upper end (`to_key`, or the largest key frozen at start): the
    /// boundary queries take it as extra parameters after the batch size.
    pub capped: bool,
    /// A sub-run of one shard (`distribution::shard_walk`): the batch's keys are also listed,
    /// as the parameter after the high bound, so Citus routes the batch to that shard.
    pub shard_filter: Option<ShardFilter<'a>>,
}

/// `column = ANY($n::array_type)`: the quoted key column and its array type's name.
#[derive(Debug, Clone, Copy)]
pub struct ShardFilter<'a> {
    pub column: &'a str,
    pub array_type: &'a str,
}

fn row(items: &[String]) -> String {
    if items.len() == 1 {
        items[0].clone()
    } else {
        format!("({})", items.join(", "))
    }
}

/// Key columns turned into their canonical text: `drip.key_text` pins the settings that text
/// forms depend on (see `pg::settings::CANONICAL`), so any session reads the value back exactly.
/// A column whose type's text no setting changes (`plain[i]`) is cast with `::text`, which is
/// already canonical and skips key_text's SET clauses (a save and restore of six settings per
/// call, on every batch's boundary query).
fn key_text(keys: &[String], plain: &[bool], qualifier: Option<&str>) -> String {
    keys.iter()
        .enumerate()
        .map(|(i, c)| {
            let col = match qualifier {
                Some(q) => format!("{q}.{c}"),
                None => c.clone(),
            };
            if plain.get(i).copied().unwrap_or(false) {
                format!("{col}::text")
            } else {
                format!("drip.key_text({col})")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn qualified(keys: &[String], qualifier: &str) -> String {
    keys.iter()
        .map(|c| format!("{qualifier}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn params(from: usize, count: usize) -> Vec<String> {
    (from..from + count).map(|i| format!("${i}")).collect()
}

pub fn build(spec: &Spec) -> BatchSql {
    let k = spec.keys.len();
    let keys = row(spec.keys);
    let order_asc = spec.keys.join(", ");
    // Qualified, so ORDER BY sorts by the key and not by the same-named ::text output column.
    let order_desc = spec
        .keys
        .iter()
        .map(|c| format!("drip_keys.{c} DESC"))
        .collect::<Vec<_>>()
        .join(", ");
    let as_text = key_text(spec.keys, spec.plain_text, None);

    // Conditions of the key walk: above the cursor, and not past the cap.
    let walk = |lower: Option<String>, cap: Option<String>| {
        let mut conds = Vec::new();
        if let Some(l) = lower {
            conds.push(format!("{keys} > {l}"));
        }
        if let Some(c) = cap {
            conds.push(format!("{keys} <= {c}"));
        }
        if conds.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conds.join(" AND "))
        }
    };
    // Cap parameters follow the batch size: $2.. for the first batch, $K+2.. later.
    let cap_first = spec.capped.then(|| row(&params(2, k)));
    let cap_next = spec.capped.then(|| row(&params(k + 2, k)));
    let boundary = |lower: Option<String>, limit: String, cap: Option<String>| {
        let filter = walk(lower, cap);
        format!(
            "SELECT {keys_text}, count(*) OVER () FROM (SELECT {order_asc} FROM {rel}{filter} \
             ORDER BY {order_asc} LIMIT {limit}) AS drip_keys ORDER BY {order_desc} LIMIT 1",
            keys_text = key_text(spec.keys, spec.plain_text, Some("drip_keys")),
            rel = spec.relation
        )
    };
    let boundary_first = boundary(None, "$1".into(), cap_first.clone());
    let boundary_next = boundary(
        Some(row(&params(1, k))),
        format!("${}", k + 1),
        cap_next.clone(),
    );
    // Qualified ORDER BY again: the ::text output columns carry the key's names.
    let order_rows = spec
        .keys
        .iter()
        .map(|c| format!("drip_rows.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let full = |lower: Option<String>, n: String, cap: Option<String>| {
        let filter = walk(lower, cap);
        // The key is turned into text once, outside the OFFSET scan.
        format!(
            "SELECT {keys_text} FROM (SELECT {cols} FROM {rel} AS drip_rows{filter} \
             ORDER BY {order_rows} OFFSET {n} - 1 LIMIT 1) AS drip_keys",
            keys_text = key_text(spec.keys, spec.plain_text, Some("drip_keys")),
            cols = qualified(spec.keys, "drip_rows"),
            rel = spec.relation
        )
    };
    let full_first = full(None, "$1".into(), cap_first);
    let full_next = full(Some(row(&params(1, k))), format!("${}", k + 1), cap_next);

    let low = row(&params(spec.n_params + 1, k));
    let high = row(&params(spec.n_params + k + 1, k));
    let scope = spec
        .scope
        .map(|s| format!(" AND (\n{s}\n)"))
        .unwrap_or_default();
    let listed = spec
        .shard_filter
        .map(|f| {
            format!(
                " AND {} = ANY(${}::{})",
                f.column,
                spec.n_params + 2 * k + 1,
                f.array_type
            )
        })
        .unwrap_or_default();
    let range = |first: bool| {
        if first {
            format!("{keys} <= {high}{listed}{scope}")
        } else {
            format!("{keys} > {low} AND {keys} <= {high}{listed}{scope}")
        }
    };
    let action_for = |filter: String, cte_name: &str| match spec.kind {
        ActionKind::Set => {
            format!("UPDATE {} {}\nWHERE {filter}", spec.relation, spec.action)
        }
        ActionKind::Delete => format!("DELETE FROM {} WHERE {filter}", spec.relation),
        ActionKind::Statement { with_at } => {
            let cte = format!(
                "{cte_name} AS (SELECT * FROM {} WHERE {filter})",
                spec.relation
            );
            match with_at {
                Some(at) => format!("{} {cte},\n{}", &spec.action[..*at], &spec.action[*at..]),
                None => format!("WITH {cte}\n{}", spec.action),
            }
        }
    };
    let work = |first: bool| action_for(range(first), "drip_batch");
    // Element mode. Ordered by the key, qualified with the relation's name (an alias would
    // break a scope that names the table).
    let order_rel = spec
        .keys
        .iter()
        .map(|c| format!("{}.{c}", spec.relation))
        .collect::<Vec<_>>()
        .join(", ");
    let rows = |first: bool| {
        format!(
            "SELECT {as_text} FROM {} WHERE {} ORDER BY {order_rel}",
            spec.relation,
            range(first)
        )
    };
    BatchSql {
        boundary_first,
        boundary_next,
        full_first,
        full_next,
        work_first: work(true),
        work_next: work(false),
        rows_first: rows(true),
        rows_next: rows(false),
        work_row: action_for(format!("{keys} = {low}{scope}"), "drip_row"),
    }
}

/// Queries `start` runs once over the key range `(from, to]`: how many keys it holds, the key
/// at an offset (split points of parallel runs), and the largest key (the frozen upper end).
/// Parameters: the `from` bound first when present, then the `to` bound, then (for `nth`) the
/// offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSql {
    pub count: String,
    pub nth: String,
    pub largest: String,
}

pub fn range(relation: &str, keys: &[String], has_from: bool, has_to: bool) -> RangeSql {
    let k = keys.len();
    let key_row = row(keys);
    let mut conds = Vec::new();
    let mut next = 1;
    if has_from {
        conds.push(format!("{key_row} > {}", row(&params(next, k))));
        next += k;
    }
    if has_to {
        conds.push(format!("{key_row} <= {}", row(&params(next, k))));
        next += k;
    }
    let filter = if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    };
    let order = qualified(keys, "drip_rows");
    let desc = keys
        .iter()
        .map(|c| format!("drip_rows.{c} DESC"))
        .collect::<Vec<_>>()
        .join(", ");
    let outer = key_text(keys, &[], Some("drip_keys"));
    RangeSql {
        count: format!("SELECT count(*) FROM {relation} AS drip_rows{filter}"),
        nth: format!(
            "SELECT {outer} FROM (SELECT {order} FROM {relation} AS drip_rows{filter} \
             ORDER BY {order} OFFSET ${next} LIMIT 1) AS drip_keys"
        ),
        largest: format!(
            "SELECT {outer} FROM (SELECT {order} FROM {relation} AS drip_rows \
             ORDER BY {desc} LIMIT 1) AS drip_keys"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_key_set_action() {
        let keys = vec!["id".to_string()];
        let sql = build(&Spec {
            relation: "public.users",
            keys: &keys,
            plain_text: &[false],
            n_params: 1,
            scope: Some("age = $1"),
            action: "SET email = lower(email)",
            kind: &ActionKind::Set,
            capped: false,
            shard_filter: None,
        });
        assert_eq!(
            sql.boundary_next,
            "SELECT drip.key_text(drip_keys.id), count(*) OVER () FROM (SELECT id FROM public.users \
             WHERE id > $1 ORDER BY id LIMIT $2) AS drip_keys ORDER BY drip_keys.id DESC LIMIT 1"
        );
        assert_eq!(
            sql.full_next,
            "SELECT drip.key_text(drip_keys.id) FROM (SELECT drip_rows.id FROM public.users AS drip_rows \
             WHERE id > $1 ORDER BY drip_rows.id OFFSET $2 - 1 LIMIT 1) AS drip_keys"
        );
        assert_eq!(
            sql.work_next,
            "UPDATE public.users SET email = lower(email)\nWHERE id > $2 AND id <= $3 AND (\nage = $1\n)"
        );
        assert_eq!(
            sql.work_first,
            "UPDATE public.users SET email = lower(email)\nWHERE id <= $3 AND (\nage = $1\n)"
        );
        assert_eq!(
            sql.work_row,
            "UPDATE public.users SET email = lower(email)\nWHERE id = $2 AND (\nage = $1\n)"
        );
        assert_eq!(
            sql.rows_next,
            "SELECT drip.key_text(id) FROM public.users WHERE id > $2 AND id <= $3 AND (\nage = $1\n) ORDER BY public.users.id"
        );
    }

    #[test]
    fn shard_filter_lists_the_batch_keys() {
        let keys = vec!["id".to_string()];
        let sql = build(&Spec {
            relation: "public.users",
            keys: &keys,
            plain_text: &[true],
            n_params: 1,
            scope: Some("age = $1"),
            action: "SET n = n + 1",
            kind: &ActionKind::Set,
            capped: true,
            shard_filter: Some(ShardFilter {
                column: "id",
                array_type: "bigint[]",
            }),
        });
        assert_eq!(
            sql.work_next,
            "UPDATE public.users SET n = n + 1\nWHERE id > $2 AND id <= $3 AND id = ANY($4::bigint[]) AND (\nage = $1\n)"
        );
        assert!(sql
            .rows_first
            .contains("WHERE id <= $3 AND id = ANY($4::bigint[]) AND"));
        // One row at a time needs no list: its key routes it.
        assert!(!sql.work_row.contains("ANY"));
    }

    #[test]
    fn plain_text_keys_skip_key_text() {
        // Integers and text need no pinned settings; a timestamp next to them does.
        let keys = vec!["id".to_string(), "at".to_string()];
        let sql = build(&Spec {
            relation: "t",
            keys: &keys,
            plain_text: &[true, false],
            n_params: 0,
            scope: None,
            action: "SET x = 1",
            kind: &ActionKind::Set,
            capped: false,
            shard_filter: None,
        });
        assert!(sql
            .full_next
            .starts_with("SELECT drip_keys.id::text, drip.key_text(drip_keys.at) FROM"));
        assert!(sql.boundary_first.starts_with(
            "SELECT drip_keys.id::text, drip.key_text(drip_keys.at), count(*) OVER ()"
        ));
    }

    #[test]
    fn composite_key_delete_and_statement() {
        let keys = vec!["a".to_string(), "\"B\"".to_string()];
        let sql = build(&Spec {
            relation: "t",
            keys: &keys,
            plain_text: &[false, false],
            n_params: 0,
            scope: None,
            action: "DELETE",
            kind: &ActionKind::Delete,
            capped: true,
            shard_filter: None,
        });
        assert_eq!(
            sql.work_next,
            "DELETE FROM t WHERE (a, \"B\") > ($1, $2) AND (a, \"B\") <= ($3, $4)"
        );
        // Capped: the upper end follows the batch size.
        assert!(sql.boundary_next.contains(
            "WHERE (a, \"B\") > ($1, $2) AND (a, \"B\") <= ($4, $5) ORDER BY a, \"B\" LIMIT $3"
        ));
        assert!(
            sql.full_first
                .contains("WHERE (a, \"B\") <= ($2, $3) ORDER BY"),
            "{}",
            sql.full_first
        );
        assert!(sql
            .boundary_next
            .ends_with("ORDER BY drip_keys.a DESC, drip_keys.\"B\" DESC LIMIT 1"));

        let action = "WITH x AS (SELECT 1) INSERT INTO log SELECT a FROM drip_batch";
        let sql = build(&Spec {
            relation: "t",
            keys: &keys[..1],
            plain_text: &[false],
            n_params: 0,
            scope: None,
            action,
            kind: &ActionKind::Statement { with_at: Some(4) },
            capped: false,
            shard_filter: None,
        });
        let r = range("t", &keys, true, true);
        assert_eq!(
            r.nth,
            "SELECT drip.key_text(drip_keys.a), drip.key_text(drip_keys.\"B\") FROM (SELECT drip_rows.a, \
             drip_rows.\"B\" FROM t AS drip_rows WHERE (a, \"B\") > ($1, $2) AND (a, \"B\") <= ($3, $4) \
             ORDER BY drip_rows.a, drip_rows.\"B\" OFFSET $5 LIMIT 1) AS drip_keys"
        );
        assert_eq!(
            range("t", &keys[..1], false, false).count,
            "SELECT count(*) FROM t AS drip_rows"
        );
        assert_eq!(
            sql.work_first,
            "WITH drip_batch AS (SELECT * FROM t WHERE a <= $2),\n x AS (SELECT 1) INSERT INTO log SELECT a FROM drip_batch"
        );
    }
}
