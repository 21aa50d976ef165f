"""FIFOs, UNIX sockets and device nodes: ordinary inodes whose I/O is the
kernel's.  Made, changed and removed on the producer as any node, flushed
to the PFS (as themselves, or as an empty stand-in file with the node in
an xattr where the PFS refuses them), restored at a mount from the PFS,
and replicated to consumers as metadata (read-only there)."""
import errno
import os
import socket
import stat
import threading

import pytest

from conftest import cluster, read, subscribed, wait_for, wait_version, write

NODES = {   # name: (type bits, rdev)
    "fifo": (stat.S_IFIFO, 0),
    "null": (stat.S_IFCHR, os.makedev(1, 3)),
    "loop": (stat.S_IFBLK, os.makedev(7, 0)),
}


def make_nodes(root):
    for name, (kind, rdev) in NODES.items():
        os.mknod(os.path.join(root, name), kind | 0o640, rdev)
    s = socket.socket(socket.AF_UNIX)
    s.bind(os.path.join(root, "sock"))
    s.close()


def assert_nodes(root, modes=None):
    for name, (kind, rdev) in NODES.items():
        st = os.lstat(os.path.join(root, name))
        assert stat.S_IFMT(st.st_mode) == kind, (root, name, oct(st.st_mode))
        assert st.st_rdev == rdev, (name, st.st_rdev)
        assert st.st_size == 0
        if modes:
            assert stat.S_IMODE(st.st_mode) == modes.get(name, 0o640), (name, oct(st.st_mode))
    assert stat.S_ISSOCK(os.lstat(os.path.join(root, "sock")).st_mode)


def test_special_nodes_on_the_producer_the_pfs_and_a_remount(world):
    m = world.mount()
    make_nodes(m.mnt)
    assert_nodes(m.mnt)
    # a FIFO's I/O is the kernel's: a writer and a reader meet through it
    got = []
    reader = threading.Thread(target=lambda: got.append(read(m.path("fifo"))))
    reader.start()
    write(m.path("fifo"), b"through the pipe")
    reader.join(30)
    assert got == [b"through the pipe"]
    # a device stays shut (the mount is nodev), as on any FUSE mount
    with pytest.raises(PermissionError):
        open(m.path("null"), "rb")
    # changed as any node
    os.chmod(m.path("fifo"), 0o600)
    os.chown(m.path("loop"), 65534, 65534)
    os.utime(m.path("null"), (1_600_000_000, 1_600_000_000))
    os.rename(m.path("sock"), m.path("sock2"))
    os.rename(m.path("sock2"), m.path("sock"))
    os.mknod(m.path("gone"), stat.S_IFIFO | 0o644)
    os.unlink(m.path("gone"))
    before = os.lstat(m.path("null")).st_ctime_ns
    os.chmod(m.path("null"), 0o644)
    assert os.lstat(m.path("null")).st_ctime_ns >= before
    # mknod of a regular file is an empty file
    os.mknod(m.path("plain"), stat.S_IFREG | 0o644)
    assert os.path.isfile(m.path("plain")) and os.path.getsize(m.path("plain")) == 0
    m.flush()
    modes = {"fifo": 0o600, "null": 0o644}
    assert_nodes(m.pfs, modes)                  # the PFS holds the nodes, with their modes
    assert os.lstat(m.pfs_path("loop")).st_uid == 65534
    assert os.lstat(m.pfs_path("null")).st_mtime == 1_600_000_000
    assert not os.path.lexists(m.pfs_path("gone"))
    m.stop()

    again = world.mount(pfs=m.pfs, mnt=world.dir("again"))
    assert_nodes(again.mnt, modes)
    assert os.lstat(again.path("loop")).st_uid == 65534
    os.unlink(again.path("fifo"))
    again.flush()
    assert not os.path.lexists(m.pfs_path("fifo"))


def test_a_pfs_that_refuses_devices_keeps_a_stand_in(world):
    """A daemon without CAP_MKNOD cannot make a device on the PFS: an empty
    0600 file of its own with the node in user.viperfs.node (type, rdev,
    mode, owner) stands in for it, and a mount turns it back into the node.
    A look-alike that the daemon did not make (another owner, another mode)
    stays a plain empty file: whoever may write the PFS gets no device."""
    m = world.mount(prefix=["setpriv", "--inh-caps=-mknod", "--bounding-set=-mknod"])
    make_nodes(m.mnt)
    os.chown(m.path("null"), 65534, 65534)
    m.flush()
    st = os.lstat(m.pfs_path("null"))
    assert stat.S_ISREG(st.st_mode) and st.st_size == 0 and stat.S_IMODE(st.st_mode) == 0o600
    assert os.getxattr(m.pfs_path("null"), "user.viperfs.node") == b"%o %d 640 65534 65534" % (
        stat.S_IFCHR, os.makedev(1, 3))
    assert stat.S_ISFIFO(os.lstat(m.pfs_path("fifo")).st_mode)     # FIFOs need no capability
    assert "kept as an empty file with the xattr user.viperfs.node" in m.read_log()
    os.chmod(m.path("null"), 0o600)             # a chmod of the node goes into the xattr
    m.flush()
    assert stat.S_IMODE(os.lstat(m.pfs_path("null")).st_mode) == 0o600
    assert b" 600 65534 " in os.getxattr(m.pfs_path("null"), "user.viperfs.node")
    m.stop()
    # look-alikes a PFS user could make
    for name, owner, mode in (("fake1", 65534, 0o600), ("fake2", 0, 0o644)):
        write(m.pfs_path(name), b"")
        os.chown(m.pfs_path(name), owner, owner)
        os.chmod(m.pfs_path(name), mode)
        os.setxattr(m.pfs_path(name), "user.viperfs.node", b"%o %d 666 0 0" % (
            stat.S_IFBLK, os.makedev(8, 0)))
    again = world.mount(pfs=m.pfs, mnt=world.dir("again"))
    assert_nodes(again.mnt, {"null": 0o600})
    assert (os.lstat(again.path("null")).st_uid, os.lstat(again.path("null")).st_gid) == (65534, 65534)
    for name in ("fake1", "fake2"):
        assert stat.S_ISREG(os.lstat(again.path(name)).st_mode), name


def test_special_nodes_reach_consumers_as_metadata(world):
    net, prod, (c1,) = cluster(world, consumers=1)
    wait_for(lambda: subscribed(prod, 1), what="the subscription")   # then changes arrive in order
    make_nodes(prod.mnt)
    os.chmod(prod.path("fifo"), 0o600)
    write(prod.path("marker"), b"after the nodes")
    wait_version(c1.path("marker"), 0)          # ops arrive in order: the nodes are there
    assert_nodes(c1.mnt, {"fifo": 0o600})
    # read-only there, like every other node
    for change in (lambda: os.unlink(c1.path("fifo")), lambda: os.chmod(c1.path("null"), 0o600),
                   lambda: os.mknod(c1.path("new"), stat.S_IFIFO | 0o644)):
        with pytest.raises(OSError) as e:
            change()
        assert e.value.errno == errno.EROFS
    # a consumer that subscribes later gets them in its catch-up
    os.unlink(prod.path("loop"))
    write(prod.path("marker"), b"after the unlink")
    wait_version(c1.path("marker"), 1)
    assert not os.path.lexists(c1.path("loop"))
    c1.stop()
    late = world.mount(c1.opts, pfs=c1.pfs, mnt=world.dir("late"), prefix=net.prefix(1))
    wait_for(lambda: "caught up with the producer" in late.read_log(), what="the catch-up")
    assert stat.S_ISFIFO(os.lstat(late.path("fifo")).st_mode)
    assert os.lstat(late.path("null")).st_rdev == os.makedev(1, 3)
    assert not os.path.lexists(late.path("loop"))


def test_a_file_that_replaced_a_fifo_is_installed_over_it(world):
    """A consumer that still has a FIFO where the producer now has a file
    (it was away for the unlink, and its PFS still holds the FIFO) installs
    the file over the FIFO by a rename, and never opens the FIFO (an open
    for writing would wait for a reader forever)."""
    net, prod, (c1,) = cluster(world, consumers=1, opts=",flush_interval=3600")
    wait_for(lambda: subscribed(prod, 1), what="the subscription")
    os.mkfifo(prod.path("q"), 0o644)
    prod.flush()                                # the PFS, which c1 loads at its start, has the FIFO
    write(prod.path("marker"), b"1")
    wait_version(c1.path("marker"), 0)
    assert stat.S_ISFIFO(os.lstat(c1.path("q")).st_mode)
    c1.stop()
    os.unlink(prod.path("q"))
    write(prod.path("q"), b"now a file")        # not flushed: flush_interval
    again = world.mount(c1.opts, pfs=c1.pfs, mnt=world.dir("again"), prefix=net.prefix(1))
    assert stat.S_ISFIFO(os.lstat(again.path("q")).st_mode)     # from the PFS, until the catch-up
    wait_for(lambda: "caught up with the producer" in again.read_log(), what="the catch-up")
    assert read(again.path("q")) == b"now a file"
