"""What an admin meets first: the daemon's help and usage errors, its logs
(JSON, time zones, SIGHUP reopens, the fallback when syslog is not
reachable), and what a daemon killed with -9 leaves behind (a utab entry,
a control socket, a lock file), which the next mount removes."""
import json
import os
import re
import signal
import socket
import subprocess

import pytest

from conftest import VIPERFS, is_mounted, read, wait_for, write


def test_help_is_grouped_and_fits_80_columns():
    r = subprocess.run([VIPERFS, "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stderr == ""
    lines = r.stdout.splitlines()
    assert all(len(l) <= 80 for l in lines), [l for l in lines if len(l) > 80]
    for heading in ("The mount:", "The RAM cache and reads:", "The flush to the PFS:",
                    "Logs, metrics and hooks:"):
        assert heading in lines, heading
    assert any("--version" in l for l in lines)
    assert any("1K is 1024 bytes" in l for l in lines)      # the suffixes are binary, and said
    # every option of the table is listed once, under a heading
    names = [l.split()[0] for l in lines if re.match(r"^  [a-z_]+( |$)", l)]
    assert len(names) == len(set(names)) and {"ram_cache", "log_format", "flush_bw"} <= set(names)
    v = subprocess.run([VIPERFS, "--version"], capture_output=True, text=True, timeout=30)
    assert v.returncode == 0 and v.stdout.startswith("viperfs ") and "libfuse 3." in v.stdout


def test_a_usage_error_prints_a_short_usage(world):
    r = subprocess.run([VIPERFS, world.dir("pfs")], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and r.stdout == ""
    assert "name the mount point too" in r.stderr and "usage: viperfs" in r.stderr
    assert len(r.stderr.splitlines()) <= 5 and "ram_cache" not in r.stderr
    r = subprocess.run([VIPERFS, "-x", "a", "b"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "unknown flag '-x'" in r.stderr
    # device nodes carry other nodes' numbers: the mount stays nodev
    r = subprocess.run([VIPERFS, "-o", "dev", world.dir("pfs"), world.dir("m")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "'dev' is refused" in r.stderr


def test_json_logs_in_utc(world):
    m = world.mount("log_format=json,log_time=utc")
    write(m.path("a.bin"), b"x" * 1000)
    m.stop()
    lines = [l for l in m.read_log().splitlines() if l]
    assert len(lines) >= 3
    for l in lines:
        rec = json.loads(l)         # every line is one object
        assert set(rec) == {"time", "level", "subsys", "pid", "msg"}, rec
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", rec["time"]), rec["time"]
        assert rec["pid"] == int(rec["pid"]) and rec["level"] in (
            "error", "warning", "notice", "info", "debug")
    assert any(r["msg"].startswith("mounted ") for r in map(json.loads, lines))


def test_text_logs_carry_their_zone_and_names_are_escaped(world):
    m = world.mount()
    name = "line\nbreak \"q\""
    with pytest.raises(OSError):
        os.mkdir(m.path("nope", name))     # the log quotes a name others chose
    m.stop()
    for l in m.read_log().splitlines():
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d viperfs ", l), l


def test_sighup_reopens_the_log_and_does_not_unmount(world):
    m = world.mount()
    write(m.path("before"), b"1")
    rotated = m.log + ".1"
    os.rename(m.log, rotated)               # what logrotate does
    os.kill(m.proc.pid, signal.SIGHUP)
    # the daemon lives on and serves: a later write and read work
    write(m.path("after"), b"2")
    assert read(m.path("after")) == b"2" and is_mounted(m.mnt) and m.proc.poll() is None
    assert m.stop() == 0
    new = m.read_log()
    assert "SIGHUP: log file '%s' reopened" % m.log in new and "unmounting" in new
    old = read(rotated).decode()
    assert "mounted " in old and "unmounting" not in old


def syslog_reachable():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.connect("/dev/log")
        return True
    except OSError:
        return False
    finally:
        s.close()


@pytest.mark.skipif(syslog_reachable(), reason="syslog is reachable here: no fallback to see")
def test_without_syslog_a_daemon_warns_and_logs_to_a_file(world):
    state = world.dir("state")
    mnt = world.dir("mnt")
    env = dict(os.environ, XDG_STATE_HOME=state)
    r = subprocess.run([VIPERFS, "-o", "control=%s/c.sock,ram_prefault=0" % world.base,
                        world.dir("pfs"), mnt], capture_output=True, text=True, env=env, timeout=60)
    try:
        assert r.returncode == 0, r.stderr
        log = os.path.join(state, "viperfs", "viperfs.log")
        assert r.stderr.count("syslog is not reachable") == 1 and log in r.stderr, r.stderr
        assert "mounted '" in read(log).decode()
    finally:
        subprocess.run(["fusermount3", "-u", mnt], capture_output=True)
    wait_for(lambda: "everything is on the PFS" in read(log).decode(), what="the daemon's last lines")


def utab_targets():
    try:
        with open("/run/mount/utab") as f:
            return [re.search(r"TARGET=(\S+)", l).group(1) for l in f if "uhelper=viperfs" in l]
    except OSError:
        return []


def control_sockets():
    return {e for e in os.listdir("/run/viperfs") if e.endswith(".sock")}


@pytest.mark.skipif(os.geteuid() != 0, reason="utab and /run/viperfs are root's")
def test_a_new_mount_removes_what_a_killed_daemon_left(world):
    """kill -9 leaves the utab entry, the default control socket and the PFS
    lock file; after the dead mount is detached, the next mount removes all
    three, and keeps those of a live mount."""
    live = world.mount()
    # a daemon with the default control socket (/run/viperfs/viperfs-PID.sock)
    dead_mnt, dead_pfs = world.dir("dead"), world.dir("deadpfs")
    proc = world.spawn([VIPERFS, "-f", "-o", "log_file=%s/dead.log,ram_prefault=0" % world.base,
                        dead_pfs, dead_mnt])
    sock = "viperfs-%d.sock" % proc.pid
    wait_for(lambda: sock in control_sockets(), what="the control socket")
    assert dead_mnt in utab_targets()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    subprocess.run(["fusermount3", "-uz", dead_mnt], check=True)
    assert sock in control_sockets() and dead_mnt in utab_targets()
    assert os.path.exists(lock_of(dead_pfs)) and os.path.exists(lock_of(live.pfs))

    again = world.mount(pfs=world.dir("pfs2"), mnt=world.dir("mnt2"))
    assert sock not in control_sockets()
    assert dead_mnt not in utab_targets()
    assert live.mnt in utab_targets() and again.mnt in utab_targets()
    log = again.read_log()
    assert "removed a stale utab entry for '%s'" % dead_mnt in log
    assert "removed the control socket of a daemon that is gone" in log
    # the dead daemon's PFS lock went; the live mount's is held, so kept
    assert not os.path.exists(lock_of(dead_pfs)) and os.path.exists(lock_of(live.pfs))
    # the dead PFS directory may be mounted again at once
    world.mount(pfs=dead_pfs, mnt=world.dir("dead2"))
    # a clean stop removes its own lock file
    live.stop()
    assert not os.path.exists(lock_of(live.pfs))


def lock_of(pfs):
    st, net = os.stat(pfs), os.stat("/proc/self/ns/net")
    return "/run/viperfs/pfs-%d-%d-%d.lock" % (net.st_ino, st.st_dev, st.st_ino)
