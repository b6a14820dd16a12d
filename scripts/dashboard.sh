#!/usr/bin/env bash
# scripts/dashboard.sh: the web dashboard on a demo cluster, in one command.
#
#   scripts/dashboard.sh                 # single-user, as role alice
#   scripts/dashboard.sh --multi-user    # a login form (alice / alice, bob / bob)
#   scripts/dashboard.sh --read-only     # no controls
#   scripts/dashboard.sh --screenshots docs
#                                        # save the README's screenshots and exit
#
# Starts a throwaway cluster (target/dashboard-demo), installs data_drip first only if it is
# not installed yet, creates a few backfills owned by the role alice (one running slowly, one
# paused, one failed with a division by zero, one scheduled for later, one finished) and one
# of bob's that alice cannot see, builds drip-dashboard, serves it on a free loopback port and
# prints the URL. Ctrl-C stops the dashboard and the cluster.
#
# Knobs: DRIP_DASHBOARD_PORT (a free port), DRIP_DASHBOARD_PROFILE (dev|release, default dev).
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROOT="$(drip_root)"
cd "$ROOT"

MULTI=0
READ_ONLY=0
SHOTS=""
while (($# > 0)); do
    case "$1" in
    --multi-user) MULTI=1 ;;
    --read-only) READ_ONLY=1 ;;
    --screenshots)
        SHOTS="${2:?--screenshots needs a directory}"
        shift
        ;;
    -h | --help)
        sed -n '2,17p' "$0"
        exit 0
        ;;
    *) drip_die "unknown argument $1 (try --help)" ;;
    esac
    shift
done

DB=drip_dashboard
sql() { psql_as -d "$DB" -XAtq "$@"; }

# No --with-lint: serving the dashboard needs neither rustfmt nor clippy.
# shellcheck disable=SC2119
ensure_deps
if [[ ! -f "$("$PG_CONFIG" --sharedir)/extension/data_drip.control" ]]; then
    install_extension
else
    drip_log "data_drip is installed in $("$PG_CONFIG" --sharedir)/extension; not reinstalling"
fi

profile="${DRIP_DASHBOARD_PROFILE:-dev}"
drip_log "building drip-dashboard ($profile profile)"
build=(cargo build -p drip-dashboard)
[[ "$profile" == release ]] && build+=(--release)
"${build[@]}" </dev/null
target_dir="${CARGO_TARGET_DIR:-$ROOT/target}"
bin="$target_dir/$([[ "$profile" == release ]] && echo release || echo debug)/drip-dashboard"
[[ -x "$bin" ]] || drip_die "no binary at $bin"

cluster_start dashboard-demo ""
if ((MULTI)); then
    # Logins over TCP check passwords; the socket stays trust for this script.
    as_owner sed -i -E 's/^(host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1\/32[[:space:]]+)trust/\1scram-sha-256/' \
        "$DRIP_PGDATA/pg_hba.conf"
fi
psql_as -q -c "LOAD 'data_drip'" -c "ALTER SYSTEM SET drip.max_runs = 4" -c "SELECT pg_reload_conf()" >/dev/null

drip_log "creating database $DB with backfills of alice and bob"
psql_as -q <<SQL
CREATE ROLE alice LOGIN PASSWORD 'alice';
CREATE ROLE bob LOGIN PASSWORD 'bob';
CREATE DATABASE $DB OWNER alice;
SQL
sql -c "CREATE EXTENSION data_drip" -c "GRANT USAGE ON SCHEMA drip TO alice, bob" \
    -c "GRANT CREATE ON SCHEMA public TO alice, bob"

# As alice (SET ROLE in the superuser's session: drip.* captures the calling role as owner).
sql >/dev/null <<'SQL'
SET ROLE alice;
CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL, age int NOT NULL,
                    signed_up timestamptz NOT NULL DEFAULT now());
INSERT INTO users SELECT g, 'User' || g || '@Example.COM', g % 80, now() - make_interval(days => g % 900)
  FROM generate_series(1, 200000) g;
CREATE TABLE orders (id bigint PRIMARY KEY, region text NOT NULL, total numeric NOT NULL,
                     archived boolean NOT NULL DEFAULT false);
INSERT INTO orders SELECT g, (ARRAY['eu','us','apac'])[1 + g % 3], (g % 997) * 1.5
  FROM generate_series(1, 100000) g;
CREATE TABLE counters (id bigint PRIMARY KEY, items int NOT NULL DEFAULT 1, per_item numeric);
INSERT INTO counters SELECT g, CASE WHEN g = 4200 THEN 0 ELSE 1 + g % 5 END FROM generate_series(1, 10000) g;
ANALYZE users; ANALYZE orders; ANALYZE counters;

SELECT drip.register('fix_emails', 'users', action => 'SET email = lower(email)',
    scope => '$age IS NULL OR age = $age', params => '{"age": "integer"}',
    batch_size => 200, sleep => '300 milliseconds',
    description => 'Lower-case every email address (slow on purpose: small batches, a pause between)');
SELECT drip.register('archive_orders', 'orders', action => 'SET archived = NOT $dry_run',
    scope => 'region = ANY($regions) AND total < $below',
    params => '{"regions": {"type": "text[]", "required": true},
                "below":   {"type": "numeric", "default": 100},
                "dry_run": {"type": "boolean", "default": false},
                "placed_before": "timestamptz"}',
    batch_size => 2000, sleep => '20 milliseconds',
    description => 'Archive small orders of the given regions');
SELECT drip.register('recompute_per_item', 'counters', action => 'SET per_item = 100.0 / items',
    batch_size => 500, sleep => '50 milliseconds', max_attempts => 2,
    description => 'Recompute per-item prices (one row has items = 0)');
SELECT drip.register('touch_signups', 'users', action => 'SET signed_up = signed_up',
    scope => 'signed_up < $before', params => '{"before": {"type": "timestamptz", "required": true}}',
    batch_size => 500, sleep => '200 milliseconds', description => 'Rewrite old signups');
SELECT drip.register('nightly_orders', 'orders', action => 'SET total = total',
    batch_size => 5000, description => 'Scheduled for later');
SQL

sql >/dev/null <<'SQL'
SET ROLE alice;
SELECT drip.start('archive_orders', '{"regions": ["eu"], "below": 50}', note => 'ticket 4711');
SELECT drip.start('recompute_per_item');
SELECT drip.start('touch_signups', '{"before": "2026-01-01 00:00:00+00"}');
SELECT drip.start('nightly_orders', start_at => now() + interval '6 hours', note => 'tonight');
SQL
# Let the quick ones finish (or fail), then start the long one and pause one.
for _ in $(seq 1 100); do
    left="$(sql -c "SELECT count(*) FROM drip.runs WHERE backfill IN ('archive_orders', 'recompute_per_item') AND status NOT IN ('completed', 'failed')")"
    [[ "$left" == 0 ]] && break
    sleep 0.2
done
sql >/dev/null <<'SQL'
SET ROLE alice;
SELECT drip.pause(id) FROM drip.runs WHERE backfill = 'touch_signups' AND status IN ('enqueued', 'running');
SELECT drip.start('fix_emails', note => 'all ages');
SET ROLE bob;
CREATE TABLE bobs_table (id bigint PRIMARY KEY, v int);
INSERT INTO bobs_table SELECT g, 0 FROM generate_series(1, 1000) g;
SELECT drip.register('bobs_secret_backfill', 'bobs_table', action => 'SET v = 1', sleep => '0');
SELECT drip.start('bobs_secret_backfill');
SQL

port="${DRIP_DASHBOARD_PORT:-$(free_port)}"
args=(--listen "127.0.0.1:$port")
if ((MULTI)); then
    # The URL's role only LISTENs; everyone logs in as themselves.
    args+=(--multi-user --database-url "postgres://bob:bob@127.0.0.1:$DRIP_PGPORT/$DB")
else
    args+=(--database-url "postgres://alice@localhost/$DB?host=$DRIP_PGHOST&port=$DRIP_PGPORT")
fi
((READ_ONLY)) && args+=(--read-only)

"$bin" "${args[@]}" &
dash_pid=$!
drip_on_exit "kill $dash_pid 2>/dev/null; wait $dash_pid 2>/dev/null"
for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    kill -0 "$dash_pid" 2>/dev/null || drip_die "drip-dashboard exited; see above"
    sleep 0.1
done
url="http://127.0.0.1:$port/"

if [[ -n "$SHOTS" ]]; then
    mkdir -p "$SHOTS"
    shots_dir="$(cd "$SHOTS" && pwd -P)"
    running="$(sql -c "SELECT id FROM drip.runs WHERE backfill = 'fix_emails' ORDER BY id DESC LIMIT 1")"
    sleep 4 # some batches, so the run page has a timeline and a sparkline
    shoot() { # shoot FILE PATH [HEIGHT]
        local profile
        profile="$(mktemp -d /tmp/drip-shot.XXXXXX)"
        timeout 60 /usr/bin/chromium --headless=new --no-sandbox --disable-gpu --disable-quic --no-first-run \
            --disable-background-networking --disable-component-update --disable-sync \
            --disable-crash-reporter --disable-breakpad \
            --hide-scrollbars --user-data-dir="$profile" --window-size="1400,${3:-900}" \
            --screenshot="$shots_dir/$1" "$url${2#/}" >/dev/null 2>&1 </dev/null ||
            drip_warn "chromium failed on $2"
        rm -rf "$profile"
        drip_log "saved $SHOTS/$1"
    }
    shoot dashboard-runs.png /
    shoot dashboard-run.png "/runs/$running" 1250
    shoot dashboard-start.png /backfills/archive_orders/start 1000
    exit 0
fi

printf '\n  data_drip dashboard: %s\n' "$url"
if ((MULTI)); then
    printf '  sign in as alice (password alice) or bob (password bob)\n'
else
    printf '  acting as role alice (bob has a backfill alice cannot see)\n'
fi
printf '  database %s on port %s (psql: . %s/env; psql -d %s)\n' "$DB" "$DRIP_PGPORT" "$DRIP_CLUSTER_DIR" "$DB"
printf '  Ctrl-C stops the dashboard and the cluster.\n\n'
wait "$dash_pid"
