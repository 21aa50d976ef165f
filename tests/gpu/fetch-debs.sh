#!/bin/sh
# Fetches the .deb files tests/gpu/run.sh needs on a GPU machine that
# reaches no package registry: libfuse3, libfabric, xxhash, cmocka, OpenSSL
# headers, and the libraries libfabric links.  Run here (Debian 12), then
# let tests/gpu/debs travel with the working tree (the device tool's
# `carry`: it is git-ignored).  run.sh unpacks them with dpkg -x into a
# private prefix, only where the system lacks them.
set -e
cd "$(dirname "$0")"
mkdir -p debs
cd debs
apt-get download \
	fuse3 libfuse3-3 libfuse3-dev \
	libfabric1 libfabric-dev libpsm2-2 libpsm-infinipath1 libibverbs1 ibverbs-providers \
	librdmacm1 libnl-3-200 libnl-route-3-200 libnuma1 libatomic1 \
	libxxhash0 libxxhash-dev libcmocka0 libcmocka-dev libssl3 libssl-dev
ls -la
