#!/usr/bin/env python3
"""The CIL experiment's producer: trains the NT3-like CNN with torch (one
thread, CPU) on a stream of synthetic batches, logs the loss of every
iteration (iter,loss CSV) and checkpoints with plain torch.save every K
iterations.

    cil_producer.py --dir D --iters N --every K --size BYTES --out R.json [--fsync] [--no-save]

It saves checkpoint 0 (the initial model) first, prints {"ready": ...} and
waits for "go T0" on stdin (T0 on CLOCK_MONOTONIC, shared by every process
of the machine), then trains from T0.  Each checkpoint's stall is the time
torch.save (and with --fsync, flush+fsync) kept the training loop waiting;
the pad's update and the CRC are done in every run, --no-save included, so
the wall-time difference against --no-save is the saving alone.

--calibrate N: N iterations, no files; prints the seconds per iteration (the
fastest of 5 slices).
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cil_common as cc  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir")
    ap.add_argument("--name", default="nt3.pt")
    ap.add_argument("--log", default="loss.csv")
    ap.add_argument("--iters", type=int, default=7000)
    ap.add_argument("--every", type=int, default=350)
    ap.add_argument("--size", type=int, default=256 << 20)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1.2e-5)
    ap.add_argument("--fsync", action="store_true")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--calibrate", type=int, default=0)
    ap.add_argument("--saves", type=int, default=0,
                    help="no training: the checkpoint saved this many times into --dir, the stalls printed")
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(cc.MODEL_SEED)
    model = cc.nt3_model(a.length)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    lossfn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(cc.TRAIN_SEED)

    def step():
        xb, yb = cc.make_data(32, a.length, gen)
        model.train()
        opt.zero_grad()
        loss = lossfn(model(xb), yb)
        loss.backward()
        opt.step()
        return loss.item()

    if a.calibrate:
        # the fastest of 5 slices: on a machine shared with other work, the speed when
        # nobody else took the core, not that of the moment
        step()
        best = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(a.calibrate // 5):
                step()
            best.append((time.perf_counter() - t0) / (a.calibrate // 5))
        print(json.dumps({"t_iter": min(best), "slices": best}), flush=True)
        return 0

    weights_bytes = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    pad = torch.randn(max(a.size - weights_bytes, 0) // 4, generator=torch.Generator().manual_seed(1))
    path = os.path.join(a.dir, a.name)

    def save(seq, it):
        """The checkpoint's stall: torch.save, and with --fsync its flush and fsync."""
        t = time.monotonic()
        if a.fsync:
            with open(path, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
        else:
            torch.save(state, path)
        return t, time.monotonic()

    state = cc.make_state({k: v.clone() for k, v in model.state_dict().items()}, pad, 0, 0)
    if a.saves:
        # the reference: the same torch.save with nothing behind it (tmpfs, no consumer)
        stalls = []
        for i in range(a.saves):
            ts, te = save(i, 0)
            stalls.append(te - ts)
        os.unlink(path)
        print(json.dumps({"stalls": stalls}), flush=True)
        return 0
    save(0, 0)      # checkpoint 0, before the clock: the consumers' first model
    log = open(os.path.join(a.dir, a.log), "w")
    log.write("iter,loss\n")
    log.flush()
    print(json.dumps({"ready": True, "weights_bytes": weights_bytes,
                      "ckpt_bytes": weights_bytes + pad.numel() * 4}), flush=True)
    line = sys.stdin.readline().split()
    assert line and line[0] == "go", line
    t0 = float(line[1])
    time.sleep(max(0.0, t0 - time.monotonic()))

    ckpts = []
    t_compute = t_prep = 0.0
    seq = 0
    for it in range(1, a.iters + 1):
        t = time.perf_counter()
        loss = step()
        t_compute += time.perf_counter() - t
        log.write("%d,%.6f\n" % (it, loss))
        if it % 50 == 0:
            log.flush()
        if it % a.every == 0:
            seq += 1
            t = time.perf_counter()
            pad.add_(1.0)           # the "trained" bytes change at every checkpoint
            state = cc.make_state({k: v.clone() for k, v in model.state_dict().items()}, pad, seq, it)
            log.flush()             # the planner (publish=schedule) reads the iteration from the log
            t_prep += time.perf_counter() - t
            if a.no_save:
                ckpts.append({"seq": seq, "iter": it, "t_start": time.monotonic(),
                              "t_end": time.monotonic(), "stall_s": 0.0})
            else:
                ts, te = save(seq, it)
                ckpts.append({"seq": seq, "iter": it, "t_start": ts, "t_end": te,
                              "stall_s": te - ts})
    t_end = time.monotonic()
    log.close()
    res = {"t0": t0, "t_end": t_end, "wall_s": t_end - t0, "compute_s": t_compute,
           "prep_s": t_prep, "iters": a.iters, "weights_bytes": weights_bytes, "every": a.every, "ckpt_bytes": weights_bytes + pad.numel() * 4,
           "saved": not a.no_save, "fsync": a.fsync, "checkpoints": ckpts,
           "stall_total_s": sum(c["stall_s"] for c in ckpts)}
    with open(a.out, "w") as f:
        json.dump(res, f)
    print(json.dumps({"done": True, "wall_s": res["wall_s"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
