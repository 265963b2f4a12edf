#!/usr/bin/env bash
# `make deb`: the Debian package (debian/, dh --buildsystem=meson) built from a copy of the
# working tree, so the tree stays free of debhelper's files, then checked by lintian.
#   packaging/make-deb.sh OUTDIR [VERSION]
# VERSION (e.g. 0.1.0+rebuild1) adds a changelog entry to the copy: a rebuilt package
# that upgrades the installed one (make test-package).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(realpath -m "$1")
version=${2:-}
# DEB_WORK: where the tree is copied and built (one place for every build: the compiler
# cache serves a rebuild, whose object files it keys on the source path).
work=${DEB_WORK:-$out/work}
src="$work/sluice"
mkdir -p "$src"
find "$src" -mindepth 1 -delete
rm -f "$work"/*.deb "$work"/*.ddeb "$work"/*.changes "$work"/*.buildinfo
cd "$root"
git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do [ -e "$f" ] || [ -L "$f" ] && printf '%s\0' "$f"; done |
    tar --null -T - -cf - | tar -xf - -C "$src"
if [ -n "$version" ]; then
    entry=$(printf 'sluice (%s) unstable; urgency=medium\n\n  * Rebuilt.\n\n -- Sluice maintainers <sluice@example.org>  %s\n\n' \
        "$version" "$(date -R)")
    printf '%s\n' "$entry" | cat - "$src/debian/changelog" > "$src/debian/changelog.new"
    mv "$src/debian/changelog.new" "$src/debian/changelog"
fi
cd "$src"
DEB_BUILD_OPTIONS="parallel=${DEB_JOBS:-2} ${DEB_BUILD_OPTIONS:-}" \
    dpkg-buildpackage -b -us -uc --no-sign >"$work/build.log" 2>&1 || {
    tail -50 "$work/build.log"
    echo "make deb: dpkg-buildpackage failed; the whole log: $work/build.log"
    exit 1
}
mkdir -p "$out"
deb=$(ls "$work"/sluice_*.deb)
cp "$deb" "$out/"
echo "make deb: $out/$(basename "$deb")"
# No error and no warning; overrides (debian/sluice.lintian-overrides) are listed.
lintian --fail-on error,warning --show-overrides "$out/$(basename "$deb")"
echo "make deb: lintian: no errors, no warnings"
