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
"$PY" - "$mnt" <<'PYEOF'
import os, sys, time, torch
mnt = sys.argv[1]
torch.manual_seed(0)
x = torch.randn(512, 1, 128); y = (x.mean(dim=2).squeeze() > 0).long()
model = torch.nn.Sequential(torch.nn.Conv1d(1, 16, 7), torch.nn.ReLU(), torch.nn.MaxPool1d(2),
                            torch.nn.Conv1d(16, 16, 5), torch.nn.ReLU(), torch.nn.Flatten(),
                            torch.nn.Linear(16 * 57, 2))
opt = torch.optim.Adam(model.parameters(), 1e-3)
for epoch in range(5):
    for i in range(0, 512, 64):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64])
        loss.backward(); opt.step()
    t0 = time.perf_counter()
    torch.save(model.state_dict(), os.path.join(mnt, "nt3.pt"))
    stall = (time.perf_counter() - t0) * 1e3
    v = os.getxattr(os.path.join(mnt, "nt3.pt"), "user.viperfs.version").decode()
    print("epoch %d  loss %.4f  checkpoint version %s saved in %.1f ms" % (epoch, loss.item(), v, stall))
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
