//! "Not yours" and "not there" answer alike: every drip.* function that takes a run id, called
//! by a role that may not see the run, answers exactly as for a run that does not exist (42704
//! `run N does not exist`, no backfill name, no owner). The calls are generated from pg_proc,
//! so a new function or a new run-id argument is covered automatically. And the dashboard's
//! routes answer such a run 404, like a missing one.

mod common;

use std::time::Duration;

use common::http::Http;
use common::{Server, TestDb};

/// One answer: SQLSTATE, message, detail and hint (or "ok").
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    code: String,
    message: String,
    detail: String,
    hint: String,
}

async fn answer(c: &tokio_postgres::Client, sql: &str) -> Answer {
    match c.batch_execute(sql).await {
        Ok(()) => Answer {
            code: "ok".into(),
            message: String::new(),
            detail: String::new(),
            hint: String::new(),
        },
        Err(e) => {
            let db = e
                .as_db_error()
                .unwrap_or_else(|| panic!("{sql}: not a database error: {e}"));
            Answer {
                code: db.code().code().to_string(),
                message: db.message().to_string(),
                detail: db.detail().unwrap_or("").to_string(),
                hint: db.hint().unwrap_or("").to_string(),
            }
        }
    }
}

/// Every input argument of a drip.* routine that names a run: (routine, kind, argument, the
/// other required arguments as `name => value` with a sample value).
async fn run_id_routines(s: &tokio_postgres::Client) -> Vec<(String, String, String, Vec<String>)> {
    let rows = s
        .query(
            "WITH args AS (
               SELECT p.oid, p.proname::text AS proname, p.prokind::text AS kind, p.pronargs,
                      p.pronargdefaults, a.name, a.typ, a.ord,
                      row_number() OVER (PARTITION BY p.oid ORDER BY a.ord) AS in_pos
                 FROM pg_proc p
                 CROSS JOIN LATERAL unnest(p.proargnames,
                                           coalesce(p.proargmodes, array_fill('i'::\"char\", ARRAY[p.pronargs])),
                                           coalesce(p.proallargtypes, p.proargtypes::oid[]))
                      WITH ORDINALITY AS a(name, mode, typ, ord)
                WHERE p.pronamespace = 'drip'::regnamespace AND a.mode IN ('i', 'b', 'v'))
             SELECT t.proname, t.kind, t.name,
                    coalesce((SELECT array_agg(format('%I => %s', o.name,
                                   CASE o.name WHEN 'name' THEN quote_literal('v_bobs')
                                               WHEN 'params' THEN quote_literal('{\"step\": 1}')
                                               ELSE format('NULL::%s', o.typ::regtype) END)
                                   ORDER BY o.ord)
                                FROM args o
                               WHERE o.oid = t.oid AND o.name <> t.name
                                 AND (o.in_pos <= o.pronargs - o.pronargdefaults
                                      OR o.name IN ('name', 'params'))), '{}')
               FROM args t
              WHERE t.typ = 'bigint'::regtype AND t.name IN ('run_id', 'after')
              ORDER BY 1, 3",
            &[],
        )
        .await
        .expect("pg_proc");
    rows.iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

fn call(proname: &str, kind: &str, arg: &str, others: &[String], id: i64) -> String {
    let mut args = others.to_vec();
    args.push(format!("{arg} => {id}"));
    let verb = if kind == "p" { "CALL" } else { "SELECT" };
    format!("{verb} drip.{proname}({})", args.join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_the_caller_may_not_see_answers_like_a_missing_one() {
    let db = TestDb::new("v_vis").await;
    db.slow_backfill(&db.alice, "alice_secret_payroll", 2000, 10, "200ms")
        .await;
    db.slow_backfill(&db.bob, "v_bobs", 10, 10, "0").await;
    let run = db
        .start(&db.alice, "alice_secret_payroll", r#"{"step": 1}"#)
        .await;
    let alice = db.as_role(&db.alice).await;
    alice
        .execute("SELECT drip.pause($1)", &[&run])
        .await
        .expect("pause");
    let missing = run + 1_000_000;

    let s = db.superuser().await;
    let routines = run_id_routines(&s).await;
    let names: Vec<&str> = routines.iter().map(|r| r.0.as_str()).collect();
    for expected in [
        "pause",
        "resume",
        "stop",
        "retry",
        "alter",
        "wait",
        "retry_rows",
        "finish",
        "start",
    ] {
        assert!(
            names.contains(&expected),
            "pg_proc lists drip.{expected} with a run id: {names:?}"
        );
    }

    // Only the run's own mention ("run 7") is put aside when comparing two answers.
    let neutral = |text: &str, id: i64| text.replace(&format!("run {id}"), "run N");
    let bob = db.as_role(&db.bob).await;
    for (proname, kind, arg, others) in &routines {
        let hidden = answer(&bob, &call(proname, kind, arg, others, run)).await;
        let absent = answer(&bob, &call(proname, kind, arg, others, missing)).await;
        let what = format!("drip.{proname}({arg} => ...) as bob");
        assert_ne!(hidden.code, "ok", "{what} on alice's run succeeded");
        assert_eq!(
            Answer {
                message: neutral(&hidden.message, run),
                detail: neutral(&hidden.detail, run),
                hint: neutral(&hidden.hint, run),
                code: hidden.code.clone(),
            },
            Answer {
                message: neutral(&absent.message, missing),
                detail: neutral(&absent.detail, missing),
                hint: neutral(&absent.hint, missing),
                code: absent.code.clone(),
            },
            "{what}: alice's run and a missing run must answer alike"
        );
        let all = format!("{hidden:?}");
        assert!(
            !all.contains("alice_secret_payroll") && !all.contains(&db.alice),
            "{what} names the backfill or its owner: {all}"
        );
        // The user-facing functions say so in the documented words.
        if !proname.starts_with("finish_") && !proname.ends_with("_internal") {
            assert_eq!(hidden.code, "42704", "{what}: {hidden:?}");
            assert_eq!(
                hidden.message,
                format!("run {run} does not exist"),
                "{what}"
            );
        }
    }

    // Whoever may see the run still gets the real reason.
    let again = answer(&alice, &format!("SELECT drip.pause({run})")).await;
    assert_eq!(again.code, "55000", "{again:?}");
    assert_eq!(db.status(run).await, "paused", "bob changed nothing");

    // The dashboard: bob's view of alice's run is a missing run's (404, same text).
    let server = Server::start(&db.url(&db.bob), false, false).await;
    let mut http = Http::new(&server.url(""));
    let csrf = http.get("/backfills/v_bobs/start").await.csrf();
    for (path, post) in [
        (format!("/runs/{run}"), false),
        (format!("/runs/{run}/pause"), true),
        (format!("/runs/{run}/resume"), true),
        (format!("/runs/{run}/alter"), true),
        (format!("/backfills/v_bobs/start?from_run={run}"), false),
    ] {
        let missing_path = path.replace(&format!("{run}"), &format!("{missing}"));
        let (hidden, absent) = if post {
            (
                http.post(&path, &[("csrf", &csrf), ("batch_size", "5")])
                    .await,
                http.post(&missing_path, &[("csrf", &csrf), ("batch_size", "5")])
                    .await,
            )
        } else {
            (http.get(&path).await, http.get(&missing_path).await)
        };
        assert_eq!(hidden.status, 404, "{path}: {}", hidden.body);
        assert_eq!(absent.status, 404, "{missing_path}");
        assert!(!hidden.body.contains("alice_secret_payroll") && !hidden.body.contains(&db.alice));
        assert_eq!(
            neutral(&hidden.body, run),
            neutral(&absent.body, missing),
            "{path}: the same page as for a missing run"
        );
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    s.execute("SELECT drip.stop($1)", &[&run]).await.unwrap();
}
