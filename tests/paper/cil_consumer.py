#!/usr/bin/env python3
"""The CIL experiment's consumer: an inference server stand-in.

    cil_consumer.py --path FILE --mode poll|inotify|none [--interval S]
                    --requests M --window W --out R.json

It loads checkpoint 0 (the producer's initial model), prints {"ready": ...}
and waits for "go T0" on stdin.  Request j is due at T0 + j*W/M (a steady
stream); its loss is the real cross-entropy, on inference sample j, of the
model version in service at that moment.  CIL is the sum over the M
requests.

Requests are served in small batches as they come due (every 20 ms), on
the main thread.
A loader thread (mode poll: it stats FILE every --interval seconds and loads
when mtime or size changed, as TF-Serving's file system poller does; mode
inotify: python watchdog on FILE's directory, a load on every close-write or
rename onto FILE; mode none: never) reads the whole file (mode poll: cold,
its cached pages dropped first with posix_fadvise), torch.load()s it
and checks its CRC (cil_common.verify).  A load that raises or fails the
check is a torn load, counted apart and never put in service.  A good load
of a newer checkpoint is put in service at the moment it was ready: the
requests due before that moment are charged to the version before, even if
the main thread gets to them later.
"""
import argparse
import io
import json
import os
import queue
import sys
import threading
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cil_common as cc  # noqa: E402


TICK = 0.02


class Loader:
    def __init__(self, path, length, cold=False):
        self.path, self.length, self.cold = path, length, cold
        self.ready = queue.Queue()      # (t_ready, model, seq, iter)
        self.loads = []                 # every attempt
        self.seq = -1                   # newest seq put in service
        self.lock = threading.Lock()

    def load(self, why, t_notice):
        """One load attempt; returns True if it gave a newer complete version."""
        rec = {"why": why, "t_notice": t_notice}
        try:
            st = os.stat(self.path)
            rec["size"] = st.st_size
            try:
                rec["fs_version"] = int(os.getxattr(self.path, "user.viperfs.version"))
            except OSError:
                pass
            with open(self.path, "rb") as f:
                if self.cold:
                    # a cold read, from the brick: a GlusterFS client's kernel page cache
                    # keeps the old bytes of a file rewritten in place on another node,
                    # even once its mtime and size changed (seen here: every read stale)
                    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                data = f.read()
            rec["t_read"] = time.monotonic()
            rec["bytes"] = len(data)
            state = torch.load(io.BytesIO(data))
            del data
            bad = cc.verify(state)
        except Exception as e:     # a torn file makes torch.load raise many things
            bad = "%s: %s" % (type(e).__name__, str(e)[:120])
            state = None
        rec["t_done"] = time.monotonic()
        if bad:
            rec["result"] = "torn"
            rec["error"] = bad
            self.loads.append(rec)
            return False
        rec["seq"], rec["iter"] = state["seq"], state["iter"]
        if state["seq"] <= self.seq:
            rec["result"] = "same"
            self.loads.append(rec)
            return True
        model = cc.nt3_model(self.length)
        model.load_state_dict(state["model"])
        model.eval()
        del state
        t_ready = time.monotonic()
        rec["t_ready"] = t_ready
        rec["result"] = "update"
        self.seq = rec["seq"]
        self.loads.append(rec)
        self.ready.put((t_ready, model, rec["seq"], rec["iter"]))
        return True


def poller(loader, interval, stop, t0):
    last = None
    try:
        st = os.stat(loader.path)
        last = (st.st_mtime_ns, st.st_size)     # checkpoint 0, loaded at start
    except OSError:
        pass
    k = 1
    while not stop.is_set():
        wake = t0 + k * interval
        if stop.wait(max(0.0, wake - time.monotonic())):
            return
        # the next poll: the next tick after this one, and after a load that outlasted ticks
        k = max(k + 1, int((time.monotonic() - t0) / interval) + 1)
        try:
            st = os.stat(loader.path)
        except OSError:
            continue
        sig = (st.st_mtime_ns, st.st_size)
        if sig != last:
            # a torn load leaves `last` alone: the next poll tries again
            if loader.load("poll", time.monotonic()):
                last = sig
        k = max(k, int((time.monotonic() - t0) / interval) + 1)


def watcher(loader, stop):
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer
    name = os.path.basename(loader.path)
    kick = threading.Event()
    notices = []

    class H(FileSystemEventHandler):
        def hit(self, p):
            if os.path.basename(p) == name:
                notices.append(time.monotonic())
                kick.set()

        def on_closed(self, e):
            self.hit(e.src_path)

        def on_moved(self, e):
            self.hit(e.dest_path)

    obs = Observer()
    obs.schedule(H(), os.path.dirname(loader.path), recursive=False)
    obs.start()
    ready = threading.Event()

    def run():
        ready.set()
        while not stop.is_set():
            if not kick.wait(0.2):
                continue
            kick.clear()
            loader.load("inotify", notices[-1] if notices else time.monotonic())
    th = threading.Thread(target=run, daemon=True)
    th.start()
    ready.wait()
    return obs, th


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--path", required=True)
    ap.add_argument("--mode", choices=("poll", "inotify", "none"), required=True)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--requests", type=int, default=50000)
    ap.add_argument("--window", type=float, required=True, help="seconds the requests span")
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    x, y = cc.make_data(a.requests, a.length, torch.Generator().manual_seed(cc.DATA_SEED))
    loader = Loader(a.path, a.length, cold=a.mode == "poll")
    t_first = time.monotonic()
    while not loader.load("initial", time.monotonic()) or loader.seq < 0:
        if time.monotonic() - t_first > 120:
            raise SystemExit("no checkpoint 0 at %s" % a.path)
        time.sleep(0.1)
    _, model, seq, it = loader.ready.get_nowait()
    stop = threading.Event()
    obs = None
    if a.mode == "inotify":
        obs, _ = watcher(loader, stop)
    print(json.dumps({"ready": True, "seq": seq}), flush=True)
    line = sys.stdin.readline().split()
    assert line and line[0] == "go", line
    t0 = float(line[1])
    if a.mode == "poll":
        threading.Thread(target=poller, args=(loader, a.interval, stop, t0), daemon=True).start()

    m, dt = a.requests, a.window / a.requests
    losses = np.zeros(m)
    served_by = np.zeros(m, dtype=np.int64)
    in_service = [(0.0, seq, it)]       # (from, seq, iter)
    done = 0

    def serve(upto):
        nonlocal done
        while done < upto:
            hi = min(upto, done + 4096)
            with torch.no_grad():
                out = model(x[done:hi])
                losses[done:hi] = torch.nn.functional.cross_entropy(out, y[done:hi], reduction="none").double().numpy()
            served_by[done:hi] = seq
            done = hi

    time.sleep(max(0.0, t0 - time.monotonic()))
    while done < m:
        now = time.monotonic()
        while True:
            try:
                t_ready, new_model, new_seq, new_it = loader.ready.get_nowait()
            except queue.Empty:
                break
            # requests due before the new version was ready go to the old one
            serve(min(m, max(done, int(np.ceil((t_ready - t0) / dt)))))
            model, seq, it = new_model, new_seq, new_it
            in_service.append((t_ready - t0, seq, it))
        serve(min(m, int((now - t0) / dt) + 1))
        if done < m:
            # batches every TICK s at most (a request's version is fixed by its due time,
            # so batching changes no loss; it keeps the server from spinning on one core)
            time.sleep(max(TICK - (time.monotonic() - now), t0 + done * dt - time.monotonic(), 0.0))
    t_last = time.monotonic()
    stop.set()
    if obs is not None:
        obs.stop()
        obs.join(timeout=10)
    cum = np.cumsum(losses)
    res = {"mode": a.mode, "interval": a.interval, "requests": m, "window_s": a.window,
           "cil": float(cum[-1]), "mean_loss": float(cum[-1] / m),
           "served_late_s": t_last - (t0 + a.window),
           "in_service": in_service,
           "requests_per_seq": {str(int(s)): int(n) for s, n in zip(*np.unique(served_by, return_counts=True))},
           "cum_every_1000": [float(cum[i]) for i in range(999, m, 1000)],
           "loads": [dict(r, t_notice=r["t_notice"] - t0,
                          **{k: r[k] - t0 for k in ("t_read", "t_done", "t_ready") if k in r})
                     for r in list(loader.loads) if r["why"] != "initial" or r["result"] == "update"],
           "updates": sum(1 for r in loader.loads if r["result"] == "update" and r["why"] != "initial"),
           "torn": sum(1 for r in loader.loads if r["result"] == "torn" and r["why"] != "initial"),
           "t0": t0}
    with open(a.out, "w") as f:
        json.dump(res, f)
    print(json.dumps({"done": True, "cil": res["cil"]}), flush=True)
    # out at once: a loader thread may still be inside torch.load, and tearing the
    # interpreter down under it aborts the process ("terminate called without an
    # active exception"), seen once
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
