# shellcheck shell=bash
# Globals set here (PG_MAJOR, DRIP_CLUSTER_*, ...) are read by the scripts that source this file:
# shellcheck disable=SC2034
# scripts/lib.sh: helpers shared by scripts/test.sh and scripts/demo.sh.
#
# Source it (do not execute it) from a script that already runs under
# `set -euo pipefail`:
#
#     source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Everything targets the Debian PostgreSQL 15 packages (PG_BIN, PG_CONFIG) and
# cargo-pgrx 0.18.0, which must match the pgrx crate version exactly.

# Sourcing twice would reset the cleanup list and lose registered cleanups.
if [[ -n "${_DRIP_LIB_LOADED:-}" ]]; then
    return 0
fi
_DRIP_LIB_LOADED=1

PG_MAJOR=15
PG_BIN=/usr/lib/postgresql/15/bin
PG_CONFIG=/usr/bin/pg_config
PG_REGRESS=/usr/lib/postgresql/15/lib/pgxs/src/test/regress/pg_regress
# A developer's own PostgreSQL 15 installation instead of Debian's (say a relocated copy, so
# that test runs do not replace the extension other work on the machine uses): its pg_config.
# cargo pgrx must know it as pg15 too (PGRX_HOME with a config.toml naming it).
if [[ -n "${DRIP_PG15_CONFIG:-}" ]]; then
    PG_CONFIG="$DRIP_PG15_CONFIG"
    PG_BIN="$("$PG_CONFIG" --bindir)"
    PG_REGRESS="$(dirname "$("$PG_CONFIG" --pgxs)")/../test/regress/pg_regress"
fi
PGRX_VERSION=0.18.0
# Debian packages the build and the tests need. `sudo` is needed because
# `cargo pgrx test --runas postgres` shells out to sudo (even as root).
DRIP_APT_PACKAGES=(postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo)
# use_pg_major NN: point PG_MAJOR, PG_CONFIG, PG_BIN and PG_REGRESS at PostgreSQL NN, made (or
# found in its cache) by scripts/postgres.sh and registered with cargo pgrx. 15 stays Debian's.
use_pg_major() {
    local major="$1" cfg
    if [[ "$major" == 15 ]]; then
        return 0
    fi
    cfg="$(bash "$_DRIP_ROOT/scripts/postgres.sh" --pgrx-init "$major" | tail -n 1)"
    [[ -x "$cfg" ]] || drip_die "scripts/postgres.sh $major printed no pg_config ('$cfg')"
    PG_MAJOR="$major"
    PG_CONFIG="$cfg"
    PG_BIN="$("$cfg" --bindir)"
    PG_REGRESS="$(dirname "$("$cfg" --pgxs)")/../test/regress/pg_regress"
    [[ -x "$PG_REGRESS" ]] || drip_die "no pg_regress for PostgreSQL $major at $PG_REGRESS"
}

# Only needed to compile cargo-pgrx itself (openssl-sys, bzip2-sys, cc linker).
DRIP_APT_PACKAGES_CARGO_PGRX=(build-essential pkg-config libssl-dev)

# The repository root, computed once from this file's location so the
# scripts work from any current directory and from a fresh clone.
_DRIP_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"

# ---------------------------------------------------------------------------
# Basics
# ---------------------------------------------------------------------------

drip_root() { printf '%s\n' "$_DRIP_ROOT"; }

is_root() { [[ "$(id -u)" -eq 0 ]]; }

# Progress messages go to stderr so stdout stays usable for values.
drip_log() { printf '==> %s\n' "$*" >&2; }
drip_warn() { printf 'WARNING: %s\n' "$*" >&2; }
drip_die() {
    printf 'ERROR: %s\n' "$*" >&2
    exit 1
}

# cargo installs into ~/.cargo/bin, which non-login shells (CI, sudo) often
# do not have on PATH.
_drip_cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
if [[ -d "$_drip_cargo_bin" && ":$PATH:" != *":$_drip_cargo_bin:"* ]]; then
    PATH="$_drip_cargo_bin:$PATH"
    export PATH
fi
unset _drip_cargo_bin

# runuser lives in /usr/sbin, which minimal PATHs (sudo -u, some CI) lack.
for _drip_d in /usr/sbin /sbin; do
    if [[ ":$PATH:" != *":$_drip_d:"* ]]; then PATH="$PATH:$_drip_d"; fi
done
unset _drip_d
export PATH

# The pgrx test harness reads $USER; CI containers often leave it unset.
export USER="${USER:-$(id -un)}"

# ---------------------------------------------------------------------------
# Cleanup on exit
# ---------------------------------------------------------------------------
# One EXIT trap per process runs every registered command, newest first.
# Entries remember the process ($BASHPID) that registered them, because
# subshells inherit the array: a subshell must only undo its own work, never
# its parent's (e.g. test.sh runs each suite in a subshell).
_DRIP_CLEANUPS=()
_DRIP_TRAP_PID=""

# drip_on_exit 'COMMAND STRING': run COMMAND (eval'd) when this process exits,
# whether normally, through `set -e`, or on SIGINT/SIGTERM/SIGHUP.
drip_on_exit() {
    _DRIP_CLEANUPS+=("$BASHPID"$'\t'"$1")
    if [[ "$_DRIP_TRAP_PID" != "$BASHPID" ]]; then
        trap _drip_run_cleanups EXIT
        # Turning signals into `exit` makes the EXIT trap run for them too.
        trap 'exit 130' INT
        trap 'exit 143' TERM
        trap 'exit 129' HUP
        _DRIP_TRAP_PID="$BASHPID"
    fi
}

_drip_run_cleanups() {
    # Bash keeps the script's exit status across the EXIT trap; we only must
    # not let a failing cleanup abort the remaining ones.
    local i entry
    set +e
    for ((i = ${#_DRIP_CLEANUPS[@]} - 1; i >= 0; i--)); do
        entry="${_DRIP_CLEANUPS[i]}"
        [[ "${entry%%$'\t'*}" == "$BASHPID" ]] || continue
        _DRIP_CLEANUPS[i]=""
        eval "${entry#*$'\t'}"
    done
}

# ---------------------------------------------------------------------------
# Dependencies
# ---------------------------------------------------------------------------

_drip_pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

_drip_pgrx_home() { printf '%s\n' "${PGRX_HOME:-$HOME/.pgrx}"; }

# The pg_config path registered for pg15 in $PGRX_HOME/config.toml (empty if none).
pgrx_pg15_config() {
    local cfg
    cfg="$(_drip_pgrx_home)/config.toml"
    [[ -f "$cfg" ]] || return 0
    sed -nE 's/^[[:space:]]*pg15[[:space:]]*=[[:space:]]*"([^"]*)".*$/\1/p' "$cfg" | head -n 1
}

_drip_cargo_pgrx_version() {
    # Prints e.g. "0.18.0", or nothing when cargo-pgrx is not installed.
    cargo pgrx --version 2>/dev/null | awk '$1 == "cargo-pgrx" { print $2 }' || true
}

# ensure_deps [--with-lint]
#   Makes sure the toolchain is usable: the Debian packages above, cargo,
#   cargo-pgrx exactly $PGRX_VERSION, and a pg15 entry in ~/.pgrx/config.toml
#   (plus rustfmt and clippy with --with-lint).
#   As root it installs what is missing (apt-get update once, apt-get install,
#   cargo install, cargo pgrx init). As an ordinary user it never installs: it
#   prints the exact commands to run and exits 1.
ensure_deps() {
    local with_lint=0
    if [[ "${1:-}" == "--with-lint" ]]; then with_lint=1; fi

    if ! command -v cargo >/dev/null 2>&1; then
        # Debian's own rustc is too old for pgrx 0.18; we cannot fix this here.
        drip_die "cargo not found (looked in PATH and ${CARGO_HOME:-$HOME/.cargo}/bin). Install a Rust toolchain with rustup (https://rustup.rs), then re-run."
    fi

    local -a missing_pkgs=() user_cmds=() root_cmds=()
    local pkg pgrx_ver need_pgrx=0 need_init=0 need_components=0

    if command -v dpkg-query >/dev/null 2>&1; then
        for pkg in "${DRIP_APT_PACKAGES[@]}"; do
            _drip_pkg_installed "$pkg" || missing_pkgs+=("$pkg")
        done
    else
        # Not Debian: we can only check that the files we use exist.
        local f
        for f in "$PG_BIN/postgres" "$PG_BIN/initdb" "$PG_CONFIG" "$PG_REGRESS"; do
            [[ -x "$f" ]] || drip_die "$f not found; this project expects Debian's postgresql-15 packages"
        done
    fi

    pgrx_ver="$(_drip_cargo_pgrx_version)"
    if [[ "$pgrx_ver" != "$PGRX_VERSION" ]]; then
        need_pgrx=1
        for pkg in "${DRIP_APT_PACKAGES_CARGO_PGRX[@]}"; do
            if command -v dpkg-query >/dev/null 2>&1 && ! _drip_pkg_installed "$pkg"; then
                missing_pkgs+=("$pkg")
            fi
        done
        if [[ -n "$pgrx_ver" ]]; then
            drip_warn "cargo-pgrx $pgrx_ver is installed but this crate needs exactly $PGRX_VERSION"
        fi
    fi

    if [[ -z "$(pgrx_pg15_config)" ]]; then need_init=1; fi

    if ((with_lint)); then
        if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
            need_components=1
        fi
    fi

    local pgrx_install=(cargo install cargo-pgrx --version "$PGRX_VERSION" --locked)
    # --force replaces another installed version instead of refusing.
    if [[ -n "$pgrx_ver" ]]; then pgrx_install+=(--force); fi
    local pgrx_init=(cargo pgrx init --pg15 "$PG_CONFIG")
    local components=(rustup component add rustfmt clippy)

    if ((${#missing_pkgs[@]} == 0 && need_pgrx == 0 && need_init == 0 && need_components == 0)); then
        return 0
    fi

    if ! is_root; then
        drip_log "missing dependencies; nothing was installed. Run:"
        if ((${#missing_pkgs[@]})); then
            local as_root="sudo "
            if ! command -v sudo >/dev/null 2>&1; then as_root="(as root) "; fi
            root_cmds+=("${as_root}apt-get update")
            root_cmds+=("${as_root}env DEBIAN_FRONTEND=noninteractive apt-get install -y ${missing_pkgs[*]}")
        fi
        if ((need_components)); then user_cmds+=("${components[*]}"); fi
        if ((need_pgrx)); then user_cmds+=("${pgrx_install[*]}"); fi
        if ((need_init)); then user_cmds+=("${pgrx_init[*]}"); fi
        local c
        for c in "${root_cmds[@]}" "${user_cmds[@]}"; do
            printf '    %s\n' "$c" >&2
        done
        exit 1
    fi

    # Root: install what is missing, non-interactively (CI has no stdin).
    if ((${#missing_pkgs[@]})); then
        drip_log "installing apt packages: ${missing_pkgs[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update </dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing_pkgs[@]}" </dev/null
    fi
    if ((need_components)); then
        command -v rustup >/dev/null 2>&1 || drip_die "rustfmt/clippy missing and rustup not found"
        drip_log "installing rustfmt and clippy"
        "${components[@]}" </dev/null
    fi
    if ((need_pgrx)); then
        drip_log "installing cargo-pgrx $PGRX_VERSION (takes several minutes)"
        "${pgrx_install[@]}" </dev/null
        pgrx_ver="$(_drip_cargo_pgrx_version)"
        [[ "$pgrx_ver" == "$PGRX_VERSION" ]] || drip_die "cargo pgrx --version reports '${pgrx_ver}', expected $PGRX_VERSION"
    fi
    if ((need_init)); then
        # As root, pgrx init only records pg_config (it skips its own initdb).
        drip_log "registering $PG_CONFIG with pgrx"
        "${pgrx_init[@]}" </dev/null
        [[ -n "$(pgrx_pg15_config)" ]] || drip_die "cargo pgrx init did not write a pg15 entry to $(_drip_pgrx_home)/config.toml"
    fi
}

# ---------------------------------------------------------------------------
# Running things as the cluster owner
# ---------------------------------------------------------------------------

# The OS user that owns throwaway clusters, and their superuser role name
# (initdb names the bootstrap superuser after the OS user running it).
cluster_owner() {
    if is_root; then echo postgres; else id -un; fi
}

# as_owner CMD ARGS...: run CMD as the cluster owner. initdb and pg_ctl refuse
# to run as root, hence `postgres` when we are root. runuser ships with
# util-linux, so it works without sudo. It runs from / because postgres may
# not be allowed into the caller's cwd (e.g. /root); pass absolute paths.
as_owner() {
    if is_root; then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

# ensure_traversable DIR: when root, make sure user postgres can reach DIR by
# adding o+x to every ancestor that postgres cannot traverse. This changes
# permissions outside the repo (e.g. /root is 0700 on Debian), so it says so.
ensure_traversable() {
    is_root || return 0
    local dir="$1" path="" part
    local -a parts
    IFS=/ read -r -a parts <<<"${dir#/}"
    for part in "${parts[@]}"; do
        [[ -n "$part" ]] || continue
        path="$path/$part"
        [[ -d "$path" ]] || break
        # `test` exits 1 for "no access"; anything else means runuser failed.
        local rc=0
        runuser -u postgres -- test -x "$path" 2>/dev/null || rc=$?
        if ((rc > 1)); then drip_die "runuser -u postgres failed (exit $rc)"; fi
        if ((rc == 1)); then
            drip_warn "user postgres cannot traverse $path; running chmod o+x $path"
            chmod o+x "$path"
        fi
    done
}

# ---------------------------------------------------------------------------
# Installing the extension into the system PostgreSQL
# ---------------------------------------------------------------------------

# install_extension: build data_drip and install it into the PostgreSQL of
# $PG_CONFIG (control/SQL files into $(pg_config --sharedir)/extension, the .so
# into $(pg_config --pkglibdir)). Release build unless DRIP_INSTALL_PROFILE=dev.
# Root installs directly; an ordinary user installs directly when both
# directories are writable, else through `cargo pgrx install --sudo` if
# `sudo -n true` works, else prints the command and exits 1.
install_extension() {
    local -a cmd=(cargo pgrx install --pg-config "$PG_CONFIG")
    if [[ "${DRIP_INSTALL_PROFILE:-release}" == release ]]; then cmd+=(--release); fi

    if ! is_root; then
        local extdir libdir
        extdir="$("$PG_CONFIG" --sharedir)/extension"
        libdir="$("$PG_CONFIG" --pkglibdir)"
        if [[ ! -w "$extdir" || ! -w "$libdir" ]]; then
            if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
                cmd+=(--sudo)
            else
                drip_log "$extdir and $libdir are not writable and sudo needs a password. Run:"
                printf '    (cd %q && %s --sudo)\n' "$(drip_root)" "${cmd[*]}" >&2
                exit 1
            fi
        fi
    fi
    drip_log "installing data_drip: ${cmd[*]}"
    (cd "$(drip_root)" && "${cmd[@]}")
}

# ---------------------------------------------------------------------------
# Throwaway clusters
# ---------------------------------------------------------------------------
# Layout under target/NAME: data/ (PGDATA), sock/ (unix socket dir),
# postgres.log, initdb.log, env (PGHOST/PGPORT/PGUSER to source for psql).
# After cluster_start these globals describe the cluster just started:
DRIP_CLUSTER_NAME=""
DRIP_CLUSTER_DIR=""
DRIP_PGDATA=""
DRIP_PGHOST=""
DRIP_PGPORT=""
DRIP_PGUSER=""

_drip_port_in_use() {
    # A successful TCP connect means something listens there.
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# free_port: print a currently unused TCP port on 127.0.0.1 (random, 20000-39999).
free_port() {
    local p i
    for ((i = 0; i < 100; i++)); do
        p=$((20000 + RANDOM % 20000))
        if ! _drip_port_in_use "$p"; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

# stop_pgdata DATADIR: stop a postmaster running in DATADIR, if any: fast
# shutdown first (waits for backends and workers), immediate if that fails
# or takes over 60 s. Returns non-zero only if it is still running.
stop_pgdata() {
    local data="$1"
    [[ -f "$data/postmaster.pid" ]] || return 0
    if as_owner "$PG_BIN/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        as_owner "$PG_BIN/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null 2>&1 ||
            as_owner "$PG_BIN/pg_ctl" -D "$data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
    fi
    if as_owner "$PG_BIN/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        drip_warn "postgres in $data is still running"
        return 1
    fi
    return 0
}

# cluster_start NAME [PORT]
#   Fresh initdb at target/NAME/data (any previous cluster there is stopped
#   and wiped), listening only on 127.0.0.1:PORT (a free port when PORT is
#   empty) plus a unix socket in target/NAME/sock, trust auth, no preloaded
#   libraries, max_worker_processes=32, fsync off. Registers cluster_stop NAME
#   on EXIT before starting, so the cluster is stopped however we exit.
#   Sets DRIP_CLUSTER_NAME/DIR, DRIP_PGDATA, DRIP_PGHOST (socket dir),
#   DRIP_PGPORT and DRIP_PGUSER (superuser role) for psql_as.
cluster_start() {
    local name="$1" want_port="${2:-}"
    local dir data sock log owner
    dir="$(drip_root)/target/$name"
    data="$dir/data"
    sock="$dir/sock"
    log="$dir/postgres.log"
    owner="$(cluster_owner)"

    # A previous run killed with SIGKILL may have left its postmaster behind.
    stop_pgdata "$data" || drip_die "cannot stop the old cluster in $data"
    rm -rf "$data" "$sock"
    rm -f "$log" "$dir/initdb.log" "$dir/env"
    mkdir -p "$data" "$sock"
    chmod 700 "$data"

    # Unix socket paths are limited to 107 bytes; deep checkouts exceed it.
    if ((${#sock} + 20 > 107)); then
        sock="$(mktemp -d /tmp/drip-sock.XXXXXX)"
        drip_warn "socket path too long; using $sock instead"
        drip_on_exit "rm -rf '$sock'"
    fi

    if is_root; then
        chown postgres: "$dir" "$data" "$sock"
        ensure_traversable "$dir"
        ensure_traversable "$sock"
    fi

    drip_on_exit "cluster_stop '$name'"

    as_owner "$PG_BIN/initdb" -D "$data" -U "$owner" --auth=trust \
        --encoding=UTF8 --locale=C --no-sync --no-instructions >"$dir/initdb.log" 2>&1 ||
        {
            cat "$dir/initdb.log" >&2
            drip_die "initdb failed for cluster $name"
        }

    # Appended settings override the defaults earlier in the file.
    cat >>"$data/postgresql.conf" <<EOF

# --- added by scripts/lib.sh cluster_start ---
listen_addresses = '127.0.0.1'
unix_socket_directories = '$sock'
shared_preload_libraries = ''
max_worker_processes = 32
fsync = off
synchronous_commit = off
full_page_writes = off
logging_collector = off
log_line_prefix = '%m [%p] %q%a '
EOF

    local attempt port started=0
    for ((attempt = 1; attempt <= 5; attempt++)); do
        port="$want_port"
        if [[ -z "$port" ]]; then
            port="$(free_port)" || drip_die "no free TCP port found"
        fi
        # The last `port` line wins, so retries just append another one.
        printf 'port = %s\n' "$port" >>"$data/postgresql.conf"
        if as_owner "$PG_BIN/pg_ctl" -D "$data" -l "$log" -w -t 60 start >/dev/null 2>&1; then
            started=1
            break
        fi
        # Someone may have grabbed an auto-picked port between check and bind.
        if [[ -z "$want_port" ]] && grep -q 'could not bind\|Address already in use' "$log" 2>/dev/null; then
            drip_warn "port $port taken, retrying"
            continue
        fi
        break
    done
    if ((!started)); then
        tail -n 30 "$log" >&2 2>/dev/null || true
        drip_die "cluster $name did not start (log: $log)"
    fi

    DRIP_CLUSTER_NAME="$name"
    DRIP_CLUSTER_DIR="$dir"
    DRIP_PGDATA="$data"
    DRIP_PGHOST="$sock"
    DRIP_PGPORT="$port"
    DRIP_PGUSER="$owner"
    printf 'export PGHOST=%q PGPORT=%q PGUSER=%q PGDATABASE=postgres\n' \
        "$sock" "$port" "$owner" >"$dir/env"
    drip_log "cluster $name up: port $port, socket dir $sock, superuser $owner, log $log"
}

# cluster_stop NAME: stop the cluster at target/NAME/data if it runs (fast,
# then immediate). Idempotent; the data directory is left for inspection.
cluster_stop() {
    local name="$1" data
    data="$(drip_root)/target/$name/data"
    if [[ -f "$data/postmaster.pid" ]]; then
        drip_log "stopping cluster $name"
        stop_pgdata "$data"
    fi
}

# psql_as [PSQL ARGS...]: $PG_BIN/psql against the last cluster_start'ed
# cluster, as its superuser, over the unix socket, with ~/.psqlrc ignored (-X)
# and ON_ERROR_STOP=1. Database `postgres` unless -d/--dbname or a positional
# dbname is given (it is passed through PGDATABASE so both forms work).
psql_as() {
    [[ -n "$DRIP_PGPORT" ]] || drip_die "psql_as: no cluster started"
    PGDATABASE=postgres "$PG_BIN/psql" -X -v ON_ERROR_STOP=1 \
        -h "$DRIP_PGHOST" -p "$DRIP_PGPORT" -U "$DRIP_PGUSER" "$@"
}

# with_cluster CMD ARGS...: run CMD with PGHOST/PGPORT/PGUSER/PGDATABASE
# pointing at the last started cluster (for createdb, pg_dump, ...).
with_cluster() {
    [[ -n "$DRIP_PGPORT" ]] || drip_die "with_cluster: no cluster started"
    PGHOST="$DRIP_PGHOST" PGPORT="$DRIP_PGPORT" PGUSER="$DRIP_PGUSER" \
        PGDATABASE="${PGDATABASE:-postgres}" "$@"
}
