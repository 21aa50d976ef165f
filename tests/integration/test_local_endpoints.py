"""The daemon's local endpoints under abuse: the metrics endpoint and the control socket.

Idle and slow clients must not starve scrapes or status, cost threads, or hold
up an unmount; the control socket judges each request by the caller's
credentials; JSON answers stay JSON whatever bytes a file name holds.
Every socket, thread and process a test opens is closed at teardown.
"""
import json
import os
import select
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import VIPERCTL, VIPERFS, ctl_ask as ask, ctl_path, free_port, lines_until, scrape, status, wait_for, write

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
PYTHON = "/usr/bin/python3"

# Run as nobody: connects to the control socket, sends one request line,
# half-closes, prints the whole answer.
ASK = r'''
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(30)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
s.shutdown(socket.SHUT_WR)
out = b""
while True:
    b = s.recv(65536)
    if not b:
        break
    out += b
sys.stdout.write(out.decode())
'''

# Run as nobody: opens N connections that each send the same request, prints
# the first answer line of each (a JSON list), then holds them all until
# its stdin closes.
HOLD = r'''
import json, socket, sys
path, n, line = sys.argv[1], int(sys.argv[2]), sys.argv[3]
held, answers = [], []
for i in range(n):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(path)
    s.sendall(line.encode() + b"\n")
    f = s.makefile("rb")
    answers.append(f.readline().decode())
    held.append((s, f))
print(json.dumps(answers), flush=True)
sys.stdin.read()
'''


@pytest.fixture
def opened():
    """Sockets and stop events of the test, closed (and threads joined) at teardown."""
    things = {"socks": [], "threads": [], "stop": threading.Event()}
    try:
        yield things
    finally:
        things["stop"].set()
        for t in things["threads"]:
            t.join(timeout=10)
        for s in things["socks"]:
            s.close()


def threads(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads: line for pid %d" % pid)


def ctl_connect(path, opened, line=None, timeout=30):
    """A connection to the control socket, waiting (up to timeout) for room in its backlog."""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX)
        opened["socks"].append(s)
        s.settimeout(timeout)
        try:
            s.connect(path)
            break
        except BlockingIOError:     # the backlog is full: the daemon accepts as it can
            assert time.monotonic() < deadline, "the control socket accepted nothing for %d s" % timeout
            select.select([], [], [], 0.01)
    if line is not None:
        s.sendall(line.encode() + b"\n")
    return s


def first_line(s):
    """The first line the daemon sends on s (or all it sent before closing)."""
    out = b""
    while b"\n" not in out:
        b = s.recv(4096)
        if not b:
            break
        out += b
    return out.split(b"\n")[0].decode()


def ask_as_nobody(path, line):
    r = subprocess.run([*NOBODY, PYTHON, "-c", ASK, path, line], capture_output=True,
                       text=True, timeout=60, cwd="/")
    assert r.returncode == 0, r.stderr
    return r.stdout


def viperctl_as_nobody(*args):
    return subprocess.run([*NOBODY, VIPERCTL, *args], capture_output=True, text=True,
                          timeout=60, cwd="/")


def shared_mount(world, opts=""):
    """A mount other users may reach (allow_other, a traversable base), as a site would set it up."""
    os.chmod(world.base, 0o755)
    return world.mount("allow_other" + ("," + opts if opts else ""))


def slowloris(port, opened, count):
    """count clients that send a request head one byte per second, until teardown."""
    head = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 4096
    conns = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        opened["socks"].append(s)
        conns.append(s)

    def drip():
        for i in range(len(head)):
            for s in conns:
                try:
                    s.send(head[i:i + 1])
                except OSError:
                    pass        # dropped by the server: that is its right
            if opened["stop"].wait(1.0):
                return
    t = threading.Thread(target=drip, daemon=True)
    opened["threads"].append(t)
    t.start()
    return conns


def idle_tcp(port, opened, count):
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        opened["socks"].append(s)


# ---- metrics -----------------------------------------------------------------

def test_metrics_answer_with_200_idle_and_slow_clients_connected(world, opened):
    port = free_port()
    m = world.mount("metrics=127.0.0.1:%d" % port)
    write(m.path("a.bin"), b"x" * 4096)
    idle_tcp(port, opened, 200)
    slowloris(port, opened, 4)
    code, text = scrape(port, timeout=10)
    assert code == 200
    assert "viperfs_written_bytes_total 4096" in text.splitlines()
    assert text.startswith("# HELP viperfs_fuse_request_duration_seconds ")
    # and again: the first scrape did not just win a race with the idle ones
    assert scrape(port, timeout=10)[0] == 200
    # other methods and paths as before
    req = urllib.request.Request("http://127.0.0.1:%d/metrics" % port, data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 405
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen("http://127.0.0.1:%d/nothing" % port, timeout=10)
    assert e.value.code == 404


def test_metrics_address_in_use_is_a_clear_error(world):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        mnt, pfs = world.dir("mnt"), world.dir("pfs")
        r = subprocess.run([VIPERFS, "-f", "-o", "metrics=127.0.0.1:%d,control=%s" % (
                               port, os.path.join(world.base, "ctl.sock")), pfs, mnt],
                           capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "metrics address '127.0.0.1:%d'" % port in r.stderr, r.stderr
    assert "Address already in use" in r.stderr, r.stderr


# ---- control socket: idle clients, caps, stop ----------------------------------

def test_ctl_idle_clients_cost_no_threads_and_do_not_hold_up_unmount(world, opened):
    port = free_port()
    m = world.mount("metrics=127.0.0.1:%d" % port)
    path = ctl_path(m)
    pid = m.proc.pid
    base = threads(pid)
    for _ in range(200):
        ctl_connect(path, opened)
    st = status(m)
    assert st["pid"] == pid
    assert threads(pid) <= base + 16, "idle control clients cost threads"
    # long requests still work beside them: a watch sees a new version
    watch = ctl_connect(path, opened, "watch /")
    assert '"watching":true' in first_line(watch)
    write(m.path("w.bin"), b"123")
    ev = json.loads(first_line(watch))
    assert ev["path"] == "w.bin" and ev["version"] == 1
    # idle and slow metrics clients too, then the unmount with all of them connected
    idle_tcp(port, opened, 100)
    slowloris(port, opened, 2)
    t0 = time.monotonic()
    r = subprocess.run(["fusermount3", "-u", m.mnt], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    try:
        assert m.proc.wait(timeout=20) == 0
    except subprocess.TimeoutExpired:
        raise AssertionError("the daemon did not exit within 20 s of the unmount: %s" % m.read_log())
    print("unmount to exit: %.2f s" % (time.monotonic() - t0))
    # the watcher was told: its connection ended
    assert watch.recv(4096) == b""
    m.stop()


def test_ctl_request_line_times_out(world, opened):
    m = world.mount()
    s = ctl_connect(ctl_path(m), opened)
    s.sendall(b"stat")          # never finished
    s.settimeout(30)
    answer = first_line(s)
    assert json.loads(answer) == {"error": "timed out waiting for the request line"}
    assert s.recv(4096) == b""


def test_ctl_caps_requests_and_keeps_room_for_root(world, opened):
    m = shared_mount(world)
    path = ctl_path(m)
    pid = m.proc.pid
    base = threads(pid)
    # nobody takes what it may: 48 watches; the 49th is refused
    holder = world.spawn([*NOBODY, PYTHON, "-c", HOLD, path, "49", "watch /"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
    answers = json.loads(lines_until(holder, lambda l: True, 60)[-1])
    assert all('"watching":true' in a for a in answers[:48]), answers
    assert json.loads(answers[48])["error"].startswith("busy"), answers[48]
    # root still gets in: status, then the 16 requests kept for it
    assert status(m)["pid"] == pid
    for _ in range(16):
        assert '"watching":true' in first_line(ctl_connect(path, opened, "watch /"))
    assert json.loads(first_line(ctl_connect(path, opened, "watch /")))["error"].startswith("busy")
    assert threads(pid) <= base + 64 + 16, "threads beyond the cap"
    assert "requests are in progress already" in m.read_log()
    # the watchers notice their clients leaving, and the room comes back
    holder.stdin.close()
    assert holder.wait(timeout=30) == 0
    def not_busy():
        answer = ask(path, "status")
        return None if answer.startswith(b'{"error":"busy') else answer
    answer = wait_for(not_busy, 30, "the room of the watches of a client that left", 0.1)
    assert json.loads(answer)["pid"] == pid


# ---- control socket: who may ask what ------------------------------------------

def test_ctl_authorises_by_peer_credentials(world):
    m = shared_mount(world)
    path = ctl_path(m)
    write(m.path("open.bin"), b"o")
    write(m.path("mine.bin"), b"m")
    os.chmod(m.path("mine.bin"), 0o600)
    os.mkdir(m.path("private"), 0o700)
    write(m.path("private", "secret.bin"), b"s")
    assert oct(os.stat(path).st_mode & 0o777) == "0o666"

    # nobody may read the mount: status with viperctl as it is; flush is refused
    r = viperctl_as_nobody("status", m.mnt, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["pid"] == m.proc.pid
    r = viperctl_as_nobody("flush", m.mnt)
    assert r.returncode != 0 and "permission denied" in r.stderr, r.stdout + r.stderr
    assert "refused 'flush' from uid 65534" in m.read_log()

    def refused(line):
        answer = json.loads(ask_as_nobody(path, line).splitlines()[0])
        return isinstance(answer, dict) and answer.get("error", "").startswith("permission denied")

    assert not refused("versions /open.bin")
    assert refused("versions /private/secret.bin")
    assert refused("watch /private")
    assert refused("wait /private/secret.bin 0 1")
    assert refused("gpu-export /mine.bin")
    assert not refused("gpu-export /open.bin")     # allowed; the GPU tier is off here
    for line in ("flush /open.bin", "warm /open.bin", "idle 0"):
        assert refused(line), line
    assert json.loads(ask_as_nobody(path, "ping")) == {"pong": True}

    # root may do all of it
    assert status(m)["pid"] == m.proc.pid
    assert m.ctl("flush", m.mnt).stdout.strip() == "flushed"
    assert b'"open_files":0' in ask(path, "idle 0")

    # a mount root others may not read: no status for them either
    os.chmod(m.mnt, 0o700)
    assert refused("status")
    assert status(m)["pid"] == m.proc.pid


# ---- JSON ------------------------------------------------------------------------

def test_status_json_with_invalid_utf8_names(world, opened):
    m = world.mount()
    name = b"bad\xff\xfename"
    watch = ctl_connect(ctl_path(m), opened, "watch /")
    assert '"watching":true' in first_line(watch)
    with open(os.path.join(m.mnt.encode(), name), "wb") as f:
        f.write(b"x")
    with open(os.path.join(m.mnt.encode(), b"quote\"and\\back\x01"), "wb") as f:
        f.write(b"y")
    r = subprocess.run([VIPERCTL, "status", m.mnt, "--json"], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    paths = {p["path"] for p in st["paths"]}
    # each invalid byte is its own code point: b"\xff" -> U+00FF
    assert "bad\u00ff\u00fename" in paths, paths
    assert "quote\"and\\back\x01" in paths, paths
    assert json.loads(ask(ctl_path(m), "versions /"))
    ev = json.loads(first_line(watch))
    assert ev["path"] == "bad\u00ff\u00fename"
