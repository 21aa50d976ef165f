#!/usr/bin/env python3
"""The planner's real run (make plan-report).

Trains a small NT3-like 1-D CNN classifier (Debian python3-torch) on
synthetic two-class "expression profiles", saving a checkpoint with plain
torch.save every K iterations into a viperfs mount and logging the loss per
iteration (iter,loss CSV).  Then it asks `viperctl plan --json` for the
schedules of the four algorithms, fitted on the warm-up part of the loss
log, with the timings the daemon measured (--from), and replays M
inferences against the version each schedule would have served: the
actual CIL is the sum of the real per-inference losses.

Prints a markdown table; --out writes it to a file too.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("VIPERFS_BUILD", os.path.join(ROOT, "build"))


def make_data(n, length, gen):
    """Two classes that differ in a few localized 'gene' patterns, plus noise."""
    y = torch.randint(0, 2, (n,), generator=gen)
    x = torch.randn(n, 1, length, generator=gen) * 1.0
    pos = torch.arange(length).float()
    bumps = [(60, 1.0), (150, -0.8), (200, 0.6)]
    for center, amp in bumps:
        shape = torch.exp(-((pos - center) ** 2) / 50.0) * amp
        x[y == 1, 0, :] += shape * 0.55
    return x, y


def nt3_model(length):
    # NT3's shape, scaled down: conv/pool stacks, then dense layers
    return torch.nn.Sequential(
        torch.nn.Conv1d(1, 16, 9), torch.nn.ReLU(), torch.nn.MaxPool1d(2),
        torch.nn.Conv1d(16, 16, 5), torch.nn.ReLU(), torch.nn.MaxPool1d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(16 * ((((length - 8) // 2) - 4) // 4), 32), torch.nn.ReLU(),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(32, 2))


def mount(pfs, mnt, base):
    sock_path = os.path.join(base, "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(sock_path)
    s.settimeout(30)
    proc = subprocess.Popen([os.path.join(BUILD, "viperfs"), "-f", "-o",
                             "control=%s/ctl.sock,log_file=%s/viperfs.log,ram_prefault=0" % (base, base),
                             pfs, mnt], env=dict(os.environ, NOTIFY_SOCKET=sock_path))
    s.recv(64)
    s.close()
    return proc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--warmup", type=int, default=400)
    ap.add_argument("--every", type=int, default=10, help="checkpoint every K iterations")
    ap.add_argument("--inferences", type=int, default=25000)
    ap.add_argument("--epoch-iters", type=int, default=250)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(42)
    xinf, yinf = make_data(a.inferences, a.length, gen)

    base = tempfile.mkdtemp(prefix="viperfs-nt3-")
    pfs, mnt = os.path.join(base, "pfs"), os.path.join(base, "mnt")
    os.makedirs(pfs)
    os.makedirs(mnt)
    proc = mount(pfs, mnt, base)
    try:
        torch.manual_seed(0)
        model = nt3_model(a.length)
        opt = torch.optim.Adam(model.parameters(), lr=3e-4)
        lossfn = torch.nn.CrossEntropyLoss()
        saved = {0: {k: v.clone() for k, v in model.state_dict().items()}}
        log = open(os.path.join(mnt, "loss.csv"), "w")
        log.write("iter,loss\n")
        t_train = 0.0
        for it in range(1, a.iters + 1):
            # a stream of fresh samples (an "epoch" is epoch_iters batches)
            xb, yb = make_data(32, a.length, gen)
            t0 = time.perf_counter()
            model.train()
            opt.zero_grad()
            loss = lossfn(model(xb), yb)
            loss.backward()
            opt.step()
            t_train += time.perf_counter() - t0
            log.write("%d,%.6f\n" % (it, loss.item()))
            if it % a.every == 0:
                torch.save(model.state_dict(), os.path.join(mnt, "nt3.pt"))
                saved[it] = {k: v.clone() for k, v in model.state_dict().items()}
        log.close()
        t_iter = t_train / a.iters
        # inference time per sample, and the consumer's load time
        model.eval()
        t0 = time.perf_counter()
        with torch.no_grad():
            for j in range(200):
                model(xinf[j:j + 1])
        t_infer = (time.perf_counter() - t0) / 200
        t0 = time.perf_counter()
        for _ in range(5):
            torch.load(os.path.join(mnt, "nt3.pt"))
        t_load = (time.perf_counter() - t0) / 5
        subprocess.run([os.path.join(BUILD, "viperctl"), "flush", mnt], check=True,
                       capture_output=True)
        # warm-up part of the log, as the planner sees it at warm-up end
        warm = os.path.join(base, "warmup.csv")
        with open(os.path.join(mnt, "loss.csv")) as f, open(warm, "w") as w:
            for line in f:
                if not line[0].isdigit() or int(line.split(",")[0]) <= a.warmup:
                    w.write(line)
        horizon = a.iters - a.warmup
        r = subprocess.run([os.path.join(BUILD, "viperctl"), "plan", warm, "--json",
                            "--t-iter", "%.6f" % t_iter, "--t-infer", "%.6f" % t_infer,
                            "--from", mnt, "--inferences", str(a.inferences),
                            "--horizon", str(horizon), "--epoch-iters", str(a.epoch_iters)],
                           capture_output=True, text=True, check=True)
        plan = json.loads(r.stdout)
        st = json.loads(subprocess.run([os.path.join(BUILD, "viperctl"), "status", mnt, "--json"],
                                       capture_output=True, text=True, check=True).stdout)
    finally:
        subprocess.run(["fusermount3", "-u", mnt], capture_output=True)
        proc.wait(timeout=120)
        shutil.rmtree(base, ignore_errors=True)

    # real loss of each served version on each inference sample
    cache = {}

    def losses_of(version_iter):
        v = max(i for i in saved if i <= version_iter)   # newest saved at or before
        if v not in cache:
            m = nt3_model(a.length)
            m.load_state_dict(saved[v])
            m.eval()
            with torch.no_grad():
                out = torch.cat([m(xinf[i:i + 5000]) for i in range(0, a.inferences, 5000)])
                per = torch.nn.functional.cross_entropy(out, yinf, reduction="none")
            cache[v] = np.concatenate([[0.0], np.cumsum(per.numpy().astype(np.float64))])
        return cache[v]

    rows = []
    for name in ("epoch", "fixed", "greedy", "optimal"):
        s = plan["schedules"][name]
        actual = 0.0
        for it, first, count in s["service"]:
            c = losses_of(it)
            actual += c[first + count] - c[first]
        rows.append((name, s["checkpoints"], s["cil"], actual, s["overhead_s"]))
    inp = plan["input"]
    lines = [
        "NT3-like 1-D CNN, %d iterations (warm-up %d), %d inferences; measured t_iter %.2f ms, "
        "t_infer %.3f ms, t_ckpt %.2f ms (daemon), t_load %.2f ms (daemon flush lag), "
        "torch.load %.2f ms" % (a.iters, a.warmup, a.inferences, inp["t_iter"] * 1e3,
                                inp["t_infer"] * 1e3, inp["t_ckpt"] * 1e3, inp["t_load"] * 1e3,
                                t_load * 1e3),
        "fit: %s, %s, mse %.4g" % (plan["fit"]["family"], plan["fit"]["formula"], plan["fit"]["mse"]),
        "",
        "| schedule | checkpoints | predicted CIL | actual CIL | producer overhead (s) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, n, pred, actual, over in rows:
        lines.append("| %s | %d | %.1f | %.1f | %.3f |" % (name, n, pred, actual, over))
    text = "\n".join(lines)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    act = {r[0]: r[3] for r in rows}
    ok = act["fixed"] < act["epoch"] and act["greedy"] < act["epoch"] and act["optimal"] <= act["greedy"]
    print("targets (fixed and greedy beat epoch; optimal <= greedy on actual CIL): %s" %
          ("met" if ok else "NOT met"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
