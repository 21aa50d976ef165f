"""A real distributed file system as the PFS: a one-brick GlusterFS volume.

    g = Gluster(world, net, server=0)     # glusterd and the brick on node 0
    pfs = g.client(1)                     # a FUSE client mount on node 1

The brick is served from its own network namespace (node `server` of a
conftest.Net); every client mount is another node's, so bytes a client
reads came over TCP from the brick process, not from the writer's page
cache.  Everything runs with `nsenter --net=` (not `ip netns exec`, which
would make a private mount namespace and hide the client mounts).

glusterd gets a private working directory, socket and pid file, so tests
and benchmarks never touch the machine's /var/lib/glusterd; its log and the
bricks' go to the world's directory.  The volume's metadata caches are set
coherent (md-cache off, clients with zero attribute and entry timeouts), so
a poller on another node sees a size as soon as the brick has it: the
baselines are not made slower by a cache a careful admin would turn off.

cleanup() (registered with the world, so it runs even after a failure)
unmounts the clients and kills, by PID, the client processes, the brick
and glusterd it started; nothing else.
"""
import os
import shutil
import signal
import subprocess
import time
import xml.etree.ElementTree as ET

GLUSTERD_VOL = "/etc/glusterfs/glusterd.vol"


def available():
    """'' if GlusterFS can run here, else why not."""
    for exe in ("glusterd", "glusterfs", "gluster"):
        if not shutil.which(exe) and not os.path.exists("/usr/sbin/" + exe):
            return "%s is not installed (Debian: glusterfs-server, glusterfs-client)" % exe
    if not os.path.exists(GLUSTERD_VOL):
        return GLUSTERD_VOL + " is missing"
    return ""


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _kill(pid, timeout=10):
    """SIGTERM, then SIGKILL; waits until pid is gone (a zombie of ours counts as gone)."""
    if pid <= 0 or not _pid_alive(pid):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            try:
                with open("/proc/%d/stat" % pid) as f:
                    if f.read().split(")")[-1].split()[0] == "Z":
                        return
            except OSError:
                return
            time.sleep(0.05)


class Gluster:
    """glusterd, one volume with one brick, and client mounts on other nodes."""

    count = 0

    # coherent metadata: a poller on another node sees sizes and mtimes at once
    OPTIONS = (("performance.md-cache-timeout", "0"),
               ("performance.stat-prefetch", "off"),
               ("network.ping-timeout", "5"))

    def __init__(self, world, net, server, name=None, timeout=60, options=None):
        Gluster.count += 1
        self.world, self.net, self.server = world, net, server
        self.name = name or "vp%d%d" % (os.getpid(), Gluster.count)
        self.base = world.dir("gluster-" + self.name)
        self.addr = net.addr(server)
        self.options = self.OPTIONS if options is None else options
        self.clients = []       # (mount point, pid file)
        self.brick_pids = []
        for d in ("wd", "brick", "log", "run"):
            os.makedirs(os.path.join(self.base, d), exist_ok=True)
        self.sock = os.path.join(self.base, "run", "glusterd.socket")
        self.pidfile = os.path.join(self.base, "run", "glusterd.pid")
        world.on_cleanup(self.cleanup)
        self._start(timeout)

    def _ns(self, i):
        return self.net.prefix(i)

    def cli(self, *args, check=True, timeout=60):
        """The gluster CLI against our glusterd (its private socket)."""
        r = subprocess.run([*self._ns(self.server), "gluster", "--mode=script",
                            "--glusterd-sock=" + self.sock,
                            "--log-file=" + os.path.join(self.base, "log", "cli.log"), *args],
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError("gluster %s: %s%s\n%s" % (" ".join(args), r.stdout, r.stderr,
                                                         self.logs()))
        return r

    def _start(self, timeout):
        vol = os.path.join(self.base, "glusterd.vol")
        with open(GLUSTERD_VOL) as f:
            text = f.read()
        with open(vol, "w") as f:
            f.write(text.replace("/var/lib/glusterd", os.path.join(self.base, "wd")).replace(
                "end-volume", "    option glusterd-sockfile %s\n    option run-directory %s\nend-volume"
                % (self.sock, os.path.join(self.base, "run"))))
        # not -S: that names the process's own management socket, which would take the CLI's
        subprocess.run([*self._ns(self.server), "glusterd", "-f", vol,
                        "-p", self.pidfile, "-l", os.path.join(self.base, "log", "glusterd.log")],
                       check=True, capture_output=True, timeout=timeout)
        t_end = time.monotonic() + timeout
        while self.cli("volume", "list", check=False).returncode != 0:
            if time.monotonic() > t_end:
                raise RuntimeError("glusterd did not answer:\n" + self.logs())
            time.sleep(0.1)
        brick = os.path.join(self.base, "brick")
        # force: the brick is on the root file system, which gluster warns of
        self.cli("volume", "create", self.name, "%s:%s" % (self.addr, brick), "force")
        for opt, val in self.options:
            self.cli("volume", "set", self.name, opt, val)
        self.cli("volume", "start", self.name)
        self._find_bricks()

    def _find_bricks(self):
        """Our brick processes, as glusterd reports them."""
        out = self.cli("volume", "status", self.name, "--xml", check=False).stdout
        try:
            root = ET.fromstring(out)
        except ET.ParseError:
            return
        for node in root.iter("node"):
            pid = node.findtext("pid", "")
            if node.findtext("path", "").startswith(self.base) and pid.isdigit() and int(pid) > 0:
                if int(pid) not in self.brick_pids:
                    self.brick_pids.append(int(pid))

    def client(self, node, where=None, timeout=60):
        """Mounts the volume on node (a FUSE client in its namespace); returns the path."""
        mnt = where or self.world.dir("gluster-%s-c%d-%d" % (self.name, node, len(self.clients)))
        pidf = os.path.join(self.base, "run", "client-%d.pid" % len(self.clients))
        subprocess.run([*self._ns(node), "glusterfs", "--volfile-server=" + self.addr,
                        "--volfile-id=" + self.name, "--pid-file=" + pidf,
                        "--attribute-timeout=0", "--entry-timeout=0", "--negative-timeout=0",
                        "--log-file=" + os.path.join(self.base, "log",
                                                     "client-%d.log" % len(self.clients)),
                        mnt], check=True, capture_output=True, timeout=timeout)
        self.clients.append((mnt, pidf))
        t_end = time.monotonic() + timeout
        while not self._mounted(mnt):
            if time.monotonic() > t_end:
                raise RuntimeError("the GlusterFS client on node %d did not mount:\n%s"
                                   % (node, self.logs()))
            time.sleep(0.05)
        return mnt

    @staticmethod
    def _mounted(path):
        path = os.path.realpath(path)
        with open("/proc/self/mounts") as f:
            return any(l.split()[1] == path and l.split()[2] == "fuse.glusterfs" for l in f)

    def brick_path(self, *parts):
        """The brick's own copy of a file (what the server stores)."""
        return os.path.join(self.base, "brick", *parts)

    def stop_brick(self):
        """Kills the brick (the server's data process): clients get ENOTCONN."""
        self._find_bricks()
        for pid in self.brick_pids:
            _kill(pid)

    def start_brick(self):
        """Restarts a killed brick."""
        self.cli("volume", "start", self.name, "force")
        self._find_bricks()

    def logs(self):
        out = []
        d = os.path.join(self.base, "log")
        for name in sorted(os.listdir(d)) if os.path.isdir(d) else ():
            try:
                with open(os.path.join(d, name), errors="replace") as f:
                    tail = f.read()[-3000:]
            except OSError:
                continue
            out.append("== %s ==\n%s" % (name, tail))
        return "\n".join(out)

    def cleanup(self):
        for mnt, pidf in reversed(self.clients):
            if self._mounted(mnt):
                subprocess.run(["umount", mnt], capture_output=True)
            if self._mounted(mnt):
                subprocess.run(["umount", "-l", mnt], capture_output=True)
            _kill(_read_pid(pidf))
        self.clients = []
        self._find_bricks_quietly()
        for pid in self.brick_pids:
            self._drop_brick_socket(pid)
            _kill(pid)
        _kill(_read_pid(self.pidfile))

    @staticmethod
    def _drop_brick_socket(pid):
        """The brick's socket in /var/run/gluster (glusterd names it there whatever run-directory says)."""
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            return
        for i, a in enumerate(argv[:-1]):
            if a == b"-S" and argv[i + 1].startswith(b"/var/run/gluster/") and argv[i + 1].endswith(b".socket"):
                try:
                    os.unlink(argv[i + 1])
                except OSError:
                    pass

    def _find_bricks_quietly(self):
        try:
            if _pid_alive(_read_pid(self.pidfile)):
                self._find_bricks()
        except Exception:
            pass
