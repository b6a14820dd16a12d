#!/usr/bin/env bash
# scripts/debroot.sh: provide a minimal Debian root file system of one suite with some packages
# installed, for chroot tests (scripts/package.sh --smoke), and print its path as the last line
# on stdout. Everything else goes to stderr.
#
#   scripts/debroot.sh trixie postgresql-17     # /var/cache/data_drip/debroot/trixie
#   scripts/debroot.sh --force sid postgresql-18
#
# The root is made once with `debootstrap --variant=minbase SUITE` from the Debian archive and
# kept in a cache; later calls only install packages it lacks. It is never used directly: the
# smoke tests mount it read-only under an overlay that vanishes when they end, so the cache stays
# as this script left it. --force throws a cached root away and makes it again (sid moves on;
# a cached sid root keeps the versions of the day it was made).
#
# Inside the root, services are never started (policy-rc.d says no), and postgresql-common makes
# no "main" cluster when a postgresql-NN package is installed. apt runs in the root with its own
# sources.list, so the host's apt state is untouched.
#
# Environment:
#   DRIP_DEBROOT_CACHE  cache directory (default /var/cache/data_drip/debroot); SUITE lives in
#                       $DRIP_DEBROOT_CACHE/SUITE, about 0.5-0.6 GB with a PostgreSQL server
#   DRIP_DEBIAN_MIRROR  archive to debootstrap from (default http://deb.debian.org/debian)
#
# Needs root (debootstrap, chroot, mount), and installs debootstrap on the host if it is missing.
# Measured on a 2-core machine, nothing cached (debootstrap + apt-get install): bookworm +
# postgresql-15 33 + 12 s, trixie + postgresql-17 22 + 13 s, sid + postgresql-18 30 + 12 s; about
# 1.5 times that while cargo compiles alongside. Each root is about 0.5 GB.

set -euo pipefail
umask 022

PATH="$PATH:/usr/sbin:/sbin"
export PATH
readonly MARKER=.data_drip-root

log() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'ERROR: %s\n' "$*" >&2
    exit 1
}

# in_root ROOT CMD...: run CMD in ROOT with /proc mounted, in a private mount and PID namespace,
# so the mount and any process started there end with the call. No host environment goes in.
# shellcheck disable=SC2016 # the inner script expands its own arguments
in_root() {
    local root="$1"
    shift
    unshare --mount --pid --fork --kill-child -- \
        "$BASH" -c 'mount -t proc proc "$1/proc" && exec chroot "$@"' _ "$root" \
        /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root \
        DEBIAN_FRONTEND=noninteractive "$@"
}

# shellcheck disable=SC2016 # ${Status} is a dpkg-query field
missing_in_root() {
    local root="$1" p
    shift
    for p in "$@"; do
        [[ "$(chroot "$root" dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" == "install ok installed" ]] ||
            printf '%s\n' "$p"
    done
}

main() {
    local force=0
    if [[ "${1:-}" == --force ]]; then
        force=1
        shift
    fi
    local suite="${1:?usage: scripts/debroot.sh [--force] SUITE [PACKAGE...]}"
    shift
    [[ "$suite" =~ ^[a-z][a-z0-9-]*$ ]] || die "not a suite name: '$suite'"
    [[ "$(id -u)" -eq 0 ]] || die "making a Debian root needs root (debootstrap, chroot, mount)"

    local cache="${DRIP_DEBROOT_CACHE:-/var/cache/data_drip/debroot}"
    local mirror="${DRIP_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
    mkdir -p "$cache"
    cache="$(cd "$cache" && pwd -P)"
    local root="$cache/$suite"

    # One maker per suite at a time; others wait and then find the root made.
    exec 9>"$cache/.$suite.lock"
    if ! flock -n 9; then
        log "another process is preparing the $suite root; waiting"
        flock 9
    fi

    if ((force)) || [[ ! -f "$root/$MARKER" ]]; then
        if ! command -v debootstrap >/dev/null 2>&1; then
            log "installing debootstrap"
            DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
            DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
                --no-install-recommends debootstrap >&2
        fi
        local tmp="$cache/.$suite.tmp" start=$SECONDS
        rm -rf "$tmp" "$root"
        log "debootstrap --variant=minbase $suite from $mirror (log: $cache/.$suite.debootstrap.log)"
        if ! debootstrap --variant=minbase "$suite" "$tmp" "$mirror" >"$cache/.$suite.debootstrap.log" 2>&1; then
            tail -n 30 "$cache/.$suite.debootstrap.log" >&2
            die "debootstrap $suite failed; full log: $cache/.$suite.debootstrap.log"
        fi
        # No daemons started by package scripts, no default cluster from postgresql-common.
        printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
        chmod 0755 "$tmp/usr/sbin/policy-rc.d"
        mkdir -p "$tmp/etc/postgresql-common"
        printf 'create_main_cluster = false\n' >"$tmp/etc/postgresql-common/createcluster.conf"
        printf 'suite=%s\nmirror=%s\nmade=%s\n' "$suite" "$mirror" "$(date -u +%FT%TZ)" >"$tmp/$MARKER"
        mv "$tmp" "$root"
        log "$suite root made in $((SECONDS - start))s"
    fi

    local -a missing
    mapfile -t missing < <(missing_in_root "$root" "$@")
    if ((${#missing[@]})); then
        local start=$SECONDS
        # The archive mirror reachable from CI machines can lag behind Debian's (sid's Release
        # file was past its Valid-Until here); the host's apt is configured to accept that, and
        # the root's apt must be too. Signatures are still checked against the Debian keyring.
        printf 'Acquire::Check-Valid-Until "false";\nAcquire::Check-Date "false";\n' \
            >"$root/etc/apt/apt.conf.d/99data-drip-mirror"
        log "installing ${missing[*]} in the $suite root"
        local aptlog="$cache/.$suite.apt.log"
        if ! in_root "$root" sh -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends \
            -o Dpkg::Options::=--force-confold "$@" && apt-get clean' _ "${missing[@]}" >"$aptlog" 2>&1; then
            tail -n 30 "$aptlog" >&2
            die "apt-get install ${missing[*]} failed in $root; full log: $aptlog"
        fi
        mapfile -t missing < <(missing_in_root "$root" "$@")
        ((${#missing[@]} == 0)) || die "still missing in $root: ${missing[*]}"
        log "installed in $((SECONDS - start))s"
    fi
    exec 9>&-
    printf '%s\n' "$root"
}

# One line, so bash has read it whole before running it (see scripts/postgres.sh).
main "$@"; exit
