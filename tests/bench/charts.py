#!/usr/bin/env python3
"""make bench, last step: the results as CSV and as PNG charts (gnuplot).

Reads what bench.py, bench_repl.py and bench_pfs.py left in bench-results/
and writes:
  update_latency.csv / .png  update latency per version: viperfs with 1 and
                             3 consumers (bench_repl), the PFS pollers and
                             rsync (bench_pfs; a missed update is left out)
  throughput.csv / .png      write and read throughput: viperfs, tmpfs, PFS
Either input may be missing (a bench that was not run); its chart is skipped.
"""
import argparse
import csv
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SERIES = [("vp1", "viperfs, 1 consumer"), ("vp1gap", "viperfs, 1 consumer, gaps"),
          ("vp3", "viperfs, 3 consumers"),
          ("poll1", "PFS+fsync, 1 s poll"), ("poll15", "PFS+fsync, 15 s poll"),
          ("rename", "PFS, temp+rename, 1 s poll"), ("rsync", "rsync at close()")]


def gnuplot(script, out):
    r = subprocess.run(["gnuplot"], input=script, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError("gnuplot failed for %s: %s" % (out, r.stderr))


def latency_chart(res_dir):
    samples, size = {}, None
    for name in ("bench_repl.json", "bench_pfs.json"):
        try:
            with open(os.path.join(res_dir, name)) as f:
                data = json.load(f)
        except FileNotFoundError:
            continue
        size = size or data["size"]
        for k, v in data["samples"].items():
            # bench_pfs: {stall, latency, torn} per run, latency None when missed
            samples[k] = [x["latency"] if isinstance(x, dict) else x for x in v]
    if not samples:
        return None
    series = [(k, t) for k, t in SERIES if k in samples]
    runs = max(len(samples[k]) for k, _ in series)
    path = os.path.join(res_dir, "update_latency.csv")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["version"] + [k for k, _ in series])
        for i in range(runs):
            w.writerow([i + 1] + ["%.6f" % samples[k][i] if i < len(samples[k])
                                  and samples[k][i] is not None else "" for k, _ in series])
    png = os.path.join(res_dir, "update_latency.png")
    plots = ", ".join("'%s' using 1:%d with linespoints title '%s'" % (path, i + 2, title)
                      for i, (_, title) in enumerate(series))
    gnuplot("""set terminal pngcairo size 900,500
set output '%s'
set datafile separator ','
set key autotitle columnhead
set title 'Update latency per version (%.2f GiB checkpoint, close() to last byte read)'
set xlabel 'version'
set xtics 1
set ylabel 'seconds'
set logscale y
set grid
plot %s
""" % (png, size / (1 << 30), plots), png)
    return path, png


def throughput_chart(res_dir):
    src = os.path.join(res_dir, "bench.csv")
    if not os.path.exists(src):
        return None
    with open(src) as f:
        rows = list(csv.DictReader(f))
    path = os.path.join(res_dir, "throughput.csv")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "gb_per_s"])
        for r in rows:
            if r["metric"].startswith("stall") or not r.get("gb_per_s"):
                continue        # a latency, or no throughput at all (the memory rows)
            w.writerow([r["metric"].replace(",", ";"), r["gb_per_s"]])
    png = os.path.join(res_dir, "throughput.png")
    gnuplot("""set terminal pngcairo size 900,500
set output '%s'
set datafile separator ','
set title 'Throughput: viperfs against tmpfs and the PFS (medians)'
set style data histograms
set style fill solid 0.8 border -1
set boxwidth 0.8
set ylabel 'GB/s'
set xtics rotate by -30 scale 0 font ',9'
set grid ytics
set key off
plot '%s' using 2:xtic(1) skip 1
""" % (png, path), png)
    return path, png


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=os.path.join(ROOT, "bench-results"))
    a = ap.parse_args()
    if not shutil.which("gnuplot"):
        print("charts: gnuplot is missing (Debian: gnuplot-nox); CSV only", file=sys.stderr)
    made = []
    for fn in (latency_chart, throughput_chart):
        try:
            out = fn(a.dir)
        except FileNotFoundError:
            out = None
        if out:
            made += list(out)
    for p in made:
        print("wrote", os.path.relpath(p, ROOT) if p.startswith(ROOT) else p)
    return 0 if made else 1


if __name__ == "__main__":
    sys.exit(main())
