#!/bin/sh
# make demo: two nodes on one machine (network namespaces on a bridge).
# The producer node trains a small NT3-like 1-D CNN and saves a checkpoint
# per epoch with plain torch.save into its viperfs mount; the consumer
# node's inference loop reloads on inotify (watchdog) and prints, for each
# version, the update latency and the version it serves.  Everything is
# removed at the end, also on failure or Ctrl-C.
set -eu
BUILD=${BUILD:-build}
PY=${PYTHON:-/usr/bin/python3}
EPOCHS=${EPOCHS:-6}
tag="vpd$$"
base=$(mktemp -d /tmp/viperfs-demo-XXXXXX)
pfs="$base/pfs" pm="$base/producer" cm="$base/consumer"
mkdir -p "$pfs" "$pm" "$cm"
net="10.199.$(( $$ % 200 + 20 ))"
pids=""
cleanup() {
	set +e
	for m in "$cm" "$pm"; do
		grep -q " $m " /proc/mounts && { fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m"; }
	done
	for p in $pids; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
	ip netns del "${tag}p" 2>/dev/null; ip netns del "${tag}c" 2>/dev/null
	ip link del "${tag}br" 2>/dev/null
	rm -rf "$base"
}
trap cleanup EXIT INT TERM

echo "== two nodes: producer ${net}.1, consumer ${net}.2 (network namespaces)"
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

export FI_PROVIDER="tcp;ofi_rxm"
wait_mount() {
	i=0
	until grep -q " $1 fuse.viperfs " /proc/mounts; do
		i=$((i + 1)); [ $i -gt 300 ] && { echo "mount $1 did not come up"; cat "$base"/*.log; exit 1; }
		sleep 0.05
	done
}
# the nodes' shared secret: every message between them is authenticated and sealed
(umask 077; openssl rand -hex 32 > "$base/secret")
nsenter --net=/run/netns/"${tag}p" "$BUILD/viperfs" -f -o "listen=${net}.1:7700,secret_file=$base/secret,control=$base/p.sock,log_file=$base/producer.log" "$pfs" "$pm" &
pids="$pids $!"
wait_mount "$pm"
nsenter --net=/run/netns/"${tag}c" "$BUILD/viperfs" -f -o "subscribe=${net}.1:7700,secret_file=$base/secret,control=$base/c.sock,log_file=$base/consumer.log" "$pfs" "$cm" &
pids="$pids $!"
wait_mount "$cm"
until grep -q "subscribed to the producer" "$base/consumer.log" 2>/dev/null; do sleep 0.05; done

echo "== consumer: an inference loop that reloads on inotify"
"$PY" - "$cm" "$base/saves.log" <<'PYEOF' &
import io, os, sys, time, torch
from watchdog.observers import Observer
from watchdog.events import FileSystemEventHandler
mnt, saves = sys.argv[1], sys.argv[2]
torch.manual_seed(1)
x = torch.randn(256, 1, 128); y = (x.mean(dim=2).squeeze() > 0).long()
def saved_at(v):
    for line in open(saves):
        ver, t = line.split()
        if ver == v:
            return float(t)
class Reload(FileSystemEventHandler):
    def load(self, path):
        if os.path.basename(path) != "nt3.pt":
            return
        state = torch.load(io.BytesIO(open(path, "rb").read()))
        t = time.time()
        v = os.getxattr(path, "user.viperfs.version").decode()
        model = torch.nn.Sequential(torch.nn.Conv1d(1, 16, 7), torch.nn.ReLU(), torch.nn.MaxPool1d(2),
                                    torch.nn.Conv1d(16, 16, 5), torch.nn.ReLU(), torch.nn.Flatten(),
                                    torch.nn.Linear(16 * 57, 2))
        model.load_state_dict(state)
        with torch.no_grad():
            acc = (model(x).argmax(1) == y).float().mean().item()
        s = saved_at(v)
        print("consumer: serving version %s  update latency %6.1f ms  accuracy %.3f" %
              (v, (t - s) * 1e3 if s else float("nan"), acc), flush=True)
    def on_closed(self, e): self.load(e.src_path)
    def on_moved(self, e): self.load(e.dest_path)
o = Observer(); o.schedule(Reload(), mnt, recursive=False); o.start()
open(os.path.join(os.path.dirname(saves), "ready"), "w").close()
while not os.path.exists(os.path.join(os.path.dirname(saves), "stop")):
    time.sleep(0.1)
o.stop(); o.join()
PYEOF
pids="$pids $!"
until [ -e "$base/ready" ]; do sleep 0.05; done

echo "== producer: training; each epoch is a plain torch.save into the mount"
PYTHONPATH="$(cd "$(dirname "$0")" && pwd)" "$PY" - "$pm" "$base/saves.log" "$EPOCHS" <<'PYEOF'
import os, sys, time, torch
from nt3_demo import train
mnt, saves, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
for epoch, loss, model in train(2048, epochs):
    torch.save(model.state_dict(), os.path.join(mnt, "nt3.pt"))
    t = time.time()
    v = os.getxattr(os.path.join(mnt, "nt3.pt"), "user.viperfs.version").decode()
    with open(saves, "a") as f:
        f.write("%s %.6f\n" % (v, t))
    print("producer: epoch %d  loss %.4f  saved version %s" % (epoch, loss, v), flush=True)
    time.sleep(1.0)      # the next epoch's compute, so the lines interleave readably
PYEOF
sleep 1
touch "$base/stop"
echo "== the PFS copy (flushed by the producer in the background)"
"$BUILD/viperctl" flush "$pm" >/dev/null
ls -l "$pfs"
"$BUILD/viperctl" status "$pm" --json | "$PY" -c "import json,sys; s=json.load(sys.stdin); print('producer peers:', s['repl']['peers'])"
