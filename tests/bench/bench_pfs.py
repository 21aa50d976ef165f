#!/usr/bin/env python3
"""make bench (PFS part): viperfs against what people do today with a shared
file system, side by side in one run, producer and consumer on two nodes.

The PFS is a real GlusterFS volume (tests/integration/gluster.py): its brick
on node 0, the producer on node 1 and the consumer on node 2, each with its
own GlusterFS client mount, so the consumer's bytes come over TCP from the
brick, never from the writer's page cache.  BENCH_PFS=DIR (or --pfs DIR)
runs the same methods on a PFS directory you mounted yourself (Lustre, GPFS,
NFS): producer and consumer are then both this node, and the consumer drops
its page cache of the file (POSIX_FADV_DONTNEED) before each load.

Methods, each a checkpoint of --size bytes written --runs times:
  poll1     write + fsync in place; the consumer polls mtime and size every
            1 s (TF-Serving's default) and loads on a change
  poll15    the same, every 15 s (Triton's default)
  careful   a 1 s poller that loads only once size and mtime were the same
            over two polls
  rename    the writer saves to a temporary name, fsyncs and renames; a
            1 s poller on the final name
  rsync     the producer's local file pushed at close() by rsync -W to an
            rsync daemon on the consumer's node (lsyncd's best case)
  viperfs   producer and consumer mounts of viperfs on nodes 1 and 2, each
            flushing to (reading from) its own client of the same volume;
            the consumer waits for the version (push) and loads it
  tmpfs     not a way to deliver: the same writer into /dev/shm, no
            consumer.  Its stall is the ceiling of any RAM cache on this
            machine (the stall ratio no design can beat here)

Every load is checked: a version's file is its own byte repeated, so a load
counts as an update only if it has every byte of the version being waited
for.  A load reads the end of the file first, as torch.load does (the zip
archive's directory is there), and fails at once on a file still being
written.  A failed or wrong load is a torn load, counted in its own column;
the poller then waits for the next change.  A version never loaded completely within
--deadline seconds is a miss.

  update latency  close() returned -> the consumer has read the last byte of
                  a complete, checked copy
  producer stall  open() -> close() returned (with fsync for the PFS
                  methods: what a checkpoint needs to be on the PFS)
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from conftest import VIPERCTL, World, cluster_secret, status  # noqa: E402
import bench  # noqa: E402
import gluster  # noqa: E402

BLOCK = bench.BLOCK         # the writer is bench.py's
METHODS = ("poll1", "poll15", "careful", "rename", "rsync", "viperfs", "tmpfs")
TITLES = {
    "poll1": "PFS + fsync, 1 s poll",
    "poll15": "PFS + fsync, 15 s poll",
    "careful": "PFS + fsync, 1 s poll, stable twice",
    "rename": "PFS, temp + fsync + rename, 1 s poll",
    "rsync": "rsync -W pushed at close()",
    "viperfs": "viperfs (flush to the same PFS)",
    "tmpfs": "reference: the writer into tmpfs",
}


def parse_size(s):
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(s[:-1]) * mult[s[-1].upper()]) if s[-1].upper() in mult else int(s)


def pattern(version):
    return bytes([version % 251 + 1]) * BLOCK


def write_version(path, size, version, fsync=False, tmp=None):
    """A version's file: its byte, size times (bench.py's writer), renamed
    into place from tmp if given.  Returns (t_open, t_close), wall clock."""
    t_open = time.time()
    bench.write_file(tmp or path, pattern(version), size, fsync)
    if tmp:
        os.rename(tmp, path)
    return t_open, time.time()


def load_checked(path, size, version, cold):
    """A load as torch.load makes it, checked: True if path is exactly that
    version's bytes.

    torch.load reads the archive's directory at the end of the file first,
    so a file still being written fails there, before its body is read: the
    size the load opens must be the whole file, and its last block the
    version's.  A load that passes reads every byte and compares it."""
    want = pattern(version)
    buf = bytearray(BLOCK)
    mv = memoryview(buf)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    ok, n = True, 0
    try:
        if cold:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        end = os.fstat(fd).st_size
        if end != size or os.pread(fd, min(BLOCK, size), size - min(BLOCK, size)) != want[:min(BLOCK, size)]:
            return False        # "failed finding central directory"
        while True:
            r = os.readv(fd, [mv])
            if not r:
                break
            # bytearray against bytes is a memcmp; a memoryview's compare goes
            # byte by byte, 60x slower here, and would be most of a "load"
            if ok and (n + r > size or (buf != want if r == BLOCK else buf[:r] != want[:r])):
                ok = False      # read on to the end all the same: a loader would
            n += r
    finally:
        os.close(fd)
    return ok and n == size


class Poller(threading.Thread):
    """A consumer polling path every period s (ticks at t0 + phase + k*period)
    until it has loaded version completely; counts torn loads."""

    def __init__(self, path, size, version, period, phase, stable=False, cold=True, deadline=120):
        super().__init__(daemon=True)
        self.path, self.size, self.version = path, size, version
        self.period, self.phase, self.stable, self.cold = period, phase, stable, cold
        self.deadline = deadline
        self.torn, self.done_at = 0, None
        self.t0 = time.time()
        try:
            st = os.stat(path)
            self.seen = (st.st_ino, st.st_mtime_ns, st.st_size)   # the previous version's
        except FileNotFoundError:
            self.seen = None

    def run(self):
        k, last = 0, None
        while time.time() < self.t0 + self.deadline:
            tick = self.t0 + self.phase + k * self.period
            k += 1
            if tick > time.time():
                time.sleep(tick - time.time())
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                continue
            cur = (st.st_ino, st.st_mtime_ns, st.st_size)
            if cur == self.seen:
                continue
            if self.stable and cur != last:     # not the same over two polls yet
                last = cur
                continue
            self.seen = cur
            if load_checked(self.path, self.size, self.version, self.cold):
                self.done_at = time.time()
                return
            self.torn += 1


class Rsyncd:
    """An rsync daemon on a node, serving one writable module (its local disk)."""

    def __init__(self, world, net, node, port):
        self.dir = world.dir("rsync-dst")
        conf = os.path.join(world.base, "rsyncd.conf")
        with open(conf, "w") as f:
            f.write("use chroot = no\nuid = root\ngid = root\n[ckpt]\npath = %s\nread only = no\n"
                    % self.dir)
        self.proc = world.spawn([*net.prefix(node), "rsync", "--daemon", "--no-detach",
                                 "--config=" + conf, "--port=%d" % port,
                                 "--address=" + net.addr(node)], stderr=subprocess.DEVNULL)
        self.url = "rsync://%s:%d/ckpt/" % (net.addr(node), port)
        t_end = time.monotonic() + 10
        while subprocess.run([*net.prefix(node - 1), "rsync", self.url], capture_output=True).returncode:
            if time.monotonic() > t_end or self.proc.poll() is not None:
                raise RuntimeError("rsync --daemon did not start")
            time.sleep(0.05)


class Setup:
    """The nodes: GlusterFS (or BENCH_PFS), viperfs producer and consumer, rsync."""

    def __init__(self, world, size, pfs_dir, methods, vp_opts=""):
        self.world, self.size = world, size
        self.net = net = world.net(3)
        self.external = pfs_dir
        if pfs_dir:
            self.prod_pfs = self.cons_pfs = os.path.join(pfs_dir, "viperfs-bench-%d" % os.getpid())
            os.makedirs(self.prod_pfs)
            self.g = None
        else:
            self.g = gluster.Gluster(world, net, server=0)
            self.prod_pfs, self.cons_pfs = self.g.client(1), self.g.client(2)
        self.base_dir = os.path.join(self.prod_pfs, "baseline")     # the baselines' files
        os.makedirs(self.base_dir, exist_ok=True)
        self.cons_base_dir = os.path.join(self.cons_pfs, "baseline")
        self.local = world.dir("producer-local")
        self.rsyncd = None
        if "rsync" in methods:
            self.rsyncd = Rsyncd(world, net, 2, 8730 + os.getpid() % 200)
        self.prod = self.cons = None
        if "viperfs" in methods:
            secret = cluster_secret(world)
            port = 7600 + os.getpid() % 100
            # a version, its successor being written, and room: 4.6 GB runs fit in 24 GiB
            cache = "ram_cache=%d,ram_prefault=%d" % (size * 2 + (512 << 20), min(size, 1 << 30))
            vpfs = os.path.join(self.prod_pfs, "viperfs")
            os.makedirs(vpfs, exist_ok=True)
            self.prod = world.mount("listen=%s:%d,%s%s%s" % (net.addr(1), port, cache, secret,
                                                             vp_opts and "," + vp_opts),
                                    pfs=vpfs, mnt=world.dir("prod"), prefix=net.prefix(1))
            cvpfs = os.path.join(self.cons_pfs, "viperfs")
            self.cons = world.mount("subscribe=%s:%d,%s%s" % (net.addr(1), port, cache, secret),
                                    pfs=cvpfs, mnt=world.dir("cons"), prefix=net.prefix(2))
            t_end = time.monotonic() + 30
            while not any(p["active"] for p in status(self.prod)["repl"]["peers"]):
                if time.monotonic() > t_end:
                    raise RuntimeError("the consumer did not subscribe")
                time.sleep(0.1)

    def cleanup(self):
        if self.external:
            shutil.rmtree(self.prod_pfs, ignore_errors=True)


def run_poll(s, version, run, runs, period, stable=False, rename=False):
    name = "ckpt-%s.pt" % ("rename" if rename else "inplace")
    path, cpath = os.path.join(s.base_dir, name), os.path.join(s.cons_base_dir, name)
    # the writes land at evenly spread phases of the poll
    p = Poller(cpath, s.size, version, period, (run + 0.5) / runs * period, stable=stable,
               deadline=period * 4 + 300)
    p.start()
    t_open, t_close = write_version(path, s.size, version, fsync=True,
                                    tmp=path + ".tmp" if rename else None)
    p.join()
    return {"stall": t_close - t_open, "latency": p.done_at - t_close if p.done_at else None,
            "torn": p.torn}


def run_rsync(s, version):
    path = os.path.join(s.local, "ckpt.pt")
    t_open, t_close = write_version(path, s.size, version)
    subprocess.run([*s.net.prefix(1), "rsync", "-a", "-W", path, s.rsyncd.url], check=True,
                   capture_output=True)
    ok = load_checked(os.path.join(s.rsyncd.dir, "ckpt.pt"), s.size, version, cold=False)
    t = time.time()
    return {"stall": t_close - t_open, "latency": t - t_close if ok else None, "torn": 0 if ok else 1}


def run_tmpfs(s, version):
    """The reference: the same writer into tmpfs, nothing delivered."""
    path = "/dev/shm/viperfs-bench-pfs-%d.pt" % os.getpid()
    try:
        t_open, t_close = write_version(path, s.size, version)
    finally:
        if os.path.exists(path):
            os.unlink(path)
    return {"stall": t_close - t_open, "latency": None, "torn": 0, "reference": True}


def run_viperfs(s, version, nth):
    """version: the bytes' pattern; nth: the daemon's version number of the file."""
    path, cpath = s.prod.path("ckpt.pt"), s.cons.path("ckpt.pt")
    w = subprocess.Popen([VIPERCTL, "wait", cpath, "--newer-than", str(nth - 1),
                          "--timeout", "300"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    w.stderr.readline()     # "waiting": armed (or it answered at once)
    t_open, t_close = write_version(path, s.size, version)
    out, err = w.communicate(timeout=330)
    t_notified = time.time()
    if w.returncode:
        raise RuntimeError("viperctl wait: %s" % err)
    torn = 0
    while not load_checked(cpath, s.size, version, cold=False):
        torn += 1
        if torn > 3:
            return {"stall": t_close - t_open, "latency": None, "torn": torn}
    return {"stall": t_close - t_open, "latency": time.time() - t_close, "torn": torn,
            "notified": t_notified - t_close}


def measure(size, runs, methods, pfs_dir=None, log=print, vp_opts=""):
    """Runs methods; returns {method: [sample, ...]} (sample: stall, latency, torn)."""
    res = {m: [] for m in methods}
    w = World()
    s = None
    try:
        s = Setup(w, size, pfs_dir, methods, vp_opts)
        version = {m: 0 for m in methods}
        for run in range(runs):
            for m in methods:
                version[m] += 1
                v = version[m] + 10 * METHODS.index(m)    # never the byte of another's file
                if m == "poll1":
                    r = run_poll(s, v, run, runs, 1.0)
                elif m == "poll15":
                    r = run_poll(s, v, run, runs, 15.0)
                elif m == "careful":
                    r = run_poll(s, v, run, runs, 1.0, stable=True)
                elif m == "rename":
                    r = run_poll(s, v, run, runs, 1.0, rename=True)
                elif m == "rsync":
                    r = run_rsync(s, v)
                elif m == "tmpfs":
                    r = run_tmpfs(s, v)
                else:
                    r = run_viperfs(s, v, version[m])
                    s.prod.flush()      # untimed: its flush must not slow the next method
                res[m].append(r)
                log("  %-8s run %d: stall %6.3f s, latency %s, torn %d%s" % (
                    m, run + 1, r["stall"],
                    "%.3f s" % r["latency"] if r["latency"] is not None else "missed", r["torn"],
                    " (notified after %.3f s)" % r["notified"] if "notified" in r else ""))
        if s.prod:
            s.prod.flush()      # viperfs' flush goes to the same volume: it must have landed
            cp = os.path.join(s.cons_pfs, "viperfs", "ckpt.pt")
            if not load_checked(cp, size, version["viperfs"] + 10 * METHODS.index("viperfs"), True):
                raise RuntimeError("viperfs' flush to the PFS is not the last version")
    finally:
        if s:
            s.cleanup()
        w.cleanup()
    return res


def summarize(res):
    out = {}
    for m, samples in res.items():
        lat = [x["latency"] for x in samples if x["latency"] is not None]
        out[m] = {"latency": statistics.median(lat) if lat else None,
                  "stall": statistics.median(x["stall"] for x in samples) if samples else None,
                  "torn": sum(x["torn"] for x in samples),
                  "missed": sum(1 for x in samples if x["latency"] is None and not x.get("reference")),
                  "runs": len(samples)}
    return out


def table(med, where):
    lines = ["%-40s %10s %10s %6s %6s  %s" % ("method (%s)" % where, "latency s", "stall s",
                                               "torn", "missed", "viperfs is")]
    vp = med.get("viperfs", {})
    for m, v in med.items():
        ratio = ""
        if m != "viperfs" and vp.get("latency") and v["latency"]:
            ratio = "%.1fx lower latency, %.1fx lower stall" % (v["latency"] / vp["latency"],
                                                                v["stall"] / vp["stall"])
        elif m == "tmpfs" and vp.get("stall") and v["stall"]:
            ratio = "viperfs' stall is %.2fx this" % (vp["stall"] / v["stall"])
        lines.append("%-40s %10s %10.3f %6d %6d  %s" % (
            TITLES[m], "%.3f" % v["latency"] if v["latency"] is not None else "-",
            v["stall"], v["torn"], v["missed"], ratio))
    return lines


def targets(med):
    """The issue's targets that this run can check."""
    vp = med.get("viperfs")
    out = []

    def row(name, base, key, want):
        b = med.get(base)
        if not (vp and b and vp[key] and b[key]):
            return
        r = b[key] / vp[key]
        out.append("%-52s %6.1fx  target >= %g: %s" % (name, r, want, "met" if r >= want else "NOT met"))
    row("update latency, viperfs vs PFS + fsync + 1 s poll", "poll1", "latency", 4)
    row("update latency, viperfs vs PFS + 15 s poll", "poll15", "latency", 10)
    row("producer stall vs write + fsync to the PFS", "poll1", "stall", 5)
    b, t = med.get("poll1"), med.get("tmpfs")
    if b and t and b["stall"] and t["stall"]:
        out.append("%-52s %6.1fx  (the most any RAM cache could reach on this machine)" % (
            "  ceiling: PFS stall vs a tmpfs write", b["stall"] / t["stall"]))
    if vp:
        out.append("%-52s %6d   target 0: %s" % ("torn loads, viperfs", vp["torn"],
                                                 "met" if vp["torn"] == 0 else "NOT met"))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--pfs", default=os.environ.get("BENCH_PFS") or None,
                    help="a mounted PFS directory to use instead of GlusterFS (BENCH_PFS)")
    ap.add_argument("--viperfs-opts", default="",
                    help="more -o options for the viperfs producer (e.g. flush_bw=200M)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench-results", "bench_pfs.json"))
    a, _ = ap.parse_known_args()
    size = parse_size(a.size)
    methods = [m for m in a.methods.split(",") if m]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        ap.error("unknown method %s (known: %s)" % (", ".join(bad), ", ".join(METHODS)))
    if not a.pfs and gluster.available():
        print("bench_pfs: %s; set BENCH_PFS=DIR to use a PFS of yours" % gluster.available())
        return 1
    where = a.pfs or "GlusterFS 1 brick, client per node"
    print("viperfs PFS bench: %.2f GiB checkpoint, %d runs, medians; %d cores; PFS: %s" % (
        size / (1 << 30), a.runs, os.cpu_count(), where), flush=True)
    res = measure(size, a.runs, methods, a.pfs, vp_opts=a.viperfs_opts)
    med = summarize(res)
    for line in table(med, "GlusterFS" if not a.pfs else "BENCH_PFS"):
        print(line)
    for line in targets(med):
        print(line)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"size": size, "runs": a.runs, "pfs": where, "samples": res, "medians": med}, f,
                  indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
