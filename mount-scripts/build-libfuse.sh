#!/bin/sh
# Builds libfuse >= 3.16 (FUSE passthrough) into a private prefix when the
# system's is older: Debian 12 ships 3.14, so this fetches Debian 13's fuse3
# source package (3.17.2, with Debian's patches) and builds a static
# libfuse3.a, its headers and its own fusermount3 under PREFIX.  Nothing goes
# into /usr or /etc, and the machine's apt configuration is left alone: the
# source comes through a private sources list with one deb-src line.
#
#   build-libfuse.sh PREFIX      (the Makefile passes $(CURDIR)/build/fuse3)
#
# Does nothing when the system's libfuse is new enough, or PREFIX is built.
set -e
MIN_VERSION=3.16
SUITE=trixie
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

prefix=$1
[ -n "$prefix" ] || { echo "usage: $0 PREFIX" >&2; exit 2; }
case $prefix in /*) ;; *) prefix=$(pwd)/$prefix ;; esac
stamp=$prefix/.built

pkg-config --atleast-version=$MIN_VERSION fuse3 2>/dev/null && exit 0
[ -f "$stamp" ] && exit 0

# The mirror this machine's apt already uses for its own Debian release (the
# stanza or line with this release's suite, not -security, not a vendor's
# repository): deb822 .sources first, then sources.list.
mirror() {
	codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		awk -v suite="$codename" 'BEGIN { RS = "" }
		     {
			uri = ""; ours = 0
			n = split($0, line, "\n")
			for (i = 1; i <= n; i++) {
				w = split(line[i], word, /[ \t]+/)
				if (word[1] == "URIs:")
					uri = word[2]
				if (word[1] == "Suites:")
					for (j = 2; j <= w; j++)
						ours = ours || word[j] == suite
			}
			if (ours && uri != "") { print uri; exit }
		     }' "$f"
	done
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[ -f "$f" ] || continue
		sed -e 's/\[[^]]*\]//' "$f" |
			awk -v suite="$codename" '$1 ~ /^deb(-src)?$/ && $3 == suite { print $2; exit }'
	done
}
url=$(mirror | head -n 1)
[ -n "$url" ] || url=http://deb.debian.org/debian

work=$prefix.work
rm -rf "$work"
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/src"
echo "deb-src [signed-by=$KEYRING] $url $SUITE main" > "$work/sources.list"
set -- -o Dir::Etc::sourcelist="$work/sources.list" -o Dir::Etc::sourceparts=- \
	-o Dir::State::Lists="$work/lists" -o Dir::Cache="$work/cache"
echo "build-libfuse: fetching the fuse3 source package of Debian $SUITE from $url"
apt-get "$@" -qq update
# As root, apt downloads as _apt, which may not write into the build tree.
cd "$work/src"
sandbox=
[ "$(id -u)" = 0 ] && sandbox="-o APT::Sandbox::User=root"
apt-get "$@" $sandbox -q source fuse3 >"$work/source.log" 2>&1 ||
	{ cat "$work/source.log" >&2; exit 1; }
src=$(ls -d "$work"/src/fuse3-*/)
echo "build-libfuse: $(grep -c 'dpkg-source: info: applying' "$work/source.log") Debian patches applied"

# The same compiler for every BUILD= (sanitizers are the daemon's, not ours).
unset CFLAGS CPPFLAGS LDFLAGS
echo "build-libfuse: building $(basename "$src") (static) into $prefix"
rm -rf "$prefix"
meson setup "$work/build" "$src" --prefix="$prefix" --libdir=lib --sysconfdir=etc \
	--buildtype=release -Ddefault_library=static -Dexamples=false -Dtests=false \
	-Dutils=true -Duseroot=false -Dinitscriptdir= \
	-Dudevrulesdir="$prefix/lib/udev/rules.d" >"$work/meson.log" 2>&1 ||
	{ cat "$work/meson.log" >&2; exit 1; }
ninja -C "$work/build" >"$work/ninja.log" 2>&1 || { cat "$work/ninja.log" >&2; exit 1; }
meson install -C "$work/build" --quiet >"$work/install.log" 2>&1 ||
	{ cat "$work/install.log" >&2; exit 1; }

PKG_CONFIG_PATH=$prefix/lib/pkgconfig pkg-config --atleast-version=$MIN_VERSION fuse3 || {
	echo "build-libfuse: $SUITE's fuse3 is older than $MIN_VERSION" >&2
	exit 1
}
PKG_CONFIG_PATH=$prefix/lib/pkgconfig pkg-config --modversion fuse3 > "$stamp"
rm -rf "$work"
