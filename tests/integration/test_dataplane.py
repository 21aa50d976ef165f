"""The data plane: committed versions are sealed memory files, read by FUSE
passthrough (or spliced from them by the daemon, with passthrough=off).

Each test runs on both read paths where the path matters."""
import errno
import fcntl
import hashlib
import mmap
import os
import subprocess

import pytest

from conftest import VIPERFS, cluster, read, status, subscribed, wait_for, wait_version, write

PATHS = ["auto", "off"]
F_GET_SEALS = 1034
F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE = 2, 4, 8


def expected_mode(path):
    return "passthrough" if path == "auto" else "daemon"


def check_bytes(p, data):
    """read(), pread() at odd offsets and mmap(MAP_SHARED) of every page all give data."""
    assert read(p) == data
    fd = os.open(p, os.O_RDONLY)
    try:
        for off in (o for o in (0, 1, 4095, 1 << 20, len(data) - 3, len(data)) if o >= 0):
            assert os.pread(fd, 7777, off) == data[off:off + 7777], off
        if data:
            with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as m:
                assert m[:] == data
                assert m[::4096] == data[::4096]
    finally:
        os.close(fd)


@pytest.mark.parametrize("path", PATHS)
def test_reads_and_mmap_are_byte_exact_on_the_producer(world, path):
    m = world.mount("passthrough=" + path)
    assert status(m)["read_path"]["mode"] == expected_mode(path)
    assert "read path: " in m.read_log()
    data = os.urandom((20 << 20) + 12345)
    write(m.path("model.pt"), data)
    check_bytes(m.path("model.pt"), data)
    write(m.path("empty"), b"")
    check_bytes(m.path("empty"), b"")
    m.flush()
    assert read(m.pfs_path("model.pt")) == data     # the kernel-side copy to the PFS


@pytest.mark.parametrize("path", PATHS)
def test_reads_and_mmap_are_byte_exact_on_a_consumer(world, path):
    net, prod, (c1,) = cluster(world, consumers=1, opts=",passthrough=" + path)
    wait_for(lambda: subscribed(prod, 1), what="the consumer subscribed")
    assert status(c1)["read_path"]["mode"] == expected_mode(path)
    for i in range(3):
        data = os.urandom((9 << 20) + 1000 * i)
        write(prod.path("model.pt"), data)
        wait_version(c1.path("model.pt"), i)
        check_bytes(c1.path("model.pt"), data)


@pytest.mark.parametrize("path", PATHS)
def test_a_reader_keeps_its_version_across_ten_switches(world, path):
    m = world.mount("passthrough=" + path)
    p = m.path("model.pt")
    first = os.urandom(6 << 20)
    write(p, first)
    fd = os.open(p, os.O_RDONLY)
    mm = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
    try:
        for i in range(10):
            if i % 2:
                new = os.urandom((6 << 20) + i)
                write(p, new)                       # O_TRUNC: a new version
            else:
                with open(p, "r+b") as f:           # in place (h5py's way)
                    f.seek(4096 * (i + 1))
                    f.write(b"v%d" % i)
                new = read(p)
                assert new[4096 * (i + 1):4096 * (i + 1) + 2] == b"v%d" % i
            check_bytes(p, new)                     # new opens see the new version at once
            assert os.pread(fd, len(first) + 1, 0) == first
            assert mm[:] == first
    finally:
        mm.close()
        os.close(fd)
    assert status(m)["open_files"] == 0


def test_no_open_fails_because_of_another_opens_mode(world):
    """Every order of reader and writer opens on the producer, with passthrough on."""
    m = world.mount()
    assert status(m)["read_path"]["mode"] == "passthrough"
    p = m.path("f")
    a, b = os.urandom(3 << 20), os.urandom(2 << 20)
    write(p, a)
    # a reader (passthrough) first, then a writer: the writer is given a new inode
    r = os.open(p, os.O_RDONLY)
    w = os.open(p, os.O_WRONLY | os.O_TRUNC)
    # a reader while the writer is open sees the working copy, through the daemon
    r2 = os.open(p, os.O_RDONLY)
    os.write(w, b)
    assert os.pread(r2, len(b) + 1, 0) == b
    os.close(w)
    assert os.pread(r, len(a) + 1, 0) == a          # the first reader keeps its version
    # a writer first, then a reader, then another writer (r+)
    w = os.open(p, os.O_RDWR)
    r3 = os.open(p, os.O_RDONLY)
    w2 = os.open(p, os.O_RDWR)
    os.pwrite(w2, b"zz", 0)
    os.close(w2)
    os.close(w)
    assert read(p) == b"zz" + b[2:]
    for fd in (r, r2, r3):
        os.close(fd)
    # readers after all that get the newest by passthrough, and a rename keeps working
    check_bytes(p, b"zz" + b[2:])
    os.rename(p, m.path("g"))
    check_bytes(m.path("g"), b"zz" + b[2:])
    assert status(m)["open_files"] == 0


def daemon_memfds(pid):
    out = []
    for name in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, name))
        except OSError:
            continue
        if target.startswith("/memfd:viperfs-version"):
            out.append("/proc/%d/fd/%s" % (pid, name))
    return out


def test_committed_versions_are_sealed_by_the_kernel(world):
    m = world.mount()
    data = os.urandom(4 << 20)
    write(m.path("model.pt"), data)
    sealed = 0
    for link in daemon_memfds(m.proc.pid):
        fd = os.open(link, os.O_RDONLY)
        try:
            seals = fcntl.fcntl(fd, F_GET_SEALS)
        finally:
            os.close(fd)
        if not seals & F_SEAL_WRITE:
            continue
        assert seals & (F_SEAL_SHRINK | F_SEAL_GROW) == F_SEAL_SHRINK | F_SEAL_GROW
        sealed += 1
        fd = os.open(link, os.O_RDWR)
        try:
            with pytest.raises(OSError) as e:
                os.pwrite(fd, b"torn", 0)
            assert e.value.errno == errno.EPERM
            with pytest.raises(OSError):
                os.ftruncate(fd, 1)
        finally:
            os.close(fd)
    assert sealed >= 1
    assert read(m.path("model.pt")) == data


def meminfo_kb(key):
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def rss_anon_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise KeyError("RssAnon")


def page_cache_bytes(path):
    """The page cache of the file's own inode, by cachestat(2).  (fincore maps the file,
    and a passthrough mapping is the backing memory file's: it would count those pages.)"""
    import ctypes
    rng = (ctypes.c_uint64 * 2)(0, 0)
    cs = (ctypes.c_uint64 * 5)()
    fd = os.open(path, os.O_RDONLY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syscall(451, fd, ctypes.byref(rng), ctypes.byref(cs), 0) != 0:
            raise OSError(ctypes.get_errno(), "cachestat")
    finally:
        os.close(fd)
    return cs[0] * os.sysconf("SC_PAGE_SIZE")


def test_one_copy_of_a_version_in_the_nodes_memory(world):
    """After writing and reading a file, the node holds it about once (not twice)."""
    m = world.mount("ram_prefault=0,ram_spare=0")  # memory held ahead is not the file's
    size = 128 << 20
    before = rss_anon_kb(m.proc.pid) + meminfo_kb("Shmem")
    data = os.urandom(size)
    write(m.path("model.pt"), data)
    assert hashlib.sha256(read(m.path("model.pt"))).digest() == hashlib.sha256(data).digest()
    del data
    held = (rss_anon_kb(m.proc.pid) + meminfo_kb("Shmem") - before) * 1024 + \
        page_cache_bytes(m.path("model.pt"))
    assert held <= 1.3 * size, "%.2f x the file" % (held / size)
    assert status(m)["ram"]["memory_files"] >= size


def version_memfd_blocks(pid):
    """Bytes of pages held by each of the daemon's memory files, by inode."""
    held = {}
    for fd in os.listdir("/proc/%d/fd" % pid):
        p = "/proc/%d/fd/%s" % (pid, fd)
        try:
            if "viperfs-version" in os.readlink(p):
                st = os.stat(p)
                held[st.st_ino] = st.st_blocks * 512
        except OSError:
            pass
    return held


@pytest.mark.parametrize("path", PATHS)
def test_the_spare_takes_the_next_version_and_gives_back_what_it_did_not_fill(world, path):
    """A 32 MiB spare is allocated ahead and shown; a 20 MiB version written into
    it is byte-exact and holds 20 MiB of pages (the rest freed at the seal); a
    new spare is made; the metrics show it."""
    m = world.mount("ram_spare=32M,ram_cache=256M,passthrough=%s" % path)
    wait_for(lambda: status(m)["ram"]["spare"] == 32 << 20, what="the first spare")
    data = os.urandom(20 << 20)
    write(m.path("model.pt"), data)
    check_bytes(m.path("model.pt"), data)
    assert status(m)["ram"]["memory_files"] == 20 << 20
    wait_for(lambda: status(m)["ram"]["spare"] == 32 << 20, what="the next spare")
    held = sorted(version_memfd_blocks(m.proc.pid).values())
    assert held == [20 << 20, 32 << 20], held     # the version, and the new spare
    st = status(m)
    assert st["ram"]["used"] == st["ram"]["memory_files"] + st["ram"]["spare"] + st["ram"]["chunks"]


def test_passthrough_off_says_so_and_counts_the_reads(world):
    m = world.mount("passthrough=off")
    write(m.path("a"), b"x" * 100000)
    assert read(m.path("a")) == b"x" * 100000
    st = status(m)
    assert st["read_path"] == {"mode": "daemon", "why": "-o passthrough=off"}
    assert st["bytes_read"] >= 100000        # the daemon served them (spliced)
    assert "read path: the daemon" in m.read_log()


def test_a_daemon_without_cap_sys_admin_falls_back_to_the_daemon(world):
    """The kernel gives backing files to CAP_SYS_ADMIN only: without it, reads still
    work, through the daemon, and the log and status say why."""
    import ctypes
    mnt = world.dir("mnt")
    fuse = os.open("/dev/fuse", os.O_RDWR)
    libc = ctypes.CDLL(None, use_errno=True)
    opts = "fd=%d,rootmode=40000,user_id=0,group_id=0,default_permissions,max_read=1048576" % fuse
    if libc.mount(b"viperfs", mnt.encode(), b"fuse.viperfs", 6, opts.encode()) != 0:  # nosuid,nodev
        os.close(fuse)
        raise OSError(ctypes.get_errno(), "mount")
    try:
        m = world.mount("", mnt=mnt, mnt_arg="/dev/fd/%d" % fuse,
                        prefix=["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin"],
                        pass_fds=(fuse,))
        data = os.urandom(3 << 20)
        write(os.path.join(mnt, "model.pt"), data)
        check_bytes(os.path.join(mnt, "model.pt"), data)
        wait_for(lambda: status(m)["read_path"]["mode"] == "daemon", what="the fallback")
        assert "CAP_SYS_ADMIN" in status(m)["read_path"]["why"]
        assert "the kernel refused a backing file" in m.read_log()
    finally:
        os.close(fuse)


@pytest.mark.parametrize("path", PATHS)
def test_a_version_on_the_pfs_only_is_read_from_the_pfs_file(world, path):
    """A file that is on the PFS only (there before the mount) is read by
    passthrough from the PFS file itself: no copy in the daemon, no cache
    memory.  Once changed, it is a version of ours, read through the daemon
    until it is a memory file.  passthrough=off: the daemon reads it."""
    pfs = world.dir("pfs")
    data = os.urandom((8 << 20) + 777)
    write(os.path.join(pfs, "old.pt"), data)
    m = world.mount("passthrough=" + path, pfs=pfs)
    check_bytes(m.path("old.pt"), data)
    st = status(m)
    if path == "auto":
        assert st["bytes_read"] == 0, st["bytes_read"]     # the kernel read the PFS file
    else:
        assert st["bytes_read"] >= len(data)
    with open(m.path("old.pt"), "r+b") as f:
        f.seek(100)
        f.write(b"CHANGED")
    want = data[:100] + b"CHANGED" + data[107:]
    check_bytes(m.path("old.pt"), want)
    m.flush()
    assert read(os.path.join(pfs, "old.pt")) == want


def daemon_memfd_seals(pid):
    """The seals of each of the daemon's version memory files."""
    seals = []
    for link in daemon_memfds(pid):
        fd = os.open(link, os.O_RDONLY)
        try:
            seals.append(fcntl.fcntl(fd, F_GET_SEALS))
        finally:
            os.close(fd)
    return seals


def test_a_consumers_versions_land_in_their_memory_files(world):
    """The network's reads land in the new version's memory file itself: from its
    install, the consumer holds each version once, sealed, with no chunks and no copy
    in the daemon's memory, and its readers get it by passthrough from the first read.
    Versions with changed, unchanged and hole chunks, streamed while written, a
    shorter one, and an empty one."""
    net, prod, (c1,) = cluster(world, consumers=1, opts=",ram_spare=0,ram_prefault=0,repl_stream=4M")
    wait_for(lambda: subscribed(prod, 1), what="the consumer subscribed")
    size = 48 << 20
    base = bytearray(os.urandom(size + 4321))
    versions = [bytes(base)]
    base[(5 << 20) + 3:(5 << 20) + 9] = b"edited"          # one chunk changed, the rest unchanged
    versions.append(bytes(base))
    versions.append(bytes(base[:(20 << 20) + 77]))          # shorter: cut inside a chunk
    versions.append(b"")
    before = rss_anon_kb(c1.proc.pid)
    p = prod.path("model.pt")
    for i, data in enumerate(versions):
        if i == 1:      # written in pieces, with a hole: previews move most of it before close
            with open(p, "wb") as f:
                f.write(data[:8 << 20])
                f.seek(16 << 20)
                f.write(data[16 << 20:])
            data = data[:8 << 20] + bytes(8 << 20) + data[16 << 20:]
        else:
            write(p, data)
        wait_version(c1.path("model.pt"), i)
        check_bytes(c1.path("model.pt"), data)
        st = status(c1)
        assert st["ram"]["chunks"] == 0, st["ram"]
        # the version's pages are held once, in one sealed file (older ones go once unread)
        wait_for(lambda: sum(version_memfd_blocks(c1.proc.pid).values()) <= len(data) + (1 << 20),
                 what="older versions' memory files to go")
        seals = daemon_memfd_seals(c1.proc.pid)
        assert all(s & (F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW) ==
                   F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW for s in seals), seals
    st = status(c1)
    assert st["bytes_read"] == 0, "the daemon served reads: the first ones came before a memory file"
    assert st["repl"]["bytes_streamed_used"] > 0
    assert st["repl"]["bytes_reused"] > 0
    grown = (rss_anon_kb(c1.proc.pid) - before) * 1024
    assert grown < size // 4, "the daemon's own memory grew by %.2f x the file" % (grown / size)
    assert "a read given up on" not in c1.read_log()


def spare_inodes(pid):
    """The inodes of the daemon's memory files that read as zeros (a spare)."""
    found = set()
    for link in daemon_memfds(pid):
        with open(link, "rb") as f:
            head = f.read(1 << 16)
        if head and not head.strip(b"\0"):
            found.add(os.stat(link).st_ino)
    return found


def test_a_consumers_next_version_lands_in_its_spare(world):
    """ram_spare on a consumer: after each install a spare as large as that version is
    made (at most a quarter of ram_cache; its pages allocated, zeroed and mapped ahead),
    and the next version lands in that very memory file."""
    net, prod, (c1,) = cluster(world, consumers=1, opts=",ram_cache=256M,ram_spare=4M,repl_stream=0")
    wait_for(lambda: subscribed(prod, 1), what="the consumer subscribed")
    wait_for(lambda: status(c1)["ram"]["spare"] == 4 << 20, what="the first spare")
    size = (24 << 20) + 5
    page_size = (size + 4095) & ~4095
    write(prod.path("model.pt"), os.urandom(size))
    wait_version(c1.path("model.pt"), 0)
    wait_for(lambda: status(c1)["ram"]["spare"] == page_size, what="a spare of the version's size")
    spare = spare_inodes(c1.proc.pid)       # zeros: not the version's random bytes
    assert len(spare) == 1, spare
    data = os.urandom(size)
    write(prod.path("model.pt"), data)
    wait_version(c1.path("model.pt"), 1)
    check_bytes(c1.path("model.pt"), data)
    wait_for(lambda: status(c1)["ram"]["spare"] == page_size, what="the next spare")
    held = version_memfd_blocks(c1.proc.pid)
    assert held.get(next(iter(spare))) == page_size, (spare, held)  # the new version's now
    assert not spare & spare_inodes(c1.proc.pid)
    assert len(held) == 2, held      # the version and the new spare: the old version is gone
    st = status(c1)["ram"]
    assert st["used"] == st["memory_files"] + st["spare"] + st["chunks"]


THP_SHMEM = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"


@pytest.fixture
def shmem_advise():
    """shmem_enabled=advise for one test (a machine-wide knob), put back after it;
    yields the huge page size."""
    try:
        with open(THP_SHMEM) as f:
            old = f.read().split("[")[1].split("]")[0]
        with open("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size") as f:
            huge = int(f.read())
    except (OSError, IndexError, ValueError):
        pytest.skip("this kernel has no transparent huge pages for shmem")
    with open(THP_SHMEM, "w") as f:
        f.write("advise")
    try:
        yield huge
    finally:
        with open(THP_SHMEM, "w") as f:
            f.write(old)


def daemon_maps(pid):
    """The daemon's mappings of memory files: perms, and the smaps fields in bytes."""
    maps, cur = [], None
    with open("/proc/%d/smaps" % pid) as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5:       # a mapping's first line
                cur = {"perms": head[1]} if "viperfs-version" in line else None
                if cur is not None:
                    maps.append(cur)
            elif cur is not None and len(head) == 3 and head[2] == "kB":
                cur[head[0].rstrip(":")] = int(head[1]) << 10
    return maps


def test_memory_files_say_which_pages_they_get(world):
    m = world.mount()
    with open(THP_SHMEM) as f:
        mode = f.read().split("[")[1].split("]")[0]
    pages = status(m)["memory_pages"]
    assert pages["shmem_enabled"] == mode
    assert pages["bytes"] == 4096 if mode in ("never", "deny") else pages["bytes"] > 4096
    assert "memory files: %d KiB pages (shmem_enabled=%s" % (pages["bytes"] >> 10, mode) in m.read_log()
    out = m.ctl("status", m.mnt).stdout
    assert "memory pages   %d KiB (shmem_enabled=%s)" % (pages["bytes"] >> 10, mode) in out


def test_a_consumers_versions_land_in_huge_pages_where_shmem_allows(world, shmem_advise):
    """With shmem_enabled=advise, a landing's memory file and the spare made after it
    are backed by huge pages, and the versions read back byte-exact."""
    huge = shmem_advise
    net, prod, (c1,) = cluster(world, consumers=1, opts=",ram_cache=512M,ram_spare=4M,repl_stream=0")
    wait_for(lambda: subscribed(prod, 1), what="the consumer subscribed")
    assert status(c1)["memory_pages"] == {"bytes": huge, "shmem_enabled": "advise"}
    assert "memory files: %d KiB pages (shmem_enabled=advise)" % (huge >> 10) in c1.read_log()
    wait_for(lambda: status(c1)["ram"]["spare"] == 4 << 20, what="the first spare")
    size = (40 << 20) + 5
    page_size = (size + 4095) & ~4095
    before = meminfo_kb("ShmemHugePages") << 10
    data = os.urandom(size)
    write(prod.path("model.pt"), data)
    wait_version(c1.path("model.pt"), 0)
    check_bytes(c1.path("model.pt"), data)
    # the next spare is made (mapped by the daemon, ahead) in huge pages too
    wait_for(lambda: status(c1)["ram"]["spare"] == page_size, what="a spare of the version's size")
    grown = (meminfo_kb("ShmemHugePages") << 10) - before
    assert grown >= size, "%.2f x the file in huge pages, for a version and a spare" % (grown / size)
    spare = [m for m in daemon_maps(c1.proc.pid) if m["perms"].startswith("rw")]
    assert len(spare) == 1 and spare[0]["ShmemPmdMapped"] >= size // 2, spare
    # and the next version lands in it
    data = os.urandom(size)
    write(prod.path("model.pt"), data)
    wait_version(c1.path("model.pt"), 1)
    check_bytes(c1.path("model.pt"), data)
    assert status(c1)["ram"]["chunks"] == 0


def test_a_consumer_with_twice_the_file_in_cache_takes_every_streamed_version(world):
    """Streamed previews of a file larger than a quarter of the consumer's cache land
    where the version's announce takes them over: with room for twice the file (the
    version held and the next one), every version is installed, byte-exact.  (The
    previews' landing once had room for a quarter of the cache only, so the announce
    landed anew beside it and waited for space it never got: ENOSPC.)"""
    size = 48 << 20
    net, prod, (c1,) = cluster(world, consumers=1, opts=",repl_stream=4M,ram_spare=0,cache_wait=2",
                               consumer_opts=[",ram_cache=%d,ram_spare=0,cache_wait=2" % (2 * size + (8 << 20))])
    wait_for(lambda: subscribed(prod, 1), what="the consumer subscribed")
    p = prod.path("model.pt")
    for i in range(3):
        data = os.urandom(size)
        with open(p, "wb") as f:       # in pieces, so previews move most of it while written
            for off in range(0, size, 4 << 20):
                f.write(data[off:off + (4 << 20)])
                f.flush()
        wait_version(c1.path("model.pt"), i, timeout=30)
        check_bytes(c1.path("model.pt"), data)
    st = status(c1)
    assert st["repl"]["bytes_streamed_used"] > 0, "no preview was used: the test tests nothing"
    assert st["ram"]["enospc"] == 0, st["ram"]
    assert "No space left on device" not in c1.read_log()
