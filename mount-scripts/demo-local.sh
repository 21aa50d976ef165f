#!/bin/sh
# make demo: mount a model repository with the embedded defaults, train a
# small NT3-like 1-D CNN that saves checkpoints with plain torch.save into
# it, show the versions and the flush, unmount, and show the PFS copy.
# Everything lives under one temporary directory, removed at the end.
set -eu
BUILD=${BUILD:-build}
PY=${PYTHON:-/usr/bin/python3}
base=$(mktemp -d /tmp/viperfs-demo-XXXXXX)
pfs="$base/pfs" mnt="$base/mnt"
mkdir -p "$pfs" "$mnt"
pid=""
cleanup() {
	if grep -q " $mnt " /proc/mounts; then fusermount3 -u "$mnt" 2>/dev/null || fusermount3 -uz "$mnt"; fi
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	rm -rf "$base"
}
trap cleanup EXIT INT TERM

echo "== mounting $pfs (the 'PFS') at $mnt with default options"
"$BUILD/viperfs" -f -o "control=$base/ctl.sock,log_file=$base/viperfs.log" "$pfs" "$mnt" &
pid=$!
i=0
until grep -q " $mnt fuse.viperfs " /proc/mounts; do
	i=$((i + 1)); [ $i -gt 200 ] && { echo "mount did not come up"; cat "$base/viperfs.log"; exit 1; }
	kill -0 "$pid" || { cat "$base/viperfs.log"; exit 1; }
	sleep 0.05
done

echo "== training; each checkpoint is a plain torch.save into the mount"
PYTHONPATH="$(cd "$(dirname "$0")" && pwd)" "$PY" - "$mnt" <<'PYEOF'
import os, sys, time, torch
from nt3_demo import train
mnt = sys.argv[1]
for epoch, loss, model in train(512, 5):
    t0 = time.perf_counter()
    torch.save(model.state_dict(), os.path.join(mnt, "nt3.pt"))
    stall = (time.perf_counter() - t0) * 1e3
    v = os.getxattr(os.path.join(mnt, "nt3.pt"), "user.viperfs.version").decode()
    print("epoch %d  loss %.4f  checkpoint version %s saved in %.1f ms" % (epoch, loss, v, stall))
state = torch.load(os.path.join(mnt, "nt3.pt"))
print("reloaded from the mount: %d tensors" % len(state))
PYEOF

echo "== viperctl versions; viperctl flush (waits until the PFS has it)"
"$BUILD/viperctl" versions "$mnt"
"$BUILD/viperctl" flush "$mnt"
echo "== unmount; what the PFS holds"
fusermount3 -u "$mnt"
wait "$pid"; pid=""
ls -l "$pfs"
"$PY" -c "import torch,sys; print('PFS copy loads:', len(torch.load(sys.argv[1])), 'tensors')" "$pfs/nt3.pt"
echo "== daemon log"; cat "$base/viperfs.log"
