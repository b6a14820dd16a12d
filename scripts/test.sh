#!/usr/bin/env bash
# scripts/test.sh: the single command that runs the whole data_drip test suite.
#
#   scripts/test.sh              # all suites: lint, pgrx, regress, dashboard, faults, citus, upgrade, package,
#                                # pg16, pg17, pg18
#   scripts/test.sh regress      # only the named suites
#
# Suites:
#   lint     cargo fmt --check, then cargo clippy -D warnings (both always run)
#   pgrx     cargo pgrx test pg15 (the #[pg_test] / #[test] tests in src/)
#   regress  install the extension into the system PostgreSQL 15, start a
#            throwaway cluster (target/regress), run pg_regress on pg_test/
#   dashboard
#            the web dashboard (dashboard/): handler, scale and browser tests
#            (Debian's chromium + chromedriver, installed as root when missing)
#            against the installed extension on a throwaway cluster
#   faults   fault injection (SIGKILL, crash restarts, immediate stops,
#            pg_terminate_backend, failing batches) on a cluster the test owns
#   citus    Citus 12.1.12 built from ../shared/citus (scripts/citus.sh, cached) into the
#            system PostgreSQL 15; tests/citus.rs on 3-node clusters (coordinator + 2
#            workers): every table kind, gdb in the one-phase-commit window, runner kills,
#            a worker down, shard moves/rebalance/split, lock_timeout on the workers.
#            Skipped (and passes, saying why) without the Citus sources
#   upgrade  the released 0.1.0 upgraded in place with runs in every state;
#            upgraded catalog == fresh install (tests/upgrade.rs)
#   package  the .deb for 15, 16, 17 and 18 built; as root each is smoke-tested
#            with dpkg in a Debian root with that major's server and no Rust
#            (scripts/package.sh --smoke; 16's server there is a stand-in)
#   pg16, pg17, pg18
#            cargo pgrx test + pg_regress on that major, whose server
#            scripts/postgres.sh builds or fetches into a cache
#
# Every requested suite runs even if an earlier one failed (set DRIP_FAIL_FAST=1
# to stop at the first failure). The last line is "N passed, M failed"; the exit
# status is non-zero if any suite failed. Works as root (CI: a fresh Debian 12,
# missing deps are installed) and as an ordinary user who has the deps.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROOT="$(drip_root)"
cd "$ROOT"

# Ctrl-C / kill must end the whole run, not just the current suite.
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------
# Suites. Each runs in its own subshell with `set -e` active (see run_suite),
# so a failing command fails the suite, and clusters the suite started are
# stopped by that subshell's EXIT trap when the suite ends.
# ---------------------------------------------------------------------------

suite_lint() {
    local rc=0
    drip_log "cargo fmt --check"
    cargo fmt --check || rc=1
    drip_log "cargo clippy"
    # pgrx-pg-sys's build script finds pg_config through this (or config.toml).
    PGRX_PG_CONFIG_PATH="$PG_CONFIG" \
        cargo clippy --all-targets --features "pg15 pg_test" --no-default-features -- -D warnings || rc=1
    return "$rc"
}

suite_pgrx() {
    # pgrx 0.18 puts each run's PGDATA in <pgdata>/15-<pid> and the unix
    # socket in <pgdata> itself, so <pgdata> must be writable by the user the
    # cluster runs as, and short (socket paths are limited to 107 bytes).
    local base="$ROOT/target/pgrx-test-data"
    local -a cmd=(cargo pgrx test "pg$PG_MAJOR" --pgdata "$base")

    # Start clean: stop postmasters a killed earlier run left behind, wipe.
    local pidfile
    for pidfile in "$base"/*/postmaster.pid; do
        [[ -e "$pidfile" ]] || continue
        stop_pgdata "$(dirname "$pidfile")" || true
    done
    rm -rf "$base"
    mkdir -p "$base"

    if is_root; then
        # initdb/postgres refuse root: pgrx runs them through `sudo -u postgres`
        # and installs the extension with `cargo pgrx install --sudo`.
        chown postgres: "$base"
        ensure_traversable "$base"
        cmd+=(--runas postgres)
    else
        # pgrx installs into the PostgreSQL registered as pg15 in config.toml;
        # for the Debian packages those directories belong to root.
        local cfg extdir libdir
        cfg="$PG_CONFIG"
        extdir="$("$cfg" --sharedir)/extension"
        libdir="$("$cfg" --pkglibdir)"
        if [[ ! -w "$extdir" || ! -w "$libdir" ]]; then
            if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
                # --runas makes pgrx install with --sudo; running the cluster
                # "as" ourselves through sudo is otherwise a no-op.
                cmd+=(--runas "$(id -un)")
            else
                drip_log "$extdir is not writable and sudo needs a password; run 'sudo -v' first, or:"
                printf '    (cd %q && %s --runas %q)\n' "$ROOT" "${cmd[*]}" "$(id -un)" >&2
                return 1
            fi
        fi
    fi

    drip_log "${cmd[*]}"
    "${cmd[@]}" </dev/null
}

suite_regress() {
    # pg_test/schedule (pg_regress schedule syntax: "test: a b c") if present,
    # otherwise every pg_test/sql/*.sql in sorted (C locale) order.
    local -a tests=()
    if [[ -f pg_test/schedule ]]; then
        tests=(--schedule=pg_test/schedule)
    else
        local f
        while IFS= read -r f; do
            tests+=("$(basename "$f" .sql)")
        done < <(LC_ALL=C find pg_test/sql -maxdepth 1 -name '*.sql' -type f 2>/dev/null | LC_ALL=C sort)
    fi
    if ((${#tests[@]} == 0)); then
        drip_warn "no pg_test/schedule and no pg_test/sql/*.sql: nothing to run"
        return 1
    fi

    # A debug build is enough for scenario tests, and much faster than release + LTO.
    DRIP_INSTALL_PROFILE="${DRIP_INSTALL_PROFILE:-dev}" install_extension
    cluster_start regress ""

    local outdir="$ROOT/target/regress/out"
    rm -rf "$outdir"
    mkdir -p "$outdir"

    # With --use-existing pg_regress neither drops nor creates --dbname, so
    # create it the way pg_regress would (template0 + the same settings) for
    # stable output. pg_regress also sets PGTZ=PST8PDT, PGDATESTYLE='Postgres,
    # MDY' and intervalstyle=postgres_verbose for its psql sessions.
    psql_as -q <<'SQL'
SET client_min_messages = warning;
DROP DATABASE IF EXISTS drip_regress;
CREATE DATABASE drip_regress TEMPLATE = template0;
ALTER DATABASE drip_regress SET lc_messages TO 'C';
ALTER DATABASE drip_regress SET lc_monetary TO 'C';
ALTER DATABASE drip_regress SET lc_numeric TO 'C';
ALTER DATABASE drip_regress SET lc_time TO 'C';
ALTER DATABASE drip_regress SET bytea_output TO 'hex';
ALTER DATABASE drip_regress SET timezone_abbreviations TO 'Default';
SQL

    # pg_regress itself runs as us (it writes $outdir, which we own) and
    # connects as the cluster superuser.
    local rc=0
    "$PG_REGRESS" --use-existing --bindir="$PG_BIN" \
        --host="$DRIP_PGHOST" --port="$DRIP_PGPORT" --user="$DRIP_PGUSER" \
        --inputdir=pg_test --outputdir="$outdir" --dbname=drip_regress \
        "${tests[@]}" </dev/null || rc=$?

    if ((rc != 0)); then
        if [[ -s "$outdir/regression.diffs" ]]; then
            printf '\n----- %s -----\n' "$outdir/regression.diffs" >&2
            cat "$outdir/regression.diffs" >&2
            printf -- '----- end of regression.diffs -----\n\n' >&2
        fi
        drip_log "server log: $DRIP_CLUSTER_DIR/postgres.log"
        return 1
    fi
    cluster_stop regress
}

# Debian's chromium and chromedriver for the dashboard's browser tests. As root (CI) they are
# installed when missing, like the extension's own dependencies; nothing downloads a browser or
# a driver at test time.
ensure_browser() {
    local -a missing=()
    [[ -x /usr/bin/chromium ]] || missing+=(chromium)
    [[ -x /usr/bin/chromedriver ]] || missing+=(chromium-driver)
    ((${#missing[@]} == 0)) && return 0
    if ! is_root; then
        drip_log "the dashboard's browser tests need Debian's ${missing[*]}. Run:"
        printf '    sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y %s\n' "${missing[*]}" >&2
        return 1
    fi
    drip_log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update </dev/null
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" </dev/null; then
        # An interrupted earlier install leaves dpkg half done ("cannot access archive").
        DEBIAN_FRONTEND=noninteractive apt-get install -f -y </dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" </dev/null
    fi
}

suite_dashboard() {
    ensure_browser
    # The extension as installed (the regress suite before this one installs the tree's);
    # installed here when this suite runs alone on a machine without it.
    if [[ ! -f "$("$PG_CONFIG" --sharedir)/extension/data_drip.control" ]]; then
        DRIP_INSTALL_PROFILE="${DRIP_INSTALL_PROFILE:-dev}" install_extension
    fi
    cluster_start dashboard-test ""
    # Multi-user mode logs roles in with passwords: scram over TCP; the socket stays trust for
    # the tests' superuser setup.
    as_owner sed -i -E 's/^(host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1\/32[[:space:]]+)trust/\1scram-sha-256/' \
        "$DRIP_PGDATA/pg_hba.conf"
    psql_as -q -c "LOAD 'data_drip'" -c "ALTER SYSTEM SET drip.max_runs = 8" -c "SELECT pg_reload_conf()" >/dev/null
    # Sequential: the browser tests each drive a chromium, and CI has 2 cores.
    DRIP_DASH_PGHOST="$DRIP_PGHOST" DRIP_DASH_PGPORT="$DRIP_PGPORT" DRIP_DASH_PGUSER="$DRIP_PGUSER" \
        cargo test -p drip-dashboard -- --test-threads=1 </dev/null
    cluster_stop dashboard-test
}

suite_faults() {
    # The fault-injection suite owns its cluster (target/faults); it needs the extension
    # installed in the system PostgreSQL and cargo's test runner for tests/faults.rs.
    DRIP_INSTALL_PROFILE="${DRIP_INSTALL_PROFILE:-dev}" install_extension
    DRIP_PG_BIN="$PG_BIN" PGRX_PG_CONFIG_PATH="$PG_CONFIG" \
        cargo test --test faults --test replica --test undo_faults -- --ignored --nocapture --test-threads=1 </dev/null
}

# Debian's gdb, for the Citus suite's one-phase-commit test (it stops the runner between Citus's
# remote COMMIT/PREPARE and the coordinator's commit record). Installed as root when missing.
ensure_gdb() {
    command -v gdb >/dev/null 2>&1 && return 0
    if ! is_root; then
        drip_log "the citus suite needs Debian's gdb. Run:"
        printf '    sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y gdb\n' >&2
        return 1
    fi
    drip_log "installing gdb"
    DEBIAN_FRONTEND=noninteractive apt-get update </dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y gdb </dev/null
}

suite_citus() {
    # Citus 12.1.12 built from its release sources into this PostgreSQL (scripts/citus.sh:
    # about a minute on 2 cores the first time, cached in the installation after that). Without
    # the sources (a user's machine) the suite is skipped and passes: Citus is in no registry
    # these machines reach.
    local out
    out="$(bash scripts/citus.sh "$PG_CONFIG" </dev/null)"
    if [[ "$(tail -n 1 <<<"$out")" == skipped ]]; then
        return "$SUITE_SKIPPED"
    fi
    ensure_gdb
    DRIP_INSTALL_PROFILE="${DRIP_INSTALL_PROFILE:-dev}" install_extension
    # The tests' clusters (target/citus/TEST/{coord,w1,w2}) run as postgres when we are root.
    mkdir -p "$ROOT/target/citus"
    ensure_traversable "$ROOT/target/citus"
    DRIP_PG_BIN="$PG_BIN" PGRX_PG_CONFIG_PATH="$PG_CONFIG" \
        cargo test --test citus --test citus_subruns -- --ignored --nocapture --test-threads=1 </dev/null
}

# Other majors: the in-transaction, unit and live tests plus pg_regress against PostgreSQL NN
# (made by scripts/postgres.sh). The fault and upgrade suites run on 15 only: they exercise our
# own crash handling and the 0.1.0 -> 0.2.0 path, which do not differ by major.
suite_major() {
    use_pg_major "$1"
    suite_pgrx
    DRIP_INSTALL_PROFILE="${DRIP_INSTALL_PROFILE:-dev}" suite_regress
}
suite_pg16() { suite_major 16; }
suite_pg17() { suite_major 17; }
suite_pg18() { suite_major 18; }

# The Debian packages, one per major (release builds, as shipped): as root each is installed with
# dpkg -i in a minimal Debian root that has that major's server and no Rust (bookworm: 15, trixie:
# 17, sid: 18; 16 is in no reachable Debian suite, so its server there is a stand-in, see
# scripts/package.sh), used in a fresh cluster (CREATE EXTENSION, a 1,000-row backfill) and
# removed with dpkg -r. The host's PostgreSQL is never touched. An ordinary user gets the builds
# only. DRIP_PACKAGE_MAJORS="15 17" limits the majors.
suite_package() {
    local major rc=0 smoke=--smoke
    if ! is_root; then
        drip_log "not root: building the packages without the dpkg smoke tests (they need chroot)"
        smoke=""
    fi
    local -a majors
    read -r -a majors <<<"${DRIP_PACKAGE_MAJORS:-15 16 17 18}"
    local prefetch=""
    if [[ -n "$smoke" ]]; then
        # The Debian roots (debootstrap + apt, about 2 minutes the first time, mostly download)
        # are made while cargo compiles; scripts/debroot.sh serialises per suite, so a smoke test
        # that needs a root still being made waits for it.
        mkdir -p target/packages
        (for major in "${majors[@]}"; do bash scripts/package.sh --root-only "$major" || true; done) \
            >target/packages/debroot-prefetch.log 2>&1 </dev/null &
        prefetch=$!
    fi
    local t
    for major in "${majors[@]}"; do
        t=$SECONDS
        # shellcheck disable=SC2086 # $smoke is one word or none
        bash scripts/package.sh $smoke "$major" </dev/null || {
            drip_warn "package $major failed"
            rc=1
        }
        drip_log "package $major: $((SECONDS - t))s"
    done
    if [[ -n "$prefetch" ]]; then wait "$prefetch" || true; fi
    return "$rc"
}

# The released 0.1.0: the v0.1.0 tag, or the commit it names when tags were not fetched.
RELEASE_0_1_0=e525bc3b46c372735091b7faeaa232017f4553d6

suite_upgrade() {
    # Two package trees: the released 0.1.0, built from git, and this tree. tests/upgrade.rs
    # installs one, then the other, as a package manager would.
    local base="$ROOT/target/upgrade-build" rev
    rev="$(git rev-parse --verify -q 'v0.1.0^{commit}' || true)"
    if [[ -z "$rev" ]] && ! git cat-file -e "$RELEASE_0_1_0^{commit}" 2>/dev/null &&
        [[ "$(git rev-parse --is-shallow-repository 2>/dev/null)" == true ]]; then
        drip_log "shallow clone: fetching the history back to 0.1.0"
        git fetch -q --unshallow --tags </dev/null || true
        rev="$(git rev-parse --verify -q 'v0.1.0^{commit}' || true)"
    fi
    if [[ -z "$rev" ]]; then
        git cat-file -e "$RELEASE_0_1_0^{commit}" 2>/dev/null ||
            drip_die "neither the v0.1.0 tag nor commit $RELEASE_0_1_0 is in this clone; fetch tags or full history"
        rev="$RELEASE_0_1_0"
    fi
    rm -rf "$base"
    mkdir -p "$base/src-0.1.0"
    git archive "$rev" | tar -x -C "$base/src-0.1.0"
    drip_log "building the released 0.1.0 ($rev)"
    # Its own target directory: cargo-pgrx reads the schema from target/<profile>/libdata_drip.so,
    # which two crates sharing a target directory would overwrite for each other.
    (cd "$base/src-0.1.0" && CARGO_TARGET_DIR="$ROOT/target/upgrade-0.1.0" \
        cargo pgrx package --debug --pg-config "$PG_CONFIG" --out-dir "$base/pkg-0.1.0" </dev/null)
    drip_log "building this tree"
    cargo pgrx package --debug --pg-config "$PG_CONFIG" --out-dir "$base/pkg-new" </dev/null

    # A released install script never changes: the one kept in sql/ must be what 0.1.0 generates.
    local extdir
    extdir="$base/pkg-0.1.0$("$PG_CONFIG" --sharedir)/extension"
    if ! diff -u sql/data_drip--0.1.0.sql "$extdir/data_drip--0.1.0.sql" >&2; then
        drip_warn "sql/data_drip--0.1.0.sql differs from what the v0.1.0 sources generate"
        return 1
    fi
    # The new package must carry every released install script and the upgrade scripts.
    cp sql/data_drip--0.1.0.sql "$base/pkg-new$("$PG_CONFIG" --sharedir)/extension/"

    DRIP_UPGRADE_OLD="$base/pkg-0.1.0" DRIP_UPGRADE_NEW="$base/pkg-new" DRIP_PG_BIN="$PG_BIN" \
        PGRX_PG_CONFIG_PATH="$PG_CONFIG" \
        cargo test --test upgrade -- --ignored --nocapture --test-threads=1 </dev/null
}

# ---------------------------------------------------------------------------

declare -A SUITE_DESC=(
    [lint]="cargo fmt --check + cargo clippy -D warnings"
    [pgrx]="cargo pgrx test pg15"
    [regress]="pg_regress pg_test/"
    [dashboard]="the web dashboard: handler, scale and chromium browser tests (dashboard/tests)"
    [faults]="fault injection, undo and revert under faults, and a real standby on owned clusters (tests/faults.rs, tests/undo_faults.rs, tests/replica.rs)"
    [citus]="Citus 12.1.12 (scripts/citus.sh) on 3-node clusters: every table kind, faults, moves, splits, exactly once (tests/citus.rs)"
    [upgrade]="0.1.0 -> current with runs in every state; upgraded catalog == fresh install (tests/upgrade.rs)"
    [package]="postgresql-NN-data-drip .deb for 15-18: dpkg -i in a Debian root, CREATE EXTENSION, a backfill, dpkg -r (scripts/package.sh)"
    [pg16]="cargo pgrx test + pg_regress on PostgreSQL 16 (scripts/postgres.sh 16)"
    [pg17]="cargo pgrx test + pg_regress on PostgreSQL 17 (scripts/postgres.sh 17)"
    [pg18]="cargo pgrx test + pg_regress on PostgreSQL 18 (scripts/postgres.sh 18)"
)
ALL_SUITES=(lint pgrx regress dashboard faults citus upgrade package pg16 pg17 pg18)

if (($# > 0)); then
    SUITES=("$@")
    for s in "${SUITES[@]}"; do
        [[ -n "${SUITE_DESC[$s]:-}" ]] || drip_die "unknown suite '$s' (known: ${ALL_SUITES[*]})"
    done
else
    SUITES=("${ALL_SUITES[@]}")
fi

ensure_deps --with-lint

passed=0
failed=0
# A suite returns this when it cannot run on this machine (and says why); it counts as passed.
SUITE_SKIPPED=77
RESULTS=()

# run_suite NAME: run suite_NAME in a subshell. set -e is ignored inside
# anything used as a condition (if, &&, ||), so the status is collected with
# set +e around a plain subshell that turns -e back on for itself.
run_suite() {
    local name="$1" rc start end
    printf '\n======== suite %s: %s ========\n' "$name" "${SUITE_DESC[$name]}" >&2
    start=$SECONDS
    set +e
    (
        set -e
        "suite_$name"
    )
    rc=$?
    set -e
    end=$SECONDS
    if ((rc == SUITE_SKIPPED)); then
        passed=$((passed + 1))
        RESULTS+=("SKIP  $name ($((end - start))s; it said why above)")
    elif ((rc == 0)); then
        passed=$((passed + 1))
        RESULTS+=("PASS  $name ($((end - start))s)")
    else
        failed=$((failed + 1))
        RESULTS+=("FAIL  $name ($((end - start))s, exit $rc)")
    fi
    return 0
}

for s in "${SUITES[@]}"; do
    run_suite "$s"
    if ((failed > 0)) && [[ "${DRIP_FAIL_FAST:-0}" == 1 ]]; then
        break
    fi
done

printf '\n======== summary ========\n'
printf '%s\n' "${RESULTS[@]}"
printf 'suites: %d passed, %d failed\n' "$passed" "$failed"
((failed == 0))
