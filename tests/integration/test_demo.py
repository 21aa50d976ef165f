"""make demo in its short mode (DEMO_SIZE=64M, 3 epochs; about 10 s here).

The demo must show both paths, verify every version it counts, end with a
summary of medians, ratios and torn loads, exit 0, and leave nothing
behind: no network namespace, bridge, mount, process or directory of its
own, also when it is interrupted with Ctrl-C (SIGINT to its process group).
Each run is bounded (60 s) so that a hung demo fails instead of stalling
the suite.
"""
import os
import re
import shutil
import signal
import subprocess
import time

from conftest import BUILD, ROOT

DEMO = os.path.join(ROOT, "mount-scripts", "demo.sh")
LIMIT_S = 60
SHORT = {"DEMO_SIZE": "64M", "EPOCHS": "3", "BUILD": BUILD}
NUM = r"(\d+\.\d+)"


def demo_env():
    env = dict(os.environ, **SHORT)
    env["PYTHON"] = "/usr/bin/python3"
    return env


def leftovers(pid, base):
    """What a demo run (shell pid, directory base) left behind, as readable lines."""
    tag = "vpd%d" % pid
    left = []
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    left += ["network namespace " + n for n in ns if n.startswith(tag)]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    left += ["link " + n for n in re.findall(r"^\d+: (%s\w+)" % tag, links, re.M)]
    with open("/proc/mounts") as f:
        left += ["mount " + line.split()[1] for line in f if base in line]
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % p, "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if base in cmd:
            left.append("process %s: %s" % (p, cmd.strip()))
    if os.path.exists(base):
        left.append("directory " + base)
    return left


def kill_demo(p, out):
    """A demo that did not end by itself: SIGKILL to its process group, then
    what its own cleanup (which SIGKILL skips) would have removed: the
    processes it started (by PID, from their command lines), its mounts, its
    namespaces and bridge, its directory."""
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    m = re.search(r"files in (/tmp/viperfs-demo-\S+)", out)
    base = m.group(1) if m else None
    if base:
        for what in leftovers(p.pid, base):
            if what.startswith("process "):
                try:
                    os.kill(int(what.split()[1].rstrip(":")), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        with open("/proc/mounts") as f:
            mounts = [line.split()[1] for line in f if base in line.split()[1]]
        for mnt in reversed(mounts):
            subprocess.run(["fusermount3", "-uz", mnt], capture_output=True)
    tag = "vpd%d" % p.pid
    for n in ("p", "c"):
        subprocess.run(["ip", "netns", "del", tag + n], capture_output=True)
    subprocess.run(["ip", "link", "del", tag + "br"], capture_output=True)
    if base:
        shutil.rmtree(base, ignore_errors=True)


def stuck_report(pid, base):
    """What a demo that does not end is doing: its processes, and the end of its logs."""
    ps = subprocess.run(["ps", "-o", "pid,stat,etime,wchan:20,args", "-s", str(pid)],
                        capture_output=True, text=True).stdout
    logs = ""
    for name in ("producer.log", "consumer.log"):
        try:
            with open(os.path.join(base, name)) as f:
                logs += "-- the end of %s\n%s" % (name, "".join(f.readlines()[-25:]))
        except OSError as e:
            logs += "-- %s: %s\n" % (name, e)
    return "\n-- processes\n" + ps + logs


def base_of(out):
    m = re.search(r"files in (/tmp/viperfs-demo-\S+)", out)
    assert m, "the demo did not say where its files are:\n" + out
    return m.group(1)


def test_demo_short_summary_and_cleanup():
    t0 = time.monotonic()
    p = subprocess.Popen(["sh", DEMO], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=demo_env(), start_new_session=True)
    out = ""
    try:
        out, _ = p.communicate(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGINT)
        try:
            out, _ = p.communicate(timeout=30)
        finally:
            kill_demo(p, out)
        raise AssertionError("the short demo took over %d s:\n%s" % (LIMIT_S, out))
    wall = time.monotonic() - t0
    assert p.returncode == 0, out
    base = base_of(out)

    # a row per version: both paths' stall and latency, the torn count
    rows = re.findall(r"^\s+(\d+)\s+\d\.\d{4}\s+%s s\s+%s s\s+\d\.\d{3}\s+%s s\s+%s s\s+\d\.\d{3}\s+(\d+)$"
                      % (NUM, NUM, NUM, NUM), out, re.M)
    assert [int(r[0]) for r in rows] == [1, 2, 3], out

    # the summary: medians as numbers for both paths, the ratio, every version verified
    assert re.search(r"^== summary: 64\.0 MiB checkpoint, 3 versions, medians$", out, re.M), out
    assert re.search(r"^\s+viperfs\s+PFS \+ 1 s poll\s+PFS / viperfs$", out, re.M), out
    for label in ("producer stall", "update latency"):
        m = re.search(r"^%s\s+%s s\s+%s s\s+%sx$" % (label, NUM, NUM, NUM), out, re.M)
        assert m, "no %s medians in the summary:\n%s" % (label, out)
        vp, pfs, ratio = (float(x) for x in m.groups())
        assert vp > 0 and pfs > 0
        assert abs(ratio - pfs / vp) <= 0.05 + 0.05 * ratio
    assert re.search(r"^versions verified\s+3 of 3\s+3 of 3$", out, re.M), out
    m = re.search(r"^torn loads\s+(\d+)\s+(\d+)$", out, re.M)
    assert m, out
    assert int(m.group(1)) == 0, "viperfs served a torn version:\n" + out
    assert int(m.group(2)) == sum(int(r[-1]) for r in rows), out
    assert re.search(r"^PFS\s+a local disk directory \(no shared PFS on this machine\)", out, re.M), out

    # human lines only: no Python dict or list printed
    assert not re.search(r"[{\[]'\w+':", out), out
    assert leftovers(p.pid, base) == []
    assert wall < LIMIT_S


def test_demo_ctrl_c_cleans_up():
    # a terminal's Ctrl-C reaches processes that take SIGINT: the demo gets the
    # default disposition even where this test runs as a background job of a
    # shell script (which ignores SIGINT, and so would every process it starts)
    p = subprocess.Popen(["sh", DEMO], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=demo_env(), start_new_session=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    out = ""
    try:
        deadline = time.monotonic() + LIMIT_S
        # interrupt it mid-run: once the producer has saved its first version
        while time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            out += line
            if re.match(r"^\s+1\s+\d\.\d{4}\s", line):
                break
        assert re.search(r"^\s+1\s", out, re.M), "the demo never printed version 1:\n" + out
        os.killpg(p.pid, signal.SIGINT)     # what Ctrl-C in a terminal does
        try:
            rest, _ = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError("the demo did not end within 30 s of Ctrl-C:\n" + out +
                                 stuck_report(p.pid, base_of(out)))
        out += rest
    finally:
        if p.poll() is None:
            kill_demo(p, out)
    assert p.returncode == 130, out
    assert "demo: interrupted; removing" in out
    assert "Traceback" not in out, out
    assert leftovers(p.pid, base_of(out)) == []
