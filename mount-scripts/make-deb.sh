#!/bin/sh
# Packs what `make deb` staged (make install DESTDIR=DEB_BUILD/debian/viperfs
# PREFIX=/usr) into DEB_BUILD/viperfs_VERSION_ARCH.deb with dpkg-deb.
#
#   make-deb.sh DEB_BUILD
#
# Version: VP_RELEASE in engine/version.h.  Depends: the shared libraries the
# programs link, as dpkg-shlibdeps finds them (from the packages' own shlibs
# and symbols files, so each with the version its symbols need), and fuse3:
# /dev/fuse's udev rule, /etc/fuse.conf, and the fusermount3 that viperctl
# and a user's unmount run.  libfuse itself is linked in statically.  No
# maintainer scripts: the package only adds files, and removing it takes
# them all away.
set -e
here=$(dirname "$0")
build=${1:?usage: make-deb.sh DEB_BUILD}
stage=$build/debian/viperfs
[ -x "$stage/usr/bin/viperfs" ] || { echo "make-deb: nothing staged in '$stage'; run make deb" >&2; exit 1; }

version=$(sed -n 's/^#define VP_RELEASE "\(.*\)"$/\1/p' "$here/../engine/version.h")
[ -n "$version" ] || { echo "make-deb: no VP_RELEASE in engine/version.h" >&2; exit 1; }
arch=$(dpkg --print-architecture)
maintainer=${DEB_MAINTAINER:-viperfs developers <root@localhost>}

# dpkg-shlibdeps reads debian/control in the directory it runs in, and finds
# the package's root by its DEBIAN directory.
mkdir -p "$stage/DEBIAN"
printf 'Source: viperfs\n\nPackage: viperfs\nArchitecture: any\n' > "$build/debian/control"
elves=$(find "$stage" -type f -perm -0100 -exec sh -c \
	'head -c 4 "$1" | grep -q "ELF" && echo "${1#$2/}"' sh {} "$build" \;)
shlibs=$(cd "$build" && dpkg-shlibdeps -O $elves) || {
	echo "make-deb: dpkg-shlibdeps failed: a library above belongs to no package (make deb builds with DEB_NO_CUDA=1 for that reason)" >&2
	exit 1
}
depends="${shlibs#shlibs:Depends=}, fuse3"

size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<EOF
Package: viperfs
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $size
Depends: $depends
Section: admin
Priority: optional
Description: RAM cache for checkpoints in front of a parallel file system
 viperfs is a FUSE file system that keeps checkpoints written by training
 jobs in RAM, writes them to a parallel file system in the background, and
 replicates each version to inference nodes over libfabric.  The package
 has the daemon, viperctl, the mount(8) helpers, the systemd unit
 viperfs@.service and the C client library for GPU export.
EOF
# md5sums, as dpkg-deb --build leaves it to the packager.
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | sort |
	xargs md5sum) > "$stage/DEBIAN/md5sums"
out=$build/viperfs_${version}_$arch.deb
dpkg-deb --root-owner-group -Zxz --build "$stage" "$out" >/dev/null
echo "make-deb: $out"
