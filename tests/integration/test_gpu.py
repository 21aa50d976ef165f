"""The GPU tier on a node without a GPU: off and said so; and its placement, on host memory."""
import json
import os
import subprocess
import sys

from conftest import (VIPERCTL, cluster, cluster_secret, read, status, subscribed, wait_for,
                      wait_version, write)

HERE = os.path.dirname(os.path.abspath(__file__))


def test_gpu_cache_without_a_gpu_is_off_and_says_why(world):
    m = world.mount("gpu_cache=256M")
    gpu = status(m)["tiers"]["gpu"]
    assert gpu["state"] == "off" and gpu["reason"]
    log = m.read_log()
    assert log.count("GPU tier off: ") == 1 and gpu["reason"] in log
    data = os.urandom(3 << 20)
    write(m.path("model.pt"), data)
    assert read(m.path("model.pt")) == data
    r = m.ctl("gpu-export", m.path("model.pt"), check=False)
    assert r.returncode == 1 and "GPU tier is off" in r.stderr
    assert "gpu tier       off: " + gpu["reason"] in m.ctl("status", m.mnt).stdout


def test_placement_and_leases_on_the_host_memory_tier(world):
    m = world.mount("gpu_cache=64M,gpu_tier=ram")
    v1, v2, v3 = os.urandom(3 << 20), os.urandom(5 << 20), os.urandom(2 << 20)
    write(m.path("model.pt"), v1)
    # the mirror is made by the tier's worker after the commit: no event to wait on
    wait_for(lambda: status(m)["tiers"]["gpu"]["used"] == len(v1), what="the mirror")
    gpu = status(m)["tiers"]["gpu"]
    assert gpu["state"] == "on" and gpu["tier"] == "ram" and gpu["files"] == 1
    write(m.path("model.pt"), v2)       # the newest replaces the older
    wait_for(lambda: status(m)["tiers"]["gpu"]["used"] == len(v2), what="the newer mirror")
    holder = world.spawn([VIPERCTL, "gpu-export", m.path("model.pt"), "--hold"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    exp = json.loads(holder.stdout.readline())
    assert exp["version"] == 2 and exp["size"] == len(v2) and len(exp["handle"]) == 128
    # a version switch does not pull the memory from under the holder
    write(m.path("model.pt"), v3)
    wait_for(lambda: status(m)["tiers"]["gpu"]["used"] == len(v2) + len(v3), what="both kept")
    assert status(m)["tiers"]["gpu"]["leased"] == 1
    holder.stdin.close()                # the lease ends with the connection
    assert holder.wait(timeout=30) == 0
    wait_for(lambda: status(m)["tiers"]["gpu"]["used"] == len(v3), what="the lease released")
    assert read(m.path("model.pt")) == v3
    os.unlink(m.path("model.pt"))
    wait_for(lambda: status(m)["tiers"]["gpu"]["files"] == 0, what="the mirror forgotten")
    assert status(m)["tiers"]["gpu"]["used"] == 0
    r = m.ctl("gpu-export", m.path("nope.pt"), check=False)
    assert r.returncode == 1 and "No such file" in r.stderr


def test_the_posix_and_loader_suites_pass_with_the_gpu_tier(world):
    """gpu_cache set: with the tier off (no GPU here), and on (host memory)."""
    for extra in ("gpu_cache=256M", "gpu_cache=256M,gpu_tier=ram"):
        env = dict(os.environ, VIPERFS_EXTRA_OPTS=extra)
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            os.path.join(HERE, "test_posix.py"), os.path.join(HERE, "test_loaders.py")],
                           env=env, capture_output=True, text=True, timeout=600, cwd=HERE)
        assert r.returncode == 0, extra + "\n" + r.stdout[-3000:]


def test_the_relay_tests_pass_with_gpu_direct_on_every_node(world):
    """The relay chain and a dead relay rerun with GPU-direct on every node (gpu_tier=ram,
    gpu_direct=auto): relayed chunks, producer fallbacks and direct reads mix in one version."""
    env = dict(os.environ, VIPERFS_EXTRA_OPTS="gpu_cache=1G,gpu_tier=ram")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        os.path.join(HERE, "test_repl.py"), "-k", "relay_chain or dead_relay"],
                       env=env, capture_output=True, text=True, timeout=600, cwd=HERE)
    assert r.returncode == 0 and "2 passed" in r.stdout, r.stdout[-3000:]


def test_replicated_versions_reach_the_consumers_gpu_tier(world):
    """gpu_direct=off: the host-staged path; each chunk goes on to the tier as it arrives."""
    net, prod, (c1,) = cluster(world, consumers=1, opts=",gpu_cache=64M,gpu_tier=ram,gpu_direct=off")
    wait_for(lambda: subscribed(prod, 1), what="the consumer subscribed")
    data = os.urandom(3 << 20)
    write(prod.path("model.pt"), data)
    wait_version(c1.path("model.pt"), 0)
    # the consumer's tier got each chunk as it arrived: its mirror took that copy
    wait_for(lambda: status(c1)["tiers"]["gpu"]["files"] == 1, what="the consumer's mirror")
    gst = status(c1)["tiers"]["gpu"]
    assert gst["used"] == len(data) and gst["staged"] == 1 and gst["staged_bytes"] == len(data)
    wait_for(lambda: status(prod)["tiers"]["gpu"]["used"] == len(data), what="the producer's mirror")
    assert status(prod)["tiers"]["gpu"]["staged"] == 0     # the producer mirrors after its commit
    for m in (prod, c1):
        assert "host-staged path" in m.read_log() and "gpu_direct=off" in m.read_log()
        assert status(m)["repl"]["gpu_path"] == "host-staged"
    assert status(c1)["repl"]["bytes_gpu_direct"] == 0
    holder = world.spawn([VIPERCTL, "gpu-export", c1.path("model.pt")], stdout=subprocess.PIPE, text=True)
    exp = json.loads(holder.stdout.readline())
    assert exp["version"] == 1 and exp["size"] == len(data)
    assert holder.wait(timeout=30) == 0
    # a new version whose chunks are half unchanged: reused chunks are staged too
    data2 = data[:2 << 20] + os.urandom(1 << 20)
    write(prod.path("model.pt"), data2)
    wait_version(c1.path("model.pt"), 1)
    wait_for(lambda: status(c1)["tiers"]["gpu"]["staged"] == 2, what="the second staged mirror")
    gst = status(c1)["tiers"]["gpu"]
    assert gst["used"] == len(data2) and gst["files"] == 1 and gst["staged_bytes"] == 2 * len(data)
    assert read(c1.path("model.pt")) == data2


def test_gpu_direct_replication_on_the_host_memory_tier(world):
    """gpu_direct=auto (the default) with gpu_tier=ram, whose memory any provider registers:
    a late consumer's catch-up is served from the producer's complete GPU mirror, and the
    consumer's RMA reads land in its own tier before they reach its host cache."""
    net = world.net(2)
    port = 7800 + os.getpid() % 100
    pfs = world.dir("pfs")
    opts = ",gpu_cache=64M,gpu_tier=ram" + cluster_secret(world)
    # not flushed yet: the late consumer gets it from the producer, not from the PFS
    prod = world.mount("listen=%s:%d,peer_timeout=3,flush_interval=1h%s" % (net.addr(0), port, opts),
                       pfs=pfs, mnt=world.dir("prod"), prefix=net.prefix(0))
    data = os.urandom(3 << 20)
    write(prod.path("model.pt"), data)
    wait_for(lambda: status(prod)["tiers"]["gpu"]["used"] == len(data), what="the producer's mirror")
    c1 = world.mount("subscribe=%s:%d,peer_timeout=3,log_level=debug%s" % (net.addr(0), port, opts),
                     pfs=pfs, mnt=world.dir("cons0"), prefix=net.prefix(1))
    wait_version(c1.path("model.pt"), 0)
    assert status(c1)["repl"]["installed"] == 1
    # the hash of every chunk is checked on arrival: a wrong device offset would fail here
    assert read(c1.path("model.pt")) == data
    p = status(prod)["repl"]
    assert p["gpu_path"] == "direct" and p["gpu_versions_out"] == 1 and p["gpu_bytes_out"] == len(data)
    c = status(c1)["repl"]
    assert c["gpu_path"] == "direct" and c["bytes_gpu_direct"] == c["bytes_in"] == len(data)
    wait_for(lambda: status(c1)["tiers"]["gpu"]["files"] == 1, what="the consumer's mirror")
    gst = status(c1)["tiers"]["gpu"]
    assert gst["staged"] == 1 and gst["staged_bytes"] == len(data) and gst["used"] == len(data)
    for m in (prod, c1):
        assert "GPU-direct path" in m.read_log()
    assert "gpu path       direct; 3.0 MiB landed in the GPU tier" in c1.ctl("status", c1.mnt).stdout
    assert "gpu path       direct; 1 versions (3.0 MiB) served from GPU mirrors" in prod.ctl("status", prod.mnt).stdout
    # the next version: its changed chunk lands in the tier, the unchanged ones are copied there
    data2 = data[:2 << 20] + os.urandom(1 << 20)
    write(prod.path("model.pt"), data2)
    wait_version(c1.path("model.pt"), 1)
    assert read(c1.path("model.pt")) == data2
    c = status(c1)["repl"]
    assert c["bytes_gpu_direct"] == c["bytes_in"] and len(data) < c["bytes_in"] < len(data) + len(data2)
    wait_for(lambda: status(c1)["tiers"]["gpu"]["staged"] == 2, what="the second staged mirror")
    assert status(c1)["tiers"]["gpu"]["staged_bytes"] == len(data) + len(data2)
    # the producer's leases on its mirrors end with the consumers' DONE
    wait_for(lambda: status(prod)["tiers"]["gpu"]["leased"] == 0, what="the producer's leases released")


def test_a_version_evicted_from_ram_comes_back_from_the_gpu(world):
    m = world.mount("ram_cache=8M,ram_prefault=0,gpu_cache=64M,gpu_tier=ram")
    a, b = os.urandom(6 << 20), os.urandom(6 << 20)
    write(m.path("a.bin"), a)
    m.flush()
    wait_for(lambda: status(m)["tiers"]["gpu"]["used"] == len(a), what="a's mirror")
    write(m.path("b.bin"), b)          # 12 MiB in an 8 MiB cache: a, flushed, leaves RAM
    m.flush()
    wait_for(lambda: status(m)["evictions"] >= 1, what="an eviction")
    st = status(m)
    before = st["tiers"]["gpu"]
    # status says where each file's bytes sit: a in GPU memory and on the PFS, not in RAM
    assert [p["tiers"] for p in st["paths"] if p["path"] == "a.bin"] == [["gpu", "pfs"]]
    assert read(m.path("a.bin")) == a
    after = status(m)["tiers"]["gpu"]
    assert after["reads"] > before["reads"]
    assert after["read_bytes"] - before["read_bytes"] == len(a)


def test_gpu_direct_survives_a_producer_killed_mid_transfer(world):
    """The producer dies while a consumer's reads land in its GPU tier: the consumer keeps
    its last complete version, in RAM and in its tier, and the next producer's versions
    land GPU-direct again."""
    opts = ",ram_cache=3G,ram_prefault=0,repl_stream=0,gpu_cache=2G,gpu_tier=ram"
    net, prod, (c1,) = cluster(world, consumers=1, opts=opts)
    wait_for(lambda: subscribed(prod, 1), what="subscribed")
    v1 = os.urandom(2 << 20)
    write(prod.path("m.bin"), v1)
    wait_version(c1.path("m.bin"), 0)
    wait_for(lambda: status(c1)["tiers"]["gpu"]["files"] == 1, what="v1 in the consumer's tier")
    blob = os.urandom(1 << 20) * 768
    write(prod.path("m.bin"), blob)
    wait_for(lambda: "fetching 'm.bin' version 2" in c1.read_log(), what="c1 fetching")
    prod.kill9()
    wait_for(lambda: "not fetched" in c1.read_log(), timeout=60, what="c1 gives the transfer up")
    assert os.getxattr(c1.path("m.bin"), "user.viperfs.version") == b"1"
    assert read(c1.path("m.bin")) == v1
    holder = world.spawn([VIPERCTL, "gpu-export", c1.path("m.bin")], stdout=subprocess.PIPE, text=True)
    exp = json.loads(holder.stdout.readline())
    assert exp["version"] == 1 and exp["size"] == len(v1)    # no half-landed version took its place
    assert holder.wait(timeout=30) == 0
    # a stage a late read might still write is kept aside, not reused; any other is freed
    gst = status(c1)["tiers"]["gpu"]
    quarantined = "kept aside until unmount" in c1.read_log()
    assert gst["used"] == len(v1) + (len(blob) if quarantined else 0)
    # a new producer on the same PFS: the next version lands GPU-direct
    direct = status(c1)["repl"]["bytes_gpu_direct"]
    prod2 = world.mount(prod.opts, pfs=prod.pfs, mnt=prod.mnt, prefix=net.prefix(0))
    wait_for(lambda: subscribed(prod2, 1), timeout=30, what="c1 subscribed again")
    v3 = os.urandom(4 << 20)
    write(prod2.path("m.bin"), v3)
    wait_for(lambda: read(c1.path("m.bin")) == v3, timeout=60, what="the next version on c1")
    c = status(c1)["repl"]
    assert c["gpu_path"] == "direct" and c["bytes_gpu_direct"] >= direct + len(v3)
