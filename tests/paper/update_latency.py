#!/usr/bin/env python3
"""make paper, experiment 1: end-to-end model update latency.

The paper's first experiment (Ye et al., ICPP 2024, on Polaris with Lustre)
measures the time from the producer's checkpoint to a consumer holding the
new model, for NT3.A's checkpoint (about 600 MB) and for TC1's and
PtychoNN's (about 4.6 GB), with viperfs against a PFS and polling.  Here the
PFS is a GlusterFS volume on a node of its own (tests/bench/bench_pfs.py
has the methods and how each load is checked); BENCH_PFS=DIR uses yours.

The paper reports about 3.5x lower latency host to host (RAM to RAM) and
about 10x GPU to GPU; the second needs a GPU and is not run without one.
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "bench"))
import bench_pfs  # noqa: E402

PAPER_RAM = 3.5     # the seed's figure, host to host
PAPER_GPU = 10.0    # GPU to GPU

# (label, size, runs, methods): the big one once, with the two methods that matter most
CASES = [("NT3.A, 600 MB", 600_000_000, 3, ("poll1", "poll15", "careful", "rename", "viperfs")),
         ("TC1 / PtychoNN, 4.6 GB", 4_600_000_000, 1, ("poll1", "rename", "viperfs"))]


def gpu_line():
    try:
        import torch
        if torch.cuda.is_available():
            return None
    except Exception:
        pass
    return "GPU to GPU: not run, this machine has no CUDA device (the paper: ~%gx)" % PAPER_GPU


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="64 MB and 256 MB, one run each")
    ap.add_argument("--pfs", default=os.environ.get("BENCH_PFS") or None)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench-results", "paper_latency.json"))
    a = ap.parse_args()
    cases = CASES
    if a.quick:
        cases = [("quick, 64 MB", 64 << 20, 1, ("poll1", "viperfs")),
                 ("quick, 256 MB", 256 << 20, 1, ("poll1", "rename", "viperfs"))]
    if not a.pfs and bench_pfs.gluster.available():
        print("paper latency: %s" % bench_pfs.gluster.available())
        return 1
    where = "BENCH_PFS " + a.pfs if a.pfs else "GlusterFS, one brick on a node of its own"
    print("# Experiment 1: end-to-end model update latency (%d cores; PFS: %s)" % (os.cpu_count(), where))
    out = {}
    summary = []
    for label, size, runs, methods in cases:
        print("\n## %s (%d runs, medians)" % (label, runs), flush=True)
        res = bench_pfs.measure(size, runs, list(methods), a.pfs)
        med = bench_pfs.summarize(res)
        for line in bench_pfs.table(med, "GlusterFS" if not a.pfs else "BENCH_PFS"):
            print(line)
        out[label] = {"size": size, "runs": runs, "samples": res, "medians": med}
        vp, base = med["viperfs"], med["poll1"]
        if vp["latency"] and base["latency"]:
            summary.append((label, base["latency"] / vp["latency"]))
    print("\n## Against the paper (RAM to RAM: viperfs vs PFS + fsync + 1 s poll)")
    print("%-26s %10s %10s %8s" % ("checkpoint", "paper", "ours", "ours/paper"))
    for label, r in summary:
        print("%-26s %9.1fx %9.1fx %8.2f" % (label, PAPER_RAM, r, r / PAPER_RAM))
    line = gpu_line()
    if line:
        print(line)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
