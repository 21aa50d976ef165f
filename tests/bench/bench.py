#!/usr/bin/env python3
"""make bench: viperfs against tmpfs and a PFS directory, side by side.

One run, on this machine, prints medians and ratios:
  - producer write of a checkpoint (default 1 GiB) into viperfs, tmpfs, and
    the PFS directory with fsync: throughput, and the producer's stall
    (open() to close() returning; for the PFS, write + fsync + close);
  - cold and warm reads from the mount against tmpfs.
The PFS stand-in is a directory on this machine's disk (--pfs-base).
Results also go to bench-results/bench.csv.
"""
import argparse
import csv
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
BLOCK = 4 << 20


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


def gbps(size, secs):
    return size / secs / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G", help="checkpoint size (K/M/G)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--pfs-base", default="/var/tmp",
                    help="disk directory that stands in for the PFS")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench-results"))
    a, _ = ap.parse_known_args()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    size = int(float(a.size[:-1]) * mult[a.size[-1].upper()]) if a.size[-1].upper() in mult else int(a.size)

    base = tempfile.mkdtemp(prefix="viperfs-bench-")
    pfs_base = tempfile.mkdtemp(prefix="viperfs-bench-pfs-", dir=a.pfs_base)
    tmpfs = os.path.join(base, "tmpfs")
    pfs = os.path.join(pfs_base, "pfs")
    mnt = os.path.join(base, "mnt")
    for d in (tmpfs, pfs, mnt):
        os.makedirs(d)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%d" % (size * 2 + (64 << 20)), "tmpfs", tmpfs],
                   check=True)
    proc = None
    buf = bytearray(os.urandom(1 << 20)) * (BLOCK >> 20)
    rbuf = bytearray(BLOCK)
    rows = {k: [] for k in ("tmpfs_w", "vp_w", "vp_w2", "pfs_w", "tmpfs_r", "vp_cold",
                             "vp_warm", "vp_busy")}
    try:
        cache = max(size * 3, 1 << 30)
        proc = mount_viperfs(pfs, mnt, "ram_cache=%d,ram_prefault=%d" % (cache, size * 2), base)
        for run in range(a.runs):
            rows["tmpfs_w"].append(write_file(os.path.join(tmpfs, "ckpt.pt"), buf, size))
            rows["vp_w"].append(write_file(os.path.join(mnt, "ckpt.pt"), buf, size))
            rows["pfs_w"].append(write_file(os.path.join(pfs_base, "direct.pt"), buf, size, fsync=True))
            # a read while the new version is still being flushed competes
            # with the flusher for the two cores: reported on its own line
            rows["vp_busy"].append(read_file(os.path.join(mnt, "ckpt.pt"), rbuf)[0])
            subprocess.run([os.path.join(BUILD, "viperctl"), "flush", mnt],
                           capture_output=True, check=True)
            rows["vp_w2"].append(write_file(os.path.join(mnt, "ckpt.pt"), buf, size))
            subprocess.run([os.path.join(BUILD, "viperctl"), "flush", mnt],
                           capture_output=True, check=True)
            rows["tmpfs_r"].append(read_file(os.path.join(tmpfs, "ckpt.pt"), rbuf)[0])
            # first open of a new version: the kernel's page cache is empty
            rows["vp_cold"].append(read_file(os.path.join(mnt, "ckpt.pt"), rbuf)[0])
            rows["vp_warm"].append(read_file(os.path.join(mnt, "ckpt.pt"), rbuf)[0])
        with open(os.path.join(pfs, "ckpt.pt"), "rb") as f:
            flushed_ok = f.read(BLOCK) == bytes(buf[:BLOCK])
    finally:
        if proc:
            unmount(proc, mnt)
        subprocess.run(["umount", tmpfs], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(pfs_base, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in rows.items()}
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    print("viperfs bench: %.2f GiB checkpoint, %d runs, medians; %d cores, %s" % (
        size / (1 << 30), a.runs, os.cpu_count(), cpu))
    print("%-36s %10s %10s %10s" % ("", "seconds", "GB/s", "ratio"))
    table = [
        ("write: tmpfs", med["tmpfs_w"], None, "baseline"),
        ("write: viperfs", med["vp_w"], med["tmpfs_w"] / med["vp_w"], "x tmpfs (target >= 0.8)"),
        ("write+fsync: PFS directory", med["pfs_w"], med["tmpfs_w"] / med["pfs_w"], "x tmpfs"),
        ("stall: viperfs (open..close)", med["vp_w"], med["pfs_w"] / med["vp_w"],
         "x lower than PFS (target >= 3)"),
        ("read: tmpfs", med["tmpfs_r"], None, "baseline"),
        ("read cold: viperfs", med["vp_cold"], med["tmpfs_r"] / med["vp_cold"], "x tmpfs (target >= 0.7)"),
        ("read warm: viperfs", med["vp_warm"], med["tmpfs_r"] / med["vp_warm"], "x tmpfs (target >= 0.9)"),
        ("read cold, flush running: viperfs", med["vp_busy"], med["tmpfs_r"] / med["vp_busy"], "x tmpfs"),
    ]
    for name, secs, ratio, what in table:
        print("%-36s %10.3f %10.2f %10s %s" % (name, secs, gbps(size, secs),
                                               "" if ratio is None else "%.2f" % ratio, what))
    print("flushed copy on the PFS matches: %s" % ("yes" if flushed_ok else "NO"))
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "bench.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric", "median_s", "gb_per_s", "ratio", "runs", "bytes"])
        for name, secs, ratio, _ in table:
            w.writerow([name, "%.4f" % secs, "%.3f" % gbps(size, secs),
                        "" if ratio is None else "%.3f" % ratio, a.runs, size])
    return 0 if flushed_ok else 1


if __name__ == "__main__":
    sys.exit(main())
