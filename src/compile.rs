//! Compiling a definition: resolve the relation, key and parameter types through the catalogs,
//! rewrite `$name` placeholders, build the keyset statements and let Postgres parse and plan
//! them. `register` calls this to validate; a runner calls it to get the statements it executes.

use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use serde_json::Value;

use crate::action::{self, ActionKind};
use crate::error::{DripError, DripResult};
use crate::keyset::{self, BatchSql};
use crate::params::{self, ParamDecl};
use crate::pg::settings;
use crate::pg::types::{self, ResolvedType};

#[derive(Debug, Clone)]
pub struct KeyColumn {
    pub name: String,
    pub type_oid: pg_sys::Oid,
}

/// Everything needed to execute batches of one definition.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// Schema-qualified, quoted relation name.
    pub relation: String,
    pub keys: Vec<KeyColumn>,
    pub params: Vec<(ParamDecl, ResolvedType)>,
    pub kind: ActionKind,
    /// The action as stored (trailing semicolon removed).
    pub action_text: String,
    /// The scope with placeholders rewritten to positions, if any.
    pub scope_sql: Option<String>,
    pub sql: BatchSql,
}

/// The parts of a definition that compile needs.
pub struct Source<'a> {
    pub relation_oid: pg_sys::Oid,
    pub action: &'a str,
    pub scope: Option<&'a str>,
    pub params: &'a Value,
    pub key: Option<&'a [String]>,
    /// The run walks a range with a fixed upper end (see `keyset::Spec::capped`).
    pub capped: bool,
    /// A sub-run of one shard: batches list their keys (see `keyset::Spec::shard_filter`).
    pub sharded: bool,
}

struct RelationInfo {
    kind: String,
    persistence: String,
    quoted: String,
    display: String,
}

fn relation_info(oid: pg_sys::Oid) -> DripResult<RelationInfo> {
    let row = Spi::connect(|c| {
        let t = c.select(
            "SELECT c.relkind::text, c.relpersistence::text, \
                    quote_ident(n.nspname) || '.' || quote_ident(c.relname), c.oid::regclass::text \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = $1",
            None,
            &[oid.into()],
        )?;
        let mut out = None;
        for r in t {
            out = Some((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<String>(3)?.unwrap_or_default(),
                r.get::<String>(4)?.unwrap_or_default(),
            ));
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    })?;
    let (kind, persistence, quoted, display) = row.ok_or_else(|| DripError::BadSql {
        what: "relation",
        message: format!("relation with OID {} does not exist", oid.to_u32()),
        sqlstate: PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
    })?;
    Ok(RelationInfo {
        kind,
        persistence,
        quoted,
        display,
    })
}

fn primary_key(oid: pg_sys::Oid) -> DripResult<Option<Vec<String>>> {
    Ok(Spi::get_one_with_args::<Vec<String>>(
        "SELECT array_agg(a.attname::text ORDER BY k.ord) \
         FROM pg_catalog.pg_index i \
         CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
         JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
         WHERE i.indrelid = $1 AND i.indisprimary",
        &[oid.into()],
    )?)
}

/// Resolve key columns: (attnum, type, not null) for each name, in order.
fn key_columns(
    rel: &RelationInfo,
    oid: pg_sys::Oid,
    names: &[String],
) -> DripResult<Vec<(i16, KeyColumn, bool)>> {
    let mut out = Vec::new();
    for name in names {
        let row = Spi::get_three_with_args::<i16, pg_sys::Oid, bool>(
            "SELECT a.attnum, a.atttypid, a.attnotnull FROM pg_catalog.pg_attribute a \
             WHERE a.attrelid = $1 AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
            &[oid.into(), name.as_str().into()],
        );
        match row {
            Ok((Some(attnum), Some(typ), Some(notnull))) => out.push((
                attnum,
                KeyColumn {
                    name: name.clone(),
                    type_oid: typ,
                },
                notnull,
            )),
            Ok(_) | Err(pgrx::spi::SpiError::InvalidPosition) => {
                return Err(DripError::UnknownKeyColumn {
                    relation: rel.display.clone(),
                    column: name.clone(),
                })
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

fn key_is_indexed(oid: pg_sys::Oid, attnums: &[i16]) -> DripResult<bool> {
    Ok(Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_index i \
           JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid \
           JOIN pg_catalog.pg_am am ON am.oid = ic.relam \
          WHERE i.indrelid = $1 AND am.amname = 'btree' AND i.indpred IS NULL AND i.indisvalid \
            AND (SELECT array_agg(k.attnum ORDER BY k.ord) FROM unnest(i.indkey::int2[]) \
                   WITH ORDINALITY AS k(attnum, ord) WHERE k.ord <= $3) = $2)",
        &[
            oid.into(),
            attnums.to_vec().into(),
            (attnums.len() as i64).into(),
        ],
    )?
    .unwrap_or(false))
}

fn quote_ident(name: &str) -> String {
    pgrx::spi::quote_identifier(name)
}

/// Resolve, rewrite and build. Does not yet ask Postgres to parse the statements: see `validate`.
pub fn compile(src: &Source) -> DripResult<Compiled> {
    let rel = relation_info(src.relation_oid)?;
    if !matches!(rel.kind.as_str(), "r" | "p") {
        return Err(DripError::NotATable(rel.display));
    }
    if rel.persistence == "t" {
        return Err(DripError::TemporaryTable(rel.display));
    }

    // Parameters, in positional order.
    let decls = params::parse_declarations(src.params)?;
    let mut resolved = Vec::with_capacity(decls.len());
    for d in decls {
        let t = types::resolve(&d.type_name).ok_or_else(|| DripError::UnknownParamType {
            param: d.name.clone(),
            type_name: d.type_name.clone(),
        })?;
        resolved.push((d, t));
    }
    let decls_only: Vec<ParamDecl> = resolved.iter().map(|(d, _)| d.clone()).collect();
    let positions = params::positions(&decls_only);

    // Key: explicit or the primary key; every column must exist, be NOT NULL and lead a btree.
    let names: Vec<String> = match src.key {
        Some(k) => {
            let mut seen = std::collections::BTreeSet::new();
            if k.is_empty() || !k.iter().all(|c| !c.is_empty() && seen.insert(c.clone())) {
                return Err(DripError::BadKey);
            }
            k.to_vec()
        }
        None => primary_key(src.relation_oid)?
            .ok_or_else(|| DripError::NoPrimaryKey(rel.display.clone()))?,
    };
    let cols = key_columns(&rel, src.relation_oid, &names)?;
    let attnums: Vec<i16> = cols.iter().map(|(a, _, _)| *a).collect();
    let key_list = names
        .iter()
        .map(|n| quote_ident(n))
        .collect::<Vec<_>>()
        .join(", ");
    if !key_is_indexed(src.relation_oid, &attnums)? {
        return Err(DripError::KeyNotIndexed {
            relation: rel.display.clone(),
            key: key_list,
        });
    }
    if let Some((_, c, _)) = cols.iter().find(|(_, _, notnull)| !notnull) {
        return Err(DripError::KeyNullable {
            relation: rel.display.clone(),
            column: c.name.clone(),
        });
    }
    let keys: Vec<KeyColumn> = cols.into_iter().map(|(_, c, _)| c).collect();

    // Scope and action: lex, check, rewrite placeholders.
    let rewrite = |what: &'static str, f: &action::Fragment| -> DripResult<String> {
        crate::placeholders::rewrite(&f.text, &f.scan, &positions).map_err(|unknown| {
            DripError::UndeclaredParameter {
                what,
                name: unknown[0].clone(),
            }
        })
    };
    let scope = match src.scope.filter(|s| !s.trim().is_empty()) {
        Some(s) => Some(rewrite("scope", &action::fragment("scope", s)?)?),
        None => None,
    };
    let action_frag = action::fragment("action", src.action)?;
    let kind = action::classify(&action_frag)?;
    let action_sql = rewrite("action", &action_frag)?;
    // The splice point of a WITH statement moved if placeholders before it were rewritten; they
    // cannot be, since it is the first word, so the offset still holds.

    let quoted_keys: Vec<String> = keys.iter().map(|k| quote_ident(&k.name)).collect();
    let plain_text: Vec<bool> = keys
        .iter()
        .map(|k| settings::text_is_canonical(k.type_oid))
        .collect();
    let shard_filter = if src.sharded {
        match (quoted_keys.as_slice(), keys.as_slice()) {
            ([column], [key]) => crate::distribution::shard_walk::array_type(key.type_oid)
                .map(|t| (column.clone(), t.to_string())),
            _ => None,
        }
        .ok_or_else(|| DripError::Internal("a shard sub-run needs a single integer key".into()))
        .map(Some)?
    } else {
        None
    };
    let sql = keyset::build(&keyset::Spec {
        relation: &rel.quoted,
        keys: &quoted_keys,
        plain_text: &plain_text,
        n_params: resolved.len(),
        scope: scope.as_deref(),
        action: &action_sql,
        kind: &kind,
        capped: src.capped,
        shard_filter: shard_filter
            .as_ref()
            .map(|(column, array_type)| keyset::ShardFilter { column, array_type }),
    });
    Ok(Compiled {
        relation: rel.quoted,
        keys,
        params: resolved,
        kind,
        action_text: action_frag.text,
        scope_sql: scope,
        sql,
    })
}

impl Compiled {
    /// A shard sub-run's lookup of the next key (single integer key): the smallest key above
    /// `$1` (or the smallest of all), as bigint.
    pub fn next_key_sql(&self, after: bool) -> String {
        let column = self
            .keys
            .first()
            .map(|k| quote_ident(&k.name))
            .unwrap_or_default();
        let filter = if after {
            format!(" WHERE {column} > $1")
        } else {
            String::new()
        };
        format!(
            "SELECT min({column})::bigint FROM {}{filter}",
            self.relation
        )
    }

    /// Bound arguments for a stored (canonical) key, one per key column.
    pub fn key_args(&self, key: &[String]) -> DripResult<Vec<pgrx::datum::DatumWithOid<'static>>> {
        self.keys
            .iter()
            .zip(key)
            .map(|(col, v)| types::key_datum(col.type_oid, v, &col.name))
            .collect()
    }

    /// Ask Postgres to parse, analyze and plan the scope, the work statement and the boundary
    /// query, with the declared parameter types (values NULL). Nothing is executed.
    pub fn validate(&self, row_mode: bool) -> DripResult<()> {
        let null_params: Vec<pg_sys::Oid> = self.params.iter().map(|(_, t)| t.oid).collect();
        let key_types: Vec<pg_sys::Oid> = self.keys.iter().map(|k| k.type_oid).collect();

        if let Some(text) = &self.scope_sql {
            explain(
                "scope",
                &format!("SELECT 1 FROM {} WHERE (\n{text}\n)", self.relation),
                &null_params,
            )?;
        }
        let mut work_types = null_params.clone();
        work_types.extend(&key_types);
        work_types.extend(&key_types);
        if row_mode {
            explain("action", &self.sql.work_row, &work_types)?;
            explain("scope", &self.sql.rows_next, &work_types)?;
        } else {
            explain("action", &self.sql.work_next, &work_types)?;
            explain("action", &self.sql.work_first, &work_types)?;
        }
        // A SET action that changes a key moves rows ahead of the cursor (done twice) or behind
        // it (skipped). Parsed, so `SET (a, at) = (..)` and quoted names are caught too.
        if matches!(self.kind, ActionKind::Set) {
            let assigned = crate::pg::parse::update_target_columns(&self.sql.work_first);
            if let Some(k) = self.keys.iter().find(|k| assigned.contains(&k.name)) {
                return Err(DripError::ActionAssignsKey(k.name.clone()));
            }
        }
        let mut boundary_types = key_types.clone();
        boundary_types.push(pg_sys::INT8OID);
        explain("key", &self.sql.boundary_next, &boundary_types)?;
        Ok(())
    }
}

/// Check a throttle query: one statement returning rows (its first column is read as a
/// boolean), no parameters, planned by Postgres as the caller. Returns the text to store.
pub fn throttle_query(q: &str) -> DripResult<String> {
    let f = action::fragment("throttle_query", q)?;
    if let Some(p) = f.scan.placeholders.first() {
        return Err(DripError::UndeclaredParameter {
            what: "throttle_query",
            name: p.name.clone(),
        });
    }
    let first = f
        .scan
        .words
        .first()
        .map(|w| w.text.to_ascii_lowercase())
        .unwrap_or_default();
    if !matches!(first.as_str(), "select" | "with" | "values" | "table") {
        return Err(DripError::BadSql {
            what: "throttle_query",
            message: "it must be a query (SELECT ...) returning a boolean".into(),
            sqlstate: PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
        });
    }
    explain("throttle_query", &f.text, &[])?;
    // One boolean column. LIMIT 0 plans and opens the query without producing a row.
    let shape = PgTryBuilder::new(|| {
        Spi::connect(|c| {
            let t = c.select(
                &format!("SELECT * FROM (\n{}\n) AS drip_throttle LIMIT 0", f.text),
                None,
                &[],
            )?;
            let n = t.columns()?;
            let mut types = Vec::with_capacity(n);
            for i in 1..=n {
                types.push(t.column_type_oid(i)?.value());
            }
            Ok::<_, pgrx::spi::SpiError>(types)
        })
        .map_err(DripError::from)
    })
    .catch_others(|e| match e {
        CaughtError::PostgresError(r)
        | CaughtError::ErrorReport(r)
        | CaughtError::RustPanic { ereport: r, .. } => Err(DripError::BadSql {
            what: "throttle_query",
            message: r.message().to_string(),
            sqlstate: r.sql_error_code(),
        }),
    })
    .execute()?;
    if shape != [pg_sys::BOOLOID] {
        return Err(DripError::BadSql {
            what: "throttle_query",
            message: format!(
                "it must return one boolean column, not {} column(s){}",
                shape.len(),
                if shape.len() == 1 {
                    " of another type"
                } else {
                    ""
                }
            ),
            sqlstate: PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
        });
    }
    Ok(f.text)
}

/// EXPLAIN `sql` with NULL arguments of the given types, turning any error into `BadSql`.
fn explain(what: &'static str, sql: &str, arg_types: &[pg_sys::Oid]) -> DripResult<()> {
    let stmt = format!("EXPLAIN {sql}");
    PgTryBuilder::new(|| {
        let args: Vec<pgrx::datum::DatumWithOid> = arg_types
            .iter()
            .map(|t| pgrx::datum::DatumWithOid::null_oid(*t))
            .collect();
        Spi::connect_mut(|c| c.update(stmt.as_str(), None, &args).map(|_| ()))
            .map_err(DripError::from)
    })
    .catch_others(|e| match e {
        CaughtError::PostgresError(r)
        | CaughtError::ErrorReport(r)
        | CaughtError::RustPanic { ereport: r, .. } => Err(DripError::BadSql {
            what,
            message: r.message().to_string(),
            sqlstate: r.sql_error_code(),
        }),
    })
    .execute()
}

/// The definition copy kept in `drip.runs.definition` (a `drip.backfills` row as JSON).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Definition {
    pub name: String,
    pub relation: String,
    pub relation_oid: u32,
    pub action: String,
    pub scope: Option<String>,
    #[serde(default)]
    pub params: Value,
    pub key: Vec<String>,
    pub max_attempts: i32,
    /// The owner role; scope and action run with its privileges.
    pub owner_oid: u32,
    /// The owner's name (regrole text), to check `owner_oid` against.
    #[serde(default)]
    pub owner: String,
    /// search_path of the registering session, for the scope and action.
    #[serde(default)]
    pub search_path: String,
    /// `batch` or `row` (element mode).
    #[serde(default = "default_mode")]
    pub mode: String,
    #[serde(default = "default_on_row_error")]
    pub on_row_error: String,
}

fn default_mode() -> String {
    "batch".into()
}

fn default_on_row_error() -> String {
    "fail".into()
}

impl Definition {
    /// Read a definition copy and check its stored oids. After a dump and restore (or in another
    /// cluster) the oids name other objects or none: an oid is used only while it still names
    /// the relation (schema-qualified) and role the definition was made for; otherwise the
    /// object of that name now is used.
    pub fn from_json(v: &Value) -> DripResult<Definition> {
        let mut def: Definition = serde_json::from_value(v.clone())
            .map_err(|e| DripError::Internal(format!("corrupt definition copy: {e}")))?;
        def.recheck_oids()?;
        Ok(def)
    }

    fn recheck_oids(&mut self) -> DripResult<()> {
        let (relation, owner) = Spi::get_two_with_args::<pg_sys::Oid, pg_sys::Oid>(
            "SELECT coalesce((SELECT c.oid FROM pg_catalog.pg_class c \
                                JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                               WHERE c.oid = $1 \
                                 AND pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname) = $2), \
                             pg_catalog.to_regclass($2)::oid), \
                    coalesce((SELECT r.oid FROM pg_catalog.pg_roles r \
                               WHERE r.oid = $3 AND ($4 = '' OR pg_catalog.quote_ident(r.rolname) = $4)), \
                             (SELECT r.oid FROM pg_catalog.pg_roles r WHERE pg_catalog.quote_ident(r.rolname) = $4))",
            &[
                pg_sys::Oid::from(self.relation_oid).into(),
                self.relation.as_str().into(),
                pg_sys::Oid::from(self.owner_oid).into(),
                self.owner.as_str().into(),
            ],
        )?;
        // Neither the stored oid nor the name: the relation is gone (never another one's oid).
        self.relation_oid = relation.map_or(0, |o| o.to_u32());
        // No such role: owner checks then fail with "owner role no longer exists".
        self.owner_oid = owner.map_or(0, |o| o.to_u32());
        Ok(())
    }

    pub fn owner(&self) -> pg_sys::Oid {
        pg_sys::Oid::from(self.owner_oid)
    }

    pub fn compile(&self) -> DripResult<Compiled> {
        self.compile_capped(false)
    }

    /// Compile for a run whose range has a fixed upper end.
    pub fn compile_capped(&self, capped: bool) -> DripResult<Compiled> {
        self.compile_for(capped, false)
    }

    /// Compile for a sub-run of one shard (`distribution::shard_walk`).
    pub fn compile_shard(&self, capped: bool) -> DripResult<Compiled> {
        self.compile_for(capped, true)
    }

    fn compile_for(&self, capped: bool, sharded: bool) -> DripResult<Compiled> {
        compile(&Source {
            relation_oid: pg_sys::Oid::from(self.relation_oid),
            action: &self.action,
            scope: self.scope.as_deref(),
            params: &self.params,
            key: Some(&self.key),
            capped,
            sharded,
        })
    }
}
