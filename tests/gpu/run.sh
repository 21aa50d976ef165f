#!/bin/bash
# tests/gpu/run.sh: the GPU tier's checks, on a machine with an NVIDIA GPU
# (H100/H200).  Finishes in under 5 minutes; the last line is
# "N passed, M failed".
#
# That machine has the CUDA toolkit and PyTorch but reaches no package
# registry.  What else the build needs (libfuse3, libfabric, xxhash,
# cmocka, OpenSSL headers) comes as .deb files in tests/gpu/debs, fetched
# with tests/gpu/fetch-debs.sh where a registry is reachable, and unpacked
# here with dpkg -x into a private prefix when the system lacks them.
#
# Checks: the device; building with nvcc; the placement logic (fake
# device); the CUDA tier's round trip and its bandwidth against raw pinned
# cudaMemcpy (target >= 0.8); and, where /dev/fuse exists, a mount with
# gpu_cache: a 2 GiB checkpoint written, mirrored to the GPU, read back
# byte-exact, and mapped by a second process through gpu-export
# (cudaIpcOpenMemHandle).  Without /dev/fuse it says so and tests the tier
# through the engine only.  Results also go to $OUT (or /tmp) as files.
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-/tmp/viperfs-gpu}
mkdir -p "$OUT"
BUILD=$ROOT/build-gpu
WORK=$(mktemp -d /tmp/viperfs-gpu-XXXXXX)
pass=0
fail=0
DAEMON_PID=""
MNT=$WORK/mnt
PROD_PID="" CONS_PID=""
# cuda on the GPU machine; GPU_TIER=ram runs the mount checks' logic on a machine without one
GPU_TIER=${GPU_TIER:-cuda}

ok() { pass=$((pass + 1)); echo "PASS: $*"; }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }

# status_of MNT EXPR: prints the Python expression EXPR of the daemon's status s.
status_of() {
	"$BUILD/viperctl" status "$1" --json | python3 -c "import json, sys; s = json.load(sys.stdin); print($2)"
}

# poll_status MNT EXPR TENTHS: true once EXPR (over status s) prints True, polling every
# 0.1 s at most TENTHS times; false at once if it prints "off".
poll_status() {
	for _ in $(seq 1 "$3"); do
		case "$(status_of "$1" "$2")" in True) return 0 ;; off) return 1 ;; esac
		sleep 0.1
	done
	return 1
}

# stop_daemon MNT PID: unmounts MNT if mounted; waits 60 s for PID (if any), then kills it.
stop_daemon() {
	mountpoint -q "$1" 2>/dev/null && { fusermount3 -u "$1" 2>/dev/null || umount -l "$1"; }
	[ -z "$2" ] || timeout 60 tail --pid="$2" -f /dev/null 2>/dev/null || kill -9 "$2" 2>/dev/null
}

# ipc_check FILE WHAT: a second process maps FILE's GPU mirror (gpu-export, cudaIpcOpenMemHandle).
ipc_check() {
	if "$BUILD/tests/ipc_reader" "$1" > "$OUT/ipc.txt" 2>&1; then
		ok "$2: $(cat "$OUT/ipc.txt")"
	else
		bad "$2: $(cat "$OUT/ipc.txt")"
	fi
}

finish() {
	stop_daemon "$WORK/cons" "$CONS_PID"
	stop_daemon "$WORK/prod" "$PROD_PID"
	[ -z "$DAEMON_PID" ] || stop_daemon "$MNT" "$DAEMON_PID"
	rm -rf "$WORK"
	echo "$pass passed, $fail failed"
}
trap finish EXIT

# ---- the device ------------------------------------------------------------
if nvidia-smi --query-gpu=name,memory.total,memory.free --format=csv,noheader > "$OUT/gpu.txt" 2>&1; then
	ok "device: $(head -1 "$OUT/gpu.txt")"
else
	bad "nvidia-smi: $(head -1 "$OUT/gpu.txt")"
fi
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
[ -x "$CUDA_HOME/bin/nvcc" ] || CUDA_HOME=$(dirname "$(dirname "$(command -v nvcc 2>/dev/null || echo /x/x/x)")")
export CUDA_HOME

# ---- a private prefix for what the system lacks ---------------------------
missing=""
for h in /usr/include/fuse3/fuse_lowlevel.h /usr/include/rdma/fabric.h /usr/include/xxhash.h \
	 /usr/include/cmocka.h /usr/include/openssl/hmac.h; do
	[ -e "$h" ] || missing="$missing $h"
done
if [ -n "$missing" ]; then
	PREFIX=$BUILD/prefix
	if ! ls tests/gpu/debs/*.deb >/dev/null 2>&1; then
		bad "the system lacks$missing and tests/gpu/debs has no .deb files (run tests/gpu/fetch-debs.sh where apt works, and carry tests/gpu/debs)"
		exit 1
	fi
	mkdir -p "$PREFIX"
	for d in tests/gpu/debs/*.deb; do dpkg -x "$d" "$PREFIX"; done
	ML=x86_64-linux-gnu
	export CPATH="$PREFIX/usr/include:$PREFIX/usr/include/$ML${CPATH:+:$CPATH}"
	export LIBRARY_PATH="$PREFIX/usr/lib/$ML:$PREFIX/lib/$ML${LIBRARY_PATH:+:$LIBRARY_PATH}"
	export LD_LIBRARY_PATH="$PREFIX/usr/lib/$ML:$PREFIX/lib/$ML:$PREFIX/usr/lib/$ML/libibverbs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
	export PKG_CONFIG_PATH="$PREFIX/usr/lib/$ML/pkgconfig:$PREFIX/usr/share/pkgconfig"
	export PKG_CONFIG_SYSROOT_DIR="$PREFIX"
	export PATH="$PREFIX/usr/bin:$PREFIX/bin:$PATH"
	echo "unpacked $(ls tests/gpu/debs/*.deb | wc -l) .deb files into $PREFIX for:$missing"
fi

# ---- building, with nvcc for the IPC reader ---------------------------------
if make -s SKIP_DEPS=1 BUILD="$BUILD" CUDA_HOME="$CUDA_HOME" all "$BUILD/tests/test_gpu" \
	"$BUILD/tests/tierbw" "$BUILD/tests/ipc_reader" > "$OUT/build.log" 2>&1; then
	ok "build with the CUDA runtime and nvcc ($("$CUDA_HOME/bin/nvcc" --version | tail -1))"
else
	bad "build: $(tail -5 "$OUT/build.log")"
	exit 1
fi

# ---- placement logic (fake device) -----------------------------------------
if "$BUILD/tests/test_gpu" > "$OUT/test_gpu.txt" 2>&1; then
	ok "placement unit tests: $(grep -c '^\[       OK' "$OUT/test_gpu.txt") passed"
else
	bad "placement unit tests: $(grep -E 'FAILED|ERROR' "$OUT/test_gpu.txt" | head -3)"
fi

# ---- the CUDA tier: round trip and bandwidth ---------------------------------
if timeout 120 "$BUILD/tests/tierbw" 1024 5 > "$OUT/tierbw.txt" 2>&1; then
	cat "$OUT/tierbw.txt"
	ok "CUDA tier round trip of 1 GiB is byte-exact"
	r=$(sed -n 's/^ratio_in=\([0-9.]*\) ratio_out=\([0-9.]*\).*/\1 \2/p' "$OUT/tierbw.txt")
	set -- $r
	if awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN { exit !(a >= 0.8 && b >= 0.8) }'; then
		ok "tier bandwidth ratio to raw pinned cudaMemcpy: in $1, out $2 (target >= 0.8)"
	else
		bad "tier bandwidth ratio to raw pinned cudaMemcpy: in ${1:-?}, out ${2:-?} (target >= 0.8)"
	fi
else
	cat "$OUT/tierbw.txt"
	bad "CUDA tier round trip"
fi

# ---- a mount with the GPU tier ---------------------------------------------
if [ ! -c /dev/fuse ]; then
	echo "no /dev/fuse on this machine: the mount checks are skipped; the tier was tested through the engine above"
	exit 0
fi
mkdir -p "$WORK/pfs" "$MNT"
if ! "$BUILD/viperfs" -o "gpu_cache=4G,gpu_tier=$GPU_TIER,ram_cache=8G,ram_prefault=2G,log_file=$OUT/viperfs.log,control=$WORK/ctl.sock" \
	"$WORK/pfs" "$MNT" 2> "$OUT/mount.err"; then
	bad "mount with gpu_cache: $(cat "$OUT/mount.err")"
	exit 1
fi
DAEMON_PID=$(status_of "$MNT" 's["pid"]')
state=$(status_of "$MNT" 's["tiers"]["gpu"]["state"]')
[ "$state" = on ] && ok "mounted with the GPU tier on" || bad "GPU tier state: $state ($(grep gpu "$OUT/viperfs.log" | tail -2))"

head -c 2G /dev/urandom > "$WORK/src.bin"
t0=$(date +%s.%N)
dd if="$WORK/src.bin" of="$MNT/ckpt.bin" bs=4M status=none && ok "2 GiB checkpoint written in $(echo "$(date +%s.%N) - $t0" | bc) s" ||
	bad "writing the checkpoint"
# the mirror is the tier worker's: poll its state, 60 s at most
poll_status "$MNT" '"off" if s["tiers"]["gpu"]["state"] != "on" else s["tiers"]["gpu"]["files"] == 1 and s["tiers"]["gpu"]["used"] == 2 << 30' 600 && ok "mirrored to the GPU ($("$BUILD/viperctl" status "$MNT" | grep 'gpu tier'))" ||
	bad "not mirrored to the GPU within 60 s: $("$BUILD/viperctl" status "$MNT" | grep 'gpu tier')"
cmp -s "$WORK/src.bin" "$MNT/ckpt.bin" && ok "read back byte-exact" || bad "read back differs"
# the version is a sealed memory file: its copy went straight from it, pinned (or the log says why not)
pinned=$(status_of "$MNT" 's["tiers"]["gpu"].get("pinned_copies", 0)')
if [ "$GPU_TIER" = ram ]; then
	:	# the host tier pins nothing
elif [ "${pinned:-0}" -ge 1 ]; then
	ok "the memory file was pinned for its copy (pinned_copies $pinned)"
else
	bad "the memory file was not pinned for its copy: $(grep -h 'could not pin' "$OUT/viperfs.log" 2>/dev/null | tail -1)"
fi
ipc_check "$MNT/ckpt.bin" "gpu-export round trip"
if "$BUILD/viperctl" umount "$MNT" > "$OUT/umount.txt" 2>&1; then
	ok "unmounted, everything on the PFS"
	DAEMON_PID=""
else
	bad "umount: $(cat "$OUT/umount.txt")"
fi

# ---- replication into a consumer's GPU tier ----------------------------------
# A producer and a consumer mount on this machine, over tcp on loopback (shm
# would be picked otherwise).  The consumer copies each chunk to its GPU as
# it arrives; its mirror must take that staged copy, byte-exact.
PMNT=$WORK/prod CMNT=$WORK/cons
mkdir -p "$WORK/pfs2" "$PMNT" "$CMNT"
port=$((7700 + $$ % 200))
(umask 077; openssl rand -hex 32 > "$WORK/secret")	# replication needs the nodes' secret
export FI_PROVIDER=tcp
started=1
"$BUILD/viperfs" -o "listen=127.0.0.1:$port,secret_file=$WORK/secret,gpu_cache=2G,gpu_tier=$GPU_TIER,ram_cache=4G,log_file=$OUT/producer.log,control=$WORK/p.sock" \
	"$WORK/pfs2" "$PMNT" 2> "$OUT/producer.err" || started=0
[ "$started" = 1 ] && PROD_PID=$(status_of "$PMNT" 's["pid"]')
"$BUILD/viperfs" -o "subscribe=127.0.0.1:$port,secret_file=$WORK/secret,gpu_cache=2G,gpu_tier=$GPU_TIER,ram_cache=4G,log_file=$OUT/consumer.log,control=$WORK/c.sock" \
	"$WORK/pfs2" "$CMNT" 2> "$OUT/consumer.err" || started=0
[ "$started" = 1 ] && CONS_PID=$(status_of "$CMNT" 's["pid"]')
if [ "$started" = 1 ]; then
	head -c 512M "$WORK/src.bin" > "$WORK/src2.bin"
	sleep 2		# the consumer subscribes (HELLO every second)
	cp "$WORK/src2.bin" "$PMNT/model.bin"
	if "$BUILD/viperctl" wait "$CMNT/model.bin" --newer-than 0 --timeout 120 > /dev/null; then
		# the worker takes the staged copy: poll, 30 s at most
		poll_status "$CMNT" 's["tiers"]["gpu"]["staged"] == 1 and s["tiers"]["gpu"]["staged_bytes"] == 512 << 20 and s["tiers"]["gpu"]["files"] == 1' 300 && ok "replicated 512 MiB went to the consumer's GPU chunk by chunk ($("$BUILD/viperctl" status "$CMNT" | grep 'gpu tier'))" ||
			bad "the consumer's mirror did not take the staged copy: $("$BUILD/viperctl" status "$CMNT" | grep 'gpu tier')"
		cmp -s "$WORK/src2.bin" "$CMNT/model.bin" && ok "consumer reads the version byte-exact" || bad "consumer's bytes differ"
		ipc_check "$CMNT/model.bin" "gpu-export of the consumer's staged mirror"
		# GPU-direct where the provider registers device memory (FI_HMEM), else host-staged, said why
		path=$(status_of "$CMNT" 's["repl"]["gpu_path"] + " " + str(s["repl"]["bytes_gpu_direct"]) + " " + str(s["repl"]["bytes_in"])')
		case "$path" in
		"direct "*)
			set -- $path
			[ "$2" = "$3" ] && [ "$2" -gt 0 ] && ok "GPU-direct: all $2 fetched bytes landed in the consumer's GPU tier first" ||
				bad "GPU-direct: $2 of $3 fetched bytes landed in the GPU tier" ;;
		"host-staged "*)
			why=$(grep -o 'host-staged path.*' "$OUT/consumer.log" | head -1 | sed 's/.*; //')
			[ -n "$why" ] && ok "host-staged path (not GPU-direct), the log says why: $why" ||
				bad "host-staged path, and the log does not say why" ;;
		*) bad "the consumer's gpu_path: '$path'" ;;
		esac
	else
		bad "the consumer did not get the version: $(tail -3 "$OUT/consumer.log")"
	fi
else
	bad "starting producer and consumer: $(cat "$OUT/producer.err" "$OUT/consumer.err")"
fi
stop_daemon "$CMNT" "$CONS_PID"
stop_daemon "$PMNT" "$PROD_PID"
CONS_PID="" PROD_PID=""
