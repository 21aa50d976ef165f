#!/usr/bin/env python3
"""make posix-suite: a POSIX conformance suite (pjdfstest) on a viperfs
producer mount against tmpfs, side by side in one run.

    PJDFSTEST=DIR make posix-suite        (or: tests/posix/suite.py DIR)

DIR is a pjdfstest tree you built (its pjdfstest binary and tests/): the
suite is not packaged by Debian and is not part of this project.  It runs
as root, the way a new user would mount: -o allow_other,default_permissions.
Every test directory is run (chflags and granular are FreeBSD-only and
skipped) with prove, in a fresh tmpfs and in a fresh viperfs mount, and the
two TAP streams are compared subtest by subtest: a subtest that fails on
tmpfs as well (a suite of mixed versions, a Linux TODO) says nothing about
viperfs.  Prints both totals and every subtest that passes on tmpfs and
fails on viperfs; the full logs go to bench-results/posix-suite-*.log.
Exit status: 0 when at least --target percent (default 99) of the subtests
that pass on tmpfs pass on viperfs.
"""
import argparse
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from conftest import World  # noqa: E402

SKIP = ("chflags", "granular")


def run_prove(suite, cwd, log):
    dirs = sorted(os.path.join(suite, "tests", d) for d in os.listdir(os.path.join(suite, "tests"))
                  if os.path.isdir(os.path.join(suite, "tests", d)) and d not in SKIP)
    with open(log, "w") as f:
        subprocess.run(["prove", "-v", "-r", *dirs], cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
    return parse(log)


def parse(log):
    """{(file, subtest number): (passed, line)}; a TODO counts as passed, as prove counts it."""
    res, cur = {}, None
    with open(log, errors="replace") as f:
        for line in f:
            m = re.match(r"^(/\S+\.t) \.+", line)
            if m:
                cur = m.group(1).split("/tests/")[-1]
                continue
            m = re.match(r"^(not ok|ok) (\d+)(.*)", line)
            if m and cur:
                res[(cur, int(m.group(2)))] = (m.group(1) == "ok" or "# TODO" in m.group(3),
                                              line.rstrip())
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite", nargs="?", default=os.environ.get("PJDFSTEST"),
                    help="the pjdfstest tree (PJDFSTEST)")
    ap.add_argument("--opts", default="allow_other,default_permissions",
                    help="the viperfs mount's -o options")
    ap.add_argument("--target", type=float, default=99.0)
    a = ap.parse_args()
    if not a.suite or not os.access(os.path.join(a.suite, "pjdfstest"), os.X_OK):
        print("posix-suite: no pjdfstest tree (set PJDFSTEST=DIR: a tree with a built pjdfstest "
              "binary and its tests/)", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("posix-suite: run as root (the suite changes owners and makes device nodes)",
              file=sys.stderr)
        return 2
    suite = os.path.abspath(a.suite)
    out = os.path.join(ROOT, "bench-results")
    os.makedirs(out, exist_ok=True)
    w = World()
    try:
        tmp = w.dir("tmpfs")
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", tmp], check=True)
        w.on_cleanup(lambda: subprocess.run(["umount", "-l", tmp], check=True))
        print("posix-suite: tmpfs ...", flush=True)
        base = run_prove(suite, tmp, os.path.join(out, "posix-suite-tmpfs.log"))
        m = w.mount(a.opts)
        print("posix-suite: viperfs (-o %s) ..." % a.opts, flush=True)
        vp = run_prove(suite, m.mnt, os.path.join(out, "posix-suite-viperfs.log"))
    finally:
        w.cleanup()
    for name, r in (("tmpfs", base), ("viperfs", vp)):
        bad = sum(1 for ok, _ in r.values() if not ok)
        print("%-8s %5d subtests, %4d failed: %.2f%% passed" % (name, len(r), bad,
                                                              100.0 * (len(r) - bad) / max(len(r), 1)))
    passing = [k for k, (ok, _) in base.items() if ok]
    lost = sorted(k for k in passing if not vp.get(k, (False,))[0])
    pct = 100.0 * (len(passing) - len(lost)) / max(len(passing), 1)
    print("of the %d subtests that pass on tmpfs, %d fail on viperfs: %.2f%% pass (target >= %g)" %
          (len(passing), len(lost), pct, a.target))
    for k in lost:
        print("  %s %d: %s" % (k[0], k[1], vp.get(k, (None, "missing"))[1][:200]))
    return 0 if pct >= a.target and passing else 1


if __name__ == "__main__":
    sys.exit(main())
