"""What a root daemon hands to others: the on_update command's fds and time-out,
and the names viperctl prints on an admin's terminal."""
import os
import socket
import subprocess
import threading
import time

from conftest import VIPERCTL, read, wait_for, write


def alive(pid):
    """True while pid runs (a zombie nobody reaped yet counts as gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def script(world, name, text):
    path = os.path.join(world.base, name)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + text)
    os.chmod(path, 0o755)
    return path


def test_hook_gets_only_stdio_and_names_through_the_environment(world):
    out = world.dir("out")
    secret = os.path.join(world.base, "secret")
    write(secret, b"the daemon's, not the hook's")
    # ls lists its own fds: what the command's shell passed on, and the one ls opens
    # to list them; the shell's copies that a redirection saves are close-on-exec.
    # The daemon starts with fds that are not close-on-exec (its stdin, and 7), as
    # libfabric's sockets are not.
    m = world.mount("on_update=cd %s; printf %%s \"$VIPERFS_PATH\" > path.tmp; "
                    "ls -l /proc/self/fd > fds.tmp; mv path.tmp path; mv fds.tmp fds" % out,
                    prefix=["/bin/sh", "-c", 'exec "$@" 0<"$0" 7<"$0"', secret])
    assert os.readlink("/proc/%d/fd/7" % m.proc.pid) == secret
    # what a shell would run, were the name pasted into the command line
    name = "a $(touch injected) `touch injected2`;.bin"
    write(m.path(name), b"xyz")
    wait_for(lambda: os.path.exists(os.path.join(out, "fds")), what="the hook's run")

    fds = dict(l.split(" -> ") for l in read(os.path.join(out, "fds")).decode().splitlines()
               if " -> " in l)
    fds = {int(k.split()[-1]): v for k, v in fds.items()}
    listing = [fd for fd, target in fds.items() if target.startswith("/proc/") and target.endswith("/fd")]
    assert len(listing) == 1, fds
    assert set(fds) == {0, 1, 2, listing[0]}, "the hook inherited the daemon's fds: %s" % fds
    assert fds[0] == "/dev/null"
    assert fds[1] == os.path.join(out, "fds.tmp")
    assert read(os.path.join(out, "path")) == m.path(name).encode()
    assert not os.path.exists(os.path.join(out, "injected"))
    assert not os.path.exists(os.path.join(out, "injected2"))


def test_hook_past_its_timeout_is_killed_and_later_versions_still_run(world):
    out = world.dir("out")
    # term.bin: a command that ends on SIGTERM, with a child in its process group;
    # kill.bin: one that ignores SIGTERM (its child too) and needs SIGKILL
    hook = script(world, "slow.sh", """
case "$VIPERFS_PATH" in
*/term.bin) sleep 1000 & echo $$ $! > {out}/tmp; mv {out}/tmp {out}/term.pids; wait ;;
*/kill.bin) trap '' TERM; sleep 1000 & echo $$ $! > {out}/tmp; mv {out}/tmp {out}/kill.pids; wait ;;
*) echo "$VIPERFS_PATH $VIPERFS_VERSION" >> {out}/ran ;;
esac
""".format(out=out))
    m = world.mount("on_update=%s,on_update_timeout=1" % hook)
    pids = []
    try:
        t0 = time.monotonic()
        write(m.path("term.bin"), b"1")
        wait_for(lambda: os.path.exists(os.path.join(out, "term.pids")), what="the first hook")
        pids += [int(p) for p in read(os.path.join(out, "term.pids")).split()]
        wait_for(lambda: "on_update for 'term.bin' version 1 timed out" in m.read_log(),
                 timeout=20, what="the time-out in the log")
        took = time.monotonic() - t0
        assert 0.9 <= took < 10, took
        line = [l for l in m.read_log().splitlines() if "'term.bin' version 1 timed out" in l][0]
        assert "SIGKILL" not in line, line
        wait_for(lambda: not any(alive(p) for p in pids), timeout=10,
                 what="the hook and its child to be gone")

        write(m.path("kill.bin"), b"22")
        wait_for(lambda: os.path.exists(os.path.join(out, "kill.pids")), what="the second hook")
        kill_pids = [int(p) for p in read(os.path.join(out, "kill.pids")).split()]
        pids += kill_pids
        wait_for(lambda: "on_update for 'kill.bin' version 1 timed out" in m.read_log(),
                 timeout=20, what="the second time-out in the log")
        line = [l for l in m.read_log().splitlines() if "'kill.bin' version 1 timed out" in l][0]
        assert "with SIGKILL" in line, line
        wait_for(lambda: not any(alive(p) for p in kill_pids), timeout=10,
                 what="a hook that ignores SIGTERM to be gone")

        # the runner goes on with the next versions
        write(m.path("after.bin"), b"333")
        write(m.path("after.bin"), b"4444")
        wait_for(lambda: os.path.exists(os.path.join(out, "ran")) and
                 len(read(os.path.join(out, "ran")).splitlines()) >= 2, what="later hooks")
        assert read(os.path.join(out, "ran")).decode().splitlines() == [
            "%s 1" % m.path("after.bin"), "%s 2" % m.path("after.bin")]

        # no zombie left behind: the daemon has no child that is not running
        children = subprocess.run(["ps", "-o", "pid=,stat=", "--ppid", str(m.proc.pid)],
                                  capture_output=True, text=True).stdout.split("\n")
        assert not [c for c in children if c.split() and c.split()[1].startswith("Z")], children
    finally:
        for p in pids:
            if alive(p):
                os.kill(p, 9)


def test_hook_running_at_unmount_is_stopped(world):
    out = world.dir("out")
    hook = script(world, "forever.sh", "echo $$ > %s/pid.tmp; mv %s/pid.tmp %s/pid; exec sleep 1000\n"
                  % (out, out, out))
    m = world.mount("on_update=%s,on_update_timeout=0" % hook)
    pid = None
    try:
        write(m.path("x.bin"), b"1")
        wait_for(lambda: os.path.exists(os.path.join(out, "pid")), what="the hook")
        pid = int(read(os.path.join(out, "pid")))
        time.sleep(1.5)     # on_update_timeout=0: no limit, so it must still run
        assert alive(pid)
        t0 = time.monotonic()
        assert m.stop(timeout=60) == 0
        assert time.monotonic() - t0 < 30
        assert not alive(pid)
        assert "on_update for 'x.bin' version 1 was still running at unmount" in m.read_log()
    finally:
        if pid and alive(pid):
            os.kill(pid, 9)


# raw bytes: C1 controls in UTF-8 (c2 9b is U+009B, CSI), bytes that are not UTF-8
NAMES = [b"evil\x1b]0;pwned\x07.pt", b"\x1b[2J", b"del\x7f.pt", b"c1-\xc2\x9b31m.pt",
         b"bad-\xff\x9b.pt", "modèle.pt".encode()]
SHOWN = [b"evil\\x1b]0;pwned\\x07.pt", b"\\x1b[2J", b"del\\x7f.pt", b"c1-\\xc2\\x9b31m.pt",
         b"bad-\\xff\\x9b.pt", "modèle.pt".encode()]


def raw_controls(data):
    """The control bytes (and C1 controls, raw or in UTF-8) in data, newlines aside."""
    found = [b for b in data if (b < 0x20 and b != 0x0a) or b == 0x7f]
    found += [b for b in data if 0x80 <= b <= 0x9f and b"\xc2" + bytes([b]) in data]
    return found


def test_status_escapes_control_bytes_in_file_names(world):
    m = world.mount()
    for i, name in enumerate(NAMES):
        write(os.path.join(m.mnt.encode(), name), b"%d" % i)
    r = subprocess.run([VIPERCTL, "status", m.mnt], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert b"\x1b" not in r.stdout and b"\x07" not in r.stdout
    assert not raw_controls(r.stdout), r.stdout
    assert b"\xff" not in r.stdout
    for shown in SHOWN:
        assert shown in r.stdout, (shown, r.stdout)


class FakeDaemon:
    """Answers viperctl on the mount's control socket with a canned line."""

    def __init__(self, path, answer):
        self.answer = answer
        self.requests = []
        os.unlink(path)         # the real daemon's socket: viperctl now reaches us
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with c:
                self.requests.append(c.recv(4096))
                c.sendall(self.answer)

    def close(self):
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(timeout=10)


# every string the human status prints, each with \u escapes of control bytes, of the
# daemon's raw bytes (\u0080-\u00ff), C1 controls, NUL, surrogates, and raw bytes too
EVIL = r'x\u001b]0;t\u0007\u009b\u00ff\u0000\ud800\u00c2\u009b' + '\x1b[31m\x9b'
STATUS = ('{"pid":1,"pfs_dir":"P%(e)s","files":1,"unflushed_files":0,"open_files":0,'
          '"tiers":{"ram":{"used":1,"budget":2},"gpu":{"state":"off","reason":"R%(e)s"}},'
          '"flush":{"queued_ops":0,"queued_bytes":0,"last_lag_s":0,"mean_lag_s":0,'
          '"flushed_versions":0,"flushed_bytes":0,"skipped_versions":0,"retries":1,'
          '"last_error":"E%(e)s","last_error_path":"L%(e)s"},'
          '"bytes_written":0,"bytes_read":0,"commits":0,"checkpoint_stall_s":0,'
          '"paths":[{"path":"N%(e)s","version":1,"size":1,"state":"S%(e)s","tiers":["T\\u001b\\u009b"]}],'
          '"repl":{"role":"consumer","producer":"H%(e)s","provider":"V%(e)s","state":"A%(e)s",'
          '"installed":0,"skipped":0,"bytes_in":0,"last_transfer_s":0,"gpu_path":"G%(e)s",'
          '"bytes_gpu_direct":0}}\n' % {"e": EVIL})


def test_viperctl_escapes_whatever_the_daemon_sends(world):
    m = world.mount()
    ctl = os.getxattr(m.mnt, "user.viperfs.control").decode()
    fake = FakeDaemon(ctl, STATUS.encode("latin-1"))
    try:
        r = subprocess.run([VIPERCTL, "status", m.mnt], capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert fake.requests and fake.requests[0].startswith(b"status")
        assert not raw_controls(r.stdout + r.stderr), r.stdout
        assert b"\xff" not in r.stdout and b"\x9b" not in r.stdout
        # \u009b alone is a raw byte (not UTF-8); \u00c2\u009b together are U+009B in UTF-8
        shown = b"x\\x1b]0;t\\x07\\x9b\\xff\xef\xbf\xbd\xef\xbf\xbd\\xc2\\x9b\\x1b[31m\\x9b"
        for field in (b"P", b"R", b"E", b"L", b"N", b"S", b"H", b"V", b"A", b"G"):
            assert field + shown in r.stdout, (field, r.stdout)
        assert b"T\\x1b\\x9b" in r.stdout      # the tiers: a short field
    finally:
        fake.close()

    # errors the daemon sends: a flush refused, a wait that fails
    fake = FakeDaemon(ctl, ('{"error":"no %s"}\n' % EVIL).encode("latin-1"))
    try:
        for args in (["flush", m.mnt], ["wait", m.path("f"), "--newer-than", "0"]):
            r = subprocess.run([VIPERCTL, *args], capture_output=True, timeout=60)
            assert r.returncode == 1, (args, r.stderr)
            assert b"no " + shown in r.stderr, (args, r.stderr)
            assert not raw_controls(r.stdout + r.stderr), (args, r.stderr)
    finally:
        fake.close()
