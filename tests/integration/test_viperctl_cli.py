"""viperctl as an admin meets it: --version, CMD --help for every command
(which does nothing else), usage errors, status of every mount on the
node, the versions table, a wait that times out, a mount whose daemon was
killed, names with a newline, and the progress bar's rate and ETA.

The exit statuses are viperctl(1)'s: 0 done, 1 error, 2 usage, 3 not a
viperfs mount or its daemon is gone, 4 timed out; umount 32.
"""
import json
import os
import pty
import re
import signal
import subprocess
import time

from conftest import ROOT, VIPERCTL, is_mounted, read, status, write

COMMANDS = ["status", "versions", "version", "flush", "warm", "umount", "watch", "wait",
            "gpu-export", "plan"]


def viperctl(*args, cwd=None, timeout=60):
    return subprocess.run([VIPERCTL, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, errors="replace")


def release():
    with open(os.path.join(ROOT, "engine", "version.h")) as f:
        return re.search(r'#define VP_RELEASE "([^"]+)"', f.read()).group(1)


def test_version():
    for flag in ("--version", "-V"):
        r = viperctl(flag)
        assert r.returncode == 0, r.stderr
        assert r.stdout == "viperctl %s\n" % release()


def test_help_of_every_command_prints_usage_and_does_nothing(world):
    # nothing flushes on its own (flush_interval=1h): a flush is only one we ask for
    m = world.mount("flush_interval=1h")
    write(m.path("f.bin"), b"x" * 4096)
    for cmd in COMMANDS:
        for flag in ("--help", "-h") if cmd != "plan" else ("--help",):
            r = viperctl(cmd, flag, cwd=m.mnt)
            assert r.returncode == 0, (cmd, flag, r.stdout, r.stderr)
            assert r.stdout.startswith("usage: viperctl " + cmd), (cmd, r.stdout)
            assert r.stderr == "", (cmd, r.stderr)
    # the command's own name in the list, and --help anywhere on the line
    assert viperctl("flush", m.mnt, "--help").returncode == 0
    assert viperctl("wait", "--help", "--newer-than", "3").returncode == 0
    r = viperctl("--help")
    assert r.returncode == 0 and all("viperctl %s " % c in r.stdout for c in COMMANDS)
    # flush --help, in the mount and with it named, flushed nothing; flush does
    assert not os.path.exists(m.pfs_path("f.bin"))
    assert status(m)["flush"]["flushed_versions"] == 0
    r = viperctl("flush", cwd=m.mnt)
    assert r.returncode == 0 and r.stdout == "flushed\n", r.stderr
    assert read(m.pfs_path("f.bin")) == b"x" * 4096


def test_bad_command_lines_exit_2_with_a_short_usage():
    for cmd in COMMANDS:
        r = viperctl(cmd, "--no-such-flag", "/")
        assert r.returncode == 2, (cmd, r.returncode, r.stderr)
        assert r.stdout == "", (cmd, r.stdout)
        assert "usage: viperctl " + cmd in r.stderr, (cmd, r.stderr)
        assert len(r.stderr.splitlines()) <= 20, (cmd, r.stderr)
    for args, why in ((["wait"], "too few arguments"),
                      (["version", "a", "b"], "too many arguments"),
                      (["wait", "x", "--timeout", "soon"], "bad --timeout 'soon'"),
                      (["wait", "x", "--newer-than", "-1"], "bad --newer-than '-1'"),
                      (["umount"], "too few arguments")):
        r = viperctl(*args)
        assert r.returncode == 2 and why in r.stderr, (args, r.returncode, r.stderr)
        assert "Try 'viperctl %s --help'" % args[0] in r.stderr
    r = viperctl("frobnicate")
    assert r.returncode == 2 and "unknown command 'frobnicate'" in r.stderr
    r = viperctl()
    assert r.returncode == 2 and r.stderr.startswith("usage: viperctl")
    r = viperctl("status", "/")
    assert r.returncode == 3 and "'/' is not inside a viperfs mount" in r.stderr


def test_status_without_an_argument_lists_every_mount(world):
    a = world.mount("ram_cache=64M")
    b = world.mount("ram_cache=96M", pfs=world.dir("pfs-b"), mnt=world.dir("mnt-b"))
    r = viperctl("status")
    # other viperfs mounts on this node (not ours) may be there too, even dead ones
    assert r.returncode == 0 or (r.returncode == 3 and "is gone" in r.stderr), r.stderr
    for m, cache in ((a, "64M"), (b, "96M")):
        block = r.stdout.split("viperfs mount %s\n" % m.mnt)[1].split("\nviperfs mount ")[0]
        assert re.search(r"^  daemon +pid %d, release %s, up \d+s, since \d{4}-\d\d-\d\d " % (
            m.proc.pid, re.escape(release())), block, re.M), block
        assert re.search(r"^  options +control=.*ram_cache=%s" % cache, block, re.M), block
        assert re.search(r"^  kernel mount +rw,", block, re.M), block
        assert "PFS directory  %s" % m.pfs in block
    # --json: one line per mount, the daemon's own
    r = viperctl("status", "--json")
    assert r.returncode in (0, 3), r.stderr
    # (an older daemon, of another mount, has no "mountpoint")
    by_mnt = {s.get("mountpoint"): s for s in map(json.loads, r.stdout.splitlines())}
    for m in (a, b):
        st = by_mnt[m.mnt]
        assert st["pid"] == m.proc.pid and st["release"] == release()
        assert 0 <= st["uptime_s"] < 600 and abs(st["started"] - time.time()) < 600
        assert "ram_cache=" in st["options"]
    # named mounts: only those, in that order
    r = viperctl("status", b.mnt, a.mnt)
    assert r.returncode == 0, r.stderr
    assert re.findall(r"^viperfs mount (.*)$", r.stdout, re.M) == [b.mnt, a.mnt]


def test_versions_is_a_table_and_json_on_request(world):
    m = world.mount("flush_interval=1h")
    os.mkdir(m.path("sub"))
    write(m.path("sub", "b.bin"), b"b" * 3000)
    write(m.path("a.bin"), b"1")
    write(m.path("a.bin"), b"22")
    r = viperctl("versions", m.mnt)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["PATH", "VERSION", "SIZE", "STATE", "TIERS"]
    assert sorted(l.split()[0] for l in lines[1:]) == ["a.bin", "sub/b.bin"]
    assert re.search(r"^a\.bin +version 2 +2 B +cached +ram$", r.stdout, re.M), r.stdout
    r = viperctl("versions", "--json", m.path("sub"))
    assert r.returncode == 0, r.stderr
    assert [(f["path"], f["version"]) for f in json.loads(r.stdout)] == [("sub/b.bin", 1)]


def test_wait_timeout_is_a_human_line_and_exit_4(world):
    m = world.mount()
    write(m.path("f"), b"1")
    t0 = time.monotonic()
    r = viperctl("wait", m.path("f"), "--newer-than", "1", "--timeout", "500ms")
    assert r.returncode == 4, (r.returncode, r.stderr)
    assert time.monotonic() - t0 < 30
    assert "timed out after 0.5 s: '%s' has no version newer than 1" % m.path("f") in r.stderr
    assert "{" not in r.stderr and r.stdout == ""
    # and the version that is there is found at once
    r = viperctl("wait", m.path("f"), "--newer-than", "0", "--timeout", "5")
    assert r.returncode == 0 and r.stdout == "1\n", r.stderr


def test_flush_timeout_is_exit_4(world):
    # 2 MiB/s to the PFS: 8 MiB cannot be flushed in 0.3 s
    m = world.mount("flush_interval=1h,flush_bw=2M")
    write(m.path("big.bin"), os.urandom(8 << 20))
    r = viperctl("flush", m.mnt, "--timeout", "0.3")
    assert r.returncode == 4, (r.returncode, r.stderr)
    assert "flush: timed out after 0.3 s" in r.stderr, r.stderr


def test_progress_bar_shows_rate_and_eta(world):
    m = world.mount("flush_interval=1h,flush_bw=4M")
    data = os.urandom(8 << 20)
    write(m.path("big.bin"), data)
    master, slave = pty.openpty()
    try:
        p = subprocess.run([VIPERCTL, "flush", m.mnt], stdout=subprocess.PIPE, stderr=slave,
                           timeout=120)
        os.close(slave)
        slave = -1
        bar = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:     # EIO: the pty's other end is closed, all read
                break
            if not chunk:
                break
            bar += chunk
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert p.returncode == 0 and p.stdout == b"flushed\n", bar
    # "[####      ]  50.0%  4/8 MiB  4.0 MiB/s  ETA 1s  1 left"
    assert re.search(rb"\d+/\d+ MiB  [\d.]+ [KM]iB/s  ETA \d+s", bar), bar
    assert read(m.pfs_path("big.bin")) == data


def test_dead_daemon_says_so_and_umount_force_detaches(world):
    m = world.mount()
    write(m.path("f"), b"1")
    # in the kernel's attribute cache: a stat of them still works after the kill
    os.stat(m.mnt)
    os.stat(m.path("f"))
    os.kill(m.proc.pid, signal.SIGKILL)
    m.proc.wait()
    try:
        assert is_mounted(m.mnt)           # the kernel keeps the dead mount
        hint = "'fusermount3 -uz %s' or 'viperctl umount --force %s'" % (m.mnt, m.mnt)
        for args in (["status", m.mnt], ["status", m.path("f")], ["versions", m.mnt],
                     ["flush", m.mnt], ["wait", m.path("f"), "--newer-than", "1"],
                     ["version", m.path("f")]):
            r = viperctl(*args)
            assert r.returncode == 3, (args, r.returncode, r.stderr)
            assert "the daemon of the viperfs mount '%s' is gone" % m.mnt in r.stderr, (args, r.stderr)
            assert hint in r.stderr and "not inside" not in r.stderr, (args, r.stderr)
        r = viperctl("status", cwd=m.base)     # every mount: this one is listed as gone
        assert r.returncode == 3 and "'%s' is gone" % m.mnt in r.stderr, r.stderr
        r = viperctl("umount", m.mnt)
        assert r.returncode == 32 and "viperctl umount --force %s" % m.mnt in r.stderr, r.stderr
        assert is_mounted(m.mnt)
        r = viperctl("umount", "--force", m.mnt)
        assert r.returncode == 0, r.stderr
        assert "detached" in r.stderr
        assert not is_mounted(m.mnt)
    finally:
        if is_mounted(m.mnt):
            subprocess.run(["fusermount3", "-uz", m.mnt], capture_output=True)


def test_control_socket_gone_gives_the_fix(world):
    m = world.mount()
    sock = os.getxattr(m.mnt, "user.viperfs.control").decode()
    os.rename(sock, sock + ".moved")
    try:
        r = viperctl("status", m.mnt)
        assert r.returncode == 3, (r.returncode, r.stderr)
        assert "cannot reach the daemon of '%s'" % m.mnt in r.stderr
        assert "'fusermount3 -uz %s'" % m.mnt in r.stderr, r.stderr
    finally:
        os.rename(sock + ".moved", sock)
    assert viperctl("status", m.mnt).returncode == 0


def test_newline_in_a_name_does_not_break_the_tables(world):
    m = world.mount()
    write(m.path("evil\nname.bin"), b"e")
    write(m.path("plain.bin"), b"p")
    for args in (["status", m.mnt], ["versions", m.mnt]):
        r = viperctl(*args)
        assert r.returncode == 0, r.stderr
        assert "evil\\x0aname.bin" in r.stdout, r.stdout
        assert not any(l.startswith("name.bin") for l in r.stdout.splitlines()), r.stdout
    paths = r.stdout.splitlines()[1:]
    assert len(paths) == 2 and all(" version 1 " in l for l in paths), r.stdout


def complete(*words, cwd=None):
    """What mount-scripts/viperctl.bash-completion offers for the words (the last is
    the one being completed), with bash-completion's two helpers stubbed."""
    script = r'''
_init_completion() { cur=${COMP_WORDS[COMP_CWORD]}; prev=${COMP_WORDS[COMP_CWORD-1]};
                     words=("${COMP_WORDS[@]}"); cword=$COMP_CWORD; }
_filedir() { COMPREPLY=("<files $*>"); }
complete() { [ "$*" = "-F _viperctl viperctl" ] || exit 9; }
. "$1"; shift
COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _viperctl
printf '%s\n' "${COMPREPLY[@]}"
'''
    r = subprocess.run(["bash", "-c", script, "bash",
                        os.path.join(ROOT, "mount-scripts", "viperctl.bash-completion"),
                        "viperctl", *words], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return [w for w in r.stdout.splitlines() if w]


def test_bash_completion(world):
    m = world.mount()
    assert complete("") == COMMANDS
    assert complete("st") == ["status"]
    assert complete("--v") == ["--version"]
    assert complete("umount", "--f") == ["--force"]
    assert complete("wait", "x", "--") == ["--newer-than", "--timeout", "--help"]
    assert complete("wait", "x", "--timeout", "") == []      # seconds: nothing to offer
    assert m.mnt in complete("status", "")                   # the mounts of the node
    assert m.mnt in complete("umount", world.base)
    assert complete("warm", "") == ["<files >"]
    assert complete("plan", "") == ["<files csv>"]


def test_man_page_documents_every_command_and_exit_status():
    page = os.path.join(ROOT, "docs", "man", "viperctl.1")
    r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", page], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    text = subprocess.run(["man", "-l", page], capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, MANWIDTH="100", LC_ALL="C")).stdout
    for cmd in COMMANDS:
        assert re.search(r"^ +%s\b" % re.escape(cmd), text, re.M), cmd
    exits = text.split("EXIT STATUS")[1].split("FILES")[0]
    assert re.findall(r"^ {7}(\d+)\s", exits, re.M) == ["0", "1", "2", "3", "4", "32"], exits
    assert re.search(r"'fusermount3 -uz /mnt/ckpt' or\s+'viperctl umount --force /mnt/ckpt'", text)


def test_names_with_spaces_and_newlines_in_requests(world):
    m = world.mount("flush_interval=1h")
    write(m.path("my model.pt"), b"1")
    write(m.path("a\nb.pt"), b"2")
    write(m.path("a"), b"3")
    # the wait's words after the path are its last two: the space is the name's
    r = viperctl("wait", m.path("my model.pt"), "--timeout", "10")
    assert r.returncode == 0 and r.stdout == "1\n", r.stderr
    r = viperctl("versions", "--json", m.path("my model.pt"))
    assert [f["path"] for f in json.loads(r.stdout)] == ["my model.pt"]
    # a newline would end the request line: refused, not a request about 'a'
    for args in (["flush", m.path("a\nb.pt")], ["versions", m.path("a\nb.pt")],
                 ["wait", m.path("a\nb.pt"), "--timeout", "10"]):
        r = viperctl(*args)
        assert r.returncode == 1, (args, r.returncode, r.stderr)
        assert "a\\x0ab.pt': a name with a newline cannot be sent" in r.stderr, r.stderr
    assert not os.path.exists(m.pfs_path("a"))      # nothing flushed 'a' instead
