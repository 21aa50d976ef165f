"""The chaos test's producer load: versions of several files, forever.

Each version is a torch.save of a new model, written either straight to
its path or to PATH.tmp and renamed over it, then fsynced (fsync=peers on
the mount).  The journal (a file outside the mounts) says, in order:

    pending PATH SHA256      before the save starts: bytes that may commit
    done PATH SHA256         the save, close, fsync (and rename) returned 0
    failed PATH SHA256 ERRNO

All I/O goes through a descriptor of the mount's root, checked to be a
viperfs root: once the daemon dies it gives ENOTCONN, and nothing is ever
written into the directory under the mount.  torch 1.13 aborts the process
when a save's write fails: the test starts the writer again.

usage: chaos_writer.py MNT JOURNAL SEED
"""
import errno
import hashlib
import io
import os
import random
import sys
import time

import torch

from chaos_reader import FILES


def open_root(mnt):
    """A descriptor of the mount's root, once it is a live viperfs mount."""
    while True:
        try:
            fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            time.sleep(0.1)
            continue
        try:
            os.getxattr(fd, "user.viperfs.control")
            return fd
        except OSError:
            os.close(fd)
            time.sleep(0.1)


def main():
    mnt, journal, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    jf = open(journal, "a", buffering=1)

    def say(*words):
        jf.write(" ".join(str(w) for w in words) + "\n")
        jf.flush()
        os.fsync(jf.fileno())

    root = open_root(mnt)
    n = 0
    while True:
        path = rng.choice(FILES)
        rename = rng.random() < 0.5
        obj = {"w": torch.rand(rng.randint(64 << 10, 1 << 20)), "n": n, "seed": seed}
        buf = io.BytesIO()
        torch.save(obj, buf)
        digest = hashlib.sha256(buf.getvalue()).hexdigest()
        say("pending", path, digest)
        name = path + ".tmp" if rename else path
        try:
            try:
                os.mkdir("sub", dir_fd=root)
            except FileExistsError:
                pass
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=root)
            with os.fdopen(fd, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
            if rename:
                os.replace(name, path, src_dir_fd=root, dst_dir_fd=root)
            say("done", path, digest)
        except OSError as e:
            say("failed", path, digest, e.errno)
            if e.errno in (errno.ENOTCONN, errno.ENODEV, errno.EBADF, errno.ESTALE):
                os.close(root)
                root = open_root(mnt)
        n += 1
        time.sleep(rng.uniform(0.05, 0.25))


if __name__ == "__main__":
    main()
