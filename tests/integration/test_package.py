"""Packaging: make deb, the package installed, used and removed; make install and uninstall.

The package test installs viperfs system-wide (dpkg -i), as root, on the
machine that runs the tests, so it is careful: it skips when any file the
package would write is there already and not the package's (a viperfs the
user installed, a test's helper link), or when a viperfs package is
installed already; and it removes the package (dpkg --purge) whatever
happens once it has tried to install it.
"""
import gzip
import os
import re
import shutil
import subprocess
import tempfile

import pytest

from conftest import ROOT, drop_utab_entries, is_mounted, read, status_json, wait_for, write

DEB_BUILD = os.path.join(ROOT, "build-deb")


def make(*args, timeout=600):
    """make in the source tree, untouched by the make that runs the tests (its
    MAKEFLAGS would carry BUILD= and SANITIZE= into the package); the
    dependencies are installed by then."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    r = subprocess.run(["make", "-C", ROOT, "SKIP_DEPS=1", *args], capture_output=True,
                       text=True, env=env, timeout=timeout)
    assert r.returncode == 0, "make %s:\n%s\n%s" % (" ".join(args), r.stdout[-4000:], r.stderr[-4000:])
    return r


def release():
    with open(os.path.join(ROOT, "engine", "version.h")) as f:
        return re.search(r'#define VP_RELEASE "([^"]+)"', f.read()).group(1)


def run(*args, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=120, **kw)


def deb_paths(deb):
    """The paths the package holds, directories left out."""
    r = run("dpkg-deb", "-c", deb)
    assert r.returncode == 0, r.stderr
    paths = []
    for line in r.stdout.splitlines():
        perms, _, _, _, _, name = line.split(None, 5)
        if not perms.startswith("d"):
            paths.append(name.split(" -> ")[0][1:])     # ./usr/bin/viperfs -> /usr/bin/viperfs
    return paths


def private_libfuse():
    """The build links the libfuse it built (Debian 12), and ships that one's fusermount3."""
    return subprocess.run(["pkg-config", "--atleast-version=3.16", "fuse3"]).returncode != 0


FUSERMOUNT = "/usr/lib/viperfs/fusermount3" if private_libfuse() else "/usr/bin/fusermount3"


def package_installed():
    r = run("dpkg-query", "-W", "-f=${Status}", "viperfs")
    return r.returncode == 0 and "not-installed" not in r.stdout and r.stdout.strip() != ""


def lint_man(path):
    """A man page that mandoc and groff read without a warning, and that man(1) renders."""
    r = run("mandoc", "-T", "lint", "-W", "warning", path)
    assert r.returncode == 0 and not r.stdout and not r.stderr, r.stdout + r.stderr
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        src = f.read()
    r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z"], input=src, capture_output=True, timeout=60)
    assert r.returncode == 0 and not r.stderr, r.stderr.decode()
    r = run("man", "-l", path, env=dict(os.environ, MANPAGER="cat", MANWIDTH="80"))
    assert r.returncode == 0 and not r.stderr, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def deb():
    if os.geteuid() != 0:
        pytest.skip("installs a package: needs root")
    for tool in ("dpkg-deb", "dpkg-shlibdeps", "mandoc", "man", "groff"):
        if not shutil.which(tool):
            pytest.skip("%s is missing (make test-deps installs it)" % tool)
    r = make("deb")
    path = os.path.join(DEB_BUILD, "viperfs_%s_%s.deb" % (
        release(), run("dpkg", "--print-architecture").stdout.strip()))
    assert os.path.exists(path), r.stdout
    return path


def test_deb_control(deb):
    r = run("dpkg-deb", "-f", deb, "Package", "Version", "Architecture", "Depends")
    fields = dict(line.split(": ", 1) for line in r.stdout.splitlines())
    assert fields["Package"] == "viperfs"
    assert fields["Version"] == release()
    assert fields["Architecture"] == run("dpkg", "--print-architecture").stdout.strip()
    deps = [d.split()[0] for d in fields["Depends"].split(", ")]
    # what the programs link, and fuse3 (fusermount3, /etc/fuse.conf); libfuse is linked in
    for lib in ("libc6", "libfabric1", "libjansson4", "libmicrohttpd12", "libssl3", "libxxhash0", "fuse3"):
        assert lib in deps, fields["Depends"]
    assert not any("cuda" in d for d in deps)


def test_deb_install_use_remove(deb):
    if package_installed():
        pytest.skip("a viperfs package is installed already; not touching it (dpkg -r viperfs removes it)")
    paths = deb_paths(deb)
    for p in paths:
        if os.path.lexists(p):
            pytest.skip("'%s' exists and is not from the viperfs package; not overwriting it" % p)
    for p in ("/usr/bin/viperfs", "/usr/sbin/mount.fuse.viperfs", "/usr/share/man/man8/viperfs.8.gz",
              "/usr/share/man/man8/mount.viperfs.8.gz", "/lib/systemd/system/viperfs@.service"):
        assert p in paths, paths
    assert (FUSERMOUNT in paths) == private_libfuse(), paths
    base = tempfile.mkdtemp(prefix="viperfs-pkg-")
    pfs, mnt = os.path.join(base, "pfs"), os.path.join(base, "mnt")
    os.mkdir(pfs)
    os.mkdir(mnt)
    try:
        r = run("dpkg", "-i", deb)
        assert r.returncode == 0, r.stdout + r.stderr
        listed = run("dpkg", "-L", "viperfs").stdout.split()
        for p in paths:
            assert p in listed and os.path.lexists(p), p

        # the programs run, and link nothing outside packages
        r = run("/usr/bin/viperfs", "--version")
        assert r.returncode == 0 and r.stdout.startswith("viperfs %s " % release()), r.stdout + r.stderr
        r = run("ldd", "/usr/bin/viperfs")
        assert "not found" not in r.stdout and "/usr/local" not in r.stdout, r.stdout
        assert run("/usr/bin/viperctl", "--help").returncode == 0

        # the man pages: found by man(1), clean to mandoc and groff, and the
        # options section holds the daemon's option table
        for p in paths:
            if p.startswith("/usr/share/man/") and not os.path.islink(p):
                lint_man(p)
        assert "/usr/share/man/man8/viperfs.8.gz" in run("man", "-wa", "viperfs").stdout.split()
        page = lint_man("/usr/share/man/man8/viperfs.8.gz")
        help_text = run("/usr/bin/viperfs", "--help").stdout
        names = re.findall(r"^  ([a-z_]+)( |$)", help_text.split("\nOptions (")[1], re.M)
        names = [n for n, _ in names]
        assert len(names) > 30
        for name in names:
            assert re.search(r"^ {7}%s\b" % name, page, re.M), "viperfs(8) lacks option %s" % name
        if os.path.exists(os.path.join(ROOT, "mount-scripts", "viperctl.bash-completion")):
            path = "/usr/share/bash-completion/completions/viperctl"
            assert path in listed and run("bash", "-n", path).returncode == 0

        # mount -t fuse.viperfs through the installed helper, daemon and fusermount3
        log = os.path.join(base, "viperfs.log")
        opts = "_netdev,ram_cache=64M,ram_prefault=8M,ram_spare=8M,auto_unmount,control=%s,log_file=%s" % (
            os.path.join(base, "ctl.sock"), log)
        env = {k: v for k, v in os.environ.items() if k not in ("VIPERFS_BIN", "VIPERCTL_BIN")}
        r = run("mount", "-t", "fuse.viperfs", pfs, mnt, "-o", opts, env=env)
        assert r.returncode == 0, r.stderr + (read(log).decode() if os.path.exists(log) else "")
        assert is_mounted(mnt)
        pid = status_json(mnt)["pid"]
        assert os.readlink("/proc/%d/exe" % pid) == "/usr/bin/viperfs"
        # auto_unmount runs the package's fusermount3, not the build tree's (fs/fusermount.c)
        helper = wait_for(lambda: [p for p in os.listdir("/proc") if p.isdigit() and
                                   _ppid(p) == pid and _comm(p) == "fusermount3"],
                          what="the daemon's fusermount3 --auto-unmount")
        assert os.readlink("/proc/%s/exe" % helper[0]) == FUSERMOUNT
        write(os.path.join(mnt, "model.pt"), b"m" * 100000)
        r = run("umount", mnt, env=env)
        assert r.returncode == 0, r.stderr
        assert not is_mounted(mnt)
        assert read(os.path.join(pfs, "model.pt")) == b"m" * 100000
        wait_for(lambda: not os.path.exists("/proc/%d" % pid), what="the daemon's exit")
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-uz", mnt], capture_output=True)
        drop_utab_entries(base)
        if package_installed() or run("dpkg-query", "-W", "viperfs").returncode == 0:
            r = run("dpkg", "--purge", "viperfs")
            assert r.returncode == 0, r.stdout + r.stderr
        shutil.rmtree(base, ignore_errors=True)
    # removed: nothing of it is left
    assert run("dpkg-query", "-W", "viperfs").returncode != 0
    left = [p for p in paths if os.path.lexists(p)]
    assert not left, left
    for d in ("/usr/lib/viperfs", "/usr/share/doc/viperfs"):
        assert not os.path.exists(d), d


def _ppid(pid):
    try:
        with open("/proc/%s/stat" % pid) as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _comm(pid):
    try:
        with open("/proc/%s/comm" % pid) as f:
            return f.read().strip()
    except OSError:
        return ""


@pytest.mark.parametrize("prefix", ["/usr", "/usr/local"])
def test_make_install_uninstall(tmp_path, prefix):
    for tool in ("mandoc", "man", "groff"):
        if not shutil.which(tool):
            pytest.skip("%s is missing (make test-deps installs it)" % tool)
    dest = str(tmp_path / "root")
    # the package's build: made already by make deb, and PREFIX-independent but for
    # the fusermount3 path, which only the /usr/local run relinks
    args = ["BUILD=build-deb", "NO_CUDA=1", "DESTDIR=" + dest, "PREFIX=" + prefix]
    make("install", *args)
    files = sorted(os.path.relpath(os.path.join(d, f), dest)
                   for d, _, fs in os.walk(dest) for f in fs)
    for p in ("bin/viperfs", "bin/viperctl", "bin/viperfs-slurm", "sbin/mount.viperfs",
              "sbin/mount.fuse.viperfs", "sbin/umount.fuse.viperfs",
              "share/man/man8/viperfs.8.gz", "share/man/man8/mount.viperfs.8.gz",
              "share/man/man8/umount.viperfs.8.gz", "share/doc/viperfs/README.md"):
        assert os.path.join(prefix.lstrip("/"), p) in files, files
    assert "etc/systemd/system/viperfs@.service" in files
    # the helpers start the daemon of this prefix (SBINDIR follows PREFIX)
    helper = read(os.path.join(dest, prefix.lstrip("/"), "sbin/mount.viperfs")).decode()
    assert 'bin="%s/bin/viperfs"' % prefix in helper
    if private_libfuse():
        # the daemon runs the fusermount3 installed with it
        assert os.path.join(prefix.lstrip("/"), "lib/viperfs/fusermount3") in files
        daemon = read(os.path.join(dest, prefix.lstrip("/"), "bin/viperfs"))
        assert (prefix + "/lib/viperfs/fusermount3").encode() in daemon
    for page in ("viperfs.8.gz", "mount.viperfs.8.gz"):
        lint_man(os.path.join(dest, prefix.lstrip("/"), "share/man/man8", page))

    make("uninstall", *args)
    left = [os.path.join(d, f) for d, _, fs in os.walk(dest) for f in fs]
    assert not left, left
    for d in ("lib/viperfs", "share/doc/viperfs"):
        assert not os.path.exists(os.path.join(dest, prefix.lstrip("/"), d))
