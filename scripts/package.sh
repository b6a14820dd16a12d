#!/usr/bin/env bash
# scripts/package.sh: build the Debian package of data_drip for one PostgreSQL major, and
# optionally smoke-test it.
#
#   scripts/package.sh 17            # target/packages/postgresql-17-data-drip_0.3.0-1_amd64.deb
#   scripts/package.sh --smoke 17    # ... then, in a Debian root with PostgreSQL 17 and without
#                                    # Rust: dpkg -i it, CREATE EXTENSION and run a small
#                                    # backfill in a fresh cluster, dpkg -r it (needs root)
#   scripts/package.sh --root-only 17  # only make (or find) the Debian root the smoke test
#                                    # uses, and print its path (scripts/test.sh prefetches)
#
# The package is laid out like Debian's own extension packages (postgresql-NN-<name>): the
# library in /usr/lib/postgresql/NN/lib, the control file and every SQL script (install scripts
# of this and earlier releases, upgrade scripts) in /usr/share/postgresql/NN/extension. It is
# built from `cargo pgrx package` output against the headers of scripts/postgres.sh NN (15:
# Debian 12's own), then moved into that layout, so it installs next to Debian's (or PGDG's)
# postgresql-NN. Depends: postgresql-NN plus the shared libraries the .so links, as
# dpkg-shlibdeps computes them. cargo honours CARGO_TARGET_DIR (e.g. target/pkg, to keep package
# builds apart from a development build).
#
# The smoke test never touches the host's PostgreSQL. It runs in a minimal Debian root made by
# scripts/debroot.sh (cached; about 2 minutes the first time), mounted under a throwaway overlay
# inside a private mount and PID namespace, so every file and process of the test is gone when it
# ends and the cached root stays clean. The root has no Rust toolchain, no build tree and no
# cargo on PATH. In it: dpkg -i, a fresh initdb cluster as user postgres, CREATE EXTENSION, a
# 1,000-row backfill to completion with every row processed exactly once, DROP EXTENSION, stop,
# dpkg -r, and a check that no file of the package is left (inside the root, and again from the
# host in the overlay's upper layer).
#
#   major  root      server in the root
#   15     bookworm  Debian's postgresql-15
#   17     trixie    Debian's postgresql-17
#   18     sid       Debian's postgresql-18
#   16     trixie    a STAND-IN: no Debian suite reachable from here has postgresql-16, so the
#                    server is the PyPI build scripts/postgres.sh 16 uses (16.14, without ICU and
#                    OpenSSL), copied into the root with its library directory and share
#                    directory redirected (symlinks) to Debian's /usr/lib/postgresql/16/lib and
#                    /usr/share/postgresql/16. This still tests that the package's files land
#                    where a PostgreSQL 16 looks for them, that the .so loads in a 16 server and
#                    works there, and that dpkg -r removes everything. It does NOT test the
#                    package's dependency on postgresql-16 (dpkg -i runs with --force-depends,
#                    and the check asserts that postgresql-16 is the only unmet dependency) nor
#                    loading into Debian's or PGDG's own 16 build.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

smoke=0 root_only=0
if [[ "${1:-}" == "--smoke" ]]; then
    smoke=1
    shift
elif [[ "${1:-}" == "--root-only" ]]; then
    smoke=1 root_only=1
    shift
fi
major="${1:?usage: scripts/package.sh [--smoke] 15|16|17|18}"
case "$major" in
15 | 16 | 17 | 18) ;;
*) drip_die "usage: scripts/package.sh [--smoke] 15|16|17|18" ;;
esac
ROOT="$(drip_root)"
cd "$ROOT"

version="$(sed -nE 's/^version = "([^"]+)"/\1/p' Cargo.toml | head -n 1)"
revision=1
arch="$(dpkg --print-architecture 2>/dev/null || echo amd64)"
name="postgresql-$major-data-drip"
out="$ROOT/target/packages"
build="$out/build-$major"
debfile="${name}_${version}-${revision}_${arch}.deb"
deb="$out/$debfile"

if ((smoke)) && ! is_root; then
    drip_die "--smoke installs the package in a chroot: run as root (or build only, without --smoke)"
fi

# The Debian root of the smoke test: suite and server package (16: see the top of this file).
case "$major" in
15) suite=bookworm server=postgresql-15 ;;
16 | 17) suite=trixie server=postgresql-17 ;;
18) suite=sid server=postgresql-18 ;;
esac
if ((root_only)); then
    exec bash "$ROOT/scripts/debroot.sh" "$suite" "$server" </dev/null
fi

if [[ "$major" == 15 ]]; then
    cfg="$PG_CONFIG"
else
    cfg="$(bash "$ROOT/scripts/postgres.sh" "$major" | tail -n 1)"
fi

drip_log "building data_drip $version for PostgreSQL $major ($cfg)"
# A previous smoke test leaves its overlay layers (files of other owners) here: wipe as root.
rm -rf "$build"
cargo pgrx package --pg-config "$cfg" --out-dir "$build/pgrx" </dev/null

# Move the files into Debian's layout.
root="$build/root"
libdir="$root/usr/lib/postgresql/$major/lib"
extdir="$root/usr/share/postgresql/$major/extension"
mkdir -p "$libdir" "$extdir" "$root/DEBIAN" "$root/usr/share/doc/$name"
so="$(find "$build/pgrx" -name 'data_drip.so' -type f | head -n 1)"
[[ -n "$so" ]] || drip_die "cargo pgrx package produced no data_drip.so"
install -m 0644 "$so" "$libdir/data_drip.so"
find "$build/pgrx" \( -name 'data_drip.control' -o -name 'data_drip--*.sql' \) -type f \
    -exec install -m 0644 {} "$extdir/" \;
# Every released install script, so CREATE EXTENSION ... VERSION and upgrades from it work.
install -m 0644 sql/data_drip--*.sql "$extdir/"
install -m 0644 CHANGELOG.md "$root/usr/share/doc/$name/changelog"
# The upgrade path from each release: 0.1.0 -> 0.2.0 -> this version.
for f in data_drip.control "data_drip--$version.sql" data_drip--0.1.0.sql data_drip--0.2.0.sql \
    data_drip--0.1.0--0.2.0.sql "data_drip--0.2.0--$version.sql"; do
    [[ -f "$extdir/$f" ]] || drip_die "package lacks $f"
done

# The libraries the .so links (libc6, libgcc-s1 for unwinding), with the minimum versions its
# symbols need, as Debian's own packages declare them.
shlibs="$build/shlibdeps"
mkdir -p "$shlibs/debian"
printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "$name" "$name" >"$shlibs/debian/control"
libdeps="$(cd "$shlibs" && dpkg-shlibdeps -O "$libdir/data_drip.so" 2>/dev/null |
    sed -n 's/^shlibs:Depends=//p')"
[[ -n "$libdeps" ]] || drip_die "dpkg-shlibdeps found no dependencies for data_drip.so"
rm -rf "$shlibs"

size_kb="$(du -sk "$root/usr" | cut -f1)"
cat >"$root/DEBIAN/control" <<EOF
Package: $name
Version: $version-$revision
Architecture: $arch
Maintainer: data_drip maintainers <data-drip@example.invalid>
Installed-Size: $size_kb
Depends: postgresql-$major, $libdeps
Section: database
Priority: optional
Homepage: https://example.invalid/data_drip
Description: batched data backfills executed inside PostgreSQL $major
 data_drip runs data backfills (batched data migrations) in the database: register a
 backfill in SQL, start runs with typed parameters, and pause, resume, stop and inspect
 them while a background worker walks the table in keyset batches.
EOF
mkdir -p "$out"
rm -f "$deb"
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
drip_log "built $deb"
dpkg-deb --field "$deb" Depends | sed 's/^/    Depends: /' >&2
dpkg-deb --contents "$deb" | awk '{ print "    " $NF }' >&2

((smoke)) || exit 0

# ---------------------------------------------------------------------------------------------
# Smoke test in a Debian root (see the top of this file).
# ---------------------------------------------------------------------------------------------
standin=""
if [[ "$major" == 16 ]]; then standin="$(dirname "$(dirname "$cfg")")"; fi
rootfs="$(bash "$ROOT/scripts/debroot.sh" "$suite" "$server" | tail -n 1)"
[[ -d "$rootfs/usr" ]] || drip_die "scripts/debroot.sh printed no root ('$rootfs')"

smoke_dir="$build/smoke"
upper="$smoke_dir/upper"
rm -rf "$smoke_dir"
mkdir -p "$upper/smoke" "$smoke_dir/work" "$smoke_dir/merged"
cp "$deb" "$upper/smoke/"
standin_bin=""
if [[ -n "$standin" ]]; then
    # The server directory of the wheel (bin, lib, share, ...) and the wheel's bundled libraries
    # next to it, which the client programs find through $ORIGIN-relative RUNPATHs.
    pgcache="$standin"
    while [[ "$pgcache" != / && ! -f "$pgcache/.data_drip-pg" ]]; do pgcache="$(dirname "$pgcache")"; done
    [[ "$pgcache" != / ]] || drip_die "no scripts/postgres.sh cache above $cfg"
    mkdir -p "$upper/opt"
    cp -a "$pgcache" "$upper/opt/pg$major"
    standin_bin="/opt/pg$major/$(realpath --relative-to="$pgcache" "$("$cfg" --bindir)")"
fi

cat >"$upper/smoke/smoke.sql" <<'SQL'
\set ON_ERROR_STOP 1
SELECT set_config('smoke.expect_major', :'expect_major', false) \gset
CREATE EXTENSION data_drip;
CREATE TABLE smoke (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
INSERT INTO smoke (id) SELECT generate_series(1, 1000);
SELECT drip.register('smoke', 'smoke', 'SET n = n + 1', batch_size => 100, sleep => '0') IS NOT NULL AS registered \gset
SELECT drip.start('smoke') AS run \gset
SELECT drip.wait(:run, '60 seconds') AS status \gset
SELECT set_config('smoke.status', :'status', false) \gset
DO $$
BEGIN
    IF current_setting('server_version_num')::int / 10000 <> current_setting('smoke.expect_major')::int THEN
        RAISE EXCEPTION 'smoke test: connected to PostgreSQL %, expected %',
            current_setting('server_version'), current_setting('smoke.expect_major');
    END IF;
    IF current_setting('smoke.status') <> 'completed' THEN
        RAISE EXCEPTION 'smoke test: the run ended %, not completed', current_setting('smoke.status');
    END IF;
    IF (SELECT count(*) FROM smoke WHERE n <> 1) <> 0 THEN
        RAISE EXCEPTION 'smoke test: rows not processed exactly once';
    END IF;
    IF (SELECT extversion FROM pg_extension WHERE extname = 'data_drip') IS DISTINCT FROM
       (SELECT default_version FROM pg_available_extensions WHERE name = 'data_drip') THEN
        RAISE EXCEPTION 'smoke test: unexpected version';
    END IF;
END $$;
DROP EXTENSION data_drip;
SQL

# Runs inside the root, as its root user, with no host environment.
cat >"$upper/smoke/smoke.sh" <<'SH'
#!/bin/bash
set -euo pipefail
major="$1" name="$2" debfile="$3" suite="$4" standin_bin="${5:-}"
say() { printf '==> [%s root] %s\n' "$suite" "$*" >&2; }
die() {
    printf 'ERROR: smoke test: %s\n' "$*" >&2
    exit 1
}
bindir="/usr/lib/postgresql/$major/bin"
libdir="/usr/lib/postgresql/$major/lib"
sharedir="/usr/share/postgresql/$major"
for tool in cargo rustc pgrx; do
    ! command -v "$tool" >/dev/null 2>&1 || die "$tool is on PATH in the root"
done

dpkg_opts=()
if [[ -n "$standin_bin" ]]; then
    # Stand-in server (see scripts/package.sh): redirect its own library and share directories
    # to Debian's paths, where dpkg will put the package's files.
    pgc="$standin_bin/pg_config"
    pkglib="$("$pgc" --pkglibdir)"
    share="$("$pgc" --sharedir)"
    mkdir -p "$libdir" "$sharedir"
    mv "$pkglib"/* "$libdir/" && rmdir "$pkglib" && ln -s "$libdir" "$pkglib"
    mv "$share"/* "$sharedir/" && rmdir "$share" && ln -s "$sharedir" "$share"
    ln -s "$standin_bin" "$bindir"
    say "PostgreSQL $major stand-in: $("$bindir/postgres" --version)"
    # Its only unmet dependency may be the server package itself.
    unmet="$(dpkg-deb --field "/smoke/$debfile" Depends | tr ',' '\n' | sed 's/^ *//; s/ .*//' |
        while read -r dep; do
            [[ "$(dpkg-query -W -f='${Status}' "$dep" 2>/dev/null)" == "install ok installed" ]] ||
                echo "$dep"
        done)"
    [[ "$unmet" == "postgresql-$major" ]] || die "unmet dependencies: '$unmet' (expected only postgresql-$major)"
    dpkg_opts=(--force-depends)
else
    say "server: $(dpkg-query -W -f='${Package} ${Version}' "postgresql-$major")"
fi
[[ -x "$bindir/postgres" ]] || die "no $bindir/postgres"

say "dpkg -i ${dpkg_opts[*]} $debfile"
dpkg -i "${dpkg_opts[@]}" "/smoke/$debfile"
[[ "$(dpkg-query -W -f='${Status}' "$name")" == "install ok installed" ]] || die "$name is not installed"
mapfile -t files < <(dpkg -L "$name" | while read -r f; do [[ -d "$f" ]] || echo "$f"; done)
for f in "$libdir/data_drip.so" "$sharedir/extension/data_drip.control"; do
    [[ -f "$f" ]] || die "$f is not installed"
done

mkdir -p /smoke/run
install -d -o postgres -g postgres -m 0700 /smoke/run/data
install -d -o postgres -g postgres -m 0755 /smoke/run/sock
cd /
runuser -u postgres -- "$bindir/initdb" -D /smoke/run/data -U postgres --auth=trust \
    --encoding=UTF8 --locale=C --no-sync >/smoke/run/initdb.log 2>&1 ||
    { cat /smoke/run/initdb.log >&2; die "initdb failed"; }
cat >>/smoke/run/data/postgresql.conf <<EOF
listen_addresses = ''
unix_socket_directories = '/smoke/run/sock'
max_worker_processes = 16
fsync = off
EOF
touch /smoke/run/postgres.log
chown postgres: /smoke/run/postgres.log
runuser -u postgres -- "$bindir/pg_ctl" -D /smoke/run/data -l /smoke/run/postgres.log -w -t 60 start >/dev/null ||
    { tail -n 30 /smoke/run/postgres.log >&2; die "the server did not start"; }
say "CREATE EXTENSION data_drip and a 1,000-row backfill"
rc=0
runuser -u postgres -- "$bindir/psql" -X -q -h /smoke/run/sock -d postgres \
    -v expect_major="$major" -f /smoke/smoke.sql || rc=$?
runuser -u postgres -- "$bindir/pg_ctl" -D /smoke/run/data -m fast -w -t 60 stop >/dev/null
if ((rc != 0)); then
    tail -n 30 /smoke/run/postgres.log >&2
    die "psql failed (exit $rc)"
fi

say "dpkg -r $name"
dpkg -r "$name"
status="$(dpkg-query -W -f='${db:Status-Status}' "$name" 2>/dev/null || true)"
[[ -z "$status" || "$status" == not-installed ]] || die "$name is still '$status' after dpkg -r"
for f in "${files[@]}"; do
    [[ ! -e "$f" && ! -L "$f" ]] || die "dpkg -r left $f behind"
done
left="$(find /usr /etc /var/lib/dpkg \( -name 'data_drip.so' -o -name 'data_drip.control' \
    -o -name 'data_drip--*.sql' -o -name "$name" -o -name "$name.*" \) | head)"
[[ -z "$left" ]] || die "left behind: $left"
say "passed: ${#files[@]} files installed and removed"
SH

drip_log "smoke test of $debfile in the $suite root ($rootfs)"
# A private mount and PID namespace: the overlay, /proc and every process started in the root end
# with it, whatever happens. The cached root is the read-only lower layer.
# shellcheck disable=SC2016 # the inner script expands its own arguments
unshare --mount --pid --fork --kill-child -- "$BASH" -c '
    set -e
    lower="$1" dir="$2"
    shift 2
    mount -t overlay overlay -o "lowerdir=$lower,upperdir=$dir/upper,workdir=$dir/work" "$dir/merged"
    mount -t proc proc "$dir/merged/proc"
    mount -t tmpfs -o mode=1777 tmpfs "$dir/merged/dev/shm"
    exec chroot "$dir/merged" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
        HOME=/root DEBIAN_FRONTEND=noninteractive /bin/bash /smoke/smoke.sh "$@"
' _ "$rootfs" "$smoke_dir" "$major" "$name" "$debfile" "$suite" "$standin_bin" </dev/null

# From the host: the overlay's upper layer holds every file the test created or changed in the
# root; none of the package's may remain (deleted files of the lower layer would show as
# whiteouts, character devices, which are skipped).
left="$(find "$upper" -path "$upper/smoke" -prune -o ! -type c \( -name 'data_drip.so' \
    -o -name 'data_drip.control' -o -name 'data_drip--*.sql' -o -name "$name" -o -name "$name.*" \) \
    -print | head)"
[[ -z "$left" ]] || drip_die "files of $name left in the root: $left"
# Kept for inspection only when the test fails (the 16 stand-in's copy alone is 140 MB).
rm -rf "$smoke_dir"
drip_log "smoke test passed for PostgreSQL $major: dpkg -i, CREATE EXTENSION, a 1,000-row backfill, dpkg -r, nothing left"
