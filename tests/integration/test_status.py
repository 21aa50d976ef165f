"""Status over the control socket: built under the locks, sent after them.

A viperctl that asks for status and then stops reading must block only its
own request, never the mount; the JSON it would read stays byte for byte
what the daemon always wrote, names that are not UTF-8 included.
"""
import json
import os
import select
import socket
import subprocess
import threading
import time

from conftest import VIPERCTL, ctl_ask as ask, ctl_path, recv_all, write


def bounded(what, fn, timeout):
    """Runs fn in a thread; fails if it has not returned within timeout seconds."""
    done, err = threading.Event(), []

    def run():
        try:
            fn()
        except BaseException as e:     # reported below, in the test's thread
            err.append(e)
        done.set()

    t = threading.Thread(target=run, daemon=True)
    t0 = time.monotonic()
    t.start()
    assert done.wait(timeout), "%s stalled for %d s behind a status nobody reads" % (what, timeout)
    if err:
        raise err[0]
    return time.monotonic() - t0


def test_status_nobody_reads_does_not_stall_the_mount(world):
    m = world.mount()
    # a status far larger than what a Unix socket buffers (~200 KiB): the
    # daemon's write of it blocks until the client reads
    os.mkdir(m.path("many"))
    for i in range(2500):
        write(m.path("many", "%04d-%s.bin" % (i, "n" * 180)), b"x")
    path = ctl_path(m)
    size = len(ask(path, "status"))
    assert size > 600 << 10, size
    stuck = []
    try:
        for _ in range(3):      # three stuck requests, each holding a full socket
            s = socket.socket(socket.AF_UNIX)
            stuck.append(s)
            s.connect(path)
            s.sendall(b"status\n")
        time.sleep(1.0)         # their threads are now blocked in the write
        # the first answer has begun; the rest cannot fit
        assert select.select(stuck[:1], [], [], 10)[0], "no status answer began within 10 s"
        assert stuck[0].recv(1, socket.MSG_PEEK) == b"{"

        def file_ops():
            write(m.path("after.bin"), b"still served")
            with open(m.path("after.bin"), "rb") as f:
                assert f.read() == b"still served"
            os.rename(m.path("after.bin"), m.path("renamed.bin"))
            assert "renamed.bin" in os.listdir(m.mnt)
            os.stat(m.path("many"))
            os.unlink(m.path("renamed.bin"))

        print("file operations: %.2f s" % bounded("the mount", file_ops, 20))
        # other control requests too: status, versions, a watch event
        st = {}
        bounded("another status", lambda: st.update(json.loads(ask(path, "status"))), 20)
        assert st["files"] == 2500 and st["pid"] == m.proc.pid
        assert len(st["paths"]) == 2500
        bounded("versions", lambda: json.loads(ask(path, "versions /many")), 20)
        # what the stuck clients get, once they read, is the whole answer
        s = stuck.pop()
        s.settimeout(30)
        s.shutdown(socket.SHUT_WR)
        out = recv_all(s)
        s.close()
        assert out.endswith(b"}\n") and json.loads(out)["files"] == 2500
    finally:
        for s in stuck:
            s.close()
    m.stop()


def test_status_wire_format_for_names_that_are_not_utf8(world):
    m = world.mount()
    names = {
        b"bad\xff\xfename": b'"bad\\u00ff\\u00fename"',
        b"caf\xc3\xa9-\xc3": b'"caf\xc3\xa9-\\u00c3"',        # U+00E9 stays UTF-8
        b"q\"b\\s": b'"q\\"b\\\\s"',
    }
    for name in names:
        with open(os.path.join(m.mnt.encode(), name), "wb") as f:
            f.write(b"x")
    raw = ask(ctl_path(m), "status")
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    for name, literal in names.items():
        assert b'"path":' + literal + b',"version":1' in raw, (literal, raw[-600:])
    json.loads(raw)     # strict JSON all the same
    # viperctl reads the bytes back, and shows them escaped
    r = subprocess.run([VIPERCTL, "status", m.mnt], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert b"bad\\xff\\xfename" in r.stdout, r.stdout
    assert b"caf\xc3\xa9-\\xc3" in r.stdout, r.stdout
    m.stop()


def test_wait_refuses_numbers_that_are_not(world):
    m = world.mount()
    write(m.path("f"), b"1")
    path = ctl_path(m)
    for line, err in (("wait f abc 1", "VERSION is not a number"),
                      ("wait f 1x 1", "VERSION is not a number"),
                      ("wait f -1 1", "VERSION is not a number"),
                      ("wait f 0 soon", "SECONDS is not a number"),
                      ("wait f 0 -5", "SECONDS is not a number"),
                      ("wait f 0 nan", "SECONDS is not a number")):
        assert err in ask(path, line).decode(), line
    assert json.loads(ask(path, "wait f 0 1")) == {"version": 1}
    # a path as long as the kernel allows, with the numbers, fits the request line
    deep = "/".join(["d" * 250] * 16)[:4000]
    r = subprocess.run([VIPERCTL, "wait", m.path(deep), "--timeout", "0.2"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 4 and "timed out" in r.stderr, r.stderr
