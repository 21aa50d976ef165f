#!/bin/sh
# Installs the Debian packages viperfs needs to build and test, if any is
# missing.  Safe to run again; does nothing when all are there.
set -e
PKGS="build-essential pkg-config fuse3 libfuse3-dev libxxhash-dev libcmocka-dev
libfabric-dev libfabric-bin libssl-dev libmicrohttpd-dev libjansson-dev clang libclang-rt-14-dev attr inotify-tools rsync gdb python3 python3-pytest python3-numpy
python3-h5py python3-torch python3-watchdog
slurmd slurmctld slurm-client munge prometheus gnuplot-nox curl"
missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" ||
		missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "install-deps: installing$missing"
if [ "$(id -u)" != 0 ]; then
	SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
