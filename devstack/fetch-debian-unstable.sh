#!/usr/bin/env bash
# fetch-debian-unstable.sh DIR PACKAGE DEST BINARY...: a Debian unstable package, unpacked (not
# installed) into DIR/DEST, checked to hold usr/bin/BINARY for each BINARY.
#
# Debian 12 packages containerd 1.6 only; the tests also run 2.1 (package containerd), which
# unstable ships and which needs nothing but runc and libc; the study compares lazy2dfs with the
# SOCI snapshotter (package soci-snapshotter), which only unstable packages. apt runs with a private configuration under DIR/apt: no
# system apt setting, list, cache or dpkg database is read or written, and nothing is
# installed. Signatures are checked against Debian's archive keyring. Idempotent: once
# unpacked, nothing is downloaded again (FORCE=1 redoes it).
#
# Env: MIRROR (default: deb.debian.org, the host the system's sources use), SUITE (unstable),
#      KEYRING (/usr/share/keyrings/debian-archive-keyring.gpg), FORCE.
set -euo pipefail

if [ $# -lt 4 ]; then
    echo "usage: $0 DIR PACKAGE DEST BINARY..." >&2
    exit 2
fi
mkdir -p "$1"
DIR=$(cd "$1" && pwd)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=${SUITE:-unstable}
KEYRING=${KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}
ARCH=$(dpkg --print-architecture)
PACKAGE=$2
DEST="$DIR/$3"
shift 3
BINARIES="$*"

if [ "${FORCE:-0}" != 1 ] && [ -f "$DEST/.unpacked" ]; then
    exit 0
fi

A="$DIR/apt"
mkdir -p "$A/etc/apt.conf.d" "$A/etc/preferences.d" "$A/etc/sources.list.d" \
         "$A/etc/trusted.gpg.d" "$A/state/lists/partial" "$A/cache/archives/partial" \
         "$A/log" "$A/debs"
: > "$A/state/status"  # an empty dpkg status: the system's package database is never read
[ -e "$A/state/extended_states" ] || : > "$A/state/extended_states"
# apt downloads as the unprivileged _apt user when it exists: let it write where it downloads.
if id _apt >/dev/null 2>&1; then
    chown _apt:root "$A/state/lists/partial" "$A/cache/archives/partial" "$A/debs"
fi

cat > "$A/etc/sources.list.d/debian-$SUITE.sources" <<SOURCES
Types: deb
URIs: $MIRROR
Suites: $SUITE
Components: main
Architectures: $ARCH
Signed-By: $KEYRING
SOURCES

# Dir::Etc::parts is a private empty directory, so the system's apt.conf.d hooks never run.
cat > "$A/apt.conf" <<CONF
Dir::Etc "$A/etc/";
Dir::Etc::main "/dev/null";
Dir::Etc::parts "$A/etc/apt.conf.d/";
Dir::Etc::sourcelist "/dev/null";
Dir::Etc::sourceparts "$A/etc/sources.list.d/";
Dir::Etc::preferences "/dev/null";
Dir::Etc::preferencesparts "$A/etc/preferences.d/";
Dir::Etc::trusted "$A/etc/trusted.gpg";
Dir::Etc::trustedparts "$A/etc/trusted.gpg.d/";
Dir::State "$A/state/";
Dir::State::lists "$A/state/lists/";
Dir::State::status "$A/state/status";
Dir::State::extended_states "$A/state/extended_states";
Dir::Cache "$A/cache/";
Dir::Cache::archives "$A/cache/archives/";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Dir::Log "$A/log/";
APT::Architecture "$ARCH";
APT::Architectures { "$ARCH"; };
Acquire::Languages "none";
Acquire::IndexTargets::deb::DEP-11::DefaultEnabled "false";
Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled "false";
Acquire::Retries "3";
// Mirrors that serve a frozen copy of unstable carry a Release file past its Valid-Until date.
// Only the date checks are relaxed: the signature is still verified.
Acquire::Check-Valid-Until "false";
Acquire::Check-Date "false";
CONF
export APT_CONFIG="$A/apt.conf"

echo "fetching $PACKAGE from Debian $SUITE ($MIRROR) into $DEST" >&2
apt-get -q update >&2
version=$(apt-cache policy "$PACKAGE" | awk '/Candidate:/ {print $2}')
if [ -z "$version" ] || [ "$version" = "(none)" ]; then
    echo "error: $PACKAGE is not in Debian $SUITE at $MIRROR" >&2
    exit 1
fi
rm -f "$A/debs/${PACKAGE}_"*.deb
(cd "$A/debs" && apt-get -q download "$PACKAGE=$version" >&2)
deb=$(ls "$A/debs/${PACKAGE}_"*.deb)
rm -rf "$DEST.tmp"
mkdir -p "$DEST.tmp"
dpkg -x "$deb" "$DEST.tmp"  # plain extraction: no maintainer scripts, no dpkg database
for binary in $BINARIES; do
    if [ ! -x "$DEST.tmp/usr/bin/$binary" ]; then
        echo "error: $(basename "$deb") has no usr/bin/$binary" >&2
        exit 1
    fi
done
echo "$PACKAGE $version $(basename "$deb")" > "$DEST.tmp/.unpacked"
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
echo "$(cat "$DEST/.unpacked") unpacked into $DEST" >&2
