#!/usr/bin/env python3
"""make bench (the cost of security): update latency from the producer's
close() to a consumer having read the last byte, with sealed sessions
(secret_file: HMAC handshake, every message sealed with ChaCha20-Poly1305,
chunks registered per transfer) against the same replication without a
secret (insecure=1: address checks only), side by side in one run.

Two producer/consumer pairs (network namespaces, libfabric tcp) run at
once; the runs alternate between them so that the machine's noise falls
on both.  Prints medians and the ratio (target: sealed <= 1.05x plain).
"""
import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import conftest  # noqa: E402
from conftest import World  # noqa: E402
from bench_repl import start_waiters, write_file  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1G")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--baseline-build", default=None,
                    help="a build dir of an older viperfs (e.g. before sealed sessions) for the "
                         "plain pair, run without a secret")
    a, _ = ap.parse_known_args()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    size = int(float(a.size[:-1]) * mult[a.size[-1].upper()])
    w = World()
    res = {"sealed": [], "plain": []}
    try:
        secret = os.path.join(w.base, "bench.secret")
        with open(secret, "w") as f:
            f.write(os.urandom(16).hex())
        pairs = {}
        own = conftest.VIPERFS
        net = w.net(4)
        cache = "ram_cache=%d,ram_prefault=%d" % (size * 4, size * 2)
        for i, (mode, extra) in enumerate((("sealed", "secret_file=" + secret), ("plain", "insecure=1"))):
            port = 7960 + os.getpid() % 30 + i
            pfs = w.dir("pfs-" + mode)
            if mode == "plain" and a.baseline_build:
                conftest.VIPERFS = os.path.join(os.path.abspath(a.baseline_build), "viperfs")
                extra = "log_level=info"
            else:
                conftest.VIPERFS = own
            prod = w.mount("listen=%s:%d,%s,%s" % (net.addr(2 * i), port, cache, extra), pfs=pfs,
                           mnt=w.dir("prod-" + mode), prefix=net.prefix(2 * i))
            cons = w.mount("subscribe=%s:%d,%s,%s" % (net.addr(2 * i), port, cache, extra), pfs=pfs,
                           mnt=w.dir("cons-" + mode), prefix=net.prefix(2 * i + 1))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                st = json.loads(prod.ctl("status", prod.mnt, "--json").stdout)
                if any(p["active"] for p in st["repl"]["peers"]):
                    break
                time.sleep(0.1)
            assert st["repl"].get("sealed", False) == (mode == "sealed"), st["repl"]
            pairs[mode] = (prod, cons)
        version = {"sealed": 0, "plain": 0}
        for run in range(2 * a.runs):
            mode = ("sealed", "plain", "plain", "sealed")[run % 4]     # ABBA: drift falls on both
            prod, cons = pairs[mode]
            version[mode] += 1
            done = []
            threads = start_waiters([cons.path("ckpt.pt")], version[mode], done)
            t_close = write_file(prod.path("ckpt.pt"), size, seed=run)
            for t in threads:
                t.join()
            res[mode].append(done[0] - t_close)
        for mode, (prod, cons) in pairs.items():
            st = json.loads(cons.ctl("status", cons.mnt, "--json").stdout)["repl"]
            assert st["installed"] >= a.runs and st.get("sealed", False) == (mode == "sealed"), st
    finally:
        w.cleanup()
    med = {k: statistics.median(v) for k, v in res.items()}
    print("viperfs security bench: %.2f GiB checkpoint, %d runs each, interleaved, medians; %d cores" %
          (size / (1 << 30), a.runs, os.cpu_count()))
    print("  %-52s %8.3f s" % ("update latency, sealed sessions (secret_file)", med["sealed"]))
    print("  %-52s %8.3f s" % ("update latency, " + (
        "baseline build %s, no secret" % a.baseline_build if a.baseline_build else
        "no secret (insecure=1)"), med["plain"]))
    print("  %-52s %8.3fx (target <= 1.05)" % ("sealed / " + ("baseline" if a.baseline_build else "plain"),
                                                med["sealed"] / med["plain"]))
    print("  samples: sealed %s; plain %s" % (
        ", ".join("%.3f" % x for x in res["sealed"]), ", ".join("%.3f" % x for x in res["plain"])))


if __name__ == "__main__":
    main()
