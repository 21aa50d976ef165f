"""A consumer-side inference server stand-in: reloads its model on inotify
events (python watchdog) and prints one JSON line per load."""
import hashlib
import io
import json
import os
import sys
import time

import torch
from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

root, name = sys.argv[1], sys.argv[2]


class Reload(FileSystemEventHandler):
    def load(self, path, why):
        if os.path.basename(path) != name:
            return
        t = time.time()
        with open(path, "rb") as f:
            data = f.read()
        state = torch.load(io.BytesIO(data))
        print(json.dumps({"why": why, "sha": hashlib.sha256(data).hexdigest(),
                          "tensors": len(state), "t": t,
                          "version": os.getxattr(path, "user.viperfs.version").decode()}),
              flush=True)

    def on_closed(self, e):
        self.load(e.src_path, "closed")

    def on_moved(self, e):
        self.load(e.dest_path, "moved")


obs = Observer()
obs.schedule(Reload(), root, recursive=True)
obs.start()
print(json.dumps({"ready": True}), flush=True)
try:
    for line in sys.stdin:       # runs until the test closes stdin
        pass
finally:
    obs.stop()
    obs.join()
