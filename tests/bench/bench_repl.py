#!/usr/bin/env python3
"""make bench (replication part): update latency from the producer's close()
to a consumer having read the last byte, side by side in one run:

  - viperfs, 1 consumer and 3 consumers (network namespaces, libfabric tcp);
  - the raw libfabric RMA-read bandwidth between two nodes, for
    "closeness to the wire" = latency / (bytes / raw bandwidth);
  - notification latency: the consumer daemon's install to a watchdog
    (inotify) event in a watcher process.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from conftest import BUILD, VIPERCTL, World  # noqa: E402
import bench  # noqa: E402

BLOCK = 4 << 20


def write_file(path, size, fsync=False, seed=0):
    """bench.py's writer with a buffer of seed's byte; returns when close() returned."""
    bench.write_file(path, bytes([seed % 251]) * BLOCK, size, fsync)
    return time.time()


def read_all(path, cold=False):
    buf = bytearray(BLOCK)
    mv = memoryview(buf)
    fd = os.open(path, os.O_RDONLY)
    if cold:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)    # not from our page cache
    n = 0
    while True:
        r = os.readv(fd, [mv])
        if not r:
            break
        n += r
    os.close(fd)
    return n


def viperfs_wait_read(path, version, armed=None):
    """A consumer: wait for the version (push, no polling), read it all.

    armed (a threading.Semaphore) is released once the daemon said the wait
    watches its events ("waiting" on stderr), or answered at once.
    """
    p = subprocess.Popen([VIPERCTL, "wait", path, "--newer-than", str(version - 1),
                          "--timeout", "120"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    first = p.stderr.readline()
    if armed is not None:
        armed.release()
    out, err = p.communicate(timeout=150)
    if p.returncode:
        raise RuntimeError("viperctl wait %s: %s%s" % (path, first, err))
    read_all(path)
    return time.time()


def start_waiters(paths, version, done):
    """Threads that wait for version at each path; returns them once every wait is armed."""
    armed = threading.Semaphore(0)
    threads = [threading.Thread(target=lambda p=p: done.append(
        viperfs_wait_read(p, version, armed))) for p in paths]
    for t in threads:
        t.start()
    for _ in threads:
        armed.acquire()
    return threads


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1G")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--gap", type=float, default=3.0,
                    help="seconds between checkpoints for the 'with a gap' row (a training step); 0: no such row")
    ap.add_argument("--stream", default=None,
                    help="producer's repl_stream (default: the daemon's); 0 ships at close only")
    a, _ = ap.parse_known_args()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    size = int(float(a.size[:-1]) * mult[a.size[-1].upper()])
    w = World()
    res = {k: [] for k in ("raw", "vp1", "vp1gap", "vp3", "notify", "stall1")}
    try:
        net = w.net(4)
        port = 7900 + os.getpid() % 50
        env = dict(os.environ, FI_PROVIDER="tcp;ofi_rxm")
        # raw libfabric bandwidth between node 0 and node 1
        for _ in range(a.runs):
            srv = subprocess.Popen([*net.prefix(0), os.path.join(BUILD, "tests", "fabbw"), "serve",
                                    "%s:%d" % (net.addr(0), port + 1), str(size)],
                                   stdout=subprocess.PIPE, text=True, env=env)
            srv.stdout.readline()
            out = subprocess.run([*net.prefix(1), os.path.join(BUILD, "tests", "fabbw"), "read",
                                  "%s:%d" % (net.addr(0), port + 1), net.addr(1), str(size)],
                                 capture_output=True, text=True, env=env, check=True).stdout
            srv.wait(timeout=60)
            res["raw"].append(float(out.split()[1]))
        pfs = w.dir("pfs")
        secret = os.path.join(w.base, "bench.secret")
        with open(secret, "w") as f:
            f.write(os.urandom(16).hex())
        cache = "ram_cache=%d,ram_prefault=%d,secret_file=%s" % (size * 6, size * 2, secret)
        stream = ",repl_stream=%s" % a.stream if a.stream is not None else ""
        prod = w.mount("listen=%s:%d,%s%s" % (net.addr(0), port, cache, stream), pfs=pfs,
                       mnt=w.dir("prod"), prefix=net.prefix(0))
        def consumer(i):
            return w.mount("subscribe=%s:%d,%s" % (net.addr(0), port, cache), pfs=pfs,
                           mnt=w.dir("c%d" % i), prefix=net.prefix(1 + i))

        def active():
            st = json.loads(prod.ctl("status", prod.mnt, "--json").stdout)
            return sum(1 for p in st["repl"]["peers"] if p["active"])

        def wait_active(n):
            t_end = time.monotonic() + 30
            while active() < n and time.monotonic() < t_end:
                time.sleep(0.1)
        cons = [consumer(0)]
        wait_active(1)
        # a bare inotify watcher (ctypes: no framework's dispatch delay) on consumer 0
        watcher = w.spawn([sys.executable, "-c", """
import ctypes, os, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init()
libc.inotify_add_watch(fd, sys.argv[1].encode(), 0x8 | 0x80)   # CLOSE_WRITE | MOVED_TO
print("ready", flush=True)
while True:
    buf = os.read(fd, 65536)
    t = time.time()
    off = 0
    while off < len(buf):
        wd, mask, cookie, ln = struct.unpack_from("iIII", buf, off)
        name = buf[off + 16:off + 16 + ln].rstrip(b"\\0").decode()
        print("event", name, repr(t), flush=True)
        off += 16 + ln
""", cons[0].mnt], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        watcher.stdout.readline()
        watch = w.spawn([VIPERCTL, "watch", cons[0].mnt], stdout=subprocess.PIPE, text=True)
        watch.stdout.readline()
        version = 0
        # back to back (no spare is made in between: the worst case), then with a
        # training step's gap between checkpoints (the spare is ready), then 3 consumers
        for n_cons, gap in [(1, 0), (1, a.gap), (3, 0)] if a.gap > 0 else [(1, 0), (3, 0)]:
            key = "vp%d%s" % (n_cons, "gap" if gap else "")
            if n_cons == 3:
                cons += [consumer(1), consumer(2)]
                wait_active(3)
            for run in range(a.runs):
                time.sleep(gap)     # the model trains
                version += 1
                done = []
                # consumers not measured this round still receive it: let them
                threads = start_waiters([c.path("ckpt.pt") for c in cons[:n_cons]], version, done)
                t_open = time.time()
                t_close = write_file(prod.path("ckpt.pt"), size, seed=version)
                for t in threads:
                    t.join()
                res[key].append(max(done) - t_close)
                if key == "vp1":
                    res["stall1"].append(t_close - t_open)
                # everyone has this version before the next round
                for c in cons:
                    viperfs_wait_read(c.path("ckpt.pt"), version)
                # notification: daemon's install time -> watchdog event
                ev = json.loads(watch.stdout.readline())
                while ev.get("version") != version:
                    ev = json.loads(watch.stdout.readline())
                # the first event of this version: a replaced file raises MOVED_TO and
                # then CLOSE_WRITE, so the previous round's second event is still queued
                line = watcher.stdout.readline().split()
                while line[1] != "ckpt.pt" or float(line[2]) < ev["time"] - 0.05:
                    line = watcher.stdout.readline().split()
                if n_cons == 1 and not gap:
                    res["notify"].append(float(line[2]) - ev["time"])
        watcher.stdin.close()
    finally:
        w.cleanup()

    med = {k: statistics.median(v) for k, v in res.items() if v}
    wire = size / (med["raw"] * 1e9)
    print("viperfs replication bench: %.2f GiB checkpoint, %d runs, medians; %d cores; repl_stream=%s; "
          "shmem_enabled=%s" % (size / (1 << 30), a.runs, os.cpu_count(),
                                a.stream if a.stream is not None else "default", bench.shmem_enabled()))
    rows = [
        ("raw libfabric RMA read (tcp, veth)", wire, "%.2f GB/s" % med["raw"]),
        ("update latency: viperfs, 1 consumer", med["vp1"], "back to back; bench_pfs.py has the baselines"),
        # the chunks streamed while the file is written share the cores with the writer:
        # what streaming takes off the latency it may add to the write
        ("  its producer stall (open -> close)", med["stall1"],
         "open -> last byte read: %.4f s" % statistics.median(
             stall + lat for stall, lat in zip(res["stall1"], res["vp1"]))),
        *([("update latency: 1 consumer, %g s gaps" % a.gap, med["vp1gap"],
            "%.2fx the raw transfer (the spare is ready)" % (med["vp1gap"] / wire))] if "vp1gap" in med else []),
        ("update latency: viperfs, 3 consumers", med["vp3"],
         "%.2fx the 1-consumer latency (target <= 1.5)" % (med["vp3"] / med["vp1"])),
        ("closeness to the wire (viperfs / raw)", med["vp1"] / wire,
         "target <= 1.3"),
        ("notification: install -> inotify event", med["notify"],
         "%.3f ms (target < 1 ms)" % (med["notify"] * 1e3)),
    ]
    for name, v, note in rows:
        print("%-40s %10.4f  %s" % (name, v, note))
    os.makedirs(os.path.join(ROOT, "bench-results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench-results", "bench_repl.json"), "w") as f:
        json.dump({"size": size, "runs": a.runs, "samples": res, "medians": med}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
