"""viperctl watch / wait and -o on_update: push notification without inotify."""
import json
import os
import subprocess

from conftest import VIPERCTL, lines_until, read, wait_for, write


def test_watch_wait_and_monotonic_versions(world):
    m = world.mount()
    watch = world.spawn([VIPERCTL, "watch", m.mnt], stdout=subprocess.PIPE)
    lines_until(watch, lambda l: '"watching"' in l)
    write(m.path("model.pt"), b"1")
    write(m.path("model.pt"), b"22")
    # a safe save: the new inode continues the path's count
    write(m.path("model.pt.tmp"), b"333")
    os.replace(m.path("model.pt.tmp"), m.path("model.pt"))
    seen = lines_until(watch, lambda l: '"model.pt"' in l and '"version":3' in l)
    evs = [json.loads(l) for l in seen if l.startswith('{"path"')]
    mp = [e for e in evs if e["path"] == "model.pt"]
    assert [e["version"] for e in mp] == [1, 2, 3]
    assert mp[-1]["size"] == 3
    assert os.getxattr(m.path("model.pt"), "user.viperfs.version") == b"3"

    waiter = world.spawn([VIPERCTL, "wait", m.path("model.pt"), "--newer-than", "3",
                          "--timeout", "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    # the daemon says when the wait watches the events: the write comes after
    assert "waiting for a new version of" in waiter.stderr.readline()
    assert waiter.poll() is None
    write(m.path("model.pt"), b"4444")
    assert waiter.wait(timeout=30) == 0
    assert waiter.stdout.read().strip() == "4"
    # already newer: returns at once; a file that does not exist yet: waits for it
    r = subprocess.run([VIPERCTL, "wait", m.path("model.pt"), "--newer-than", "1"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.strip() == "4"
    r = subprocess.run([VIPERCTL, "wait", m.path("later.pt"), "--newer-than", "0",
                        "--timeout", "0.5"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 4 and "timed out" in r.stderr
    # nor the directories above it (a consumer learns of them with the first version)
    waiter = world.spawn([VIPERCTL, "wait", m.path("run7", "ckpt", "model.pt"), "--newer-than", "0",
                          "--timeout", "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    assert "waiting for a new version of" in waiter.stderr.readline()
    os.makedirs(m.path("run7", "ckpt"))
    write(m.path("run7", "ckpt", "model.pt"), b"7")
    assert waiter.wait(timeout=30) == 0
    assert waiter.stdout.read().strip() == "1"
    r = subprocess.run([VIPERCTL, "wait", "/nonexistent-dir/x.pt", "--newer-than", "0"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 3 and "not inside a viperfs mount" in r.stderr


def test_on_update_runs_a_command_per_version(world):
    log = os.path.join(world.base, "hook.log")
    m = world.mount("on_update=echo $VIPERFS_PATH $VIPERFS_VERSION $VIPERFS_SIZE >> " + log)
    write(m.path("a.bin"), b"xyz")
    os.mkdir(m.path("d"))
    write(m.path("d", "b.bin"), b"12345")
    wait_for(lambda: os.path.exists(log) and len(read(log).splitlines()) >= 2,
             what="two hook runs")
    lines = read(log).decode().splitlines()
    assert "%s 1 3" % m.path("a.bin") in lines
    assert "%s 1 5" % m.path("d", "b.bin") in lines
