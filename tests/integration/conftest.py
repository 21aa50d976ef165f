"""Fixtures for integration tests on real viperfs mounts.

Every mount is a real FUSE file system served by build/viperfs, started
with -f so the test knows its PID, and awaited through the sd_notify
readiness message (no sleeps).  Teardown unmounts, waits for the daemon
to exit (killing only that PID if it hangs), unmounts any tmpfs the test
made, and removes the temporary directories -- also when the test failed.

The helpers the test files share live here too: polling with a deadline
where there is no event (wait_for), reading a helper's event stream
(lines_until), status, metrics, and a producer with its consumers
(cluster).
"""
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("VIPERFS_BUILD", os.path.join(ROOT, "build"))
VIPERFS = os.path.join(BUILD, "viperfs")
VIPERCTL = os.path.join(BUILD, "viperctl")


def read(path):
    with open(path, "rb") as f:
        return f.read()


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def ctl_path(m):
    return os.getxattr(m.mnt, "user.viperfs.control").decode()


def ctl_ask(path, line, timeout=30):
    """The daemon's whole answer to one control request line (bytes), on a fresh connection."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(line.encode() + b"\n")
        s.shutdown(socket.SHUT_WR)
        return recv_all(s)


def recv_all(s):
    """Everything socket s still sends, up to its end."""
    out = b""
    while True:
        b = s.recv(65536)
        if not b:
            return out
        out += b


def wait_version(path, newer_than, timeout=60):
    """viperctl wait: blocks on the daemon's events (no polling) until path holds a
    version newer than newer_than; returns that version."""
    r = subprocess.run([VIPERCTL, "wait", path, "--newer-than", str(newer_than), "--timeout", str(timeout)],
                       capture_output=True, text=True, timeout=timeout + 30)
    assert r.returncode == 0, r.stderr
    return int(r.stdout)


def wait_for(pred, timeout=30, what="condition", interval=0.05):
    """Polls a state with no event to wait on, with a deadline; returns pred's true value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(interval)


def lines_until(proc, pred, timeout=30, stream="stdout"):
    """Reads a helper's output lines (an event stream) until pred(line); returns the lines read.

    Reads the raw fd and keeps its own buffer: select() on a buffered
    file object misses lines that Python already pulled into its buffer.
    """
    fd = getattr(proc, stream).fileno()
    # kept on the process, not by fd: a later helper's pipe may get the number of one with lines left
    buf = proc.__dict__.setdefault("_pending_" + stream, [b""])
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        while b"\n" in buf[0]:
            line, buf[0] = buf[0].split(b"\n", 1)
            seen.append(line.decode(errors="replace"))
            if pred(seen[-1]):
                return seen
        left = deadline - time.monotonic()
        if left <= 0:
            break
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf[0] += chunk
    raise AssertionError("no matching line within %ss; saw %r" % (timeout, seen[-20:]))


def status_json(mnt, prefix=()):
    """viperctl status --json of the mount at mnt (prefix: e.g. nsenter into a node)."""
    r = subprocess.run([*prefix, VIPERCTL, "status", mnt, "--json"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def status(m):
    """The status of Mount m."""
    return status_json(m.mnt)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port, prefix=(), path="/metrics", timeout=60):
    """GET of the metrics endpoint within timeout seconds: (HTTP status, body)."""
    r = subprocess.run([*prefix, "curl", "-s", "-m", str(timeout), "-w", "\n%{http_code}",
                        "http://127.0.0.1:%d%s" % (port, path)],
                       capture_output=True, text=True, timeout=timeout + 30)
    assert r.returncode == 0, r.stderr
    body, _, code = r.stdout.rpartition("\n")
    return int(code), body


def metric(text, name, labels=""):
    for line in text.splitlines():
        if line.startswith(name + labels + " "):
            return float(line.split()[-1])
    raise AssertionError("no metric %s%s" % (name, labels))


def promtool_ok(text):
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def is_mounted(path):
    path = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path for line in f)


class Net:
    """Nodes as network namespaces on one bridge (10.213.X.0/24).

    Daemons start with `nsenter --net=` so that their mounts stay in the
    root mount namespace, visible to every watcher.  cleanup() deletes the
    namespaces and the bridge, also after a failure.
    """

    count = 0

    def __init__(self, nodes):
        Net.count += 1
        # unique per network: deleting the last one's veths is asynchronous
        self.tag = "vp%03x%02x" % (os.getpid() % 0xfff, Net.count % 0xff)
        self.subnet = "10.%d.%d" % (100 + Net.count % 100, 20 + os.getpid() % 200)
        self.bridge = self.tag + "br"
        self.names = []
        try:
            self._setup(nodes)
        except Exception:
            self.cleanup()      # half a network is still cleaned up
            raise

    def _setup(self, nodes):
        self._ip("link", "add", self.bridge, "type", "bridge")
        self._ip("link", "set", self.bridge, "up")
        for i in range(nodes):
            ns = "%sn%d" % (self.tag, i)
            self.names.append(ns)
            self._ip("netns", "add", ns)
            self._ip("link", "add", "%sv%d" % (self.tag, i), "type", "veth",
                     "peer", "name", "%sp%d" % (self.tag, i))
            self._ip("link", "set", "%sp%d" % (self.tag, i), "netns", ns)
            self._ip("link", "set", "%sv%d" % (self.tag, i), "master", self.bridge)
            self._ip("link", "set", "%sv%d" % (self.tag, i), "up")
            self._ip("-n", ns, "addr", "add", "%s/24" % self.addr(i), "dev", "%sp%d" % (self.tag, i))
            self._ip("-n", ns, "link", "set", "%sp%d" % (self.tag, i), "up")
            self._ip("-n", ns, "link", "set", "lo", "up")

    @staticmethod
    def _ip(*args):
        subprocess.run(["ip", *args], check=True, capture_output=True)

    def addr(self, i):
        return "%s.%d" % (self.subnet, i + 1)

    def prefix(self, i):
        return ["nsenter", "--net=/run/netns/%s" % self.names[i]]

    def link(self, i, up):
        self._ip("-n", self.names[i], "link", "set", "%sp%d" % (self.tag, i), "up" if up else "down")

    def cleanup(self):
        for ns in self.names:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


class Mount:
    """One viperfs daemon serving pfs at mnt."""

    def __init__(self, base, pfs, mnt, opts, prefix=None, mnt_arg=None, pass_fds=()):
        self.base, self.pfs, self.mnt, self.opts = base, pfs, mnt, opts
        self.prefix = prefix or []
        # the daemon's mount point argument, where it differs (a /dev/fd/N mounted by the test)
        self.mnt_arg, self.pass_fds = mnt_arg or mnt, pass_fds
        self.proc = None
        self.log = os.path.join(base, "viperfs-%d.log" % time.monotonic_ns())

    def start(self, timeout=30):
        sock_path = os.path.join(self.base, "notify.sock")
        if os.path.exists(sock_path):
            os.unlink(sock_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(sock_path)
        sock.settimeout(timeout)
        opts = "control=%s,log_file=%s,ram_prefault=8M,ram_spare=8M" % (
            os.path.join(self.base, "ctl-%d.sock" % time.monotonic_ns()), self.log)
        if self.opts:
            opts += "," + self.opts
        if os.environ.get("VIPERFS_EXTRA_OPTS"):
            # the whole suite again with more options (test_gpu runs it with the GPU tier)
            opts += "," + os.environ["VIPERFS_EXTRA_OPTS"]
        # tcp pinned: shm would silently cross the namespaces
        env = dict(os.environ, NOTIFY_SOCKET=sock_path, FI_PROVIDER="tcp;ofi_rxm")
        self.stderr_path = self.log + ".stderr"
        self.stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen([*self.prefix, VIPERFS, "-f", "-o", opts, self.pfs, self.mnt_arg],
                                     env=env, stdout=subprocess.DEVNULL,
                                     stderr=self.stderr, pass_fds=self.pass_fds)
        try:
            msg = sock.recv(256).decode()
        except socket.timeout:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError("viperfs did not become ready: %s %s" % (
                self.sanitizer_report(), self.read_log()))
        finally:
            sock.close()
            os.unlink(sock_path)
        assert "READY=1" in msg
        assert is_mounted(self.mnt)
        return self

    def read_log(self):
        try:
            with open(self.log) as f:
                return f.read()
        except OSError:
            return ""

    def sanitizer_report(self):
        """What ASan/UBSan/LSan printed (make check), or the daemon's own report of
        a crash (its signal handler's backtrace), if anything."""
        try:
            with open(self.stderr_path) as f:
                text = f.read()
        except (OSError, AttributeError):
            return ""
        bad = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
               "WARNING: ThreadSanitizer", "terminated with signal")
        return text if any(b in text for b in bad) else ""

    def path(self, *parts):
        return os.path.join(self.mnt, *parts)

    def pfs_path(self, *parts):
        return os.path.join(self.pfs, *parts)

    def ctl(self, *args, check=True):
        r = subprocess.run([VIPERCTL, *args], capture_output=True, text=True, timeout=300)
        if check and r.returncode != 0:
            raise AssertionError("viperctl %s: %s %s" % (args, r.stdout, r.stderr))
        return r

    def flush(self, path=None):
        self.ctl("flush", path or self.mnt)

    def stop(self, timeout=120):
        """Unmounts and waits for the daemon to finish flushing and exit."""
        if self.proc is None:
            return None
        if is_mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", self.mnt], capture_output=True)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        if is_mounted(self.mnt):
            subprocess.run(["fusermount3", "-uz", self.mnt], capture_output=True)
        self.stderr.close()
        self.proc = None
        return rc

    def kill9(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            # A thread of the daemon's own was in a syscall on its own mount (a consumer
            # installs through it) whose request a FUSE thread had already read: the
            # kernel waits for the answer without a timeout, and the /dev/fuse descriptor
            # that would end the wait belongs to the dying process.  Aborting the
            # connection answers it, as `umount -f` would.
            abort_fuse_connection(self.mnt)
            self.proc.wait()
        self.stderr.close()
        self.proc = None
        # the kernel keeps the dead mount until it is unmounted
        subprocess.run(["fusermount3", "-uz", self.mnt], capture_output=True)


def abort_fuse_connection(mnt):
    """Aborts the FUSE connection of the file system mounted at mnt (fusectl, mounted
    here for the call where the machine has not)."""
    dev = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            w = line.split()
            if w[4] == mnt:
                dev = w[2].split(":")[1]
    if dev is None:
        return
    ctl = "/sys/fs/fuse/connections"
    mounted = os.path.ismount(ctl)
    if not mounted:
        subprocess.run(["mount", "-t", "fusectl", "fusectl", ctl], check=True)
    try:
        with open(os.path.join(ctl, dev, "abort"), "w") as f:
            f.write("1")
    finally:
        if not mounted:
            subprocess.run(["umount", ctl], check=True)


def drop_utab_entries(base):
    """Removes the umount(8) helper entries of this test's mounts that a killed daemon left."""
    import fcntl
    try:
        lock = open("/run/mount/utab.lock", "a")
    except OSError:
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open("/run/mount/utab") as f:
                lines = f.readlines()
        except OSError:
            return
        keep = [l for l in lines if " TARGET=%s/" % base not in l]
        if keep != lines:
            with open("/run/mount/utab.viperfs-test", "w") as f:
                f.writelines(keep)
            os.replace("/run/mount/utab.viperfs-test", "/run/mount/utab")


class World:
    """Temporary directories, tmpfs mounts and viperfs mounts of one test."""

    def __init__(self):
        self.base = tempfile.mkdtemp(prefix="viperfs-it-")
        self.mounts = []
        self.tmpfs = []
        self.nets = []
        self.procs = []
        self.finalizers = []    # after the mounts stop, before the networks go

    def net(self, nodes):
        n = Net(nodes)
        self.nets.append(n)
        return n

    def spawn(self, args, **kw):
        """A helper process of the test, killed (by PID) at cleanup."""
        p = subprocess.Popen(args, **kw)
        self.procs.append(p)
        return p

    def on_cleanup(self, fn):
        """fn() runs at cleanup, once the viperfs mounts are stopped (a PFS they flush to)."""
        self.finalizers.append(fn)

    def dir(self, name):
        p = os.path.join(self.base, name)
        os.makedirs(p, exist_ok=True)
        return p

    def make_tmpfs(self, name, size="512m"):
        p = self.dir(name)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % size, "tmpfs", p], check=True)
        self.tmpfs.append(p)
        return p

    def set_readonly(self, path, ro):
        subprocess.run(["mount", "-o", "remount,%s" % ("ro" if ro else "rw"), path], check=True)

    def mount(self, opts="", pfs=None, mnt=None, prefix=None, mnt_arg=None, pass_fds=()):
        m = Mount(self.base, pfs or self.dir("pfs"), mnt or self.dir("mnt"), opts, prefix,
                  mnt_arg, pass_fds)
        self.mounts.append(m)
        return m.start()

    def cleanup(self):
        reports = []
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for m in self.mounts:
            try:
                m.stop(timeout=60)
            except Exception:
                pass
            if m.sanitizer_report():
                reports.append(m.sanitizer_report())
        # mounts made by helpers the test killed (launchers, mount(8)): lazily detach
        with open("/proc/self/mounts") as f:
            stale = [l.split()[1] for l in f if l.split()[1].startswith(self.base + "/")
                     and l.split()[2] == "fuse.viperfs"]
        for p in reversed(stale):
            subprocess.run(["fusermount3", "-uz", p], capture_output=True)
        drop_utab_entries(self.base)
        for fn in reversed(self.finalizers):
            try:
                fn()
            except Exception as e:
                reports.append("cleanup %s: %s" % (getattr(fn, "__qualname__", fn), e))
        for p in reversed(self.tmpfs):
            subprocess.run(["umount", "-l", p], capture_output=True)
        for n in self.nets:
            n.cleanup()
        if os.environ.get("VIPERFS_KEEP"):
            print("kept", self.base)     # to read the daemons' logs after a failure
        else:
            shutil.rmtree(self.base, ignore_errors=True)
        return reports


def cluster_secret(world):
    """The shared secret of a test's nodes (replication on a network needs one)."""
    path = os.path.join(world.base, "cluster.secret")
    if not os.path.exists(path):
        write(path, os.urandom(16).hex().encode())
    return ",secret_file=" + path


def cluster(world, consumers=2, opts="", consumer_opts=None):
    """A producer and consumers, each on a node of its own, over one PFS directory."""
    net = world.net(1 + consumers)
    port = 7800 + os.getpid() % 100
    pfs = world.dir("pfs")
    secret = cluster_secret(world)      # first: a test's own secret_file overrides it
    prod = world.mount("listen=%s:%d,peer_timeout=3%s%s" % (net.addr(0), port, secret, opts),
                       pfs=pfs, mnt=world.dir("prod"), prefix=net.prefix(0))
    cons = []
    for i in range(consumers):
        co = secret + (consumer_opts[i] if consumer_opts else opts)
        cons.append(world.mount("subscribe=%s:%d,peer_timeout=3,log_level=debug%s" % (net.addr(0), port, co),
                                pfs=pfs, mnt=world.dir("cons%d" % i), prefix=net.prefix(1 + i)))
    return net, prod, cons


def subscribed(prod, n):
    """At least n consumers are subscribed to the producer prod."""
    st = status(prod)
    return sum(1 for p in st["repl"]["peers"] if p["active"]) >= n


@pytest.fixture
def world():
    w = World()
    try:
        yield w
    finally:
        reports = w.cleanup()
    assert not reports, "the daemons' sanitizers, or a cleanup step, reported:\n" + "\n".join(reports)


@pytest.fixture
def mnt(world):
    """A fresh mount over an empty PFS directory, with default options."""
    return world.mount()
