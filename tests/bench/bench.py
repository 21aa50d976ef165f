#!/usr/bin/env python3
"""make bench: viperfs against tmpfs and a PFS directory, side by side.

One run, on this machine, prints medians and ratios:
  - producer write of a checkpoint (default 1 GiB) into viperfs, tmpfs, and
    the PFS directory with fsync: throughput, and the producer's stall
    (open() to close() returning; for the PFS, write + fsync + close);
  - cold and warm reads from the mount against tmpfs;
  - an mmap read of every page (MAP_SHARED, PROT_READ), cold for viperfs,
    against tmpfs;
  - the node's memory held after a file of the same size is written and read
    once: the daemon's anonymous memory, the system's Shmem (memfds, tmpfs)
    and the page cache of the file in the mount, on a mount of its own with
    no tmpfs copy around.
The PFS is a GlusterFS volume whose brick is on a node (network namespace)
of its own, written through this node's GlusterFS client
(tests/integration/gluster.py); BENCH_PFS=DIR (or --pfs-base DIR) names a
PFS directory of yours instead.  Results also go to bench-results/bench.csv.
"""
import argparse
import csv
import json
import mmap
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("VIPERFS_BUILD", os.path.join(ROOT, "build"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from conftest import World  # noqa: E402
import gluster  # noqa: E402
BLOCK = 4 << 20
PAGE = 4096


def write_file(path, buf, size, fsync=False):
    """Writes size bytes in BLOCK pieces; returns seconds from open to close."""
    mv = memoryview(buf)
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    done = 0
    while done < size:
        done += os.write(fd, mv[:min(BLOCK, size - done)])
    if fsync:
        os.fsync(fd)
    os.close(fd)
    return time.perf_counter() - t0


def shmem_enabled():
    """The machine's shmem huge page mode: memory files get 2 MiB pages unless 'never'."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/shmem_enabled") as f:
            return f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return "unknown"


def read_file(path, buf):
    """Reads the whole file; returns (seconds, bytes)."""
    mv = memoryview(buf)
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    total = 0
    while True:
        n = os.readv(fd, [mv])
        if n == 0:
            break
        total += n
    os.close(fd)
    return time.perf_counter() - t0, total


def mmap_read(path):
    """Maps the whole file (MAP_SHARED, PROT_READ) and reads the first byte
    of every 4 KiB page, so that every page faults; returns (seconds, the
    bytes read)."""
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    mm = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ)
    mv = memoryview(mm)
    sample = mv[::PAGE].tobytes()      # a strided copy in C: one load per page
    mv.release()
    mm.close()
    os.close(fd)
    return time.perf_counter() - t0, sample


def page_sample(buf, size):
    """The bytes mmap_read must see in a file that write_file wrote."""
    mv = memoryview(buf)
    n, rest = divmod(size, BLOCK)
    return mv[::PAGE].tobytes() * n + mv[:rest:PAGE].tobytes()


def page_cache_bytes(path):
    """Bytes of path's own inode in the page cache (cachestat(2), Linux >= 6.5); None
    without it.  Not fincore: it maps the file, and a passthrough mapping is the
    backing memory file's, whose pages Shmem already counts."""
    import ctypes
    rng = (ctypes.c_uint64 * 2)(0, 0)
    cs = (ctypes.c_uint64 * 5)()
    fd = os.open(path, os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).syscall(451, fd, ctypes.byref(rng), ctypes.byref(cs), 0):
            return None
    finally:
        os.close(fd)
    return cs[0] * os.sysconf("SC_PAGE_SIZE")


def status_bytes(pid, key):
    """A kB field of /proc/PID/status (RssAnon, RssShmem), in bytes."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) << 10
    return 0


def meminfo_bytes(key):
    """A kB field of /proc/meminfo (Shmem), in bytes."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) << 10
    return 0


def mount_viperfs(pfs, mnt, opts, base):
    sock_path = os.path.join(base, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(60)
    env = dict(os.environ, NOTIFY_SOCKET=sock_path)
    log = open(os.path.join(base, "viperfs.log"), "w")
    proc = subprocess.Popen([os.path.join(BUILD, "viperfs"), "-f", "-o",
                             "control=%s/ctl.sock,%s" % (base, opts), pfs, mnt],
                            env=env, stdout=log, stderr=log)
    try:
        sock.recv(64)
    finally:
        sock.close()
    return proc


def unmount(proc, mnt):
    subprocess.run(["fusermount3", "-u", mnt], capture_output=True)
    try:
        proc.wait(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def spare_ready(mnt):
    """Bytes the mount's spare holds now (ram.spare in its status)."""
    r = subprocess.run([os.path.join(BUILD, "viperctl"), "status", mnt, "--json"],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout)["ram"].get("spare", 0)


def viperctl_flush(mnt):
    subprocess.run([os.path.join(BUILD, "viperctl"), "flush", mnt],
                   capture_output=True, check=True)


def memory_run(buf, rbuf, size, pfs_base):
    """Mounts a fresh viperfs, writes a file of size bytes and reads it once;
    returns what the node holds for it, in bytes: a dict of the daemon's
    RssAnon, the system's Shmem (memfds and tmpfs; the daemon's RssShmem is
    inside it, kept for the record only), the page cache of the file in the
    mount, and their total.  The PFS directory's page cache is the PFS
    client's and is not counted.  ram_prefault=0 and ram_spare=0: memory
    allocated before the first measurement, or ahead for the next version,
    is not the file's."""
    base = tempfile.mkdtemp(prefix="viperfs-bench-mem-")
    pfs = tempfile.mkdtemp(prefix="viperfs-bench-mem-pfs-", dir=pfs_base)
    mnt = os.path.join(base, "mnt")
    os.makedirs(mnt)
    proc = None
    try:
        cache = max(size * 3, 1 << 30)
        proc = mount_viperfs(pfs, mnt, "ram_cache=%d,ram_prefault=0,ram_spare=0" % cache, base)
        anon0 = status_bytes(proc.pid, "RssAnon")
        rss_shmem0 = status_bytes(proc.pid, "RssShmem")
        shmem0 = meminfo_bytes("Shmem")
        path = os.path.join(mnt, "mem.pt")
        write_file(path, buf, size)
        viperctl_flush(mnt)
        _, got = read_file(path, rbuf)
        anon = status_bytes(proc.pid, "RssAnon") - anon0
        rss_shmem = status_bytes(proc.pid, "RssShmem") - rss_shmem0
        shmem = meminfo_bytes("Shmem") - shmem0
        cached = page_cache_bytes(path)
        if got != size:
            raise RuntimeError("memory phase read %d bytes of %d" % (got, size))
    finally:
        if proc:
            unmount(proc, mnt)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(pfs, ignore_errors=True)
    return {"anon": anon, "shmem": shmem, "rss_shmem": rss_shmem, "cache": cached or 0,
            "no_fincore": cached is None, "total": anon + shmem + (cached or 0)}


def gbps(size, secs):
    return size / secs / 1e9


def gib(n):
    return n / (1 << 30)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G", help="checkpoint size (K/M/G)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--pfs-base", default=os.environ.get("BENCH_PFS") or None,
                    help="a PFS directory to use instead of GlusterFS (BENCH_PFS)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench-results"))
    a, _ = ap.parse_known_args()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    size = int(float(a.size[:-1]) * mult[a.size[-1].upper()]) if a.size[-1].upper() in mult else int(a.size)

    world = None
    pfs_where = a.pfs_base
    if not a.pfs_base:
        if gluster.available():
            print("bench: %s; set BENCH_PFS=DIR to use a PFS of yours" % gluster.available())
            return 1
        world = World()
        try:
            net = world.net(2)
            a.pfs_base = gluster.Gluster(world, net, server=0).client(1)
        except Exception:
            world.cleanup()
            raise
        pfs_where = "GlusterFS (a brick on another node, this node's client)"
    try:
        return run(a, size, pfs_where)
    finally:
        if world:
            world.cleanup()


def run(a, size, pfs_where):
    base = tempfile.mkdtemp(prefix="viperfs-bench-")
    pfs_base = tempfile.mkdtemp(prefix="viperfs-bench-pfs-", dir=a.pfs_base)
    tmpfs = os.path.join(base, "tmpfs")
    pfs = os.path.join(pfs_base, "pfs")
    mnt = os.path.join(base, "mnt")
    for d in (tmpfs, pfs, mnt):
        os.makedirs(d)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%d" % (size * 2 + (64 << 20)), "tmpfs", tmpfs],
                   check=True)
    proc = proc0 = None
    base0 = os.path.join(base, "nospare")
    mnt0 = os.path.join(base0, "mnt")
    os.makedirs(mnt0)
    os.makedirs(os.path.join(pfs_base, "pfs0"))
    buf = bytearray(os.urandom(1 << 20)) * (BLOCK >> 20)
    rbuf = bytearray(BLOCK)
    rows = {k: [] for k in ("tmpfs_w", "vp_w", "vp_w0", "vp_w2", "pfs_w", "tmpfs_r", "vp_cold",
                             "vp_warm", "vp_busy", "tmpfs_mmap", "vp_mmap")}
    want = page_sample(buf, size)
    mmap_ok = True
    mmap_warm = []          # runs whose viperfs file was in the page cache before its mmap
    spares = []             # runs whose viperfs write found the spare ready
    try:
        # a spare of the checkpoint's size (ram_spare: the next version's
        # pages allocated ahead; at most a quarter of the cache)
        cache = max(size * 4, 1 << 30)
        proc = mount_viperfs(pfs, mnt, "ram_cache=%d,ram_prefault=64M,ram_spare=%d" % (cache, size), base)
        # the same without the spare, side by side (its file is deleted at once: no flush)
        proc0 = mount_viperfs(os.path.join(pfs_base, "pfs0"), mnt0,
                              "ram_cache=%d,ram_prefault=64M,ram_spare=0" % cache, base0)
        for run in range(a.runs):
            rows["tmpfs_w"].append(write_file(os.path.join(tmpfs, "ckpt.pt"), buf, size))
            spares.append(spare_ready(mnt) >= size)
            rows["vp_w"].append(write_file(os.path.join(mnt, "ckpt.pt"), buf, size))
            rows["vp_w0"].append(write_file(os.path.join(mnt0, "ckpt.pt"), buf, size))
            os.unlink(os.path.join(mnt0, "ckpt.pt"))
            rows["pfs_w"].append(write_file(os.path.join(pfs_base, "direct.pt"), buf, size, fsync=True))
            # a read while the new version is still being flushed competes
            # with the flusher for the two cores: reported on its own line
            rows["vp_busy"].append(read_file(os.path.join(mnt, "ckpt.pt"), rbuf)[0])
            viperctl_flush(mnt)
            rows["vp_w2"].append(write_file(os.path.join(mnt, "ckpt.pt"), buf, size))
            viperctl_flush(mnt)
            rows["tmpfs_r"].append(read_file(os.path.join(tmpfs, "ckpt.pt"), rbuf)[0])
            # first open of a new version: the kernel's page cache is empty
            rows["vp_cold"].append(read_file(os.path.join(mnt, "ckpt.pt"), rbuf)[0])
            rows["vp_warm"].append(read_file(os.path.join(mnt, "ckpt.pt"), rbuf)[0])
            # mmap: a fresh file, flushed first like the cold read above;
            # the writes were direct_io, so its page cache is empty
            secs, got = mmap_read(os.path.join(tmpfs, "ckpt.pt"))
            rows["tmpfs_mmap"].append(secs)
            mmap_ok &= got == want
            path = os.path.join(mnt, "mmap.pt")
            write_file(path, buf, size)
            viperctl_flush(mnt)
            if page_cache_bytes(path):
                mmap_warm.append(run)
            secs, got = mmap_read(path)
            rows["vp_mmap"].append(secs)
            mmap_ok &= got == want
            os.unlink(path)
        with open(os.path.join(pfs, "ckpt.pt"), "rb") as f:
            flushed_ok = f.read(BLOCK) == bytes(buf[:BLOCK])
    finally:
        if proc:
            unmount(proc, mnt)
        if proc0:
            unmount(proc0, mnt0)
        subprocess.run(["umount", tmpfs], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(pfs_base, ignore_errors=True)
    # a phase of its own: the tmpfs and the first mount are gone, so Shmem
    # and the page cache hold nothing of the baseline's
    mem = [memory_run(buf, rbuf, size, a.pfs_base) for _ in range(a.runs)]

    med = {k: statistics.median(v) for k, v in rows.items()}
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    print("viperfs bench: %.2f GiB checkpoint, %d runs, medians; %d cores, %s; PFS: %s" % (
        size / (1 << 30), a.runs, os.cpu_count(), cpu, pfs_where))
    print("%-36s %10s %10s %10s" % ("", "seconds", "GB/s", "ratio"))
    table = [
        ("write: tmpfs", med["tmpfs_w"], None, "baseline"),
        ("write: viperfs", med["vp_w"], med["tmpfs_w"] / med["vp_w"], "x tmpfs (target >= 1.0)"),
        ("write: viperfs, ram_spare=0", med["vp_w0"], med["tmpfs_w"] / med["vp_w0"], "x tmpfs"),
        ("write+fsync: the PFS", med["pfs_w"], med["tmpfs_w"] / med["pfs_w"], "x tmpfs"),
        ("stall: viperfs (open..close)", med["vp_w"], med["pfs_w"] / med["vp_w"],
         "x lower than PFS (target >= 3)"),
        ("read: tmpfs", med["tmpfs_r"], None, "baseline"),
        ("read cold: viperfs", med["vp_cold"], med["tmpfs_r"] / med["vp_cold"], "x tmpfs (target >= 0.7)"),
        ("read warm: viperfs", med["vp_warm"], med["tmpfs_r"] / med["vp_warm"], "x tmpfs (target >= 0.9)"),
        ("read cold, flush running: viperfs", med["vp_busy"], med["tmpfs_r"] / med["vp_busy"], "x tmpfs"),
        ("read mmap: tmpfs", med["tmpfs_mmap"], None, "baseline"),
        ("read mmap: viperfs", med["vp_mmap"], med["tmpfs_mmap"] / med["vp_mmap"],
         "x tmpfs (target >= 0.95)"),
    ]
    for name, secs, ratio, what in table:
        print("%-36s %10.3f %10.2f %10s %s" % (name, secs, gbps(size, secs),
                                               "" if ratio is None else "%.2f" % ratio, what))
    print("  write, viperfs, each run: %s s (tmpfs: %s s); the spare (ram_spare) was ready before %d of %d" % (
        " ".join("%.3f" % t for t in rows["vp_w"]), " ".join("%.3f" % t for t in rows["tmpfs_w"]),
        sum(spares), len(spares)))
    # the cold mmap varies much from run to run: the spread is part of the figure
    print("  read mmap, viperfs, each run: %s s" % " ".join("%.3f" % t for t in rows["vp_mmap"]))
    parts = {k: int(statistics.median(m[k] for m in mem))
             for k in ("anon", "shmem", "rss_shmem", "cache")}
    held = int(statistics.median(m["total"] for m in mem))
    print("%-36s %10s %10s %10.2f x file size (target <= 1.1): %.2f GiB held" % (
        "memory after write+read: viperfs", "", "", held / size, gib(held)))
    print("  memory parts (medians): daemon anon %.2f GiB + Shmem %.2f GiB + fuse page cache %.2f GiB"
          " (daemon RssShmem %.2f GiB, inside Shmem)" % (
              gib(parts["anon"]), gib(parts["shmem"]), gib(parts["cache"]), gib(parts["rss_shmem"])))
    if any(m["no_fincore"] for m in mem):
        print("  cachestat(2) is missing (Linux < 6.5): the fuse page cache is not counted")
    print("flushed copy on the PFS matches: %s" % ("yes" if flushed_ok else "NO"))
    print("mmap read the bytes written: %s" % ("yes" if mmap_ok else "NO"))
    if mmap_warm:
        print("  the viperfs file was in the page cache before its mmap in run(s) %s: not cold"
              % ", ".join(str(r + 1) for r in mmap_warm))
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "bench.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric", "median_s", "gb_per_s", "ratio", "runs", "bytes"])
        for name, secs, ratio, _ in table:
            w.writerow([name, "%.4f" % secs, "%.3f" % gbps(size, secs),
                        "" if ratio is None else "%.3f" % ratio, a.runs, size])
        # memory rows: bytes held, not a time; ratio to the file size
        w.writerow(["memory after write+read: viperfs", "", "", "%.3f" % (held / size), a.runs, held])
        for key, name in (("anon", "daemon anon"), ("shmem", "Shmem"), ("cache", "fuse page cache")):
            w.writerow(["memory part: " + name, "", "", "%.3f" % (parts[key] / size), a.runs,
                        parts[key]])
    return 0 if flushed_ok and mmap_ok else 1


if __name__ == "__main__":
    sys.exit(main())
