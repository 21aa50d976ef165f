"""GlusterFS as the PFS: a volume served from a node of its own, viperfs on
other nodes flushing to their own GlusterFS client mounts, and a third node's
client reading what was flushed (bytes that came over TCP from the brick)."""
import hashlib
import os

import pytest

from conftest import cluster_secret, read, status, wait_for, wait_version, write
import gluster

pytestmark = pytest.mark.skipif(bool(gluster.available()), reason=gluster.available() or "x")


def sha(b):
    return hashlib.sha256(b).hexdigest()


def tree(root):
    """Every regular file and symlink under root, viperfs' own names left out."""
    out = {}
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if not x.startswith(".viperfs-") and x != ".glusterfs"]
        for name in files:
            if name.startswith(".viperfs-"):
                continue
            p = os.path.join(d, name)
            rel = os.path.relpath(p, root)
            out[rel] = ("->" + os.readlink(p)) if os.path.islink(p) else sha(read(p))
        for name in dirs:
            p = os.path.join(d, name)
            if os.path.islink(p):
                out[os.path.relpath(p, root)] = "->" + os.readlink(p)
    return out


@pytest.fixture
def gl(world):
    """Node 0 serves the volume; nodes 1 and 2 are for viperfs and readers."""
    net = world.net(4)
    return net, gluster.Gluster(world, net, server=0)


def test_flush_lands_on_glusterfs_and_another_node_reads_it(world, gl):
    net, g = gl
    pfs1, pfs2 = g.client(1), g.client(2)
    m = world.mount(pfs=pfs1, mnt=world.dir("prod"), prefix=net.prefix(1))
    expected = {}
    os.makedirs(m.path("run", "epoch-1"))
    for i in range(3):
        data = os.urandom((i + 1) << 20)
        write(m.path("run", "epoch-1", "shard-%d.pt" % i), data)
        expected["run/epoch-1/shard-%d.pt" % i] = sha(data)
    write(m.path("run", "tmp"), b"final bytes")
    os.replace(m.path("run", "tmp"), m.path("run", "final"))
    expected["run/final"] = sha(b"final bytes")
    os.symlink("epoch-1", m.path("run", "latest"))
    expected["run/latest"] = "->epoch-1"
    m.flush()
    # the other node's client, and the brick itself, hold exactly that
    assert tree(pfs2) == expected
    assert tree(g.brick_path()) == expected
    assert os.listdir(os.path.join(pfs2, ".viperfs-staging")) == []
    # a change after the flush: removed and renamed on the PFS too
    os.unlink(m.path("run", "epoch-1", "shard-0.pt"))
    os.rename(m.path("run", "final"), m.path("run", "final-2"))
    m.flush()
    del expected["run/epoch-1/shard-0.pt"]
    expected["run/final-2"] = expected.pop("run/final")
    assert tree(pfs2) == expected
    assert m.stop() == 0
    assert "everything is on the PFS" in m.read_log()


def test_a_mount_on_another_node_loads_what_was_flushed(world, gl):
    net, g = gl
    m = world.mount(pfs=g.client(1), mnt=world.dir("prod"), prefix=net.prefix(1))
    blobs = {"a.pt": os.urandom(3 << 20), "d/b.npy": os.urandom(1 << 20)}
    os.mkdir(m.path("d"))
    for rel, data in blobs.items():
        write(m.path(rel), data)
    assert m.stop() == 0            # the unmount flushes everything
    # a new node, its own client of the volume: the files come from the brick
    m2 = world.mount(pfs=g.client(2), mnt=world.dir("other"), prefix=net.prefix(2))
    for rel, data in blobs.items():
        assert read(m2.path(rel)) == data
        assert os.stat(m2.path(rel)).st_size == len(data)
    write(m2.path("d", "b.npy"), b"replaced")     # and it can go on from there
    m2.flush()
    assert read(os.path.join(g.client(3), "d", "b.npy")) == b"replaced"


def test_a_dead_brick_keeps_versions_in_cache_until_it_is_back(world, gl):
    net, g = gl
    pfs1, pfs2 = g.client(1), g.client(2)
    m = world.mount("flush_retry_max=0.5", pfs=pfs1, mnt=world.dir("prod"), prefix=net.prefix(1))
    write(m.path("before"), b"before")
    m.flush()
    g.stop_brick()
    data = os.urandom(4 << 20)
    write(m.path("during.pt"), data)             # the close commits to the cache
    assert read(m.path("during.pt")) == data
    assert read(m.path("before")) == b"before"
    wait_for(lambda: status(m)["flush"]["retries"] >= 2, 60, "flush retries", 0.05)
    st = status(m)
    assert st["flush"]["last_error"], st["flush"]
    assert os.getxattr(m.path("during.pt"), "user.viperfs.state").decode() != "flushed"
    assert "keeping it in cache" in m.read_log()
    g.start_brick()
    m.flush()
    assert read(os.path.join(pfs2, "during.pt")) == data
    assert os.getxattr(m.path("during.pt"), "user.viperfs.state").decode() == "flushed"
    assert "flushing resumed" in m.read_log()


def test_producer_and_consumer_each_on_their_own_glusterfs_client(world, gl):
    """The set-up of a cluster: every node mounts the volume, viperfs on top."""
    net, g = gl
    secret = cluster_secret(world)
    port = 7700 + os.getpid() % 100
    prod = world.mount("listen=%s:%d%s" % (net.addr(1), port, secret), pfs=g.client(1),
                       mnt=world.dir("prod"), prefix=net.prefix(1))
    cons = world.mount("subscribe=%s:%d%s" % (net.addr(1), port, secret), pfs=g.client(2),
                       mnt=world.dir("cons"), prefix=net.prefix(2))
    wait_for(lambda: sum(p["active"] for p in status(prod)["repl"]["peers"]) >= 1, 30, "subscribed")
    data = os.urandom(6 << 20)
    write(prod.path("ckpt.pt"), data)
    wait_version(cons.path("ckpt.pt"), 0)
    assert read(cons.path("ckpt.pt")) == data     # over the fabric, not from the PFS
    prod.flush()
    # the consumer never writes to the PFS; the bytes there are the producer's
    assert read(os.path.join(g.client(3), "ckpt.pt")) == data
    assert status(cons)["flush"]["flushed_versions"] == 0
