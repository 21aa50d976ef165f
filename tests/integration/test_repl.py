"""Replication between nodes: network namespaces, real libfabric (tcp),
real FUSE mounts, torch producers, watchdog and inotifywait consumers."""
import hashlib
import json
import errno
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from conftest import (cluster, lines_until, metric, promtool_ok, read, scrape, status, subscribed,
                      wait_for, wait_version, write)

HERE = os.path.dirname(os.path.abspath(__file__))


def dump_stacks(m):
    """On a hang: every thread's stack of a daemon, into the test output."""
    r = subprocess.run(["gdb", "-p", str(m.proc.pid), "-batch", "-ex", "thread apply all bt 12"],
                       capture_output=True, text=True, timeout=60)
    print("\n".join(l for l in r.stdout.splitlines() if l.startswith(("#", "Thread"))))


def sha(path):
    return hashlib.sha256(read(path)).hexdigest()


def test_torch_versions_reach_consumers_with_inotify_events(world):
    net, prod, (c1, c2) = cluster(world)
    wait_for(lambda: subscribed(prod, 2), what="two consumers subscribed")
    reloader = world.spawn([sys.executable, os.path.join(HERE, "reloader.py"), c1.mnt, "model.pt"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    lines_until(reloader, lambda l: '"ready"' in l)
    # line-buffered: block buffering into the pipe would hold the last events back
    watcher = world.spawn(["stdbuf", "-oL", "inotifywait", "-m", "-r", "--format", "%e %w%f", c2.mnt],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines_until(watcher, lambda l: "Watches established" in l, stream="stderr")

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv1d(1, 8, 5), torch.nn.Linear(8, 2))
    # 1. a direct torch.save
    torch.save(model.state_dict(), prod.path("model.pt"))
    want = sha(prod.path("model.pt"))
    got = json.loads(lines_until(reloader, lambda l: want in l)[-1])
    assert got["tensors"] == 4 and got["version"] == "1"
    # 2. a safe save: tmp file, fsync, os.replace
    with torch.no_grad():
        model[0].weight.add_(1)
    with open(prod.path("model.pt.tmp"), "wb") as f:
        torch.save(model.state_dict(), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(prod.path("model.pt.tmp"), prod.path("model.pt"))
    want2 = sha(prod.path("model.pt"))
    got = json.loads(lines_until(reloader, lambda l: want2 in l)[-1])
    assert got["why"] == "moved"
    # 3. a directory renamed into place (save_pretrained, Triton version folders)
    os.mkdir(prod.path("tmp-ckpt"))
    write(prod.path("tmp-ckpt", "config.json"), b'{"layers": 2}')
    blob = os.urandom(3 << 20)
    write(prod.path("tmp-ckpt", "weights.bin"), blob)
    os.rename(prod.path("tmp-ckpt"), prod.path("ckpt-1"))
    # 4. an unlink
    write(prod.path("old.bin"), b"x")
    os.unlink(prod.path("old.bin"))
    write(prod.path("marker"), b"m")

    try:
        ev = lines_until(watcher, lambda l: l.startswith("DELETE") and l.endswith("/old.bin"))
    except AssertionError:
        dump_stacks(c2)
        raise
    m2 = c2.mnt
    assert "CREATE %s/model.pt" % m2 in ev
    assert any(e.startswith("CLOSE_WRITE") and e.endswith("%s/model.pt" % m2) for e in ev)
    assert "MOVED_FROM %s/model.pt.tmp" % m2 in ev and "MOVED_TO %s/model.pt" % m2 in ev
    assert "MOVED_TO,ISDIR %s/ckpt-1" % m2 in ev
    assert ev.index("MOVED_TO,ISDIR %s/ckpt-1" % m2) > ev.index("MOVED_TO %s/model.pt" % m2)
    # every byte equal on both consumers, versions numbered as on the producer
    for c in (c1, c2):
        # changes arrive in order: once the marker written after the unlink is there, all is
        wait_version(c.path("marker"), 0)
        assert sha(c.path("model.pt")) == want2
        assert read(c.path("ckpt-1", "weights.bin")) == blob
        assert read(c.path("ckpt-1", "config.json")) == b'{"layers": 2}'
        assert not os.path.exists(c.path("old.bin"))
        assert not os.path.exists(c.path("tmp-ckpt"))
    assert os.getxattr(c2.path("ckpt-1", "weights.bin"), "user.viperfs.version") == b"1"
    # replicas are read-only, and say why
    with pytest.raises(OSError) as e:
        write(c1.path("model.pt"), b"no")
    assert e.value.errno == 30  # EROFS
    # every change the daemon is asked for is EROFS first: rmdir of a
    # non-empty directory too (it was ENOTEMPTY)
    for change in (lambda: os.rmdir(c1.path("ckpt-1")), lambda: os.unlink(c1.path("model.pt")),
                   lambda: os.rename(c1.path("model.pt"), c1.path("m2.pt"))):
        with pytest.raises(OSError) as e:
            change()
        assert e.value.errno == errno.EROFS, e.value
    assert "read-only" in c1.read_log()
    reloader.stdin.close()


def test_consumers_never_see_a_partial_file(world):
    net, prod, (c1,) = cluster(world, consumers=1)
    wait_for(lambda: subscribed(prod, 1), what="subscribed")
    stop = threading.Event()
    bad, good = [], [0]

    def reader():
        while not stop.is_set():
            try:
                data = read(c1.path("ckpt.bin"))
            except FileNotFoundError:
                continue
            if hashlib.sha256(data[32:]).digest() != data[:32]:
                bad.append(len(data))
            else:
                good[0] += 1

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(15):
            payload = os.urandom((2 << 20) + i * 4096)
            write(prod.path("ckpt.bin"), hashlib.sha256(payload).digest() + payload)
        wait_for(lambda: os.path.exists(c1.path("ckpt.bin")) and
                 read(c1.path("ckpt.bin")) == read(prod.path("ckpt.bin")),
                 what="the last version on the consumer")
    finally:
        stop.set()
        t.join()
    assert not bad, "torn reads: %r" % bad[:5]
    assert good[0] > 0


def test_unauthenticated_peer_is_refused(world):
    secret = os.path.join(world.base, "secret")
    other = os.path.join(world.base, "other")
    write(secret, b"0123456789abcdef0123456789abcdef")
    write(other, b"not-the-same-secret-at-all-00000")
    net, prod, (good, bad) = cluster(world, opts=",secret_file=" + secret,
                                     consumer_opts=[",secret_file=" + secret,
                                                    ",secret_file=" + other])
    wait_for(lambda: subscribed(prod, 1), what="the good consumer")
    write(prod.path("m.bin"), b"secret weights")
    wait_for(lambda: os.path.exists(good.path("m.bin")), what="replication to the good consumer")
    wait_for(lambda: "the secrets differ" in bad.read_log(), what="the refusal")
    wait_for(lambda: "refused authentication" in prod.read_log(), what="the producer's log line")
    assert not os.path.exists(bad.path("m.bin"))
    assert status(bad)["repl"]["state"] != "subscribed"


def test_dead_consumer_dead_producer_and_catch_up(world):
    net, prod, (c1, c2) = cluster(world)
    wait_for(lambda: subscribed(prod, 2), what="subscribed")
    write(prod.path("v.bin"), b"one")
    wait_for(lambda: os.path.exists(c2.path("v.bin")), what="v1 on c2")
    c1.kill9()
    wait_for(lambda: "dropped: no heartbeat" in prod.read_log() or
             "dropped: sends time out" in prod.read_log(), timeout=20,
             what="the producer frees the dead consumer")
    write(prod.path("v.bin"), b"two")
    wait_for(lambda: read(c2.path("v.bin")) == b"two", what="v2 on c2")
    # a file on the PFS that the next producer will never open
    write(prod.path("keep.bin"), b"on the PFS only, for the next producer")
    wait_for(lambda: os.path.exists(c2.path("keep.bin")), what="keep.bin on c2")
    prod.flush()
    # the producer dies: c2 keeps its last complete version
    prod.kill9()
    wait_for(lambda: "silent" in c2.read_log(), timeout=20, what="c2 notices")
    assert read(c2.path("v.bin")) == b"two"
    # a new producer on the same PFS: c2 reconnects and catches up
    prod2 = world.mount(prod.opts, pfs=prod.pfs, mnt=prod.mnt, prefix=net.prefix(0))
    write(prod2.path("v.bin"), b"three")
    wait_for(lambda: read(c2.path("v.bin")) == b"three", timeout=30, what="catch-up")
    # the catch-up named keep.bin (KEEP: PFS only), so c2 did not remove it
    assert "caught up" in c2.read_log()
    assert read(c2.path("keep.bin")) == b"on the PFS only, for the next producer"


def test_link_down_then_catch_up(world):
    net, prod, (c1,) = cluster(world, consumers=1)
    wait_for(lambda: subscribed(prod, 1), what="subscribed")
    write(prod.path("x.bin"), b"before")
    wait_for(lambda: os.path.exists(c1.path("x.bin")), what="x on c1")
    write(prod.path("gone.bin"), b"deleted while the consumer is away")
    os.mkdir(prod.path("gone-dir"))
    wait_for(lambda: os.path.exists(c1.path("gone.bin")) and os.path.isdir(c1.path("gone-dir")),
             what="gone.bin on c1")
    net.link(1, False)
    try:
        for i in range(5):
            write(prod.path("x.bin"), b"during %d" % i)
        write(prod.path("y.bin"), b"new file")
        os.unlink(prod.path("gone.bin"))
        os.rmdir(prod.path("gone-dir"))
        wait_for(lambda: "silent" in c1.read_log(), timeout=20, what="c1 notices")
        assert read(c1.path("x.bin")) == b"before"     # the last complete version
        time.sleep(10 - 3)                              # the 10 s outage
    finally:
        net.link(1, True)
    wait_for(lambda: os.path.exists(c1.path("y.bin")) and read(c1.path("x.bin")) == b"during 4",
             timeout=30, what="catch-up after the link came back")
    assert int(os.getxattr(c1.path("x.bin"), "user.viperfs.version")) == 6
    # what was deleted meanwhile is gone after the catch-up; the rest stays
    wait_for(lambda: not os.path.exists(c1.path("gone.bin")), what="gone.bin removed")
    assert not os.path.exists(c1.path("gone-dir"))
    assert "deleted on the producer while we were away" in c1.read_log()
    assert read(c1.path("y.bin")) == b"new file"


def test_malformed_messages_are_rejected(world):
    from conftest import BUILD
    net, prod, (c1,) = cluster(world, consumers=1)
    wait_for(lambda: subscribed(prod, 1), what="subscribed")
    # a hostile peer on the network (the node of no consumer: reuse c1's)
    r = subprocess.run([*net.prefix(1), os.path.join(BUILD, "tests", "fabpoke"),
                        "%s:%d" % (net.addr(0), 7800 + os.getpid() % 100), net.addr(1)],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, FI_PROVIDER="tcp;ofi_rxm"))
    assert r.returncode == 0 and r.stdout.strip() == "6", r.stderr
    # from an address that never said HELLO: refused before they are decoded (the
    # decoder's own checks are the unit tests' and the fuzzer's), counted, logged
    wait_for(lambda: status(prod)["repl"]["refused_messages"] >= 6, what="six refusals")
    assert "only a HELLO is taken from an address that did not say HELLO" in prod.read_log()
    # the producer is unharmed and still serves its consumer
    write(prod.path("after.bin"), b"still here")
    wait_for(lambda: os.path.exists(c1.path("after.bin")), what="replication after the attack")
    assert read(c1.path("after.bin")) == b"still here"
    assert not os.path.exists(os.path.join(world.base, "x"))


def test_kill9_mid_transfer(world):
    big = 768 << 20
    # repl_stream=0: with previews most bytes move before close; here the commit's fetch is cut
    opts = ",ram_cache=4G,ram_prefault=0,repl_stream=0"
    net, prod, (c1, c2) = cluster(world, opts=opts)
    wait_for(lambda: subscribed(prod, 2), what="subscribed")
    write(prod.path("m.bin"), b"small and complete")
    wait_for(lambda: os.path.exists(c1.path("m.bin")) and os.path.exists(c2.path("m.bin")),
             what="the first version everywhere")
    # a consumer dies in the middle of fetching a big version
    blob = os.urandom(1 << 20) * (big >> 20)
    write(prod.path("m.bin"), blob)
    wait_for(lambda: "fetching 'm.bin' version 2" in c1.read_log(), what="c1 fetching")
    c1.kill9()
    wait_for(lambda: "dropped" in prod.read_log(), timeout=20, what="the producer frees c1")
    wait_for(lambda: read(c2.path("m.bin")) == blob, timeout=60, what="c2 unharmed")
    st = status(prod)
    assert [p["active"] for p in st["repl"]["peers"]] == [True]
    # the producer dies in the middle of a transfer: c2 keeps version 2, whole
    write(prod.path("m.bin"), blob[::-1])
    wait_for(lambda: "fetching 'm.bin' version 3" in c2.read_log(), what="c2 fetching")
    prod.kill9()
    wait_for(lambda: "silent" in c2.read_log() or "not fetched" in c2.read_log(),
             timeout=30, what="c2 notices")
    assert os.getxattr(c2.path("m.bin"), "user.viperfs.version") == b"2"
    assert read(c2.path("m.bin")) == blob


def test_a_consumer_that_falls_behind_skips_to_the_latest(world):
    net, prod, (c1,) = cluster(world, consumers=1)
    wait_for(lambda: subscribed(prod, 1), what="subscribed")
    # twenty 16 MiB versions while the consumer is paused: a real backlog
    os.kill(c1.proc.pid, signal.SIGSTOP)
    try:
        for i in range(20):
            write(prod.path("fast.bin"), bytes([i]) * (16 << 20))
    finally:
        os.kill(c1.proc.pid, signal.SIGCONT)
    wait_for(lambda: os.path.exists(c1.path("fast.bin")) and
             os.getxattr(c1.path("fast.bin"), "user.viperfs.version") == b"20",
             timeout=60, what="the latest version on the consumer")
    assert read(c1.path("fast.bin")) == bytes([19]) * (16 << 20)
    st = status(c1)["repl"]
    # never backwards, and not every version fetched
    assert st["installed"] < 20 and st["installed"] + st["skipped"] <= 20 + 1
    versions = [int(v) for v in __import__("re").findall(r"'fast.bin' version (\d+) installed", c1.read_log())]
    assert versions == sorted(versions) and versions[-1] == 20


def test_unchanged_chunks_are_not_fetched_again(world):
    """Per-chunk hashes: a new version moves only the 1 MiB chunks that changed."""
    net, prod, (c1,) = cluster(world, consumers=1)
    wait_for(lambda: subscribed(prod, 1), what="the consumer subscribed")
    base = bytearray(os.urandom(8 << 20))
    write(prod.path("frozen.bin"), bytes(base))
    wait_version(c1.path("frozen.bin"), 0)
    before = status(c1)["repl"]["bytes_in"]
    assert before == len(base)
    # a fine-tune that touches two chunks (a frozen backbone): the whole file is rewritten
    base[(3 << 20) + 5] ^= 0xff
    base[(6 << 20):(6 << 20) + 100] = os.urandom(100)
    write(prod.path("frozen.bin"), bytes(base))
    wait_version(c1.path("frozen.bin"), 1)
    assert read(c1.path("frozen.bin")) == bytes(base)
    st = status(c1)["repl"]
    assert st["bytes_in"] - before == 2 << 20
    assert st["bytes_reused"] == 6 << 20
    # a size change: the chunks before the new tail still match
    base += os.urandom(12345)
    write(prod.path("frozen.bin"), bytes(base))
    wait_version(c1.path("frozen.bin"), 2)
    assert read(c1.path("frozen.bin")) == bytes(base)
    assert status(c1)["repl"]["bytes_in"] - before == (2 << 20) + 12345


def test_chunks_stream_while_the_file_is_written(world):
    """Previews: finished chunks reach the consumer before close; at commit only the rest moves."""
    net, prod, (c1,) = cluster(world, consumers=1, opts=",repl_stream=4M")
    wait_for(lambda: subscribed(prod, 1), what="the consumer subscribed")
    data = bytearray(os.urandom((24 << 20) + 12345))     # a partial last chunk: it moves at commit
    with open(prod.path("big.bin"), "wb") as f:
        f.write(data[:12 << 20])
        # no event exists for a preview landing: poll the consumer's state, with a deadline
        wait_for(lambda: status(c1)["repl"]["bytes_streamed"] >= 8 << 20, what="previews to arrive")
        assert not os.path.exists(c1.path("big.bin"))      # nothing is installed before close
        # rewrite a chunk the consumer already holds: it must move again at commit
        patch = os.urandom(100)
        data[(1 << 20) + 7:(1 << 20) + 107] = patch
        f.seek((1 << 20) + 7)
        f.write(patch)
        f.seek(12 << 20)
        f.write(data[12 << 20:])
    wait_version(c1.path("big.bin"), 0)
    assert read(c1.path("big.bin")) == bytes(data)
    st = status(c1)["repl"]
    assert st["bytes_streamed_used"] >= 8 << 20
    # each byte of the version crossed once, early or at commit; the tail at commit
    assert st["bytes_in"] + st["bytes_streamed_used"] + st["bytes_reused"] == len(data)
    assert st["bytes_in"] >= 12345
    # the rewritten chunk crossed again (in a later preview, or at commit)
    assert st["bytes_streamed"] + st["bytes_in"] >= len(data) + (1 << 20)


def test_previews_stream_after_the_consumer_made_its_spare(world):
    """Previews land in the consumer's spare: with a spare made (a quarter of
    its cache, at mount and again after each install), every version's
    previews move while it is written, the second as the first.  (The spare's
    pages, charged ahead, once counted as bytes previews held: a preview
    whose landing took the spare stopped at its first chunk, and each
    version then moved whole after close.)"""
    size, cache = 32 << 20, 96 << 20       # the file is larger than the spare (cache / 4)
    net, prod, (c1,) = cluster(world, consumers=1, opts=",repl_stream=4M",
                               consumer_opts=[",ram_cache=%d,ram_spare=64M" % cache])
    wait_for(lambda: subscribed(prod, 1), what="the consumer subscribed")
    p = prod.path("model.pt")
    for i in range(2):
        data = os.urandom(size)
        # a spare of the quarter, for each version: made at mount, and after the install with idle CPU
        wait_for(lambda: status(c1)["ram"]["spare"] == cache // 4, what="the consumer's spare")
        before = status(c1)["repl"]["bytes_streamed"]
        with open(p, "wb") as f:
            f.write(data[:size // 2])
            f.flush()
            wait_for(lambda: status(c1)["repl"]["bytes_streamed"] - before >= 8 << 20,
                     what="previews of version %d to arrive" % (i + 1))
            f.write(data[size // 2:])
        wait_version(c1.path("model.pt"), i)
        assert read(c1.path("model.pt")) == data
    st = status(c1)
    assert st["repl"]["bytes_streamed_used"] >= 16 << 20, st["repl"]
    assert st["ram"]["enospc"] == 0, st["ram"]


def test_previews_give_way_to_a_committed_version(world):
    """Previews take up to half of the consumer's cache, but a committed
    version that needs their room gets it: the previews of other files
    still being written are dropped, least recently fed first and only as
    many as it needs, before it charges its landing (else it waited
    cache_wait and was refused, ENOSPC)."""
    cache = 64 << 20
    net, prod, (c1,) = cluster(world, consumers=1, opts=",repl_stream=4M",
                               consumer_opts=[",ram_cache=%d,ram_spare=0,cache_wait=2" % cache])
    wait_for(lambda: subscribed(prod, 1), what="the consumer subscribed")
    a = os.urandom(24 << 20)
    b = os.urandom(52 << 20)       # with a's previews held, more than the cache has free
    with open(prod.path("a.bin"), "wb") as f:
        f.write(a)
        f.flush()
        # more than a quarter of the cache moves early (half is the bound)
        wait_for(lambda: status(c1)["repl"]["bytes_streamed"] >= 20 << 20, what="a's previews")
        write(prod.path("b.bin"), b)
        wait_version(c1.path("b.bin"), 0, timeout=30)
        assert read(c1.path("b.bin")) == b
        assert not os.path.exists(c1.path("a.bin"))
        f.truncate(4096)        # what fits beside b: a's version is its first page
    wait_version(c1.path("a.bin"), 0, timeout=30)
    assert read(c1.path("a.bin")) == a[:4096]
    st = status(c1)
    assert st["repl"]["bytes_streamed_used"] < 20 << 20, st["repl"]    # a's previews were dropped
    assert st["ram"]["enospc"] == 0, st["ram"]     # b never found the cache short: room was made first
    assert "No space left on device" not in c1.read_log()


def test_producer_killed_while_streaming_a_file(world):
    """Previews fetched, then the producer dies before close: the consumer keeps what it had."""
    net, prod, (c1,) = cluster(world, consumers=1, opts=",repl_stream=2M")
    wait_for(lambda: subscribed(prod, 1), what="the consumer subscribed")
    write(prod.path("w.bin"), b"version one")
    wait_version(c1.path("w.bin"), 0)
    f = open(prod.path("w.bin"), "wb")
    try:
        f.write(os.urandom(8 << 20))
        wait_for(lambda: status(c1)["repl"]["bytes_streamed"] >= 4 << 20, what="previews")
        prod.kill9()
    finally:
        try:
            f.close()
        except OSError:
            pass        # the mount is gone with its daemon
    wait_for(lambda: "silent" in c1.read_log(), timeout=30, what="the consumer notices")
    assert read(c1.path("w.bin")) == b"version one"
    assert os.getxattr(c1.path("w.bin"), "user.viperfs.version") == b"1"


def relay_parent(c):
    return status(c)["repl"]["relay"]["parent"]


def chain_of(prod, cons):
    """The consumers in relay-chain order (relay_fanout=1), or None while the tree forms."""
    ids = {p["id"]: p["relay_parent"] for p in status(prod)["repl"]["peers"] if p["active"]}
    parents = [relay_parent(c) for c in cons]
    if len(ids) != len(cons) or parents.count(0) != 1 or len(set(parents)) != len(cons):
        return None
    # a consumer's own id is the parent its successor names
    order = [cons[parents.index(0)]]
    by_parent = dict(zip(parents, cons))
    for pid in sorted(ids)[:-1]:
        if pid not in by_parent:
            return None
        order.append(by_parent[pid])
    return order


def replicate_to_all(prod, cons, name, data):
    """Writes a first version on the producer; every consumer gets it byte-exact.
    Returns (bytes read from the producer, bytes read from relays), once every DONE is in."""
    write(prod.path(name), data)
    for c in cons:
        wait_version(c.path(name), 0, timeout=90)
        assert read(c.path(name)) == data

    def moved():
        peers = status(prod)["repl"]["peers"]
        out = sum(p["bytes_out"] for p in peers)
        relayed = sum(p["bytes_relayed"] for p in peers)
        return (out, relayed) if out + relayed >= len(cons) * len(data) else None
    return wait_for(moved, what="every consumer's DONE")


def test_relay_chain_moves_one_copy_from_the_producer(world):
    """relay_fanout=1: the producer serves one consumer; each re-serves the chunks it holds."""
    mport = 9300 + os.getpid() % 100
    net, prod, cons = cluster(world, consumers=3, opts=",relay_fanout=1",
                              consumer_opts=[",metrics=%d" % mport] * 3)
    wait_for(lambda: subscribed(prod, 3), what="three consumers subscribed")
    order = wait_for(lambda: chain_of(prod, cons), what="the relay chain")
    size = (64 << 20) + 12345
    out, relayed = replicate_to_all(prod, cons, "model.bin", os.urandom(size))
    print("producer served %d bytes, relays %d, for 3 consumers of %d" % (out, relayed, size))
    # without relay the producer serves 3 copies; with the chain, one (plus what a slow relay left)
    assert out + relayed == 3 * size
    assert out < 2 * size
    for c in order[1:]:
        assert status(c)["repl"]["relay"]["bytes_from_relay"] > 0
    assert status(order[0])["repl"]["relay"]["bytes_from_relay"] == 0
    # the same split in each consumer's metrics (each node has its own 127.0.0.1)
    for i, c in enumerate(order):
        code, text = scrape(mport, prefix=net.prefix(1 + cons.index(c)))
        assert code == 200
        promtool_ok(text)
        st = status(c)["repl"]["relay"]
        assert metric(text, "viperfs_consumer_fetched_bytes_total", '{from="relay"}') == st["bytes_from_relay"]
        got = metric(text, "viperfs_consumer_fetched_bytes_total", '{from="producer"}')
        assert (got >= size) if i == 0 else (got < size)


def test_a_dead_relay_falls_back_to_the_producer(world):
    """kill -9 of the relay in the middle of a version: the next consumer gets it from the producer."""
    big = 384 << 20
    opts = ",relay_fanout=1,ram_cache=2G,ram_prefault=0,repl_stream=0,relay_wait=1"
    net, prod, cons = cluster(world, consumers=2, opts=opts)
    wait_for(lambda: subscribed(prod, 2), what="two consumers subscribed")
    head, tail = wait_for(lambda: chain_of(prod, cons), what="the relay chain")
    write(prod.path("m.bin"), b"first")
    for c in cons:
        wait_for(lambda: os.path.exists(c.path("m.bin")), what="the first version")
    blob = os.urandom(1 << 20) * (big >> 20)
    write(prod.path("m.bin"), blob)
    wait_for(lambda: "fetching 'm.bin' version 2" in head.read_log(), what="the relay fetching")
    head.kill9()
    wait_version(tail.path("m.bin"), 1, timeout=90)
    assert read(tail.path("m.bin")) == blob
    log = tail.read_log()
    assert "the producer serves the rest" in log, log[-3000:]
    # the producer drops the dead relay; the tail moves up
    wait_for(lambda: relay_parent(tail) == 0, timeout=30, what="the tail reading from the producer")
    write(prod.path("m.bin"), b"third")
    wait_version(tail.path("m.bin"), 2)
    assert read(tail.path("m.bin")) == b"third"


def test_a_stalled_relay_is_bypassed_and_catches_up(world):
    """SIGSTOP of the relay (no error at all, just silence): the next consumer gets the
    version from the producer; the relay, resumed, catches up."""
    net, prod, cons = cluster(world, consumers=2, opts=",relay_fanout=1,relay_wait=1")
    wait_for(lambda: subscribed(prod, 2), what="two consumers subscribed")
    head, tail = wait_for(lambda: chain_of(prod, cons), what="the relay chain")
    data = os.urandom((32 << 20) + 7)
    os.kill(head.proc.pid, signal.SIGSTOP)
    try:
        write(prod.path("s.bin"), data)
        wait_version(tail.path("s.bin"), 0)
        assert read(tail.path("s.bin")) == data
        assert status(tail)["repl"]["relay"]["bytes_relay_fallback"] > 0
    finally:
        os.kill(head.proc.pid, signal.SIGCONT)
    # the relay was dropped as silent; it comes back, is placed again, and catches up
    wait_version(head.path("s.bin"), 0)
    assert read(head.path("s.bin")) == data
    wait_for(lambda: subscribed(prod, 2) and chain_of(prod, cons), what="the chain again")
    write(prod.path("s.bin"), data[::-1])
    for c in cons:
        wait_version(c.path("s.bin"), 1)
        assert read(c.path("s.bin")) == data[::-1]


def test_relay_tree_of_two_per_node(world):
    """relay_fanout=2 with four consumers: the producer serves two; the first of them
    serves the other two."""
    net, prod, cons = cluster(world, consumers=4, opts=",relay_fanout=2")
    wait_for(lambda: subscribed(prod, 4), what="four consumers subscribed")

    def tree():
        peers = {p["id"]: p["relay_parent"] for p in status(prod)["repl"]["peers"] if p["active"]}
        ids = sorted(peers)
        want = {ids[0]: 0, ids[1]: 0, ids[2]: ids[0], ids[3]: ids[0]}
        if peers != want:
            return None
        kids = {}
        for c in cons:
            rel = status(c)["repl"]["relay"]
            kids[rel["parent"]] = kids.get(rel["parent"], 0) + 1
            if rel["children"]:
                kids["serving"] = sorted(rel["children"])
        return kids if kids == {0: 2, ids[0]: 2, "serving": ids[2:]} else None
    wait_for(tree, what="the tree: two under the producer, two under the first consumer")
    size = (24 << 20) + 99
    out, relayed = replicate_to_all(prod, cons, "t.bin", os.urandom(size))
    assert out + relayed == 4 * size
    assert out < 3 * size      # two copies, plus whatever a slow relay left to the producer
