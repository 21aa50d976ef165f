"""make demo's three processes (mount-scripts/demo.sh starts them).

  producer VIPERFS_MNT PFS_DIR RUN_DIR EPOCHS SIZE_BYTES
      trains the NT3-like CNN (nt3_demo.train) and after each epoch saves
      the same checkpoint twice, the same way: open, torch.save, fsync,
      close; first into the viperfs mount, then into the PFS directory.
      It waits for each path's consumer to report the version before it
      goes on, so that the two paths never compete for the machine's CPUs
      and disk; prints a row per version and a summary with medians.
  viperfs-consumer MNT RUN_DIR
      an inference loop that reloads on inotify (watchdog), in the
      consumer node's viperfs mount.
  pfs-consumer PFS_DIR RUN_DIR
      an inference loop that polls the PFS directory every second and
      loads the file when its stat changes.

The checkpoint is the model's state_dict, an extra float32 tensor that
pads it to SIZE_BYTES (its values change every epoch, as trained weights
do), the version number and the CRC-32 of every tensor's bytes.  A
consumer counts a version as an update only once torch.load succeeded and
the CRC and the version match; anything else (a half-written file, a mix
of two versions) is a torn load.

Each consumer appends "PATH_NAME VERSION TIME STATUS ACCURACY" lines to
RUN_DIR/<path>.results (STATUS: ok or torn); the producer reads them.
All times are time.time() on one machine (one kernel clock).
"""
import os
import statistics
import sys
import time
import zlib

import torch

NAME = "nt3.pt"
POLL_S = 1.0
WAIT_S = 60         # the longest the producer waits for one consumer
EPOCH_SAMPLES = 2048


NOTES = """\
stall           torch.save + fsync + close: the time the training loop waits. On viperfs,
                fsync returns once the version is committed in memory (fsync=cache, the
                default); it reaches the PFS in the background (the flush below).
update latency  from the producer calling torch.save to a consumer having loaded that
                version and checked its CRC-32; "of which load" is that consumer's
                torch.load and check, the same work on both paths.
torn load       a load that failed or did not match its CRC (a half-written file,
                which torch.save leaves while it writes in place); never an update.
PFS             a local disk directory (no shared PFS on this machine). Its poller
                reads the writer's page cache on the same kernel, and may load the
                file before the writer's fsync returns: this favors the PFS path.
                A reader on another node would fetch it over the network.
"""


def model_new():
    """The NT3-like CNN of nt3_demo (same layers), untrained."""
    return torch.nn.Sequential(torch.nn.Conv1d(1, 16, 7), torch.nn.ReLU(), torch.nn.MaxPool1d(2),
                               torch.nn.Conv1d(16, 16, 5), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(16 * 57, 2))


def crc_of(model_state, pad, version):
    """CRC-32 of the version and every tensor's bytes, in key order."""
    crc = zlib.crc32(str(version).encode())
    for key in sorted(model_state):
        crc = zlib.crc32(model_state[key].contiguous().numpy().view("u1"), crc)
    return zlib.crc32(pad.numpy().view("u1"), crc)


def verify(state):
    """The checkpoint's version if it is whole and consistent, else None."""
    try:
        version = int(state["version"])
        ok = crc_of(state["model"], state["pad"], version) == state["crc32"]
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError):
        return None
    return version if ok else None


def save(state, path):
    """torch.save as a training job does it, made durable: open, save, fsync, close.

    Returns the seconds the caller was stalled."""
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - t0


def human_size(n):
    for unit, mult in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= mult:
            return "%.1f %s" % (n / mult, unit)
    return "%d B" % n


class Results:
    """A consumer's result lines, read as they are appended."""

    def __init__(self, path):
        self.path = path
        open(path, "a").close()
        self.pos = 0
        self.torn = 0

    def wait(self, version, timeout=WAIT_S):
        """(time, accuracy, load seconds) of version's ok line; counts torn lines seen on the way."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.path) as f:
                f.seek(self.pos)
                for line in f:
                    if not line.endswith("\n"):
                        break
                    self.pos += len(line)
                    _, v, t, status, acc, load_s = line.split()
                    if status == "torn":
                        self.torn += 1
                    elif int(v) == version:
                        return float(t), float(acc), float(load_s)
            time.sleep(0.005)
        raise SystemExit("demo: the %s consumer did not load version %d of '%s' within %d s" %
                         (os.path.basename(self.path).split(".")[0], version, NAME, timeout))


def producer(mnt, pfs, run, epochs, size):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from nt3_demo import train

    paths = (("viperfs", os.path.join(mnt, NAME)), ("pfs", os.path.join(pfs, NAME)))
    results = {name: Results(os.path.join(run, name + ".results")) for name, _ in paths}
    model_bytes = sum(t.numel() * t.element_size() for t in model_new().state_dict().values())
    gen = torch.Generator().manual_seed(0)
    pad = torch.randn(max(size - model_bytes, 0) // 4, generator=gen)
    print("== the checkpoint: the NT3-like CNN (%s of weights) padded to %s with an extra tensor"
          " that changes every epoch" % (human_size(model_bytes), human_size(size)), flush=True)
    print("== %d epochs; each saves the checkpoint to viperfs, then to the PFS, and waits for"
          " both consumers" % epochs, flush=True)
    print()
    print("%17s %-30s %s" % ("", "viperfs (push + inotify)", "PFS + 1 s poll"))
    print("%7s  %6s   %8s  %8s  %8s   %8s  %8s  %8s  %4s" %
          ("version", "loss", "stall", "latency", "accuracy", "stall", "latency", "accuracy", "torn"))
    rows = []
    for epoch, loss, model in train(EPOCH_SAMPLES, epochs):
        version = epoch + 1
        pad.add_(1.0)
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        state = {"model": weights, "pad": pad, "version": torch.tensor(version),
                 "crc32": crc_of(weights, pad, version)}
        row = {"version": version, "loss": loss}
        for name, path in paths:
            torn_before = results[name].torn
            t_save = time.time()
            row[name + "_stall"] = save(state, path)
            t_loaded, row[name + "_acc"], row[name + "_load"] = results[name].wait(version)
            row[name + "_latency"] = t_loaded - t_save
            row[name + "_torn"] = results[name].torn - torn_before
        rows.append(row)
        print("%7d  %6.4f   %6.2f s  %6.2f s  %8.3f   %6.2f s  %6.2f s  %8.3f  %4d" %
              (version, loss, row["viperfs_stall"], row["viperfs_latency"], row["viperfs_acc"],
               row["pfs_stall"], row["pfs_latency"], row["pfs_acc"], row["pfs_torn"]), flush=True)
    summary(rows, size, results)


def summary(rows, size, results):
    def med(key):
        return statistics.median(r[key] for r in rows)

    n = len(rows)
    print()
    print("== summary: %s checkpoint, %d versions, medians" % (human_size(size), n))
    print("%-20s %10s %16s %15s" % ("", "viperfs", "PFS + 1 s poll", "PFS / viperfs"))
    for label, key in (("producer stall", "stall"), ("update latency", "latency")):
        v, p = med("viperfs_" + key), med("pfs_" + key)
        print("%-20s %8.3f s %14.3f s %14.1fx" % (label, v, p, p / v if v > 0 else float("inf")))
    print("%-20s %8.3f s %14.3f s" % ("  of which load", med("viperfs_load"), med("pfs_load")))
    # a row exists only once both consumers have loaded and checked its version
    print("%-20s %10s %16s" % ("versions verified", "%d of %d" % (n, n), "%d of %d" % (n, n)))
    print("%-20s %10d %16d" % ("torn loads", results["viperfs"].torn, results["pfs"].torn))
    print()
    print(NOTES, end="")
    sys.stdout.flush()


def report(run, name, version, status, acc=0.0, load_s=0.0):
    with open(os.path.join(run, name + ".results"), "a") as f:
        f.write("%s %d %.6f %s %.3f %.6f\n" % (name, version, time.time(), status, acc, load_s))


def ready(run, name):
    with open(os.path.join(run, "ready"), "a") as f:
        f.write(name + "\n")


def load_and_check(path, x, y):
    """(version, accuracy, seconds of torch.load and the check) of the checkpoint at path;
    version None if it is torn."""
    t0 = time.perf_counter()
    try:
        state = torch.load(path, map_location="cpu")
    except Exception:       # a half-written file: torch.load's zip reader fails
        return None, 0.0, 0.0
    version = verify(state)
    load_s = time.perf_counter() - t0
    if version is None:
        return None, 0.0, load_s
    model = model_new()
    model.load_state_dict(state["model"])
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    return version, acc, load_s


def inference_data():
    torch.manual_seed(1)
    x = torch.randn(256, 1, 128)
    return x, (x.mean(dim=2).squeeze() > 0).long()


def viperfs_consumer(mnt, run):
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer

    x, y = inference_data()
    path = os.path.join(mnt, NAME)

    class Reload(FileSystemEventHandler):
        last = None

        def load(self, src):
            if os.path.basename(src) != NAME:
                return
            try:
                held = os.getxattr(path, "user.viperfs.version")
            except OSError:
                return
            if held == self.last:       # one version raises more than one event
                return
            version, acc, load_s = load_and_check(path, x, y)
            if version is None:
                report(run, "viperfs", 0, "torn")
                return
            self.last = held
            report(run, "viperfs", version, "ok", acc, load_s)

        def on_closed(self, e):
            self.load(e.src_path)

        def on_moved(self, e):
            self.load(e.dest_path)

    observer = Observer()
    observer.schedule(Reload(), mnt, recursive=False)
    observer.start()
    ready(run, "viperfs")
    while True:
        time.sleep(3600)


def pfs_consumer(pfs, run):
    x, y = inference_data()
    path = os.path.join(pfs, NAME)
    seen = None
    ready(run, "pfs")
    while True:
        time.sleep(POLL_S)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        if key == seen:
            continue
        seen = key
        version, acc, load_s = load_and_check(path, x, y)
        report(run, "pfs", version or 0, "ok" if version else "torn", acc, load_s)


def main(argv):
    role = argv[1] if len(argv) > 1 else ""
    if role == "producer" and len(argv) == 7:
        producer(argv[2], argv[3], argv[4], int(argv[5]), int(argv[6]))
    elif role == "viperfs-consumer" and len(argv) == 4:
        viperfs_consumer(argv[2], argv[3])
    elif role == "pfs-consumer" and len(argv) == 4:
        pfs_consumer(argv[2], argv[3])
    else:
        sys.exit("usage: demo_ckpt.py producer MNT PFS_DIR RUN_DIR EPOCHS SIZE_BYTES\n"
                 "       demo_ckpt.py viperfs-consumer MNT RUN_DIR\n"
                 "       demo_ckpt.py pfs-consumer PFS_DIR RUN_DIR")


if __name__ == "__main__":
    try:
        main(sys.argv)
    except KeyboardInterrupt:     # Ctrl-C: demo.sh cleans up and says so
        sys.exit(130)
