#!/bin/sh
# make demo: two nodes on one machine (network namespaces on a bridge).
# The producer node trains a small NT3-like 1-D CNN, padded to a real
# checkpoint's size (DEMO_SIZE, default 1G), and after each epoch saves it
# with plain torch.save twice: into its viperfs mount, which pushes the
# version to the consumer node, and into a PFS directory, which a consumer
# polls every second.  It prints each version's producer stall and update
# latency on both paths, then a summary with medians (demo_ckpt.py).
# Everything is removed at the end, also on failure or Ctrl-C.
set -eu
BUILD=${BUILD:-build}
PY=${PYTHON:-/usr/bin/python3}
EPOCHS=${EPOCHS:-7}
DEMO_SIZE=${DEMO_SIZE:-1G}
here=$(cd "$(dirname "$0")" && pwd)

case "$EPOCHS" in
''|*[!0-9]*|0) echo "demo: EPOCHS='$EPOCHS': want a whole number of epochs, 1 or more" >&2; exit 2 ;;
esac
num=${DEMO_SIZE%[KkMmGg]}
case "$num" in
''|*[!0-9]*) echo "demo: DEMO_SIZE='$DEMO_SIZE': want a whole number with K, M or G (binary), such as 64M or 1G" >&2; exit 2 ;;
esac
case "${DEMO_SIZE#"$num"}" in
[Kk]) size=$((num << 10)) ;; [Mm]) size=$((num << 20)) ;; [Gg]) size=$((num << 30)) ;; *) size=$num ;;
esac
[ "$size" -ge $((1 << 20)) ] || { echo "demo: DEMO_SIZE='$DEMO_SIZE': want at least 1M" >&2; exit 2; }
# each node's cache holds the version it serves, the one arriving or being
# written, and the spare for the next
cache=$((3 * size + (512 << 20)))

tag="vpd$$"
base=$(mktemp -d /tmp/viperfs-demo-XXXXXX)
pfs="$base/pfs" pm="$base/producer" cm="$base/consumer" run="$base/run"
mkdir -p "$pfs/viperfs" "$pfs/direct" "$pm" "$cm" "$run"
net="10.199.$(( $$ % 200 + 20 ))"
apps="" daemons=""
cleanup() {
	rc=$?
	set +e
	if [ "$rc" != 0 ] && [ "$rc" != 130 ] && [ "$rc" != 143 ]; then
		for l in "$base"/*.log; do [ -e "$l" ] && { echo "-- the end of $(basename "$l")"; tail -n 5 "$l"; }; done >&2
	fi
	for p in $apps; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
	for m in "$cm" "$pm"; do
		grep -q " $m " /proc/mounts && { fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m"; }
	done
	for p in $daemons; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
	ip netns del "${tag}p" 2>/dev/null; ip netns del "${tag}c" 2>/dev/null
	ip link del "${tag}br" 2>/dev/null
	rm -rf "$base"
}
trap cleanup EXIT
trap 'echo "demo: interrupted; removing its namespaces, mounts, processes and files" >&2; exit 130' INT
trap 'echo "demo: terminated; removing its namespaces, mounts, processes and files" >&2; exit 143' TERM

echo "== two nodes: producer ${net}.1, consumer ${net}.2 (network namespaces); files in $base"
ip link add "${tag}br" type bridge && ip link set "${tag}br" up
for n in p c; do
	ip netns add "${tag}$n"
	ip link add "${tag}v$n" type veth peer name "${tag}e$n"
	ip link set "${tag}e$n" netns "${tag}$n"
	ip link set "${tag}v$n" master "${tag}br" up
	ip -n "${tag}$n" link set lo up
	ip -n "${tag}$n" link set "${tag}e$n" up
done
ip -n "${tag}p" addr add "${net}.1/24" dev "${tag}ep"
ip -n "${tag}c" addr add "${net}.2/24" dev "${tag}ec"
# nsenter execs its command (no fork), so $! is the program's own PID
on_p="nsenter --net=/run/netns/${tag}p" on_c="nsenter --net=/run/netns/${tag}c"

export FI_PROVIDER="tcp;ofi_rxm"
wait_for() {	# FILE PATTERN WHAT: until FILE holds PATTERN, 15 s at most
	i=0
	until grep -q "$2" "$1" 2>/dev/null; do
		i=$((i + 1)); [ $i -gt 300 ] && { echo "demo: $3 did not happen within 15 s" >&2; exit 1; }
		sleep 0.05
	done
}
# the nodes' shared secret: every message between them is authenticated and sealed
(umask 077; openssl rand -hex 32 > "$base/secret")
# the producer's flush to the PFS waits (flush_interval), so that it does not
# share this machine's one disk with the PFS path; viperctl flush ends it
$on_p "$BUILD/viperfs" -f -o "listen=${net}.1:7700,secret_file=$base/secret,control=$base/p.sock,log_file=$base/producer.log,ram_cache=$cache,flush_interval=10m,unmount_wait=30" "$pfs/viperfs" "$pm" &
daemons="$daemons $!"
wait_for /proc/mounts " $pm fuse.viperfs " "the producer's mount"
$on_c "$BUILD/viperfs" -f -o "subscribe=${net}.1:7700,secret_file=$base/secret,control=$base/c.sock,log_file=$base/consumer.log,ram_cache=$cache" "$pfs/viperfs" "$cm" &
daemons="$daemons $!"
wait_for /proc/mounts " $cm fuse.viperfs " "the consumer's mount"
wait_for "$base/consumer.log" "subscribed to the producer" "the consumer's subscription"

echo "== consumer node: two inference loops, one reloads on inotify in its viperfs mount, one polls the PFS every 1 s"
echo "   PFS: a local disk directory, $pfs/direct (no shared PFS on this machine)"
$on_c "$PY" "$here/demo_ckpt.py" viperfs-consumer "$cm" "$run" &
apps="$apps $!"
$on_c "$PY" "$here/demo_ckpt.py" pfs-consumer "$pfs/direct" "$run" &
apps="$apps $!"
wait_for "$run/ready" "viperfs" "the viperfs consumer's start"
wait_for "$run/ready" "pfs" "the PFS consumer's start"

echo "== producer node: training; each epoch is a plain torch.save (+ fsync) into the mount, then into the PFS"
$on_p "$PY" "$here/demo_ckpt.py" producer "$pm" "$pfs/direct" "$run" "$EPOCHS" "$size"

echo
echo "== the producer's flush, held back during the loop (flush_interval=10m) so that it did not"
echo "   share this machine's disk with the PFS path: viperctl flush waits until the PFS holds the last version"
t0=$(date +%s.%N)
"$BUILD/viperctl" flush "$pm" >/dev/null
t1=$(date +%s.%N)
ls -l "$pfs/viperfs" | sed -n 's/^/   /;2,$p'
awk "BEGIN { printf \"   flushed in %.1f s\\n\", $t1 - $t0 }"
echo "== viperctl status of the producer's mount"
"$BUILD/viperctl" status "$pm" | sed 's/^/   /'
