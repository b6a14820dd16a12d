#!/usr/bin/env bash
# scripts/package.sh: build the Debian package of data_drip for one PostgreSQL major, and
# optionally smoke-test it.
#
#   scripts/package.sh 15            # target/packages/postgresql-15-data-drip_0.2.0-1_amd64.deb
#   scripts/package.sh --smoke 15    # ... then dpkg -i it, CREATE EXTENSION and run a small
#                                    # backfill in a fresh cluster, and dpkg -r it (as root)
#
# The package is laid out like Debian's own extension packages (postgresql-NN-<name>): the
# library in /usr/lib/postgresql/NN/lib, the control file and every SQL script (install scripts
# of this and earlier releases, upgrade scripts) in /usr/share/postgresql/NN/extension. It is
# built from `cargo pgrx package` output against the headers of scripts/postgres.sh NN, then
# moved into that layout, so a package for 16, 17 or 18 installs next to Debian's (or PGDG's)
# postgresql-NN. The smoke test needs Debian's server for that major, which this machine has for
# 15 only.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

smoke=0
if [[ "${1:-}" == "--smoke" ]]; then
    smoke=1
    shift
fi
major="${1:?usage: scripts/package.sh [--smoke] 15|16|17|18}"
ROOT="$(drip_root)"
cd "$ROOT"

version="$(sed -nE 's/^version = "([^"]+)"/\1/p' Cargo.toml | head -n 1)"
revision=1
arch="$(dpkg --print-architecture 2>/dev/null || echo amd64)"
name="postgresql-$major-data-drip"
out="$ROOT/target/packages"
build="$out/build-$major"
deb="$out/${name}_${version}-${revision}_${arch}.deb"

if [[ "$major" == 15 ]]; then
    cfg="$PG_CONFIG"
else
    cfg="$(bash "$ROOT/scripts/postgres.sh" "$major" | tail -n 1)"
fi

drip_log "building data_drip $version for PostgreSQL $major ($cfg)"
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
for f in data_drip.control "data_drip--$version.sql" "data_drip--0.1.0--$version.sql"; do
    [[ -f "$extdir/$f" ]] || drip_die "package lacks $f"
done

size_kb="$(du -sk "$root/usr" | cut -f1)"
cat >"$root/DEBIAN/control" <<EOF
Package: $name
Version: $version-$revision
Architecture: $arch
Maintainer: data_drip maintainers <data-drip@example.invalid>
Installed-Size: $size_kb
Depends: postgresql-$major, libc6
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
dpkg-deb --contents "$deb" | awk '{ print "    " $NF }' >&2

((smoke)) || exit 0

# ---------------------------------------------------------------------------------------------
# Smoke test: the package alone (no build tree, no cargo) installs, works and uninstalls.
# ---------------------------------------------------------------------------------------------
is_root || drip_die "--smoke installs a package: run as root"
[[ -x "/usr/lib/postgresql/$major/bin/postgres" ]] ||
    drip_die "--smoke needs Debian's postgresql-$major server"
PG_BIN="/usr/lib/postgresql/$major/bin"
extfiles=("/usr/lib/postgresql/$major/lib/data_drip.so" "/usr/share/postgresql/$major/extension/data_drip.control")
# The development install (cargo pgrx install) puts the same files there; move them aside so
# only the package provides them, and put them back afterwards.
aside="$build/aside"
mkdir -p "$aside"
for f in "${extfiles[@]}" /usr/share/postgresql/"$major"/extension/data_drip--*.sql; do
    [[ -e "$f" ]] && ! dpkg -S "$f" >/dev/null 2>&1 && mv "$f" "$aside/"
done
restore_aside() {
    dpkg -r "$name" >/dev/null 2>&1 || true
    local f
    for f in "$aside"/*; do
        [[ -e "$f" ]] || continue
        case "$f" in
        *.so) mv "$f" "/usr/lib/postgresql/$major/lib/" ;;
        *) mv "$f" "/usr/share/postgresql/$major/extension/" ;;
        esac
    done
}
drip_on_exit restore_aside

dpkg -i "$deb"
cluster_start package ""
# Run the check from a directory without the sources, with no cargo on PATH.
(cd / && PATH=/usr/bin:/bin:/usr/sbin:/sbin psql_as -q) <<'SQL'
CREATE EXTENSION data_drip;
CREATE TABLE smoke (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
INSERT INTO smoke (id) SELECT generate_series(1, 1000);
SELECT drip.register('smoke', 'smoke', 'SET n = n + 1', batch_size => 100, sleep => '0');
SELECT drip.start('smoke') AS run \gset
SELECT drip.wait(:run, '60 seconds') AS status \gset
DO $$
BEGIN
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
cluster_stop package
dpkg -r "$name"
for f in "${extfiles[@]}"; do
    [[ ! -e "$f" ]] || drip_die "dpkg -r left $f behind"
done
drip_log "smoke test passed: dpkg -i, CREATE EXTENSION, a 1,000-row backfill, dpkg -r"
