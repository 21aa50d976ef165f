"""The chaos test's consumer load: reads every file, whole, and logs its hash.

    PATH SHA256      one complete read
    error PATH ERRNO a read that failed (a dead or restarting daemon)

usage: chaos_reader.py MNT LOG
"""
import hashlib
import os
import sys
import time

FILES = ["model.pt", "opt.pt", "sub/ema.pt"]     # the writer's (chaos_writer.py)


def main():
    mnt, log = sys.argv[1], sys.argv[2]
    with open(log, "a", buffering=1) as out:
        while True:
            for path in FILES:
                try:
                    with open(os.path.join(mnt, path), "rb") as f:
                        data = f.read()
                except FileNotFoundError:
                    continue
                except OSError as e:
                    out.write("error %s %d\n" % (path, e.errno))
                    continue
                out.write("%s %s\n" % (path, hashlib.sha256(data).hexdigest()))
            time.sleep(0.02)


if __name__ == "__main__":
    main()
