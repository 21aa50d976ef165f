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


def lightning_log(path, seed, steps, per_epoch, val_every, val):
    """A Lightning CSVLogger metrics.csv: a train_loss row per step, and a
    validation row (no train_loss) every val_every steps, val(step) its value."""
    random.seed(seed)
    rows = ["epoch,step,train_loss,val_loss"]
    for step in range(1, steps + 1):
        rows.append("%d,%d,%.6f," % (step // per_epoch, step, curve(step) + random.gauss(0, 0.01)))
        if step % val_every == 0:
            rows.append("%d,%d,,%.6f" % (step // per_epoch, step, val(step)))
    path.write_text("\n".join(rows) + "\n")
    return path


def test_lightning_metrics_csv_with_validation_rows(tmp_path):
    f = lightning_log(tmp_path / "metrics.csv", 2, 400, 100, 100, lambda step: 0.9)
    check(plan(f), 400)


def run(*args, env=None):
    return subprocess.run([VIPERCTL, "plan", *map(str, args)], capture_output=True, text=True,
                          timeout=120, env=env)


def val_curve(i):
    return 1.2 * math.exp(-0.002 * i) + 0.6


def test_keras_csvlogger_per_epoch(tmp_path):
    random.seed(3)
    f = tmp_path / "training.log"
    # the row of epoch e is the model after (e + 1) * 10 iterations
    f.write_text("epoch,accuracy,loss,val_accuracy,val_loss\n" + "".join(
        "%d,0.9,%.6f,0.8,%.6f\n" % (e, curve((e + 1) * 10) + random.gauss(0, 0.005),
                                    val_curve((e + 1) * 10) + random.gauss(0, 0.005))
        for e in range(0, 60)))
    r = run(f, *TIMING)
    assert r.returncode == 2 and r.stdout == ""
    assert "one row per epoch" in r.stderr and "--iters-per-epoch N" in r.stderr
    assert "'%s'" % f in r.stderr
    p = plan(f, "--iters-per-epoch", "10")
    check(p, 600)
    assert p["input"]["warmup_points"] == 60
    assert p["log"]["iteration"].startswith("(epoch + 1) x 10")
    assert p["schedules"]["epoch"]["iterations"][0] == 610   # the epoch baseline, from N
    # --metric val_loss fits the validation curve, not the training one
    v = plan(f, "--iters-per-epoch", "10", "--metric", "val_loss")
    assert v["log"]["metric"] == "val_loss"
    assert abs(v["fit"]["params"][1] - 0.002) < 0.0005
    assert abs(v["fit"]["params"][1] - p["fit"]["params"][1]) > 0.001
    assert v["schedules"]["optimal"]["cil"] != p["schedules"]["optimal"]["cil"]


def test_lightning_metrics_csv_val_loss(tmp_path):
    f = lightning_log(tmp_path / "metrics.csv", 4, 1000, 200, 25,
                      lambda step: val_curve(step) + random.gauss(0, 0.005))
    train = plan(f, "--warmup", "500")
    val = plan(f, "--warmup", "500", "--metric", "val_loss")
    for p in (train, val):
        assert p["log"]["iteration"] == "step"     # not epoch: no --iters-per-epoch needed
        assert p["input"]["warmup_end"] == 500
    assert train["log"]["metric"] == "train_loss" and train["input"]["warmup_points"] == 500
    assert val["log"]["metric"] == "val_loss" and val["input"]["warmup_points"] == 20
    assert abs(train["fit"]["params"][1] - 0.004) < 0.0005
    assert abs(val["fit"]["params"][1] - 0.002) < 0.0005
    # the val_loss floor (0.6) is above the train_loss one (0.35): a higher predicted CIL
    assert val["schedules"]["optimal"]["cil"] > train["schedules"]["optimal"]["cil"] + 0.2 * 25000


def accuracy(step):
    return 0.92 - 0.6 * math.exp(-0.003 * step)


def test_accuracy_only_log_with_maximize(tmp_path):
    random.seed(5)
    f = tmp_path / "acc.csv"
    f.write_text("step,accuracy\n" + "".join(
        "%d,%.6f\n" % (s, accuracy(s) + random.gauss(0, 0.004)) for s in range(10, 810, 10)))
    r = run(f, *TIMING)
    assert r.returncode == 1 and "no loss column" in r.stderr and "--metric" in r.stderr
    p = plan(f, "--metric", "accuracy", "--maximize")
    assert p["log"]["maximize"] and p["log"]["metric_max"] == 1      # every value <= 1
    assert p["log"]["planned"] == "1 - 'accuracy'"
    assert p["fit"]["family"] in ("exp+c", "saturating")
    assert abs(p["fit"]["params"][1] - 0.003) < 0.0005            # 1 - accuracy decays
    rec = p["recommendation"]
    assert rec["schedule"] in p["schedules"]
    assert p["schedules"][rec["schedule"]]["cil"] < rec["cil_without_checkpoints"]
    # the schedules do not depend on the best value: it shifts every CIL by M * offset
    q = plan(f, "--metric", "accuracy", "--maximize", "--metric-max", "2")
    # (up to near-ties: the optimum may move a checkpoint where the curve is flat)
    assert q["schedules"]["fixed"]["iterations"] == p["schedules"]["fixed"]["iterations"]
    for name in ("fixed", "greedy", "optimal"):
        a, b = p["schedules"][name], q["schedules"][name]
        assert a["checkpoints"] == b["checkpoints"]
        assert all(abs(x - y) <= 10 for x, y in zip(a["iterations"], b["iterations"]))
        assert abs(b["cil"] - a["cil"] - 25000) < 1e-6 * 25000
    # percent: the best value is 100
    pct = tmp_path / "pct.csv"
    pct.write_text("step,acc\n" + "".join("%d,%.4f\n" % (s, 100 * accuracy(s))
                                          for s in range(10, 810, 10)))
    assert plan(pct, "--metric", "acc", "--maximize")["log"]["metric_max"] == 100
    # planning the rising accuracy as a loss is flagged, never silently wrong
    r = run(f, *TIMING, "--metric", "accuracy")
    assert r.returncode == 0 and "note: 'accuracy' rises over the warm-up" in r.stdout
    assert "--maximize" in r.stdout


def test_recommendation_line(tmp_path):
    random.seed(6)
    f = tmp_path / "loss.csv"
    f.write_text("iter,loss\n" + "".join("%d,%.6f\n" % (i, curve(i) + random.gauss(0, 0.01))
                                          for i in range(1, 501)))
    r = run(f, *TIMING, "--iters-per-epoch", "250")
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines() if l.startswith("recommendation:")]
    assert len(lines) == 1
    line = lines[0]
    assert "CIL: cumulative inference loss" in line
    p = plan(f, "--iters-per-epoch", "250")
    rec = p["recommendation"]
    assert rec["text"] == line
    name = rec["schedule"]
    s = p["schedules"]
    assert "the %s schedule" % name in line
    n = s[name]["checkpoints"]
    assert "%d checkpoints" % n in line or "the %d iteration" % n in line
    if name == "fixed":
        assert "checkpoint every %d iterations" % (s["fixed"]["iterations"][0] - 500) in line
    # it is as good as the best within 5% of what checkpoints gain, and stalls least
    none = rec["cil_without_checkpoints"]
    best = min(v["cil"] for v in s.values())
    good = [k for k, v in s.items() if v["checkpoints"] and v["cil"] <= best + 0.05 * (none - best)]
    assert name in good
    assert s[name]["overhead_s"] == min(s[k]["overhead_s"] for k in good)
    saving = none - s[name]["cil"]
    assert (("%.0f" if saving >= 1000 else "%.4g") % saving) in line


def test_chart_png(tmp_path):
    random.seed(7)
    f = tmp_path / "loss.csv"
    f.write_text("iter,loss\n" + "".join("%d,%.6f\n" % (i, curve(i) + random.gauss(0, 0.01))
                                          for i in range(1, 801)))
    png = tmp_path / "plan's chart.png"        # a quote in the name, for gnuplot's quoting
    r = run(f, *TIMING, "--warmup", "500", "--chart", png)
    assert r.returncode == 0, r.stderr
    assert "chart: %s" % png in r.stdout
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10000
    assert data[12:16] == b"IHDR" and int.from_bytes(data[16:20], "big") == 1000
    # with --json the chart is written too, and stdout stays one JSON line
    png.unlink()
    r = run(f, *TIMING, "--json", "--chart", png)
    assert r.returncode == 0 and json.loads(r.stdout) and png.read_bytes()[:4] == b"\x89PNG"
    # no gnuplot: a clear error before any work, and no file
    bare = tmp_path / "bare.png"
    r = run(f, *TIMING, "--chart", bare, env={"PATH": str(tmp_path / "nothing")})
    assert r.returncode == 1 and "needs gnuplot" in r.stderr and "gnuplot-nox" in r.stderr
    assert not bare.exists()
    r = run(f, *TIMING, "--chart", tmp_path / "no" / "such" / "dir.png")
    assert r.returncode == 1 and "dir.png" in r.stderr and "gnuplot failed" in r.stderr
    assert r.stdout.count("\n") < 30 and "\x89PNG" not in r.stdout   # no image on stdout


def test_help_and_bad_cells(tmp_path):
    r = run("--help")
    assert r.returncode == 0
    for flag in ("--metric COLUMN", "--maximize", "--metric-max", "--iters-per-epoch N",
                 "--chart FILE.png", "--t-iter", "--json", "cumulative inference loss"):
        assert flag in r.stdout, flag
    bad = tmp_path / "bad.csv"
    bad.write_text("iter,loss\n1,0.9\n2,0.8\n3,0.7x\n4,0.6\n5,0.5\n")
    r = run(bad, *TIMING)
    assert r.returncode == 1
    assert "'%s', line 4, column 2 ('loss'): '0.7x' is not a number" % bad in r.stderr
    r = run(bad, *TIMING, "--metric", "val_loss")
    assert r.returncode == 1 and "no column 'val_loss'" in r.stderr and "columns: iter, loss" in r.stderr
    r = run(bad, *TIMING, "--bogus")
    assert r.returncode == 2 and "unknown option '--bogus'" in r.stderr
    r = run(bad, *TIMING, "--metric-max", "1")
    assert r.returncode == 2 and "--maximize" in r.stderr


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
