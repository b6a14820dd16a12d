#!/usr/bin/env bash
# scripts/citus.sh: build Citus 12.1.12 from its source tarball and install it into one
# PostgreSQL (the one whose pg_config is given), for the Citus test suite (tests/citus.rs).
#
#   scripts/citus.sh                       # into the system PostgreSQL 15 (/usr/bin/pg_config)
#   scripts/citus.sh /path/to/pg_config    # into another installation (e.g. a private copy)
#
# Citus is in no package registry these machines reach (not Debian 12, PyPI, crates.io or npm),
# so it is built from the unmodified release tarball (`git archive` of tag v12.1.12, see
# ../shared/citus/README.md). About 2 minutes on 2 cores.
#
# Environment:
#   DRIP_CITUS_SRC   the tarball (default: <repo>/../shared/citus/citus-12.1.12.tar.gz). It is only
#                    read; the sources are extracted under target/citus-build/.
#   DRIP_CITUS_JOBS  make parallelism (default: nproc)
#
# Cached: when $(pg_config --pkglibdir)/citus.so is Citus 12.1.12 and the control file in
# $(pg_config --sharedir)/extension names its SQL version (12.1-1), nothing is built.
#
# The last line on stdout says what happened, for scripts/test.sh; everything else goes to stderr:
#   installed <pkglibdir>/citus.so   Citus 12.1.12 is installed there (built now or cached)
#   skipped                          the tarball is absent: a user's machine without it. The script
#                                    says why and exits 0: a missing Citus is not a failure.
# Any other outcome exits non-zero.
#
# As root (CI: a fresh Debian 12) the Debian build dependencies are installed when missing. An
# ordinary user gets the exact commands to run instead; the build itself runs as that user, and
# the install uses `sudo -n` when the PostgreSQL directories are not writable (else it prints the
# command).
set -euo pipefail
umask 022

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

readonly CITUS_VERSION=12.1.12
# default_version in citus.control for every 12.1.x release.
readonly CITUS_SQL_VERSION=12.1-1

ROOT="$(drip_root)"
PGC="${1:-/usr/bin/pg_config}"
SRC="${DRIP_CITUS_SRC:-$ROOT/../shared/citus/citus-$CITUS_VERSION.tar.gz}"
JOBS="${DRIP_CITUS_JOBS:-$(nproc 2>/dev/null || echo 2)}"

[[ -x "$PGC" ]] || drip_die "pg_config not found at $PGC"
PKGLIBDIR="$("$PGC" --pkglibdir)"
SHAREDIR="$("$PGC" --sharedir)"
MAJOR="$("$PGC" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')"
SO="$PKGLIBDIR/citus.so"
CONTROL="$SHAREDIR/extension/citus.control"

# installed_ok: Citus $CITUS_VERSION is what the PostgreSQL of $PGC has.
installed_ok() {
    [[ -f "$SO" && -f "$CONTROL" ]] || return 1
    grep -Eq "^default_version[[:space:]]*=[[:space:]]*'$CITUS_SQL_VERSION'" "$CONTROL" || return 1
    # citus_version() reports this string; it is a literal in the library.
    grep -aq "Citus $CITUS_VERSION" "$SO"
}

if installed_ok; then
    drip_log "Citus $CITUS_VERSION is already installed in $PKGLIBDIR (cached)"
    echo "installed $SO"
    exit 0
fi

if [[ ! -f "$SRC" ]]; then
    drip_log "citus suite skipped: $SRC not found (Citus is in no registry these machines reach)"
    echo skipped
    exit 0
fi

case "$MAJOR" in
14 | 15 | 16) ;;
*) drip_die "Citus $CITUS_VERSION supports PostgreSQL 14-16, not $MAJOR ($PGC)" ;;
esac

# --- build dependencies (Debian) ------------------------------------------------------------
deps=(build-essential libcurl4-openssl-dev liblz4-dev libzstd-dev libkrb5-dev)
# Debian's own server needs its headers package; a private installation carries its headers.
if [[ "$("$PGC" --includedir-server)" == /usr/include/postgresql/* ]]; then
    deps+=("postgresql-server-dev-$MAJOR")
fi
if command -v dpkg-query >/dev/null 2>&1; then
    missing=()
    for p in "${deps[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if ((${#missing[@]})); then
        if is_root; then
            drip_log "installing Citus build dependencies: ${missing[*]}"
            DEBIAN_FRONTEND=noninteractive apt-get update </dev/null >&2
            DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" </dev/null >&2
        else
            as_root="sudo "
            command -v sudo >/dev/null 2>&1 || as_root="(as root) "
            drip_log "Citus's build dependencies are missing; nothing was installed. Run:"
            printf '    %sapt-get update\n' "$as_root" >&2
            printf '    %senv DEBIAN_FRONTEND=noninteractive apt-get install -y %s\n' "$as_root" "${missing[*]}" >&2
            printf '    %q %q\n' "$ROOT/scripts/citus.sh" "$PGC" >&2
            exit 1
        fi
    fi
fi

# --- build ---------------------------------------------------------------------------------
BUILD="$ROOT/target/citus-build"
mkdir -p "$BUILD"
# Two suites (or two checkouts sharing target/) must not build into one directory at once.
exec 9>"$BUILD/.lock"
flock 9
if installed_ok; then
    drip_log "Citus $CITUS_VERSION was installed in $PKGLIBDIR meanwhile"
    echo "installed $SO"
    exit 0
fi

# One build directory per PostgreSQL installation: configure records its pg_config.
tree="$BUILD/pg$MAJOR-$(printf '%s' "$PGC" | md5sum | cut -c1-8)"
dir="$tree/citus-$CITUS_VERSION"
start=$SECONDS
if [[ ! -f "$dir/.built" ]]; then
    rm -rf "$tree"
    mkdir -p "$tree"
    drip_log "extracting $SRC into $tree"
    tar -xzf "$SRC" -C "$tree"
    [[ -x "$dir/configure" ]] || drip_die "$SRC does not contain citus-$CITUS_VERSION/configure"
    drip_log "building Citus $CITUS_VERSION for $PGC (make -j$JOBS; about 2 minutes on 2 cores)"
    (cd "$dir" && ./configure PG_CONFIG="$PGC" >"$tree/configure.log" 2>&1) || {
        tail -n 40 "$tree/configure.log" >&2
        drip_die "Citus configure failed (log: $tree/configure.log)"
    }
    (cd "$dir" && make -j"$JOBS" >"$tree/make.log" 2>&1) || {
        grep -E 'error|Error' "$tree/make.log" | head -n 40 >&2
        drip_die "Citus build failed (log: $tree/make.log)"
    }
    touch "$dir/.built"
    drip_log "Citus built in $((SECONDS - start))s"
fi

# --- install -------------------------------------------------------------------------------
install_cmd=(make -C "$dir" install)
if [[ -w "$PKGLIBDIR" && -w "$SHAREDIR/extension" ]]; then
    "${install_cmd[@]}" >"$tree/install.log" 2>&1 || {
        tail -n 30 "$tree/install.log" >&2
        drip_die "make install failed (log: $tree/install.log)"
    }
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo -n "${install_cmd[@]}" >"$tree/install.log" 2>&1 || {
        tail -n 30 "$tree/install.log" >&2
        drip_die "sudo make install failed (log: $tree/install.log)"
    }
else
    drip_log "$PKGLIBDIR is not writable and sudo needs a password. Citus is built; install it with:"
    printf '    sudo %s\n' "${install_cmd[*]}" >&2
    printf 'then run this again.\n' >&2
    exit 1
fi
installed_ok || drip_die "make install ran, but $SO is not Citus $CITUS_VERSION"
drip_log "Citus $CITUS_VERSION installed into $PKGLIBDIR ($((SECONDS - start))s)"
echo "installed $SO"
