#!/bin/sh
# Installs the Debian packages viperfs needs, if any is missing, then a
# libfuse with passthrough (>= 3.16) into FUSE3_PREFIX if the system's is
# older (mount-scripts/build-libfuse.sh; Debian 12 has 3.14).
# Safe to run again; does nothing when all are there.
#
#   install-deps.sh [FUSE3_PREFIX]           to build and run viperfs (make, make install, make deb)
#   install-deps.sh --test [FUSE3_PREFIX]    and to test it (make test, check, bench, demo, fuzz, ...)
#
# The Makefile passes build/fuse3.
set -e
here=$(dirname "$0")
test=0
if [ "${1:-}" = --test ]; then
	test=1
	shift
fi
fuse3_prefix=${1:-$here/../build/fuse3}

# The build and the daemon: the compiler, the libraries viperfs links, fuse3
# (fusermount3, /etc/fuse.conf), and for build-libfuse.sh meson, ninja-build
# and dpkg-dev (apt-get source; dpkg-dev also gives make deb dpkg-shlibdeps).
PKGS="build-essential pkg-config fuse3 libfuse3-dev meson ninja-build dpkg-dev
libmount-dev libfabric-dev libssl-dev libxxhash-dev libmicrohttpd-dev libjansson-dev"
# The tests, benchmarks and demos (what tests/, make fuzz and the demo scripts run):
#   libcmocka-dev       the unit tests (tests/unit)
#   clang, libclang-rt  make fuzz (libFuzzer)
#   python3-*           pytest, and the loaders, torch.save writers and watchers in the tests and demos
#   inotify-tools, rsync, gdb, nftables, iproute2 (ip netns, tc), curl: integration tests and benchmarks
#   attr, libfabric-bin getfattr and fi_info, to look at a mount's xattrs and a node's providers when a test fails
#   slurm*, munge       tests/integration/test_ops.py (viperfs-slurm in a one-node cluster)
#   prometheus          promtool check metrics; gnuplot-nox: tests/bench/charts.py
#   man-db, mandoc      the man pages (tests/integration/test_package.py)
#   glusterfs-*         a real distributed PFS: tests/integration/test_gluster.py, make bench, make paper
if [ "$test" = 1 ]; then
	PKGS="$PKGS libcmocka-dev clang libclang-rt-14-dev libfabric-bin
attr inotify-tools rsync gdb nftables iproute2 curl
python3 python3-pytest python3-numpy python3-h5py python3-torch python3-watchdog
slurmd slurmctld slurm-client munge prometheus gnuplot-nox man-db mandoc
glusterfs-server glusterfs-client"
fi
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
