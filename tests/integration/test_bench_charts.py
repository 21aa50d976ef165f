"""make bench's charts: CSV and PNG from the benches' results."""
import csv
import json
import os
import random
import subprocess

from conftest import ROOT


def test_charts_write_csv_and_png(tmp_path):
    rnd = random.Random()
    samples = {k: [rnd.uniform(0.01, 3) for _ in range(4)] for k in ("vp1", "vp3")}
    with open(tmp_path / "bench_repl.json", "w") as f:
        json.dump({"size": 1 << 28, "runs": 4, "samples": samples, "medians": {}}, f)
    pfs = {k: [{"stall": 1.0, "latency": rnd.uniform(0.5, 9), "torn": 0} for _ in range(4)]
           for k in ("poll1", "rsync")}
    pfs["poll1"][2]["latency"] = None       # a missed update: no point
    with open(tmp_path / "bench_pfs.json", "w") as f:
        json.dump({"size": 1 << 28, "runs": 4, "samples": pfs, "medians": {}}, f)
    gbs = {m: rnd.uniform(0.1, 9) for m in ("write: tmpfs", "write: viperfs", "read warm: viperfs")}
    with open(tmp_path / "bench.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric", "median_s", "gb_per_s", "ratio", "runs", "bytes"])
        for m, v in gbs.items():
            w.writerow([m, "1.0", "%.3f" % v, "", 4, 1 << 28])
        w.writerow(["stall: viperfs (open..close)", "0.1", "1", "2", 4, 1 << 28])
    r = subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "tests", "bench", "charts.py"),
                        "--dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for png in ("update_latency.png", "throughput.png"):
        with open(tmp_path / png, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert os.path.getsize(tmp_path / png) > 5000
    with open(tmp_path / "update_latency.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["vp1"]) for r in rows] == [round(v, 6) for v in samples["vp1"]]
    assert [float(r["poll1"]) if r["poll1"] else None for r in rows] == [
        v["latency"] and round(v["latency"], 6) for v in pfs["poll1"]]
    assert "poll15" not in rows[0]          # not measured: no column
    with open(tmp_path / "throughput.csv") as f:
        got = {r["case"]: float(r["gb_per_s"]) for r in csv.DictReader(f)}
    assert got == {m: round(v, 3) for m, v in gbs.items()}     # no stall row: not a throughput
