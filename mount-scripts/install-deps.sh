#!/bin/sh
# Installs the Debian packages viperfs needs to build and test, if any is
# missing, then a libfuse with passthrough (>= 3.16) into FUSE3_PREFIX if the
# system's is older (mount-scripts/build-libfuse.sh; Debian 12 has 3.14).
# Safe to run again; does nothing when all are there.
#
#   install-deps.sh [FUSE3_PREFIX]     (the Makefile passes build/fuse3)
set -e
here=$(dirname "$0")
fuse3_prefix=${1:-$here/../build/fuse3}
# meson, ninja-build, dpkg-dev: build-libfuse.sh (apt-get source, the build)
PKGS="build-essential pkg-config fuse3 libfuse3-dev meson ninja-build dpkg-dev libxxhash-dev libcmocka-dev
libmount-dev libfabric-dev libfabric-bin libssl-dev libmicrohttpd-dev libjansson-dev clang libclang-rt-14-dev attr inotify-tools rsync gdb nftables python3 python3-pytest python3-numpy
python3-h5py python3-torch python3-watchdog
slurmd slurmctld slurm-client munge prometheus gnuplot-nox curl"
missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" ||
		missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo "install-deps: installing$missing"
	SUDO=
	if [ "$(id -u)" != 0 ]; then
		SUDO=sudo
	fi
	export DEBIAN_FRONTEND=noninteractive
	$SUDO apt-get update -qq
	$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
# As the user who builds, not root: it writes only under the build tree.
sh "$here/build-libfuse.sh" "$fuse3_prefix"
