"""The chaos test: a producer writes, three consumers read and hash-check, and
meanwhile daemons are killed and restarted, links cut and degraded, and the
cache filled.  Short in `make test` (fixed seed); `make chaos` runs it long
with a random seed (CHAOS_SECONDS, CHAOS_SEED).

Invariants, checked on every read and at the end:
- no reader ever read bytes that were not a committed version (torn: 0);
- once the faults stop, every consumer holds the producer's latest version
  of every file within CONVERGE_S;
- every version an fsync covered (fsync=peers:1) is still there afterwards,
  or a later one (lost: 0), and the PFS ends with the producer's bytes;
- no mount hangs: a stat and a read on every mount, with a time-out, at
  every step.
"""
import collections
import errno
import hashlib
import os
import random
import subprocess
import sys
import time

from conftest import cluster, read, status, subscribed, wait_for
import chaos_reader

HERE = os.path.dirname(os.path.abspath(__file__))
CONVERGE_S = 30
PROBE_S = 10


def journal_of(path):
    """path -> [hashes in the order they were tried], path -> last fsync-covered hash."""
    tried, covered = collections.defaultdict(list), {}
    with open(path) as f:
        for line in f:
            w = line.split()
            if len(w) >= 3 and w[0] == "pending":
                tried[w[1]].append(w[2])
            elif len(w) >= 3 and w[0] == "done":
                covered[w[1]] = w[2]
    return tried, covered


def probe(m):
    """A stat and a read of the mount, each with a time-out: True if neither hung."""
    for cmd in (["stat", m.mnt], ["sh", "-c", "cat %s/model.pt > /dev/null 2>&1; true" % m.mnt]):
        try:
            subprocess.run(["timeout", str(PROBE_S)] + cmd, capture_output=True, timeout=PROBE_S + 5)
        except subprocess.TimeoutExpired:
            return False
    return True


class Chaos:
    def __init__(self, world, seed):
        self.world, self.rng = world, random.Random(seed)
        self.seed = seed
        self.net, self.prod, self.cons = cluster(
            world, consumers=3,
            opts=",ram_cache=192M,cache_wait=1,fsync=peers:1,flush_bw=16M",
            consumer_opts=[",ram_cache=192M"] * 3)
        wait_for(lambda: subscribed(self.prod, 3), timeout=60, what="three consumers")
        self.journal = os.path.join(world.base, "journal")
        self.writer = None
        self.readers = []
        self.faults = collections.Counter()
        self.hangs = 0
        self.impaired = {}      # node -> "down" / "netem"
        for i, c in enumerate(self.cons):
            log = os.path.join(world.base, "reader%d.log" % i)
            self.readers.append((c, log, self.spawn_reader(c, log)))

    def spawn_writer(self):
        self.writer = self.world.spawn(
            [sys.executable, os.path.join(HERE, "chaos_writer.py"), self.prod.mnt, self.journal,
             str(self.rng.randrange(1 << 30))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=HERE)

    def spawn_reader(self, c, log):
        return self.world.spawn([sys.executable, os.path.join(HERE, "chaos_reader.py"), c.mnt, log],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=HERE)

    def veth(self, i):
        return "%sp%d" % (self.net.tag, i)

    def netem(self, i, on):
        """Node i's link loses 5% of its packets both ways and slows down: tc netem
        where the kernel has it; else (CONFIG_NET_SCH_NETEM unset, as on the
        development VM) random drops by nftables and a tbf rate cap with queueing."""
        ns = ["ip", "netns", "exec", self.net.names[i]]
        tc = ns + ["tc", "qdisc"]
        if not on:
            subprocess.run(tc + ["del", "dev", self.veth(i), "root"], capture_output=True)
            subprocess.run(ns + ["nft", "delete", "table", "inet", "chaos"], capture_output=True)
            return
        if subprocess.run(tc + ["add", "dev", self.veth(i), "root", "netem", "loss", "5%",
                                "delay", "20ms", "5ms"], capture_output=True).returncode == 0:
            return
        subprocess.run(tc + ["add", "dev", self.veth(i), "root", "tbf", "rate", "50mbit",
                             "burst", "64kb", "latency", "50ms"], check=True)
        subprocess.run(ns + ["nft", "add", "table", "inet", "chaos"], check=True)
        for hook in ("input", "output"):
            subprocess.run(ns + ["nft", "add", "chain", "inet", "chaos", hook,
                                 "{ type filter hook %s priority 0; }" % hook], check=True)
            subprocess.run(ns + ["nft", "add", "rule", "inet", "chaos", hook,
                                 "numgen", "random", "mod", "100", "<", "5", "drop"], check=True)

    def fill_cache(self):
        """Writes until the cache says ENOSPC (or 256 MiB), then removes the file."""
        chunk = os.urandom(8 << 20)
        try:
            fd = os.open(self.prod.path("fill.bin"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError:
            return
        try:
            for _ in range(32):
                os.write(fd, chunk)
        except OSError as e:
            assert e.errno in (errno.ENOSPC, errno.ENOTCONN, errno.EIO), e
        try:
            os.close(fd)
        except OSError as e:
            assert e.errno in (errno.ENOSPC, errno.ENOTCONN, errno.EIO), e
        try:
            os.unlink(self.prod.path("fill.bin"))
        except OSError:
            pass

    def heal(self, i):
        what = self.impaired.pop(i, None)
        if what == "down":
            self.net.link(i, True)
        elif what == "netem":
            self.netem(i, False)

    def step(self):
        kind = self.rng.choice(["kill_consumer", "kill_producer", "cut", "netem", "fill", "heal", "heal"])
        i = self.rng.randrange(4)       # 0: the producer's node
        if kind == "kill_consumer":
            c = self.cons[i % 3]
            c.kill9()
            time.sleep(self.rng.uniform(0.2, 1.0))
            self.heal(1 + i % 3)    # a consumer binds where its producer is reached: it needs a route
            c.start(timeout=60)
        elif kind == "kill_producer":
            self.prod.kill9()
            time.sleep(self.rng.uniform(0.2, 1.0))
            self.prod.start(timeout=60)
        elif kind == "cut" and i not in self.impaired:
            self.net.link(i, False)
            self.impaired[i] = "down"
        elif kind == "netem" and i not in self.impaired:
            self.netem(i, True)
            self.impaired[i] = "netem"
        elif kind == "fill":
            self.fill_cache()
        elif kind == "heal" and self.impaired:
            self.heal(self.rng.choice(sorted(self.impaired)))
        else:
            return
        self.faults[kind] += 1

    def keep_loads_running(self):
        if self.writer is None or self.writer.poll() is not None:
            if self.writer is not None:
                self.faults["writer aborted (torch.save on a failed write)"] += 1
            self.spawn_writer()
        for k, (c, log, p) in enumerate(self.readers):
            if p.poll() is not None:
                self.readers[k] = (c, log, self.spawn_reader(c, log))

    def run(self, seconds):
        self.spawn_writer()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.step()
            self.keep_loads_running()
            for m in [self.prod] + self.cons:
                if not probe(m):
                    self.hangs += 1
            time.sleep(self.rng.uniform(0.5, 2.0))
        for i in list(self.impaired):
            self.heal(i)
        self.writer.terminate()
        self.writer.wait()

    def converge(self):
        """Seconds until every consumer has the producer's bytes of every file."""
        t0 = time.monotonic()
        wait_for(lambda: subscribed(self.prod, 3), timeout=CONVERGE_S, what="three consumers again")

        def same():
            for path in chaos_reader.FILES:
                if not os.path.exists(self.prod.path(path)):
                    continue
                want = read(self.prod.path(path))
                for c in self.cons:
                    try:
                        if read(c.path(path)) != want:
                            return False
                    except OSError:
                        return False
            return True
        try:
            wait_for(same, timeout=CONVERGE_S, interval=0.2, what="the consumers converge")
        except AssertionError:
            print("\nchaos: not converged:\n" + self.where())
            raise
        return time.monotonic() - t0

    def where(self):
        """Each node's version and hash of each file (for a failure's report)."""
        lines = []
        for path in chaos_reader.FILES:
            for name, m in [("producer", self.prod)] + [("consumer%d" % i, c) for i, c in enumerate(self.cons)]:
                try:
                    v = os.getxattr(m.path(path), "user.viperfs.version").decode()
                    h = hashlib.sha256(read(m.path(path))).hexdigest()[:12]
                except OSError as e:
                    v, h = "-", e.strerror
                lines.append("  %-10s %-12s version %s %s" % (name, path, v, h))
        return "\n".join(lines)

    def check(self, converged_s):
        tried, covered = journal_of(self.journal)
        allowed = {p: set(h) for p, h in tried.items()}
        torn, reads = [], 0
        for c, log, p in self.readers:
            p.terminate()
            p.wait()
            with open(log) as f:
                for line in f:
                    w = line.split()
                    if len(w) != 2:
                        continue
                    reads += 1
                    if w[1] not in allowed.get(w[0], ()):
                        torn.append((c.mnt, w[0], w[1]))
        lost = []
        for path, h in covered.items():
            final = hashlib.sha256(read(self.prod.path(path))).hexdigest()
            order = tried[path]
            if final not in order or order.index(final) < order.index(h):
                lost.append(path)
        self.prod.flush()
        for path in chaos_reader.FILES:
            if os.path.exists(self.prod.path(path)):
                assert read(self.prod.pfs_path(path)) == read(self.prod.path(path)), path
        versions = sum(len(h) for h in tried.values())
        print("\nchaos: seed %d, %d s: faults %s; %d versions tried (%d fsync-covered paths), "
              "%d checked reads; torn reads %d, lost versions %d, hung probes %d; converged in %.1f s"
              % (self.seed, self.seconds, dict(self.faults), versions, len(covered), reads,
                 len(torn), len(lost), self.hangs, converged_s))
        assert versions > 0 and reads > 0
        assert not torn, torn[:5]
        assert not lost, lost
        assert self.hangs == 0
        assert converged_s <= CONVERGE_S


def test_chaos(world):
    seed = os.environ.get("CHAOS_SEED", "1234")
    seed = random.randrange(1 << 31) if seed == "random" else int(seed)
    seconds = int(os.environ.get("CHAOS_SECONDS", "40"))
    print("\nchaos: seed %d (CHAOS_SEED=%d to run it again)" % (seed, seed))
    chaos = Chaos(world, seed)
    chaos.seconds = seconds
    chaos.run(seconds)
    chaos.check(chaos.converge())
