"""The PFS side: flush at unmount, crash safety, backpressure, a failing PFS."""
import errno
import hashlib
import json
import os
import time

import pytest

from conftest import cluster, read, status, subscribed, wait_for, wait_version, write


def pfs_files(pfs):
    """Every file on the PFS under its final name; viperfs' own (staging, the
    producer's epoch) excluded."""
    out = {}
    for root, dirs, files in os.walk(pfs):
        dirs[:] = [d for d in dirs if d != ".viperfs-staging"]
        for name in files:
            if root == pfs and name == ".viperfs-epoch":
                continue
            p = os.path.join(root, name)
            out[os.path.relpath(p, pfs)] = read(p)
    return out


def state(path):
    return os.getxattr(path, "user.viperfs.state").decode()


def test_pfs_equals_mount_after_unmount(world):
    m = world.mount()
    expected = {}
    os.makedirs(m.path("run", "epoch-1"))
    for i in range(5):
        data = os.urandom((i + 1) * 700_000)
        rel = os.path.join("run", "epoch-1", "shard-%d.bin" % i)
        write(m.path(rel), data)
        expected[rel] = data
    write(m.path("run", "tmp"), b"x")
    os.replace(m.path("run", "tmp"), m.path("run", "final"))
    expected["run/final"] = b"x"
    os.symlink("epoch-1", m.path("run", "latest"))
    assert m.stop() == 0
    assert pfs_files(m.pfs) == expected
    assert os.readlink(m.pfs_path("run", "latest")) == "epoch-1"
    assert os.listdir(m.pfs_path(".viperfs-staging")) == []
    assert "everything is on the PFS" in m.read_log()


def test_kill9_mid_flush_leaves_no_partial_file(world):
    # 4 MB/s to the PFS: a 24 MiB file takes ~6 s, so we can kill it midway
    m = world.mount("flush_bw=4M")
    small = {"small-%d" % i: os.urandom(100_000) for i in range(3)}
    for name, data in small.items():
        write(m.path(name), data)
    for name in small:
        wait_for(lambda: state(m.path(name)) == "flushed", 60, name + " flushed", 0.02)
    big = os.urandom(24 << 20)
    write(m.path("big.pt"), big)
    wait_for(lambda: state(m.path("big.pt")) == "flushing", 60, "big.pt flushing", 0.02)
    staging = m.pfs_path(".viperfs-staging")
    wait_for(lambda: any(os.path.getsize(os.path.join(staging, f)) > 0
                         for f in os.listdir(staging)), 60, "staging file growing", 0.02)
    m.kill9()
    on_pfs = pfs_files(m.pfs)
    # no partial file under a final name; the flushed ones are complete
    assert "big.pt" not in on_pfs
    for name, data in small.items():
        assert on_pfs[name] == data
    assert os.listdir(staging) != []            # the partial one is only in staging
    m2 = world.mount(pfs=m.pfs, mnt=m.mnt)
    assert sorted(os.listdir(m2.mnt)) == sorted(small)
    for name, data in small.items():
        assert read(m2.path(name)) == data
    assert os.listdir(staging) == []            # leftovers cleared at start
    assert "partial file" in m2.read_log()


def test_cache_full_blocks_then_enospc_and_loses_nothing(world):
    pfs = world.make_tmpfs("pfs", "256m")
    m = world.mount("ram_cache=32M,cache_wait=1.5", pfs=pfs)
    kept = os.urandom(8 << 20)
    write(m.path("kept.bin"), kept)
    m.flush()
    world.set_readonly(pfs, True)               # nothing more can be flushed
    committed = os.urandom(12 << 20)
    write(m.path("committed.bin"), committed)    # fits, stays dirty in RAM
    t0 = time.monotonic()
    with pytest.raises(OSError) as e:
        write(m.path("too-big.bin"), os.urandom(40 << 20))
    blocked = time.monotonic() - t0
    assert e.value.errno == errno.ENOSPC
    assert blocked >= 1.4                       # it waited (bounded) first
    # nothing committed was dropped to make room
    assert read(m.path("committed.bin")) == committed
    assert read(m.path("kept.bin")) == kept     # evicted if needed, re-read from PFS
    st = status(m)
    assert st["ram"]["enospc"] >= 1 and st["ram"]["used"] <= st["ram"]["budget"]
    os.unlink(m.path("too-big.bin"))
    world.set_readonly(pfs, False)
    m.flush()
    assert read(os.path.join(pfs, "committed.bin")) == committed
    assert not os.path.exists(os.path.join(pfs, "too-big.bin"))


def test_pfs_goes_readonly_then_recovers(world):
    pfs = world.make_tmpfs("pfs", "128m")
    m = world.mount("flush_retry_max=0.5", pfs=pfs)
    write(m.path("before"), b"before")
    m.flush()
    world.set_readonly(pfs, True)
    data = os.urandom(5 << 20)
    write(m.path("during"), data)
    os.mkdir(m.path("dir-during"))
    write(m.path("dir-during", "f"), b"f")
    assert read(m.path("during")) == data          # served from the cache
    wait_for(lambda: status(m)["flush"]["retries"] >= 2, 60, "flush retries", 0.02)
    st = status(m)
    assert st["flush"]["last_error"] == "Read-only file system"
    assert state(m.path("during")) != "flushed"
    assert "retrying in" in m.read_log() and "keeping it in cache" in m.read_log()
    world.set_readonly(pfs, False)
    m.flush()
    assert read(os.path.join(pfs, "during")) == data
    assert read(os.path.join(pfs, "dir-during", "f")) == b"f"
    assert state(m.path("during")) == "flushed"
    assert "flushing resumed" in m.read_log()


def test_viperctl_flush_status_versions(world):
    m = world.mount("flush_interval=1h")
    write(m.path("a"), b"1")
    write(m.path("a"), b"22")
    vs = json.loads(m.ctl("versions", m.mnt, "--json").stdout)
    assert vs == [{"path": "a", "version": 2, "size": 2, "state": "cached", "writers": 0, "tiers": ["ram"]}]
    assert not os.path.exists(m.pfs_path("a"))
    r = m.ctl("flush", m.mnt)
    assert "flushed" in r.stdout
    assert read(m.pfs_path("a")) == b"22"
    st = status(m)
    assert st["flush"]["skipped_versions"] == 1 and st["flush"]["flushed_versions"] == 1
    r = m.ctl("flush", "/tmp", check=False)
    assert r.returncode == 3 and "not inside a viperfs mount" in r.stderr


def test_flush_bw_caps_pfs_write_rate(world):
    m = world.mount("flush_bw=8M")
    data = os.urandom(16 << 20)
    write(m.path("paced"), data)
    t0 = time.monotonic()
    m.flush()
    took = time.monotonic() - t0
    # 16 MiB at 8 MiB/s with a 1 MiB burst: at least ~1.8 s (a lower bound only)
    assert took >= 1.7
    assert hashlib.sha256(read(m.pfs_path("paced"))).digest() == hashlib.sha256(data).digest()


def test_flushed_versions_are_evicted_and_read_back(world):
    m = world.mount("ram_cache=32M,cache_wait=20")
    blobs = {}
    for i in range(5):                      # 60 MiB through a 32 MiB cache
        blobs[i] = os.urandom(12 << 20)
        write(m.path("ckpt-%d" % i), blobs[i])
    st = status(m)
    assert st["evictions"] >= 2
    assert st["ram"]["used"] <= st["ram"]["budget"]
    for i, data in blobs.items():            # evicted ones come back from the PFS
        assert read(m.path("ckpt-%d" % i)) == data


def test_flush_waits_for_the_consumers_then_goes(world):
    """flush_hold: a version reaches the PFS once every live consumer holds it
    (the transfer first); a forced flush does not wait; with no consumer
    there is nothing to wait for."""
    net, prod, (cons,) = cluster(world, consumers=1, opts=",flush_hold=120,peer_timeout=120")
    wait_for(lambda: subscribed(prod, 1), 30, "subscribed")
    write(prod.path("first.pt"), b"1" * 100_000)
    wait_version(cons.path("first.pt"), 0)
    wait_for(lambda: state(prod.path("first.pt")) == "flushed", 60, "first flushed")
    net.link(1, False)                      # the consumer can't fetch; still live for 120 s
    data = os.urandom(3 << 20)
    write(prod.path("held.pt"), data)
    wait_for(lambda: status(prod)["flush"]["holding"] == 1, 30, "the flush holding")
    assert state(prod.path("held.pt")) != "flushed"
    assert not os.path.exists(prod.pfs_path("held.pt"))
    net.link(1, True)                       # it fetches, says DONE: the flush goes
    assert wait_version(cons.path("held.pt"), 0) == 1
    wait_for(lambda: state(prod.path("held.pt")) == "flushed", 60, "held.pt flushed")
    assert read(prod.pfs_path("held.pt")) == data
    st = status(prod)["flush"]
    assert st["holding"] == 0 and st["held_versions"] >= 1 and st["hold_timeouts"] == 0
    # a forced flush goes at once, with the consumer cut off
    net.link(1, False)
    write(prod.path("forced.pt"), b"f" * 50_000)
    prod.flush()
    assert read(prod.pfs_path("forced.pt")) == b"f" * 50_000
    net.link(1, True)
    wait_version(cons.path("forced.pt"), 0)


def test_flush_hold_runs_out(world):
    net, prod, (cons,) = cluster(world, consumers=1, opts=",flush_hold=1,peer_timeout=120")
    wait_for(lambda: subscribed(prod, 1), 30, "subscribed")
    net.link(1, False)
    write(prod.path("late.pt"), b"x" * 200_000)
    wait_for(lambda: state(prod.path("late.pt")) == "flushed", 60, "flushed when the hold ran out")
    assert status(prod)["flush"]["hold_timeouts"] == 1
    net.link(1, True)
    wait_version(cons.path("late.pt"), 0)
