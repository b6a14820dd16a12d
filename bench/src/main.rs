//! data_drip benchmark harness. One command (`bench/run.sh`) runs everything on a throwaway
//! cluster and prints Markdown tables for BENCHMARKS.md.
//!
//! Workload: pgbench's `pgbench_accounts`; the action is `SET abalance = abalance + 1`, and
//! after every contender each row must be exactly +1.
//!
//! Environment: `BENCH_SCALES` (default "10"; "10 100" adds the scaling run at -s 100),
//! `BENCH_TPS_SECONDS` (default 30), `BENCH_ROUNDS` (default 2: contenders alternate
//! A..Z then Z..A so drift cancels).

#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Cluster;
use postgres::Client;

const DB: &str = "bench";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// What one contender run measured.
#[derive(Debug, Clone, Default)]
struct Measure {
    secs: f64,
    rows: i64,
    commits: i64,
    wal_bytes: i64,
    peak_rss_kb: Option<i64>,
    table_bytes: i64,
    index_bytes: i64,
    batches: i64,
}

impl Measure {
    fn rows_per_sec(&self) -> f64 {
        self.rows as f64 / self.secs
    }
}

struct Bench {
    cluster: Cluster,
    c: Client,
    /// Expected abalance of every row (each contender adds 1).
    expected: i64,
}

impl Bench {
    fn q_i64(&mut self, sql: &str) -> i64 {
        self.c
            .query_one(sql, &[])
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }

    fn reset_table(&mut self) {
        // Separate calls: VACUUM refuses a multi-statement string (an implicit transaction).
        self.c
            .batch_execute("VACUUM (FULL, ANALYZE) pgbench_accounts")
            .unwrap();
        self.c.batch_execute("CHECKPOINT").unwrap();
    }

    fn counters(&mut self) -> (i64, i64) {
        self.c
            .batch_execute("SELECT pg_stat_clear_snapshot()")
            .unwrap();
        let r = self
            .c
            .query_one(
                "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()),
                        pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    }

    /// Run one contender: `body` does the work and returns (rows, batches, peak RSS). Every
    /// row's abalance must then be `adds` more than before.
    fn measure(
        &mut self,
        name: &str,
        adds: i64,
        body: impl FnOnce(&mut Bench) -> (i64, i64, Option<i64>),
    ) -> Measure {
        self.reset_table();
        let (c0, w0) = self.counters();
        let t0 = Instant::now();
        let (rows, batches, rss) = body(self);
        let secs = t0.elapsed().as_secs_f64();
        // Backends flush their statistics at exit or when idle; give them a moment.
        std::thread::sleep(Duration::from_millis(1500));
        let (c1, w1) = self.counters();
        self.expected += adds;
        let wrong = self.q_i64(&format!(
            "SELECT count(*) FROM pgbench_accounts WHERE abalance <> {}",
            self.expected
        ));
        assert_eq!(wrong, 0, "{name}: rows not exactly +1");
        let r = self
            .c
            .query_one(
                "SELECT pg_table_size('pgbench_accounts'), pg_indexes_size('pgbench_accounts')",
                &[],
            )
            .unwrap();
        let m = Measure {
            secs,
            rows,
            commits: c1 - c0,
            wal_bytes: w1 - w0,
            peak_rss_kb: rss,
            table_bytes: r.get(0),
            index_bytes: r.get(1),
            batches,
        };
        eprintln!("  {name}: {:.2} s, {:.0} rows/s", m.secs, m.rows_per_sec());
        m
    }

    fn accounts(&mut self) -> i64 {
        self.q_i64("SELECT count(*) FROM pgbench_accounts")
    }
}

// ---------------------------------------------------------------------------------------------
// Contenders
// ---------------------------------------------------------------------------------------------

fn single_update(b: &mut Bench) -> (i64, i64, Option<i64>) {
    let n =
        b.c.execute("UPDATE pgbench_accounts SET abalance = abalance + 1", &[])
            .unwrap();
    (n as i64, 1, None)
}

fn plpgsql_loop(b: &mut Bench, batch: i32) -> (i64, i64, Option<i64>) {
    b.c.batch_execute(&format!("CALL bench_loop({batch})"))
        .unwrap();
    let n = b.accounts();
    (n, (n + batch as i64 - 1) / batch as i64, None)
}

fn client_loop(b: &mut Bench, batch: i32) -> (i64, i64, Option<i64>) {
    // What the Ruby and Elixir tools do: a keyset loop in the client, a transaction per batch.
    let mut lo = 0i32;
    let mut rows = 0;
    let mut batches = 0;
    let bound = b
        .c
        .prepare("SELECT max(aid) FROM (SELECT aid FROM pgbench_accounts WHERE aid > $1 ORDER BY aid LIMIT $2) s")
        .unwrap();
    let update = b
        .c
        .prepare("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid > $1 AND aid <= $2")
        .unwrap();
    loop {
        let mut tx = b.c.transaction().unwrap();
        let hi: Option<i32> = tx
            .query_one(&bound, &[&lo, &(batch as i64)])
            .unwrap()
            .get(0);
        let Some(hi) = hi else {
            tx.commit().unwrap();
            break;
        };
        rows += tx.execute(&update, &[&lo, &hi]).unwrap() as i64;
        tx.commit().unwrap();
        batches += 1;
        lo = hi;
    }
    (rows, batches, None)
}

/// Start a data_drip run and wait for it to complete, polling its status every 20 ms (a
/// LISTEN client would add a commit per notification to the counters); sample the runner's
/// memory meanwhile.
fn drip_run(b: &mut Bench, name: &str, start_sql: &str) -> (i64, i64, Option<i64>) {
    let run: i64 = b.c.query_one(start_sql, &[]).unwrap().get(0);
    let mut peak: Option<i64> = None;
    let mut sampler = b.cluster.connect(DB);
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        assert!(Instant::now() < deadline, "{name} did not finish");
        if let Some(pid) = runner_pid(&mut sampler) {
            if let Some(kb) = rss_anon_kb(pid) {
                peak = Some(peak.map_or(kb, |p: i64| p.max(kb)));
            }
        }
        let status: String = sampler
            .query_one("SELECT status FROM drip.runs WHERE id = $1", &[&run])
            .unwrap()
            .get(0);
        match status.as_str() {
            "completed" => break,
            "failed" | "stopped" => panic!("{name} ended {status}"),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let r =
        b.c.query_one(
            "SELECT rows_done, batches_done FROM drip.runs WHERE id = $1",
            &[&run],
        )
        .unwrap();
    (r.get(0), r.get(1), peak)
}

fn runner_pid(c: &mut Client) -> Option<i32> {
    c.query(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'data_drip runner'",
        &[],
    )
    .ok()?
    .first()
    .map(|r| r.get(0))
}

/// Private (anonymous) resident memory of a process: what would grow if the worker leaked.
fn rss_anon_kb(pid: i32) -> Option<i64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn register(b: &mut Bench, name: &str, extra: &str) {
    b.c.batch_execute(&format!(
        "SELECT drip.register('{name}', 'pgbench_accounts', 'SET abalance = abalance + 1', replace => true{extra})"
    ))
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Setup and reports
// ---------------------------------------------------------------------------------------------

fn pg_bin(name: &str) -> String {
    format!("{}/{name}", common::pg_bin())
}

fn setup(scale: i64, dir: &Path) -> Bench {
    setup_with(scale, dir, "")
}

/// `setup` with extra postgresql.conf lines (the profile adds pg_stat_statements).
fn setup_with(scale: i64, dir: &Path, extra_conf: &str) -> Bench {
    let cluster = Cluster::create_in(dir, &format!("bench_s{scale}"));
    cluster.set_conf(&format!(
        "fsync = on\nsynchronous_commit = on\nshared_buffers = '512MB'\nmax_wal_size = '8GB'\n\
         checkpoint_timeout = '30min'\nautovacuum = off\nmax_worker_processes = 32\n{extra_conf}"
    ));
    cluster.start();
    let mut admin = cluster.connect("postgres");
    admin
        .batch_execute(&format!("CREATE DATABASE {DB}"))
        .unwrap();
    let t0 = Instant::now();
    let out = Command::new(pg_bin("pgbench"))
        .args(["-i", "-q", "-s", &scale.to_string(), "-h"])
        .arg(cluster.sock())
        .args(["-p", &cluster.port.to_string(), "-U", &cluster.user(), DB])
        .output()
        .expect("pgbench -i");
    assert!(
        out.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("pgbench -i -s {scale}: {:.1} s", t0.elapsed().as_secs_f64());
    let mut c = cluster.connect(DB);
    c.batch_execute(
        "CREATE EXTENSION data_drip;
         CREATE PROCEDURE bench_loop(batch int) LANGUAGE plpgsql AS $$
         DECLARE lo int := 0; hi int;
         BEGIN
             LOOP
                 SELECT max(aid) INTO hi FROM (SELECT aid FROM pgbench_accounts WHERE aid > lo ORDER BY aid LIMIT batch) s;
                 EXIT WHEN hi IS NULL;
                 UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid > lo AND aid <= hi;
                 lo := hi;
                 COMMIT;
             END LOOP;
         END $$;
         CREATE PROCEDURE bench_empty_loop(batch int) LANGUAGE plpgsql AS $$
         DECLARE lo int := 0; hi int;
         BEGIN
             LOOP
                 SELECT max(aid) INTO hi FROM (SELECT aid FROM pgbench_accounts WHERE aid > lo ORDER BY aid LIMIT batch) s;
                 EXIT WHEN hi IS NULL;
                 UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid > lo AND aid <= hi AND false;
                 lo := hi;
                 COMMIT;
             END LOOP;
         END $$;",
    )
    .unwrap();
    let expected: i64 = c
        .query_one("SELECT max(abalance)::bigint FROM pgbench_accounts", &[])
        .unwrap()
        .get(0);
    Bench {
        cluster,
        c,
        expected,
    }
}

fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| format!("{:.0} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), {mem} RAM")
}

fn settings(b: &mut Bench) -> String {
    let rows = b
        .c
        .query(
            "SELECT name || ' = ' || current_setting(name) FROM pg_settings
             WHERE name IN ('server_version', 'shared_buffers', 'fsync', 'synchronous_commit', 'max_wal_size',
                            'checkpoint_timeout', 'autovacuum', 'wal_level', 'max_worker_processes')
             ORDER BY name",
            &[],
        )
        .unwrap();
    rows.iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join(", ")
}

fn mb(bytes: i64) -> String {
    format!("{:.1}", bytes as f64 / 1024.0 / 1024.0)
}

fn mean(ms: &[Measure]) -> Measure {
    let n = ms.len() as f64;
    let avg = |f: &dyn Fn(&Measure) -> f64| ms.iter().map(f).sum::<f64>() / n;
    Measure {
        secs: avg(&|m| m.secs),
        rows: ms[0].rows,
        commits: avg(&|m| m.commits as f64) as i64,
        wal_bytes: avg(&|m| m.wal_bytes as f64) as i64,
        peak_rss_kb: ms.iter().filter_map(|m| m.peak_rss_kb).max(),
        table_bytes: avg(&|m| m.table_bytes as f64) as i64,
        index_bytes: avg(&|m| m.index_bytes as f64) as i64,
        batches: ms[0].batches,
    }
}

type Contender = (
    &'static str,
    Box<dyn Fn(&mut Bench) -> (i64, i64, Option<i64>)>,
);

fn contenders() -> Vec<Contender> {
    vec![
        ("1. single UPDATE", Box::new(single_update)),
        (
            "2. PL/pgSQL loop, batch 1000, COMMIT per batch",
            Box::new(|b| plpgsql_loop(b, 1000)),
        ),
        (
            "3. client keyset loop, batch 1000, txn per batch",
            Box::new(|b| client_loop(b, 1000)),
        ),
        (
            "4a. data_drip batch 1000, sleep 0",
            Box::new(|b| {
                register(b, "b1000", ", batch_size => 1000, sleep => '0'");
                drip_run(b, "b1000", "SELECT drip.start('b1000')")
            }),
        ),
        (
            "4b. data_drip batch 10000, sleep 0",
            Box::new(|b| {
                register(b, "b10000", ", batch_size => 10000, sleep => '0'");
                drip_run(b, "b10000", "SELECT drip.start('b10000')")
            }),
        ),
        (
            "5. data_drip adaptive (target 100 ms, 1000..100000)",
            Box::new(|b| {
                register(
                    b,
                    "badapt",
                    ", batch_size => 1000, sleep => '0', target_batch_time => '100ms', \
                     min_batch_size => 1000, max_batch_size => 100000",
                );
                drip_run(b, "badapt", "SELECT drip.start('badapt')")
            }),
        ),
    ]
}

fn throughput(b: &mut Bench, rounds: usize) -> BTreeMap<&'static str, Vec<Measure>> {
    let list = contenders();
    let mut results: BTreeMap<&'static str, Vec<Measure>> = BTreeMap::new();
    for round in 0..rounds {
        eprintln!("round {}", round + 1);
        let order: Vec<usize> = if round % 2 == 0 {
            (0..list.len()).collect()
        } else {
            (0..list.len()).rev().collect()
        };
        for i in order {
            let (name, f) = &list[i];
            let m = b.measure(name, 1, |b| f(b));
            results.entry(name).or_default().push(m);
        }
    }
    results
}

fn print_throughput(scale: i64, results: &BTreeMap<&'static str, Vec<Measure>>) {
    let single = mean(&results["1. single UPDATE"]).rows_per_sec();
    let plpgsql = mean(&results["2. PL/pgSQL loop, batch 1000, COMMIT per batch"]).rows_per_sec();
    println!(
        "\n### Throughput, pgbench -s {scale} ({} rows)\n",
        mean(&results["1. single UPDATE"]).rows
    );
    println!("| contender | time (s) | rows/s | vs single UPDATE | vs PL/pgSQL loop | commits/s | WAL (MB) | worker peak RSS (MB, anon) | table after (MB) | indexes after (MB) |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, ms) in results {
        let m = mean(ms);
        let runs: Vec<String> = ms.iter().map(|x| format!("{:.2}", x.secs)).collect();
        println!(
            "| {name} | {:.2} ({}) | {:.0} | {:.2}× | {:.2}× | {:.0} | {} | {} | {} | {} |",
            m.secs,
            runs.join(" / "),
            m.rows_per_sec(),
            m.rows_per_sec() / single,
            m.rows_per_sec() / plpgsql,
            m.commits as f64 / m.secs,
            mb(m.wal_bytes),
            m.peak_rss_kb
                .map(|kb| format!("{:.1}", kb as f64 / 1024.0))
                .unwrap_or_else(|| "–".into()),
            mb(m.table_bytes),
            mb(m.index_bytes),
        );
    }
}

/// Fixed cost per batch: data_drip and the PL/pgSQL loop over every key with an empty scope.
/// The fixed cost of a batch: data_drip over an empty scope (every batch finds its range, does
/// its bookkeeping and commits, but updates nothing) against the PL/pgSQL loop doing the same
/// empty batches, alternated. data_drip's time is the steady state, from the first batch's start
/// to the last one's end in drip.batches.
fn overhead(b: &mut Bench, rounds: usize) -> (f64, f64) {
    register(
        b,
        "bempty",
        ", batch_size => 1000, sleep => '0', scope => 'false'",
    );
    let (mut d_us, mut p_us) = (Vec::new(), Vec::new());
    for round in 0..rounds.max(1) {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for who in order {
            b.c.batch_execute("CHECKPOINT").unwrap();
            if who == 0 {
                let (n, us) = empty_drip_run(b);
                d_us.push(us / n.max(1) as f64);
            } else {
                let (n, us) = empty_loop_run(b);
                p_us.push(us / n.max(1) as f64);
            }
        }
    }
    let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let show = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let (per_d, per_p) = (avg(&d_us), avg(&p_us));
    println!("\n### Fixed cost per batch (empty scope, batch 1000)\n");
    println!("| | µs per batch (rounds) |");
    println!("|---|---:|");
    println!(
        "| data_drip (boundary query, batch rows, cursor, events, one durable commit) | {per_d:.0} ({}) |",
        show(&d_us)
    );
    println!(
        "| PL/pgSQL loop (boundary query, a commit that writes nothing) | {per_p:.0} ({}) |",
        show(&p_us)
    );
    println!(
        "| data_drip over the hand-written loop | {:.0} ({:.2}×) |",
        per_d - per_p,
        per_d / per_p
    );
    (per_d, per_p)
}

/// One data_drip run of the registered empty-scope backfill `bempty`: (batches, µs) in steady
/// state, from the first batch's start to the last one's end in drip.batches (no worker
/// start-up, no polling granularity).
fn empty_drip_run(b: &mut Bench) -> (i64, f64) {
    let run: i64 = b.q_i64("SELECT drip.start('bempty')");
    b.c.batch_execute(&format!("SELECT drip.wait({run})"))
        .unwrap();
    let r = b
        .c
        .query_one(
            "SELECT count(*), extract(epoch FROM max(finished_at) - min(started_at))::float8 * 1e6 \
             FROM drip.batches WHERE run_id = $1",
            &[&run],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

/// The PL/pgSQL loop over the same empty batches: (batches, µs).
fn empty_loop_run(b: &mut Bench) -> (i64, f64) {
    let t0 = Instant::now();
    b.c.batch_execute("CALL bench_empty_loop(1000)").unwrap();
    let us = t0.elapsed().as_secs_f64() * 1e6;
    ((b.accounts() + 999) / 1000, us)
}

/// CPU time a process has used, in ns (/proc/PID/schedstat): unlike wall time, barely moved by
/// other work on the machine.
fn cpu_ns(pid: i32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU µs per empty batch: of the runner backend (sampled between batch 100 and batch 800 of a
/// run, while it is alive) and of the backend running the PL/pgSQL loop.
fn cpu_per_batch(b: &mut Bench) -> (f64, f64) {
    let mut watch = b.cluster.connect(DB);
    let run: i64 = b.q_i64("SELECT drip.start('bempty')");
    let sample = |watch: &mut Client, at_least: i64| -> (i64, u64) {
        loop {
            let r = watch
                .query_one(
                    "SELECT batches_done, worker_pid FROM drip.runs WHERE id = $1",
                    &[&run],
                )
                .unwrap();
            let (n, pid): (i64, Option<i32>) = (r.get(0), r.get(1));
            if n >= at_least {
                if let Some(cpu) = pid.and_then(cpu_ns) {
                    return (n, cpu);
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let (n1, c1) = sample(&mut watch, 100);
    let (n2, c2) = sample(&mut watch, 800);
    b.c.batch_execute(&format!("SELECT drip.wait({run})"))
        .unwrap();
    let drip = (c2 - c1) as f64 / 1000.0 / (n2 - n1).max(1) as f64;
    let pid: i32 =
        b.c.query_one("SELECT pg_backend_pid()", &[])
            .unwrap()
            .get(0);
    let before = cpu_ns(pid).unwrap_or(0);
    let (n, _) = empty_loop_run(b);
    let after = cpu_ns(pid).unwrap_or(0);
    (drip, (after - before) as f64 / 1000.0 / n.max(1) as f64)
}

/// Where a batch's microseconds go: pg_stat_statements (track = all) over an empty-scope run of
/// batch 1,000, next to the PL/pgSQL loop doing the same empty batches. Statement times are per
/// batch; what no statement accounts for is transaction start and commit (with its WAL flush,
/// counted by pg_stat_wal) and the runner's own Rust.
fn profile(b: &mut Bench, rounds: usize) {
    b.c.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .unwrap();
    register(
        b,
        "bempty",
        ", batch_size => 1000, sleep => '0', scope => 'false'",
    );
    println!("\n### Per-batch cost breakdown (empty scope, batch 1000)\n");
    println!("CPU time per batch of the backend doing the batches (/proc/PID/schedstat):\n");
    println!("| round | data_drip runner (µs) | PL/pgSQL loop backend (µs) |");
    println!("|---:|---:|---:|");
    for round in 0..rounds.max(1) {
        let (d, p) = cpu_per_batch(b);
        println!("| {} | {d:.0} | {p:.0} |", round + 1);
    }
    for round in 0..rounds {
        for who in ["data_drip", "PL/pgSQL loop"] {
            b.c.batch_execute(
                "SELECT pg_stat_statements_reset(); SELECT pg_stat_reset_shared('wal'); CHECKPOINT",
            )
            .unwrap();
            let (batches, wall_us) = if who == "data_drip" {
                empty_drip_run(b)
            } else {
                empty_loop_run(b)
            };
            std::thread::sleep(Duration::from_millis(1500));
            let per = |x: f64| x / batches.max(1) as f64;
            let rows = b
                .c
                .query(
                    "SELECT toplevel, calls, total_exec_time, regexp_replace(query, '\\s+', ' ', 'g') \
                     FROM pg_stat_statements WHERE calls >= $1 \
                       AND query NOT LIKE '%pg_stat_statements%' AND query NOT LIKE '%drip.wait%' \
                     ORDER BY total_exec_time DESC LIMIT 14",
                    &[&(batches / 2)],
                )
                .unwrap();
            let wal =
                b.c.query_one(
                    "SELECT wal_sync, wal_sync_time, wal_write FROM pg_stat_wal",
                    &[],
                )
                .unwrap();
            let syncs: i64 = wal.get(0);
            let sync_ms: f64 = wal.get(1);
            println!(
                "\n**{who}**, round {}: {batches} batches, {:.0} µs per batch; WAL flushes per batch {:.2}, \
                 {:.0} µs of flushing per batch\n",
                round + 1,
                per(wall_us),
                per(syncs as f64),
                per(sync_ms * 1000.0)
            );
            println!("| statement | top level | calls per batch | µs per batch |");
            println!("|---|---|---:|---:|");
            let mut top_us = 0.0;
            for r in &rows {
                let toplevel: bool = r.get(0);
                let calls: i64 = r.get(1);
                let ms: f64 = r.get(2);
                let q: String = r.get(3);
                if toplevel {
                    top_us += ms * 1000.0;
                }
                let q = if q.chars().count() > 110 {
                    format!("{}…", q.chars().take(110).collect::<String>())
                } else {
                    q
                };
                println!(
                    "| `{}` | {} | {:.2} | {:.1} |",
                    q.replace('|', "\\|"),
                    if toplevel { "yes" } else { "nested" },
                    per(calls as f64),
                    per(ms * 1000.0)
                );
            }
            println!(
                "| *top-level statements, sum* | | | {:.1} |\n| *the rest: transaction start and commit (WAL flush), Rust* | | | {:.1} |",
                per(top_us),
                per(wall_us - top_us)
            );
        }
    }
}

/// Worker memory over a run of many small batches: sampled through the run.
fn memory(b: &mut Bench) {
    register(b, "bmem", ", batch_size => 100, sleep => '0'");
    let mut listener = b.cluster.connect(DB);
    listener.batch_execute("LISTEN drip_events").unwrap();
    b.reset_table();
    let run: i64 =
        b.c.query_one("SELECT drip.start('bmem')", &[])
            .unwrap()
            .get(0);
    let mut sampler = b.cluster.connect(DB);
    let mut samples: Vec<(i64, i64)> = Vec::new();
    loop {
        let done: (String, i64) = {
            let r = sampler
                .query_one(
                    "SELECT status, batches_done FROM drip.runs WHERE id = $1",
                    &[&run],
                )
                .unwrap();
            (r.get(0), r.get(1))
        };
        if done.0 == "completed" {
            break;
        }
        if let Some(pid) = runner_pid(&mut sampler) {
            if let Some(kb) = rss_anon_kb(pid) {
                samples.push((done.1, kb));
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    b.expected += 1;
    let batches: i64 =
        b.c.query_one("SELECT batches_done FROM drip.runs WHERE id = $1", &[&run])
            .unwrap()
            .get(0);
    println!("\n### Worker memory over {batches} batches (batch 100)\n");
    println!("| after batch | runner RssAnon (MB) |");
    println!("|---:|---:|");
    let step = (samples.len() / 8).max(1);
    for (i, (batch, kb)) in samples.iter().enumerate() {
        if i % step == 0 || i + 1 == samples.len() {
            println!("| {batch} | {:.1} |", *kb as f64 / 1024.0);
        }
    }
    if let (Some(first), Some(last)) = (samples.get(samples.len() / 10), samples.last()) {
        println!(
            "\nGrowth from batch {} to batch {}: {:+.1} MB",
            first.0,
            last.0,
            (last.1 - first.1) as f64 / 1024.0
        );
    }
}

fn boundary_plan(b: &mut Bench) {
    register(b, "bplan", ", batch_size => 1000");
    let plan: String =
        b.c.query_one("SELECT boundary_plan FROM drip.plan('bplan')", &[])
            .unwrap()
            .get(0);
    let sql: String =
        b.c.query_one("SELECT boundary_sql FROM drip.plan('bplan')", &[])
            .unwrap()
            .get(0);
    println!("\n### The boundary query and its plan (`drip.plan`)\n");
    println!("```\n{sql}\n\n{plan}\n```");
}

/// pgbench TPC-B traffic for a fixed time: TPS, p99 latency, failures.
fn pgbench(b: &Bench, secs: u64, dir: &Path, script: &[&str]) -> (f64, f64, i64) {
    let logdir = dir.join("pgbench_logs");
    let _ = std::fs::remove_dir_all(&logdir);
    std::fs::create_dir_all(&logdir).unwrap();
    let out = Command::new(pg_bin("pgbench"))
        .current_dir(&logdir)
        .args([
            "-n",
            "-c",
            "4",
            "-j",
            "2",
            "-M",
            "prepared",
            "-l",
            "-T",
            &secs.to_string(),
        ])
        .args(script)
        .arg("-h")
        .arg(b.cluster.sock())
        .args([
            "-p",
            &b.cluster.port.to_string(),
            "-U",
            &b.cluster.user(),
            DB,
        ])
        .output()
        .expect("pgbench");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "pgbench: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let failed = text
        .lines()
        .find(|l| l.starts_with("number of failed transactions"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut lat: Vec<f64> = Vec::new();
    for entry in std::fs::read_dir(&logdir).unwrap().flatten() {
        for line in std::fs::read_to_string(entry.path())
            .unwrap_or_default()
            .lines()
        {
            if let Some(us) = line
                .split_whitespace()
                .nth(2)
                .and_then(|v| v.parse::<f64>().ok())
            {
                lat.push(us / 1000.0);
            }
        }
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p99 = lat
        .get((lat.len() as f64 * 0.99) as usize)
        .copied()
        .unwrap_or(0.0);
    (tps, p99, failed)
}

/// Keep a backfill running for the whole pgbench window: start it, and start it again each
/// time it completes. Returns the rows it processed meanwhile.
fn with_backfill(
    b: &mut Bench,
    name: &str,
    secs: u64,
    dir: &Path,
    script: &[&str],
) -> ((f64, f64, i64), i64) {
    let cluster_sock = b.cluster.sock();
    let port = b.cluster.port;
    let user = b.cluster.user();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let name2 = name.to_string();
    let keeper = std::thread::spawn(move || {
        let mut c = postgres::Config::new()
            .host_path(&cluster_sock)
            .port(port)
            .user(&user)
            .dbname(DB)
            .connect(postgres::NoTls)
            .unwrap();
        let mut rows = 0i64;
        let mut run: i64 = c
            .query_one("SELECT drip.start($1)", &[&name2])
            .unwrap()
            .get(0);
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
            let r = c
                .query_one(
                    "SELECT status, rows_done FROM drip.runs WHERE id = $1",
                    &[&run],
                )
                .unwrap();
            let (status, done): (String, i64) = (r.get(0), r.get(1));
            if status == "completed" {
                rows += done;
                run = c
                    .query_one("SELECT drip.start($1)", &[&name2])
                    .unwrap()
                    .get(0);
            }
        }
        let r = c
            .query_one(
                "SELECT status, rows_done FROM drip.runs WHERE id = $1",
                &[&run],
            )
            .unwrap();
        let (status, done): (String, i64) = (r.get(0), r.get(1));
        rows += done;
        if status != "completed" {
            c.query_one("SELECT drip.stop($1)", &[&run]).unwrap();
        }
        rows
    });
    let result = pgbench(b, secs, dir, script);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rows = keeper.join().unwrap();
    (result, rows)
}

/// Live traffic next to a default backfill: pgbench TPC-B and `-N` (accounts updates only, the
/// table the backfill walks), each as baseline and loaded phases alternated over the rounds,
/// with a CHECKPOINT before every phase. Returns the loaded/baseline TPS ratios (TPC-B, -N).
fn impact(b: &mut Bench, dir: &Path, rounds: usize) -> (f64, f64) {
    let secs: u64 = env_or("BENCH_TPS_SECONDS", "30").parse().unwrap_or(30);
    b.reset_table();
    register(b, "bdefault", "");
    let mut ratios = Vec::new();
    println!("\n### Live traffic: pgbench, 4 clients, {secs} s per phase\n");
    println!("| workload | phase | TPS (rounds) | vs baseline | p99 latency (ms) | failed transactions | backfill rows done meanwhile |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for (workload, script) in [("TPC-B", &[][..]), ("-N (accounts only)", &["-N"][..])] {
        let (mut base, mut loaded) = (Vec::new(), Vec::new());
        let mut rows = 0;
        for round in 0..rounds.max(1) {
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for phase in order {
                b.c.batch_execute("CHECKPOINT").unwrap();
                if phase == 0 {
                    base.push(pgbench(b, secs, dir, script));
                } else {
                    let (r, n) = with_backfill(b, "bdefault", secs, dir, script);
                    loaded.push(r);
                    rows += n;
                }
            }
        }
        let tps = |v: &[(f64, f64, i64)]| v.iter().map(|x| x.0).sum::<f64>() / v.len() as f64;
        let p99 = |v: &[(f64, f64, i64)]| v.iter().map(|x| x.1).fold(0.0, f64::max);
        let failed = |v: &[(f64, f64, i64)]| v.iter().map(|x| x.2).sum::<i64>();
        let each = |v: &[(f64, f64, i64)]| {
            v.iter()
                .map(|x| format!("{:.0}", x.0))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let ratio = tps(&loaded) / tps(&base);
        println!(
            "| {workload} | baseline, no backfill | {:.0} ({}) | 1.00× | {:.1} | {} | – |",
            tps(&base),
            each(&base),
            p99(&base),
            failed(&base)
        );
        println!(
            "| {workload} | data_drip, default settings (batch 1000, sleep 100 ms) | {:.0} ({}) | {ratio:.2}× | {:.1} | {} | {rows} |",
            tps(&loaded),
            each(&loaded),
            p99(&loaded),
            failed(&loaded)
        );
        ratios.push(ratio);
    }
    (ratios[0], ratios[1])
}

/// Rows per second of the batches in the first and last tenth of a backfill's latest run, from
/// drip.batches (each batch's duration runs from its marker to its completion): flat means no
/// slowdown as the cursor advances.
fn decile_rates(b: &mut Bench, backfill: &str) -> (f64, f64) {
    let r =
        b.c.query_one(
            "WITH x AS (SELECT rows, extract(epoch FROM duration)::float8 AS s,
                               ntile(10) OVER (ORDER BY batch_no) AS d
                        FROM drip.batches
                        WHERE run_id = (SELECT max(id) FROM drip.runs WHERE backfill = $1)
                          AND status = 'completed')
             SELECT (sum(rows) FILTER (WHERE d = 1))::float8 / sum(s) FILTER (WHERE d = 1),
                    (sum(rows) FILTER (WHERE d = 10))::float8 / sum(s) FILTER (WHERE d = 10)
             FROM x",
            &[&backfill],
        )
        .unwrap();
    (
        r.get::<_, Option<f64>>(0).unwrap_or(0.0),
        r.get::<_, Option<f64>>(1).unwrap_or(0.0),
    )
}

/// Speed-up from splitting a run into slices: data_drip batch 1000, sleep 0, parallel 1 and 2,
/// alternating.
fn parallel_speedup(b: &mut Bench, rounds: usize) -> f64 {
    register(b, "bpar", ", batch_size => 1000, sleep => '0'");
    let mut results: BTreeMap<i32, Vec<Measure>> = BTreeMap::new();
    for round in 0..rounds.max(1) {
        let order = if round % 2 == 0 { [1, 2] } else { [2, 1] };
        for p in order {
            let m = b.measure(&format!("data_drip parallel {p}"), 1, |b| {
                drip_run(
                    b,
                    "bpar",
                    &format!("SELECT drip.start('bpar', parallel => {p})"),
                )
            });
            results.entry(p).or_default().push(m);
        }
    }
    let one = mean(&results[&1]).rows_per_sec();
    println!("\n### Parallel slices: data_drip batch 1000, sleep 0\n");
    println!("| parallel | time (s) | rows/s | speed-up |");
    println!("|---:|---:|---:|---:|");
    for (p, ms) in &results {
        let m = mean(ms);
        println!(
            "| {p} | {:.2} | {:.0} | {:.2}× |",
            m.secs,
            m.rows_per_sec(),
            m.rows_per_sec() / one
        );
    }
    mean(&results[&2]).rows_per_sec() / one
}

fn main() {
    let scales: Vec<i64> = env_or("BENCH_SCALES", "10")
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    let rounds: usize = env_or("BENCH_ROUNDS", "2").parse().unwrap_or(2);
    if env_or("BENCH_ONLY", "") == "profile" {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target")
            .join("bench");
        std::fs::create_dir_all(&dir).unwrap();
        let mut b = setup_with(
            10,
            &dir,
            "shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track = 'all'\n\
             pg_stat_statements.max = 2000\ntrack_wal_io_timing = on",
        );
        println!("Machine: {}.", machine());
        profile(&mut b, rounds);
        return;
    }
    if env_or("BENCH_ONLY", "") == "parallel" {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target")
            .join("bench");
        std::fs::create_dir_all(&dir).unwrap();
        let mut b = setup(10, &dir);
        println!("Machine: {}.", machine());
        parallel_speedup(&mut b, rounds);
        return;
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    println!("## Results\n");
    println!("Machine: {}.", machine());
    // (scale, data_drip rows/s, PL/pgSQL rows/s, first-tenth batch rate, last-tenth batch rate)
    let mut per_row: Vec<(i64, f64, f64, f64, f64)> = Vec::new();
    let mut figures = Figures::default();
    for (i, scale) in scales.iter().enumerate() {
        let mut b = setup(*scale, &dir);
        if i == 0 {
            println!("\nPostgreSQL settings: {}.", settings(&mut b));
            let results = throughput(&mut b, rounds);
            print_throughput(*scale, &results);
            let rate = |name: &str| mean(&results[name]).rows_per_sec();
            let loop_rate = rate("2. PL/pgSQL loop, batch 1000, COMMIT per batch");
            figures.vs_loop_1000 = rate("4a. data_drip batch 1000, sleep 0") / loop_rate;
            figures.vs_client_1000 = rate("4a. data_drip batch 1000, sleep 0")
                / rate("3. client keyset loop, batch 1000, txn per batch");
            figures.vs_loop_10000 = rate("4b. data_drip batch 10000, sleep 0") / loop_rate;
            figures.vs_loop_adaptive =
                rate("5. data_drip adaptive (target 100 ms, 1000..100000)") / loop_rate;
            let (first, last) = decile_rates(&mut b, "b1000");
            per_row.push((
                *scale,
                rate("4a. data_drip batch 1000, sleep 0"),
                loop_rate,
                first,
                last,
            ));
            boundary_plan(&mut b);
            figures.fixed = Some(overhead(&mut b, rounds));
            memory(&mut b);
            figures.parallel = Some(parallel_speedup(&mut b, rounds));
            figures.tps = Some(impact(&mut b, &dir, rounds));
        } else {
            register(&mut b, "b1000", ", batch_size => 1000, sleep => '0'");
            let (mut d, mut p) = (Vec::new(), Vec::new());
            for round in 0..rounds {
                let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
                for who in order {
                    if who == 0 {
                        d.push(b.measure("4a. data_drip batch 1000, sleep 0", 1, |b| {
                            drip_run(b, "b1000", "SELECT drip.start('b1000')")
                        }));
                    } else {
                        p.push(b.measure(
                            "2. PL/pgSQL loop, batch 1000, COMMIT per batch",
                            1,
                            |b| plpgsql_loop(b, 1000),
                        ));
                    }
                }
            }
            let (first, last) = decile_rates(&mut b, "b1000");
            per_row.push((
                *scale,
                mean(&d).rows_per_sec(),
                mean(&p).rows_per_sec(),
                first,
                last,
            ));
        }
        drop(b);
    }
    if per_row.len() > 1 {
        println!("\n### Scaling: batch 1000, sleep 0\n");
        println!(
            "| scale | data_drip rows/s | vs -s {s0} | PL/pgSQL loop rows/s | vs -s {s0} | data_drip vs loop | batch rate, first tenth of the run (rows/s) | batch rate, last tenth |",
            s0 = per_row[0].0
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (s, r, p, first, last) in &per_row {
            println!(
                "| {s} | {r:.0} | {:.2}× | {p:.0} | {:.2}× | {:.2}× | {first:.0} | {last:.0} |",
                r / per_row[0].1,
                p / per_row[0].2,
                r / p
            );
        }
        let last = per_row[per_row.len() - 1];
        figures.scaling = Some((last.1 / per_row[0].1, last.2 / per_row[0].2));
    }
    figures.print();
}

/// The figures the targets table is made of (issue 13), gathered through the run.
#[derive(Default)]
struct Figures {
    vs_loop_1000: f64,
    vs_client_1000: f64,
    vs_loop_10000: f64,
    vs_loop_adaptive: f64,
    /// (data_drip, PL/pgSQL loop) µs per empty batch.
    fixed: Option<(f64, f64)>,
    /// (data_drip, PL/pgSQL loop) rate at the largest scale over the first.
    scaling: Option<(f64, f64)>,
    /// (TPC-B, -N) TPS with a default backfill over the baseline.
    tps: Option<(f64, f64)>,
    parallel: Option<f64>,
}

impl Figures {
    fn print(&self) {
        let yes = |ok: bool| if ok { "met" } else { "**not met**" };
        println!("\n### Targets\n");
        println!("| figure | measured | target | |");
        println!("|---|---:|---|---|");
        if let Some((d, p)) = self.fixed {
            println!(
                "| fixed cost per batch (empty scope, batch 1,000) | {d:.0} µs = {:.2}× the PL/pgSQL loop's {p:.0} µs | ≤ 2× the loop's | {} |",
                d / p,
                yes(d <= 2.0 * p)
            );
        }
        let row = |name: &str, v: f64, target: &str, ok: bool| {
            println!("| {name} | {v:.2}× | {target} | {} |", yes(ok));
        };
        row(
            "throughput at batch 1,000, sleep 0, vs the PL/pgSQL loop",
            self.vs_loop_1000,
            "≥ 0.95×",
            self.vs_loop_1000 >= 0.95,
        );
        row(
            "the same vs the client keyset loop",
            self.vs_client_1000,
            "≥ 1.05×",
            self.vs_client_1000 >= 1.05,
        );
        row(
            "batch 10,000 vs the PL/pgSQL loop",
            self.vs_loop_10000,
            "≥ 1.0×",
            self.vs_loop_10000 >= 1.0,
        );
        row(
            "adaptive vs the PL/pgSQL loop",
            self.vs_loop_adaptive,
            "≥ 1.1×",
            self.vs_loop_adaptive >= 1.1,
        );
        if let Some((d, p)) = self.scaling {
            println!(
                "| largest scale vs -s 10: data_drip {d:.2}×, PL/pgSQL loop {p:.2}× | {:.2} of the loop's ratio | within 10% of the loop's own ratio | {} |",
                d / p,
                yes(d / p >= 0.9)
            );
        }
        if let Some((tpcb, n)) = self.tps {
            row(
                "pgbench TPS during a default backfill, TPC-B",
                tpcb,
                "≥ 0.9×",
                tpcb >= 0.9,
            );
            row(
                "pgbench TPS during a default backfill, -N",
                n,
                "≥ 0.9×",
                n >= 0.9,
            );
        }
        if let Some(p) = self.parallel {
            row("parallel => 2 on 2 cores", p, "≥ 1.7×", p >= 1.7);
        }
    }
}
