"""viperctl plan on the loss logs real jobs write (no training here)."""
import json
import math
import random
import subprocess

from conftest import VIPERCTL

TIMING = ["--t-iter", "0.05", "--t-infer", "0.01", "--t-ckpt", "0.4", "--t-load", "0.2",
          "--inferences", "25000"]


def curve(i):
    return 1.8 * math.exp(-0.004 * i) + 0.35


def plan(path, *extra):
    r = subprocess.run([VIPERCTL, "plan", str(path), "--json", *TIMING, *extra],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def check(p, warmup_end):
    assert p["fit"]["family"] in ("exp+c", "saturating")
    assert abs(p["fit"]["params"][1] - 0.004) < 0.0005       # the decay rate, recovered
    assert p["input"]["warmup_end"] == warmup_end
    s = p["schedules"]
    assert s["optimal"]["cil"] <= min(s["fixed"]["cil"], s["greedy"]["cil"]) + 1e-6
    for name in s:
        served = sum(count for _, _, count in s[name]["service"])
        assert served == 25000                      # every inference is charged once
        assert abs(s[name]["overhead_s"] - s[name]["checkpoints"] * 0.4) < 1e-6


def test_plain_iter_loss(tmp_path):
    random.seed(1)
    f = tmp_path / "loss.csv"
    f.write_text("iter,loss\n" + "".join("%d,%.6f\n" % (i, curve(i) + random.gauss(0, 0.01))
                                          for i in range(1, 501)))
    p = plan(f, "--epoch-iters", "500")
    check(p, 500)
    assert p["schedules"]["epoch"]["iterations"][0] == 1000


def test_lightning_metrics_csv_with_validation_rows(tmp_path):
    random.seed(2)
    rows = ["epoch,step,train_loss,val_loss"]
    for i in range(1, 401):
        rows.append("%d,%d,%.6f," % (i // 100, i, curve(i) + random.gauss(0, 0.01)))
        if i % 100 == 0:
            rows.append("%d,%d,,0.9" % (i // 100, i))     # validation row: no train_loss
    f = tmp_path / "metrics.csv"
    f.write_text("\n".join(rows) + "\n")
    check(plan(f), 400)


def test_keras_csvlogger_per_epoch(tmp_path):
    f = tmp_path / "training.log"
    f.write_text("epoch,accuracy,loss,val_accuracy,val_loss\n" +
                 "".join("%d,0.9,%.6f,0.8,0.5\n" % (e, curve(e * 10)) for e in range(0, 60)))
    p = plan(f)
    assert p["input"]["warmup_points"] == 60


def test_warmup_option_and_bad_input(tmp_path):
    f = tmp_path / "loss.csv"
    f.write_text("".join("%d,%.6f\n" % (i, curve(i)) for i in range(1, 1001)))   # no header
    p = plan(f, "--warmup", "300")
    assert p["input"]["warmup_points"] == 300
    bad = tmp_path / "bad.csv"
    bad.write_text("step,accuracy\n1,0.5\n")
    r = subprocess.run([VIPERCTL, "plan", str(bad), *TIMING], capture_output=True, text=True)
    assert r.returncode != 0 and "no loss column" in r.stderr
    r = subprocess.run([VIPERCTL, "plan", str(f), "--t-iter", "0.05"], capture_output=True, text=True)
    assert r.returncode == 2 and "--inferences" in r.stderr
    r = subprocess.run([VIPERCTL, "plan", str(tmp_path / "missing.csv"), *TIMING],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "No such file" in r.stderr
