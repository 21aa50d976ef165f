"""POSIX behaviour that model loaders and servers rely on, on a real mount."""
import ctypes
import errno
import fcntl
import mmap
import os
import stat
import subprocess
import time

import pytest


from conftest import read, write


def test_create_write_read_and_version_xattr(mnt):
    p = mnt.path("a.bin")
    data = os.urandom(3 * 1024 * 1024 + 17)
    write(p, data)
    assert read(p) == data
    assert os.stat(p).st_size == len(data)
    assert os.getxattr(p, "user.viperfs.version") == b"1"
    write(p, b"second")
    assert os.getxattr(p, "user.viperfs.version") == b"2"
    assert read(p) == b"second"
    assert mnt.ctl("version", p).stdout.strip() == "2"


def test_positional_overwrite_holes_and_truncate(mnt):
    p = mnt.path("h.bin")
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
    os.pwrite(fd, b"tail", 5 * 1024 * 1024)        # a hole before it
    os.pwrite(fd, b"head", 0)
    os.pwrite(fd, b"XY", 1)                           # overwrite in place
    assert os.pread(fd, 4, 0) == b"hXYd"              # reads own writes
    os.ftruncate(fd, 5 * 1024 * 1024 + 2)
    os.close(fd)
    data = read(p)
    assert len(data) == 5 * 1024 * 1024 + 2
    assert data[:4] == b"hXYd"
    assert data[4:5 * 1024 * 1024] == bytes(5 * 1024 * 1024 - 4)
    assert data[-2:] == b"ta"
    os.truncate(p, 3)                                 # truncate a closed file
    assert read(p) == b"hXY"
    with open(p, "r+b") as f:                         # reopen and extend
        f.seek(10)
        f.write(b"!")
    assert read(p) == b"hXY" + bytes(7) + b"!"


def test_namespace_ops_and_dir_mtime(mnt):
    d = mnt.path("models")
    os.mkdir(d)
    m0 = os.stat(d).st_mtime_ns
    write(os.path.join(d, "x"), b"1")
    m1 = os.stat(d).st_mtime_ns
    assert m1 > m0                                    # create changes it
    os.rename(os.path.join(d, "x"), os.path.join(d, "y"))
    m2 = os.stat(d).st_mtime_ns
    assert m2 > m1                                    # rename changes it
    os.unlink(os.path.join(d, "y"))
    assert os.stat(d).st_mtime_ns > m2                # unlink changes it
    assert os.listdir(d) == []
    os.makedirs(mnt.path("a", "b", "c"))
    write(mnt.path("a", "b", "c", "f"), b"deep")
    os.rename(mnt.path("a"), mnt.path("z"))
    assert read(mnt.path("z", "b", "c", "f")) == b"deep"
    with pytest.raises(OSError) as e:
        os.rmdir(mnt.path("z"))
    assert e.value.errno == errno.ENOTEMPTY
    # atomic replacing rename of files and of an empty directory
    write(mnt.path("old"), b"old")
    write(mnt.path("new"), b"new")
    os.replace(mnt.path("new"), mnt.path("old"))
    assert read(mnt.path("old")) == b"new"
    assert not os.path.exists(mnt.path("new"))
    os.mkdir(mnt.path("e1"))
    os.mkdir(mnt.path("e2"))
    os.replace(mnt.path("e1"), mnt.path("e2"))
    assert sorted(os.listdir(mnt.mnt)) == ["e2", "models", "old", "z"]


def test_symlink_attrs_and_bad_names(mnt):
    write(mnt.path("target"), b"t")
    os.symlink("target", mnt.path("link"))
    assert os.readlink(mnt.path("link")) == "target"
    assert read(mnt.path("link")) == b"t"
    assert stat.S_ISLNK(os.lstat(mnt.path("link")).st_mode)
    os.chmod(mnt.path("target"), 0o600)
    assert stat.S_IMODE(os.stat(mnt.path("target")).st_mode) == 0o600
    os.chown(mnt.path("target"), 1234, 5678)
    st = os.stat(mnt.path("target"))
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.utime(mnt.path("target"), ns=(1_000_000_000, 2_000_000_000))
    assert os.stat(mnt.path("target")).st_mtime_ns == 2_000_000_000
    with pytest.raises(OSError) as e:
        open(mnt.path("n" * 256), "wb")
    assert e.value.errno == errno.ENAMETOOLONG
    with pytest.raises(OSError) as e:
        os.mkdir(mnt.path(".viperfs-staging"))
    assert e.value.errno == errno.EPERM
    os.link(mnt.path("target"), mnt.path("hard"))     # hard links: test_links.py
    assert os.stat(mnt.path("hard")).st_ino == os.stat(mnt.path("target")).st_ino


def test_fsync_flock_statfs_fallocate(mnt):
    p = mnt.path("f")
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
    os.write(fd, b"data")
    os.fsync(fd)
    os.fdatasync(fd)
    dfd = os.open(mnt.mnt, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    os.close(dfd)
    os.posix_fallocate(fd, 0, 8192)
    assert os.fstat(fd).st_size == 8192
    fd2 = os.open(p, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    with pytest.raises(BlockingIOError):
        fcntl.flock(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB)
    fcntl.flock(fd, fcntl.LOCK_UN)
    fcntl.flock(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd2)
    os.close(fd)
    sv = os.statvfs(mnt.mnt)
    assert sv.f_blocks > 0 and sv.f_namemax == 255


def test_mmap_shared_and_private(mnt):
    p = mnt.path("w.npy")
    data = os.urandom(2 * 1024 * 1024)
    write(p, data)
    with open(p, "rb") as f:
        with mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) as m:
            assert m[:] == data
        with mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE,
                       prot=mmap.PROT_READ | mmap.PROT_WRITE) as m:
            m[0:4] = b"priv"                # private: not written back
            assert m[:4] == b"priv"
    assert read(p) == data


def test_reader_of_replaced_file_keeps_old_bytes(mnt):
    p = mnt.path("model.pt")
    old = os.urandom(1 << 20)
    write(p, old)
    with open(p, "rb") as reader:
        head = reader.read(1000)
        new = os.urandom(1 << 20)
        write(mnt.path("model.pt.tmp"), new)
        os.replace(mnt.path("model.pt.tmp"), p)
        assert head + reader.read() == old        # the version it opened
    assert read(p) == new                         # new opens get the new one


def test_existing_pfs_tree_is_shown_and_read_lazily(world):
    pfs = world.dir("pfs")
    os.makedirs(os.path.join(pfs, "run1", "ckpt"))
    blob = os.urandom(3 << 20)
    write(os.path.join(pfs, "run1", "ckpt", "weights.bin"), blob)
    os.symlink("ckpt/weights.bin", os.path.join(pfs, "run1", "latest"))
    m = world.mount()
    assert sorted(os.listdir(m.mnt)) == ["run1"]      # staging folder hidden
    assert sorted(os.listdir(m.path("run1"))) == ["ckpt", "latest"]
    assert read(m.path("run1", "latest")) == blob
    assert os.getxattr(m.path("run1", "ckpt", "weights.bin"), "user.viperfs.state") == b"flushed"


def test_daemon_mode_returns_once_mounted_and_bad_pfs_is_refused(world):
    from conftest import VIPERFS, is_mounted
    mnt = world.dir("dmnt")
    r = subprocess.run([VIPERFS, "-o", "control=%s/d.sock,ram_prefault=0" % world.base,
                        world.dir("dpfs"), mnt], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert is_mounted(mnt)                  # ready when the command returned
    write(os.path.join(mnt, "x"), b"y")
    subprocess.run(["fusermount3", "-u", mnt], check=True)

    r = subprocess.run([VIPERFS, world.base + "/nonexistent", mnt],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "nonexistent" in r.stderr and "No such file" in r.stderr
    ro = world.make_tmpfs("ro-pfs", "16m")
    world.set_readonly(ro, True)
    r = subprocess.run([VIPERFS, ro, mnt], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "not writable" in r.stderr and "Read-only" in r.stderr
    r = subprocess.run([VIPERFS, "-o", "flush=sometimes", world.dir("dpfs"), mnt],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "flush" in r.stderr
    r = subprocess.run([VIPERFS, "-o", "ram_cach=1G", world.dir("dpfs"), mnt],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown option 'ram_cach'" in r.stderr
    assert not is_mounted(mnt)


def test_unsafe_mounts_are_refused(world):
    """A mount point that is a file, one that is a viperfs mount already, a PFS
    directory another mount on this node serves, and a mount point with files
    in it (without nonempty=1) are refused with exit 1 and a reason; nothing is
    mounted.  nonempty=1 mounts over the files, which come back after."""
    from conftest import VIPERFS, is_mounted
    m = world.mount()
    write(m.path("served"), b"x")

    def refused(pfs, mnt, why, opts=""):
        r = subprocess.run([VIPERFS, "-o", "control=%s/r.sock,ram_prefault=0%s" % (world.base, opts),
                            pfs, mnt], capture_output=True, text=True, timeout=60)
        if r.returncode == 0:
            subprocess.run(["fusermount3", "-uz", mnt])
        assert r.returncode == 1 and why in r.stderr, (r.returncode, r.stderr)

    afile = os.path.join(world.base, "afile")
    write(afile, b"not a directory")
    refused(world.dir("pfs2"), afile, "is not a directory")
    refused(world.dir("pfs3"), m.mnt, "is a viperfs mount already")
    refused(m.pfs, world.dir("mnt2"), "is served by another viperfs mount on this node")
    assert not is_mounted(world.base + "/mnt2")
    full = world.dir("full")
    write(os.path.join(full, "mine.txt"), b"hidden, not lost")
    refused(world.dir("pfs4"), full, "is not empty")
    assert read(m.path("served")) == b"x"          # the first mount goes on

    r = subprocess.run([VIPERFS, "-o", "control=%s/n.sock,ram_prefault=0,nonempty=1" % world.base,
                        world.dir("pfs4"), full], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    try:
        assert is_mounted(full) and os.listdir(full) == []
    finally:
        subprocess.run(["fusermount3", "-u", full], check=True)
    assert read(os.path.join(full, "mine.txt")) == b"hidden, not lost"
    # once the first mount is gone, its PFS directory may be mounted again
    m.stop()
    r = subprocess.run([VIPERFS, "-o", "control=%s/a.sock,ram_prefault=0" % world.base,
                        m.pfs, world.dir("mnt5")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    subprocess.run(["fusermount3", "-u", world.base + "/mnt5"], check=True)


def test_config_file_and_help(world):
    from conftest import VIPERFS
    cfg = os.path.join(world.base, "viperfs.conf")
    with open(cfg, "w") as f:
        f.write("# test\nfsync = pfs\nflush_interval = 1h\n")
    m = world.mount("config=%s" % cfg)
    p = m.path("durable")
    with open(p, "wb") as f:
        f.write(b"on the pfs when fsync returns")
        f.flush()
        os.fsync(f.fileno())
        # fsync=pfs: the bytes are on the PFS now, despite flush_interval=1h
        assert read(m.pfs_path("durable")) == b"on the pfs when fsync returns"
    h = subprocess.run([VIPERFS, "--help"], capture_output=True, text=True)
    assert h.returncode == 0
    for opt in ("ram_cache", "flush_bw", "flush_interval", "fsync", "cache_wait"):
        assert opt in h.stdout


def test_a_child_closing_an_inherited_descriptor_does_not_commit(mnt):
    """FLUSH comes with every close(); only the writer's own close commits."""
    p = mnt.path("ckpt.pt")
    with open(p, "wb") as f:
        f.write(b"a" * (2 << 20))
        # fork + exec: the close-on-exec descriptor is closed in the child at exec
        subprocess.run(["true"], check=True)
        # fork + exit: a DataLoader-style worker closes what it inherited
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        assert os.getxattr(p, "user.viperfs.version") == b"0"     # nothing committed yet
        f.write(b"b" * 10)
    assert os.getxattr(p, "user.viperfs.version") == b"1"         # the writer's close committed
    with open(p, "rb") as f:
        assert f.read() == b"a" * (2 << 20) + b"b" * 10


def test_a_shell_redirect_commits_one_version(mnt):
    """`cmd > file` closes a dup of the descriptor before cmd writes: no empty version then."""
    p = mnt.path("out.txt")
    subprocess.run("echo hello > '%s'" % p, shell=True, check=True)
    assert os.getxattr(p, "user.viperfs.version") == b"1"
    assert read(p) == b"hello\n"
    # an empty file still is a version, committed at its last close (RELEASE, after close returns)
    subprocess.run(["touch", mnt.path("empty")], check=True)
    r = mnt.ctl("wait", mnt.path("empty"), "--newer-than", "0", "--timeout", "30")
    assert r.stdout.strip() == "1"
    assert read(mnt.path("empty")) == b""


def test_an_unlinked_open_file_has_no_links(mnt):
    with open(mnt.path("gone"), "wb") as f:
        f.write(b"x")
        assert os.fstat(f.fileno()).st_nlink == 1
        os.unlink(mnt.path("gone"))
        assert os.fstat(f.fileno()).st_nlink == 0
    os.mkdir(mnt.path("d"))
    fd = os.open(mnt.path("d"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rmdir(mnt.path("d"))
        assert os.fstat(fd).st_nlink == 0
    finally:
        os.close(fd)
    assert os.stat(mnt.mnt).st_nlink >= 2      # the root is not unlinked


def as_nobody(*cmd):
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd],
                          capture_output=True, text=True, timeout=60)


def test_setuid_and_setgid_go_at_a_write_by_another_user(world):
    """As on tmpfs: a write by a user without CAP_FSETID clears setuid, and
    setgid where the group may execute; a truncate too; root's write keeps
    them.  The kernel's cached mode is dropped, so stat sees it at once."""
    os.chmod(world.base, 0o755)                 # mkdtemp's 0700 would stop nobody first
    m = world.mount("allow_other,default_permissions")
    cases = {"suid": (0o4777, 0o777), "sgid": (0o2777, 0o777), "both": (0o6777, 0o777),
             "sgid-noexec": (0o2767, 0o2767)}     # a mandatory-lock mark, kept
    for name, (mode, _) in cases.items():
        write(m.path(name), b"x")
        os.chmod(m.path(name), mode)
        assert stat.S_IMODE(os.stat(m.path(name)).st_mode) == mode
        r = as_nobody("sh", "-c", "echo more >> '%s'" % m.path(name))
        assert r.returncode == 0, r.stderr
    for name, (_, want) in cases.items():
        assert stat.S_IMODE(os.stat(m.path(name)).st_mode) == want, name
    write(m.path("cut"), b"0123456789")
    os.chmod(m.path("cut"), 0o6777)
    assert as_nobody("truncate", "-s", "3", m.path("cut")).returncode == 0
    assert stat.S_IMODE(os.stat(m.path("cut")).st_mode) == 0o777
    write(m.path("root"), b"x")
    os.chmod(m.path("root"), 0o6777)
    with open(m.path("root"), "ab") as f:
        f.write(b"by root")
    assert stat.S_IMODE(os.stat(m.path("root")).st_mode) == 0o6777
    m.flush()
    assert stat.S_IMODE(os.stat(m.pfs_path("suid")).st_mode) == 0o777      # and so on the PFS


FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE = 0x01, 0x02, 0x10


def fallocate(fd, mode, off, length):
    """fallocate(2) itself (posix_fallocate would write zeros where it fails): 0 or errno."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    return 0 if libc.fallocate(fd, mode, off, length) == 0 else ctypes.get_errno()


def test_fallocate_reserves_cache_memory(world):
    """Mode 0 grows the file (zeros) and is a change the close commits;
    KEEP_SIZE reserves without growing; both fail with ENOSPC when the cache
    cannot hold the range, and the file's bytes are untouched then; holes
    and zero ranges are refused (EOPNOTSUPP)."""
    m = world.mount("ram_cache=96M,ram_spare=0,cache_wait=0.2")
    p = m.path("db")
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"head")
        assert fallocate(fd, 0, 0, 8 << 20) == 0
        assert os.fstat(fd).st_size == 8 << 20
        assert fallocate(fd, FALLOC_FL_KEEP_SIZE, 8 << 20, 8 << 20) == 0
        assert os.fstat(fd).st_size == 8 << 20          # kept
        assert fallocate(fd, 0, 0, 1 << 30) == errno.ENOSPC      # more than the cache
        assert fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 1 << 30) == errno.ENOSPC
        assert fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096) in (
            errno.EOPNOTSUPP, errno.ENOTSUP)
        assert fallocate(fd, FALLOC_FL_ZERO_RANGE, 0, 4096) in (errno.EOPNOTSUPP, errno.ENOTSUP)
        os.pwrite(fd, b"tail", (8 << 20) - 4)
    finally:
        os.close(fd)
    data = read(p)
    assert len(data) == 8 << 20 and data[:4] == b"head" and data[-4:] == b"tail"
    assert data[4:-4].count(0) == len(data) - 8
    assert "fallocate refused" in m.read_log()
    m.flush()
    assert os.path.getsize(m.pfs_path("db")) == 8 << 20       # a version, flushed whole
    # a growth alone is a new version too
    v = os.getxattr(p, "user.viperfs.version")
    fd = os.open(p, os.O_RDWR)
    assert fallocate(fd, 0, 0, 9 << 20) == 0
    os.close(fd)
    assert int(os.getxattr(p, "user.viperfs.version")) == int(v) + 1
    assert os.path.getsize(p) == 9 << 20


def test_paths_up_to_path_max(world):
    """A path of PATH_MAX - 1 bytes from the mount root (15 directories of
    NAME_MAX, then a file), as on tmpfs: made, written, read, flushed to the
    PFS; one byte more is ENAMETOOLONG."""
    m = world.mount()
    names = [chr(ord("a") + i) * 255 for i in range(15)]
    last = "f" * (4095 - 15 * 256)
    assert len("/".join(names + [last])) == 4095

    def walk(root):
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        for n in names:
            try:
                os.mkdir(n, dir_fd=fd)
            except FileExistsError:
                pass
            nfd = os.open(n, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return fd

    fd = walk(m.mnt)
    try:
        f = os.open(last, os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd)
        os.write(f, b"deep")
        os.close(f)
        with pytest.raises(OSError) as e:
            os.open(last + "g", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd)
        assert e.value.errno == errno.ENAMETOOLONG
        f = os.open(last, os.O_RDONLY, dir_fd=fd)
        assert os.read(f, 10) == b"deep"
        os.close(f)
    finally:
        os.close(fd)
    m.flush()
    fd = walk(m.pfs)
    try:
        f = os.open(last, os.O_RDONLY, dir_fd=fd)
        assert os.read(f, 10) == b"deep"
        os.close(f)
    finally:
        os.close(fd)


def test_a_versions_times_are_its_last_changes_not_its_commits(mnt):
    """As on a local file system, a file's mtime and ctime are those of its last
    write (or of its creation), not of the close() that commits the version: a
    create and a close change nothing, and a write 0.3 s before the close is
    the file's time.  The suite's "failed chown keeps ctime" check caught the
    commit's time, a second later across a tick."""
    p = mnt.path("created.bin")
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    made = os.fstat(fd)
    time.sleep(0.3)                 # the gap between the change and the commit
    os.close(fd)
    assert fresh_times(p) == (made.st_mtime_ns, made.st_ctime_ns)

    fd = os.open(p, os.O_WRONLY)
    os.write(fd, b"x" * 4096)
    wrote = time.time_ns()
    time.sleep(0.3)
    os.close(fd)
    assert os.getxattr(p, "user.viperfs.version") == b"2"
    mtime, ctime = fresh_times(p)
    assert made.st_mtime_ns < mtime <= wrote
    assert ctime == mtime


def fresh_times(path):
    """(mtime_ns, ctime_ns) from the daemon, not from the kernel's attribute
    cache: statx(AT_STATX_FORCE_SYNC) makes FUSE ask again."""
    buf = ctypes.create_string_buffer(256)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.statx(-100, os.fsencode(path), 0x2000, 0x7ff, buf) != 0:     # AT_FDCWD, FORCE_SYNC
        raise OSError(ctypes.get_errno(), "statx", path)

    def ts(off):
        sec, nsec = int.from_bytes(buf[off:off + 8], "little", signed=True), int.from_bytes(buf[off + 8:off + 12], "little")
        return sec * 1000000000 + nsec
    return ts(112), ts(96)          # stx_mtime, stx_ctime


def test_times_set_or_changed_while_a_writer_is_open_survive_its_close(mnt, tmp_path):
    """cp -p sets the copy's times through the descriptor before it closes it:
    the commit keeps them.  A chmod after the last write is the file's ctime:
    the commit never moves ctime back to the write."""
    src = tmp_path / "old.bin"
    src.write_bytes(os.urandom(3 << 20))
    os.utime(src, ns=(978307200_000000000, 978307200_123456789))      # 2001-01-01
    dst = mnt.path("copied.bin")
    subprocess.run(["cp", "-p", str(src), dst], check=True)
    assert fresh_times(dst)[0] == 978307200_123456789
    assert read(dst) == src.read_bytes()

    p = mnt.path("chmodded.bin")
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"y" * 4096)
    time.sleep(0.05)                # the chmod must come after the write's time
    os.fchmod(fd, 0o600)
    changed = os.fstat(fd).st_ctime_ns
    os.close(fd)
    mtime, ctime = fresh_times(p)
    assert ctime >= changed > mtime
