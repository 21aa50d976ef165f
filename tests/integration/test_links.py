"""Hard links: several names for one inode.  On the producer (nlink, the
inode's attributes and versions under every name, unlink and rename of one
name), permission checks, on the PFS (a link there, a copy where the PFS
refuses links), across a remount from the PFS, and on consumers (one inode
under every name, read-only)."""
import errno
import os
import stat
import subprocess
import time

import pytest

from conftest import VIPERCTL, cluster, lines_until, read, subscribed, wait_for, wait_version, write


def as_nobody(*cmd):
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd],
                          capture_output=True, text=True, timeout=60)


def same_inode(*paths):
    sts = [os.lstat(p) for p in paths]
    assert len({(s.st_dev, s.st_ino) for s in sts}) == 1, [(p, s.st_ino) for p, s in zip(paths, sts)]
    return os.lstat(paths[0])   # after every name was looked up (a remount reads directories lazily)


def test_link_names_one_inode(mnt):
    os.mkdir(mnt.path("d"))
    write(mnt.path("a"), b"one")
    before = os.stat(mnt.path("a"))
    d_before = os.stat(mnt.path("d"))
    time.sleep(0.01)
    os.link(mnt.path("a"), mnt.path("d", "b"))
    st = same_inode(mnt.path("a"), mnt.path("d", "b"))
    assert st.st_nlink == 2
    assert st.st_ctime_ns > before.st_ctime_ns              # the inode changed
    assert st.st_mtime_ns == before.st_mtime_ns             # its data did not
    d_after = os.stat(mnt.path("d"))
    assert d_after.st_mtime_ns > d_before.st_mtime_ns       # the new name's directory did
    assert d_after.st_ctime_ns > d_before.st_ctime_ns
    assert "b" in os.listdir(mnt.path("d"))
    assert [e.inode() for e in os.scandir(mnt.path("d")) if e.name == "b"] == [st.st_ino]
    assert read(mnt.path("d", "b")) == b"one"
    # a new version through one name is the inode's: seen at once under the other
    write(mnt.path("d", "b"), b"two, longer")
    assert read(mnt.path("a")) == b"two, longer"
    with open(mnt.path("a"), "ab") as f:
        f.write(b"!")
    assert read(mnt.path("d", "b")) == b"two, longer!"
    os.chmod(mnt.path("a"), 0o600)
    assert stat.S_IMODE(os.stat(mnt.path("d", "b")).st_mode) == 0o600
    # a third name
    os.link(mnt.path("d", "b"), mnt.path("c"))
    assert same_inode(mnt.path("a"), mnt.path("c")).st_nlink == 3
    # one name goes: the others stay, with one link less and a new ctime
    before = os.stat(mnt.path("c"))
    root_before = os.stat(mnt.mnt)
    time.sleep(0.01)
    os.unlink(mnt.path("a"))
    assert not os.path.exists(mnt.path("a"))
    st = same_inode(mnt.path("d", "b"), mnt.path("c"))
    assert st.st_nlink == 2 and st.st_ctime_ns > before.st_ctime_ns
    root_after = os.stat(mnt.mnt)                           # the name's directory changed
    assert root_after.st_mtime_ns > root_before.st_mtime_ns
    assert root_after.st_ctime_ns > root_before.st_ctime_ns
    assert read(mnt.path("c")) == b"two, longer!"
    write(mnt.path("c"), b"three")
    assert read(mnt.path("d", "b")) == b"three"
    os.unlink(mnt.path("d", "b"))
    assert os.stat(mnt.path("c")).st_nlink == 1
    assert read(mnt.path("c")) == b"three"
    # the inode's first name goes, its other is elsewhere: only the first's directory changes
    write(mnt.path("x"), b"x")
    os.link(mnt.path("x"), mnt.path("d", "y"))
    d_before, root_before = os.stat(mnt.path("d")), os.stat(mnt.mnt)
    time.sleep(0.01)
    os.unlink(mnt.path("x"))
    assert os.stat(mnt.path("d")).st_mtime_ns == d_before.st_mtime_ns
    assert os.stat(mnt.mnt).st_mtime_ns > root_before.st_mtime_ns
    assert os.stat(mnt.path("d", "y")).st_nlink == 1 and read(mnt.path("d", "y")) == b"x"


def test_link_errors(mnt):
    os.mkdir(mnt.path("d"))
    write(mnt.path("f"), b"x")
    write(mnt.path("g"), b"y")
    for src, dst, err in (("d", "d2", errno.EPERM),          # no links to directories
                          ("f", "g", errno.EEXIST),
                          ("missing", "h", errno.ENOENT),
                          ("f", "d/../nodir/h", errno.ENOENT),
                          ("f", ".viperfs-staging", errno.EPERM),   # viperfs' reserved names
                          ("f", ".viperfs-x", errno.EPERM),
                          ("f", "n" * 256, errno.ENAMETOOLONG)):
        with pytest.raises(OSError) as e:
            os.link(mnt.path(src), mnt.path(dst))
        assert e.value.errno == err, (src, dst, e.value)
    assert os.stat(mnt.path("f")).st_nlink == 1
    # a symlink and a FIFO may have links too (link(2) does not follow the symlink)
    os.symlink("f", mnt.path("sym"))
    os.link(mnt.path("sym"), mnt.path("sym2"), follow_symlinks=False)
    assert os.readlink(mnt.path("sym2")) == "f"
    assert same_inode(mnt.path("sym"), mnt.path("sym2")).st_nlink == 2
    os.mkfifo(mnt.path("q"))
    os.link(mnt.path("q"), mnt.path("d", "q"))
    assert stat.S_ISFIFO(same_inode(mnt.path("q"), mnt.path("d", "q")).st_mode)


def test_link_permissions(world):
    os.chmod(world.base, 0o755)                 # mkdtemp's 0700 would stop nobody first
    m = world.mount("allow_other,default_permissions")
    os.chmod(m.mnt, 0o755)
    os.mkdir(m.path("open"))
    os.chmod(m.path("open"), 0o777)
    os.mkdir(m.path("shut"), 0o755)
    assert as_nobody("ls", m.path("shut")).returncode == 0      # it can get there
    write(m.path("open", "mine"), b"x")
    os.chmod(m.path("open", "mine"), 0o644)
    # a file of nobody's own: yes
    r = as_nobody("sh", "-c", "echo n > %s && ln %s %s" % (
        m.path("open", "own"), m.path("open", "own"), m.path("open", "own2")))
    assert r.returncode == 0, r
    assert same_inode(m.path("open", "own"), m.path("open", "own2")).st_uid == 65534
    # not in a directory it cannot write
    r = as_nobody("ln", m.path("open", "own"), m.path("shut", "theirs"))
    assert r.returncode != 0 and "Permission denied" in r.stderr, r
    assert not os.path.lexists(m.path("shut", "theirs"))
    # another's file it cannot write: the kernel's protected_hardlinks, as on a local fs
    with open("/proc/sys/fs/protected_hardlinks") as f:
        protected = f.read().strip() == "1"
    r = as_nobody("ln", m.path("open", "mine"), m.path("open", "theirs"))
    assert (r.returncode != 0 and "Operation not permitted" in r.stderr) if protected else r.returncode == 0, r
    # nor remove a name there
    os.link(m.path("open", "mine"), m.path("shut", "mine"))
    r = as_nobody("rm", "-f", m.path("shut", "mine"))
    assert r.returncode != 0 and os.path.exists(m.path("shut", "mine"))


def test_rename_and_linked_names(mnt):
    write(mnt.path("a"), b"A")
    os.link(mnt.path("a"), mnt.path("b"))
    # a rename onto another name of the same inode does nothing (POSIX)
    os.rename(mnt.path("a"), mnt.path("b"))
    assert same_inode(mnt.path("a"), mnt.path("b")).st_nlink == 2
    # renaming one name moves that name only, and changes the inode's ctime
    before = os.stat(mnt.path("a")).st_ctime_ns
    time.sleep(0.01)
    os.rename(mnt.path("b"), mnt.path("c"))
    assert not os.path.exists(mnt.path("b"))
    st = same_inode(mnt.path("a"), mnt.path("c"))
    assert st.st_nlink == 2 and st.st_ctime_ns > before
    # a rename over a linked name replaces that name only
    write(mnt.path("x"), b"X")
    os.rename(mnt.path("x"), mnt.path("a"))
    assert read(mnt.path("a")) == b"X"
    assert read(mnt.path("c")) == b"A" and os.stat(mnt.path("c")).st_nlink == 1
    # and a linked name renamed over another file
    os.link(mnt.path("c"), mnt.path("c2"))
    os.rename(mnt.path("c2"), mnt.path("a"))
    assert same_inode(mnt.path("a"), mnt.path("c")).st_nlink == 2
    assert read(mnt.path("a")) == b"A"


def test_an_open_file_keeps_its_inode_until_the_last_name(mnt):
    write(mnt.path("a"), b"data")
    os.link(mnt.path("a"), mnt.path("b"))
    with open(mnt.path("a"), "rb") as f:
        os.unlink(mnt.path("a"))
        assert os.fstat(f.fileno()).st_nlink == 1
        os.unlink(mnt.path("b"))
        assert os.fstat(f.fileno()).st_nlink == 0
        assert f.read() == b"data"


def test_links_on_the_pfs_and_after_a_remount(world):
    m = world.mount()
    os.mkdir(m.path("d"))
    write(m.path("a"), b"v1")
    os.link(m.path("a"), m.path("d", "b"))
    os.link(m.path("a"), m.path("c"))
    m.flush()
    st = same_inode(m.pfs_path("a"), m.pfs_path("d", "b"), m.pfs_path("c"))
    assert st.st_nlink == 3
    # a new version is written as a new file on the PFS: its other names follow it
    write(m.path("c"), b"version two")
    m.flush()
    st = same_inode(m.pfs_path("a"), m.pfs_path("d", "b"), m.pfs_path("c"))
    assert st.st_nlink == 3 and read(m.pfs_path("d", "b")) == b"version two"
    # one name goes, on the PFS too (its own name: the inode takes another's)
    os.unlink(m.path("a"))
    m.flush()
    assert not os.path.lexists(m.pfs_path("a"))
    assert same_inode(m.pfs_path("d", "b"), m.pfs_path("c")).st_nlink == 2
    write(m.path("d", "b"), b"three")
    m.flush()
    assert same_inode(m.pfs_path("d", "b"), m.pfs_path("c")).st_nlink == 2
    assert read(m.pfs_path("c")) == b"three"
    # a link made before the file's first flush, and a link of a symlink
    write(m.path("late"), b"late")
    os.link(m.path("late"), m.path("late2"))
    os.symlink("c", m.path("sym"))
    os.link(m.path("sym"), m.path("sym2"), follow_symlinks=False)
    m.flush()
    assert same_inode(m.pfs_path("late"), m.pfs_path("late2")).st_nlink == 2
    assert same_inode(m.pfs_path("sym"), m.pfs_path("sym2")).st_nlink == 2
    m.stop()

    again = world.mount(pfs=m.pfs, mnt=world.dir("again"))
    st = same_inode(again.path("d", "b"), again.path("c"))
    assert st.st_nlink == 2 and read(again.path("c")) == b"three"
    assert same_inode(again.path("late"), again.path("late2")).st_nlink == 2
    assert same_inode(again.path("sym"), again.path("sym2")).st_nlink == 2
    # still one inode: a new version under one name is seen under the other
    write(again.path("c"), b"four")
    assert read(again.path("d", "b")) == b"four"
    os.unlink(again.path("c"))
    assert os.stat(again.path("d", "b")).st_nlink == 1
    again.flush()
    assert not os.path.lexists(m.pfs_path("c"))
    assert os.stat(m.pfs_path("d", "b")).st_nlink == 1 and read(m.pfs_path("d", "b")) == b"four"


def test_a_remount_knows_every_name_at_once(world):
    """A remount reads directories when they are first looked at; a file
    with hard links on the PFS makes it read the whole tree once, so the
    first stat has the link count, and a new version reaches every name."""
    m = world.mount()
    os.makedirs(m.path("later", "deeper"))
    write(m.path("a"), b"old")
    os.link(m.path("a"), m.path("later", "deeper", "b"))
    m.flush()
    m.stop()
    again = world.mount(pfs=m.pfs, mnt=world.dir("again"))
    assert os.stat(again.path("a")).st_nlink == 2           # 'later' was not looked at
    assert "reading the whole PFS tree once" in again.read_log()
    write(again.path("a"), b"new")
    again.flush()
    st = same_inode(m.pfs_path("a"), m.pfs_path("later", "deeper", "b"))
    assert st.st_nlink == 2 and read(m.pfs_path("later", "deeper", "b")) == b"new"
    assert read(again.path("later", "deeper", "b")) == b"new"


def test_links_reach_consumers(world):
    net, prod, (c1,) = cluster(world, consumers=1)
    wait_for(lambda: subscribed(prod, 1), what="the subscription")
    os.mkdir(prod.path("d"))
    write(prod.path("a"), b"one")
    os.link(prod.path("a"), prod.path("d", "b"))
    write(prod.path("marker"), b"1")
    wait_version(c1.path("marker"), 0)          # ops arrive in order: the link is there
    st = same_inode(c1.path("a"), c1.path("d", "b"))
    assert st.st_nlink == 2 and read(c1.path("d", "b")) == b"one"
    # read-only there
    with pytest.raises(OSError) as e:
        os.link(c1.path("a"), c1.path("c"))
    assert e.value.errno == errno.EROFS
    # a new version through either name shows under both
    write(prod.path("d", "b"), b"two!")
    wait_for(lambda: read(c1.path("a")) == b"two!" and read(c1.path("d", "b")) == b"two!",
             what="the new version under both names")
    assert same_inode(c1.path("a"), c1.path("d", "b")).st_nlink == 2
    write(prod.path("a"), b"three")
    wait_for(lambda: read(c1.path("d", "b")) == b"three", what="version three under d/b")
    assert same_inode(c1.path("a"), c1.path("d", "b")).st_nlink == 2
    # a FIFO with two names, chmod'ed: the node is sent again, and its other name with it
    os.mkfifo(prod.path("q"))
    os.link(prod.path("q"), prod.path("d", "q2"))
    os.chmod(prod.path("d", "q2"), 0o600)
    # one name goes: the other stays
    os.unlink(prod.path("a"))
    write(prod.path("marker"), b"2")
    wait_version(c1.path("marker"), 1)
    assert not os.path.lexists(c1.path("a"))
    assert os.stat(c1.path("d", "b")).st_nlink == 1 and read(c1.path("d", "b")) == b"three"
    st = same_inode(c1.path("q"), c1.path("d", "q2"))
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_nlink == 2
    # a consumer that subscribes later gets the links in its catch-up
    os.link(prod.path("d", "b"), prod.path("e"))
    c1.stop()
    late = world.mount(c1.opts, pfs=c1.pfs, mnt=world.dir("late"), prefix=net.prefix(1))
    wait_for(lambda: "caught up with the producer" in late.read_log(), what="the catch-up")
    st = same_inode(late.path("d", "b"), late.path("e"))
    assert st.st_nlink == 2 and read(late.path("e")) == b"three"


def test_watchers_see_the_new_name_and_versions_under_every_name(world):
    """inotify: IN_CREATE for the new name, on the producer and on a
    consumer (whose installer replays link(2)); viperctl watch: a version
    event for the new name, and for each name at every new version."""
    net, prod, (c1,) = cluster(world, consumers=1)
    wait_for(lambda: subscribed(prod, 1), what="the subscription")
    os.mkdir(prod.path("d"))
    write(prod.path("a"), b"1")
    write(prod.path("marker"), b"1")
    wait_version(c1.path("marker"), 0)
    watchers = []
    for m in (prod, c1):
        w = world.spawn(["stdbuf", "-oL", "inotifywait", "-m", "-r", "--format", "%e %w%f", m.mnt],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        lines_until(w, lambda l: "Watches established" in l, stream="stderr")
        watchers.append(w)
    versions = world.spawn([VIPERCTL, "watch", c1.mnt], stdout=subprocess.PIPE)
    lines_until(versions, lambda l: '"watching"' in l)
    os.link(prod.path("a"), prod.path("d", "b"))
    for m, w in zip((prod, c1), watchers):
        lines_until(w, lambda l: l.strip() == "CREATE %s" % m.path("d", "b"))
    lines_until(versions, lambda l: '"path":"d/b"' in l and '"version":1' in l)
    write(prod.path("a"), b"22")
    got = set()

    def both(line):
        got.update(p for p in ("a", "d/b") if '"path":"%s"' % p in line and '"version":2' in line)
        return got == {"a", "d/b"}
    lines_until(versions, both)
    assert read(c1.path("d", "b")) == b"22"


def test_links_of_special_nodes_and_a_moved_directory(world):
    """A FIFO's names are links on the PFS too; a device the PFS refuses is a
    stand-in, and each of its names is a stand-in of its own (a mount trusts
    only a stand-in with one link), which a remount loads as two nodes.  A
    directory renamed with a name in it takes the name along on the PFS."""
    m = world.mount(prefix=["setpriv", "--inh-caps=-mknod", "--bounding-set=-mknod"])
    os.mkdir(m.path("d"))
    os.mkfifo(m.path("q"))
    os.link(m.path("q"), m.path("d", "q2"))
    os.mknod(m.path("null"), stat.S_IFCHR | 0o640, os.makedev(1, 3))
    os.link(m.path("null"), m.path("null2"))
    write(m.path("f"), b"f")
    os.link(m.path("f"), m.path("d", "f2"))
    m.flush()
    os.rename(m.path("d"), m.path("moved"))
    m.flush()
    assert stat.S_ISFIFO(same_inode(m.pfs_path("q"), m.pfs_path("moved", "q2")).st_mode)
    assert same_inode(m.pfs_path("f"), m.pfs_path("moved", "f2")).st_nlink == 2
    for name in ("null", "null2"):
        st = os.lstat(m.pfs_path(name))
        assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1, name
        assert os.getxattr(m.pfs_path(name), "user.viperfs.node").startswith(b"%o " % stat.S_IFCHR)
    assert "kept as an empty file with the xattr" in m.read_log()
    m.stop()
    again = world.mount(pfs=m.pfs, mnt=world.dir("again"))
    assert same_inode(again.path("q"), again.path("moved", "q2")).st_nlink == 2
    assert same_inode(again.path("f"), again.path("moved", "f2")).st_nlink == 2
    for name in ("null", "null2"):
        assert os.lstat(again.path(name)).st_rdev == os.makedev(1, 3), name


def test_viperctl_flush_of_another_name_flushes_the_file(world):
    """viperctl flush and warm of a name that is not the inode's own."""
    m = world.mount("flush_interval=3600")
    write(m.path("a"), b"held back")
    os.link(m.path("a"), m.path("b"))
    m.flush(m.path("b"))
    assert same_inode(m.pfs_path("a"), m.pfs_path("b")).st_nlink == 2
    assert read(m.pfs_path("b")) == b"held back"


def test_viperctl_warm_of_another_name_warms_the_file(world):
    m = world.mount()
    os.mkdir(m.path("d"))
    write(m.path("a"), b"x" * 4096)
    os.link(m.path("a"), m.path("d", "b"))
    m.stop()
    again = world.mount(pfs=m.pfs, mnt=world.dir("again"))
    r = again.ctl("warm", again.path("d", "b"))     # the root, with 'a', is read first
    assert "1 files, 4.0 KiB read" in r.stdout, r.stdout
