"""Operating viperfs: mount(8) and fstab, umount, systemd, Slurm, status, metrics, warm."""
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import (BUILD, ROOT, VIPERCTL, VIPERFS, free_port, is_mounted, metric, promtool_ok, read,
                      scrape, status, status_json, wait_for, wait_version, write)

SCRIPTS = os.path.join(ROOT, "mount-scripts")
SLURM_LAUNCHER = os.path.join(SCRIPTS, "viperfs-slurm")
HELPER_ENV = dict(os.environ, VIPERFS_BIN=VIPERFS, VIPERCTL_BIN=VIPERCTL, FI_PROVIDER="tcp;ofi_rxm")


@pytest.fixture
def helpers():
    """mount(8)/umount(8) helpers for fuse.viperfs, as make install places them.

    Links them into /sbin only where nothing is there yet, and removes
    only the links it made.
    """
    made = []
    for name, target in (("mount.fuse.viperfs", "mount.viperfs"),
                         ("umount.fuse.viperfs", "umount.viperfs")):
        link = os.path.join("/sbin", name)
        if not os.path.lexists(link):
            os.symlink(os.path.join(SCRIPTS, target), link)
            made.append(link)
    try:
        yield
    finally:
        for link in made:
            os.unlink(link)


class External:
    """A daemon that mount(8) started: found through its status, stopped by its PID."""

    def __init__(self, world, mnt):
        self.mnt = mnt
        self.pid = status_json(mnt)["pid"]
        world.procs_external.append(self)

    def cleanup(self):
        if is_mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", self.mnt], capture_output=True)
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return
        fd = os.pidfd_open(self.pid)
        try:
            if not select.select([fd], [], [], 60)[0]:
                os.kill(self.pid, signal.SIGKILL)
        finally:
            os.close(fd)


@pytest.fixture
def ext(world):
    world.procs_external = []
    try:
        yield world
    finally:
        for e in world.procs_external:
            e.cleanup()


def test_mount_t_fuse_viperfs_and_fstab(ext, helpers):
    world = ext
    pfs, mnt = world.dir("pfs"), world.dir("mnt")
    ctl = os.path.join(world.base, "ctl.sock")
    log = os.path.join(world.base, "helper.log")
    opts = "_netdev,nofail,defaults,rw,noauto,x-systemd.automount,ram_cache=64M,control=%s,log_file=%s" % (ctl, log)
    r = subprocess.run(["mount", "-t", "fuse.viperfs", pfs, mnt, "-o", opts],
                       capture_output=True, text=True, env=HELPER_ENV, timeout=60)
    assert r.returncode == 0, r.stderr
    # mount(8) returned: the mount is ready now, not soon
    assert is_mounted(mnt)
    daemon = External(world, mnt)
    st = status_json(mnt)
    assert st["tiers"]["ram"]["budget"] == 64 << 20      # the option reached the daemon
    write(os.path.join(mnt, "model.pt"), b"m" * 100000)
    r = subprocess.run(["umount", mnt], capture_output=True, text=True, env=HELPER_ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    assert not is_mounted(mnt)
    assert read(os.path.join(pfs, "model.pt")) == b"m" * 100000
    daemon.cleanup()

    # an fstab line, mounted by its mount point alone (-T: this test's fstab, not /etc/fstab)
    fstab = os.path.join(world.base, "fstab")
    with open(fstab, "w") as f:
        f.write("# viperfs test\n%s %s fuse.viperfs _netdev,nofail,ram_cache=32M,control=%s,log_file=%s 0 0\n"
                % (pfs, mnt, ctl, log))
    r = subprocess.run(["mount", "-T", fstab, mnt], capture_output=True, text=True,
                       env=HELPER_ENV, timeout=60)
    assert r.returncode == 0, r.stderr
    External(world, mnt)
    assert status_json(mnt)["tiers"]["ram"]["budget"] == 32 << 20
    assert read(os.path.join(mnt, "model.pt")) == b"m" * 100000
    r = subprocess.run(["umount", mnt], capture_output=True, text=True, env=HELPER_ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    assert not is_mounted(mnt)

    # a bad option: a clear error naming it, and no mount
    r = subprocess.run(["mount", "-t", "fuse.viperfs", pfs, mnt, "-o", "ram_cahce=1G"],
                       capture_output=True, text=True, env=HELPER_ENV, timeout=60)
    assert r.returncode != 0 and "ram_cahce" in r.stderr
    assert not is_mounted(mnt)


def test_umount_busy_then_drains_or_reports(world, helpers):
    pfs = world.make_tmpfs("pfs", "64m")
    m = world.mount("flush_bw=4M,flush_retry_max=1", pfs=pfs)
    # open files: EBUSY from every way users unmount
    with open(m.path("open.bin"), "wb") as f:
        f.write(b"x")
        r = subprocess.run(["umount", m.mnt], capture_output=True, text=True, env=HELPER_ENV, timeout=60)
        assert r.returncode != 0 and "busy" in r.stderr
        r = subprocess.run(["fusermount3", "-u", m.mnt], capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "busy" in r.stderr.lower()
        r = m.ctl("umount", m.mnt, check=False)
        assert r.returncode == 32 and "busy" in r.stderr
        assert is_mounted(m.mnt)

    # a PFS that takes nothing: the mount stays and the files are named
    data = os.urandom(6 << 20)
    world.set_readonly(pfs, True)
    write(m.path("stuck.bin"), data)
    r = m.ctl("umount", m.mnt, "--timeout", "1", check=False)
    assert r.returncode == 32
    assert "stuck.bin" in r.stderr and "not on the PFS" in r.stderr
    assert is_mounted(m.mnt)

    # the PFS is back: umount waits for the drain (6 MiB at 4 MiB/s), then unmounts
    world.set_readonly(pfs, False)
    t0 = time.monotonic()
    r = subprocess.run(["umount", m.mnt], capture_output=True, text=True, env=HELPER_ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    assert not is_mounted(m.mnt)
    # no wait here: when umount returned, the bytes were on the PFS
    assert read(os.path.join(pfs, "stuck.bin")) == data
    assert read(os.path.join(pfs, "open.bin")) == b"x"
    assert m.proc.wait(timeout=60) == 0
    print("umount drained 6 MiB in %.2f s" % (time.monotonic() - t0))


def test_systemd_unit_verifies_and_signals_readiness(world):
    unit_dir = world.dir("units")
    unit = os.path.join(unit_dir, "viperfs@models.service")
    with open(os.path.join(SCRIPTS, "viperfs@.service")) as f:
        text = f.read().replace("@BINDIR@", BUILD).replace("@DOCDIR@", ROOT)
    with open(unit, "w") as f:
        f.write(text)
    r = subprocess.run(["systemd-analyze", "verify", unit], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
    assert re.search(r"^Type=notify$", text, re.M)

    # run ExecStart as systemd would: %i expanded, NOTIFY_SOCKET set, then SIGTERM to stop
    exec_start = re.search(r"^ExecStart=(.*)$", text, re.M).group(1)
    conf = os.path.join(world.base, "models.conf")
    pfs, mnt = world.dir("pfs"), world.dir("mnt")
    with open(conf, "w") as f:
        f.write("# as /etc/viperfs/models.conf\npfs_dir = %s\nmountpoint = %s\nram_cache = 48M\n"
                "control = %s\nlog_file = %s\n" % (pfs, mnt, os.path.join(world.base, "ctl.sock"),
                                                  os.path.join(world.base, "unit.log")))
    argv = exec_start.replace("/etc/viperfs/%i.conf", conf).split()
    sock_path = os.path.join(world.base, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(60)
    p = world.spawn(argv, env=dict(os.environ, NOTIFY_SOCKET=sock_path))
    try:
        msg = sock.recv(256).decode()
    finally:
        sock.close()
    assert "READY=1" in msg and "MAINPID=%d" % p.pid in msg
    assert is_mounted(mnt)
    assert status_json(mnt)["tiers"]["ram"]["budget"] == 48 << 20
    write(os.path.join(mnt, "w.bin"), b"w" * 5000)
    p.send_signal(signal.SIGTERM)     # systemctl stop: KillSignal=SIGTERM
    assert p.wait(timeout=120) == 0
    assert not is_mounted(mnt)
    assert read(os.path.join(pfs, "w.bin")) == b"w" * 5000


def test_status_json_and_human(world):
    m = world.mount("ram_cache=256M")
    a = os.urandom(3 << 20)
    write(m.path("a.pt"), a)
    write(m.path("a.pt"), a[::-1])
    assert read(m.path("a.pt")) == a[::-1]
    m.flush()
    st = status_json(m.mnt)
    assert st["pid"] == m.proc.pid
    assert st["files"] == 1 and st["unflushed_files"] == 0 and st["open_files"] == 0
    assert st["bytes_written"] == 2 * len(a)
    # the kernel read the version's memory file itself (passthrough): the daemon saw no byte
    assert st["read_path"]["mode"] == "passthrough" and st["bytes_read"] == 0
    assert st["ram"]["memory_files"] >= len(a)
    assert st["tiers"]["ram"]["budget"] == 256 << 20
    assert st["tiers"]["ram"]["used"] >= len(a)
    assert st["tiers"]["gpu"] is None
    assert st["flush"]["flushed_bytes"] >= len(a) and st["flush"]["queued_ops"] == 0
    assert st["flush"]["last_error"] == ""
    assert st["repl"] is None
    assert st["paths"] == [{"path": "a.pt", "version": 2, "size": len(a), "state": "flushed", "writers": 0,
                            "tiers": ["ram", "pfs"]}]
    human = m.ctl("status", m.mnt).stdout
    assert re.search(r"a\.pt\s+version 2\s+3\.0 MiB\s+flushed", human), human
    assert "ram 3.0 MiB used of 256.0 MiB" in human or "of 256.0 MiB" in human, human
    assert "replication    off" in human
    assert re.search(r"read path\s+passthrough: the kernel offered it", human), human


def test_metrics_endpoint_promtool_and_counters(world):
    port = free_port()
    pfs = world.dir("pfs")
    cold = os.urandom(5 << 20)
    write(os.path.join(pfs, "cold.bin"), cold)      # on the PFS before the mount
    m = world.mount("metrics=%d" % port, pfs=pfs)
    code, before = scrape(port)
    assert code == 200
    promtool_ok(before)
    data = os.urandom(5 << 20)
    write(m.path("hot.bin"), data)
    assert read(m.path("hot.bin")) == data
    m.flush()
    wait_for(lambda: status(m)["ram"]["spare"] == 8 << 20, what="the spare (conftest: ram_spare=8M)")
    code, after = scrape(port)
    promtool_ok(after)
    assert metric(after, "viperfs_cache_spare_bytes") == 8 << 20
    for name in ("viperfs_written_bytes_total", "viperfs_flushed_bytes_total"):
        assert metric(after, name) - metric(before, name) == len(data), name
    # the read was the kernel's, from the version's memory file (passthrough)
    assert metric(after, "viperfs_read_bytes_total") == metric(before, "viperfs_read_bytes_total")
    opens = 'viperfs_read_opens_total'
    assert metric(after, opens, '{path="passthrough"}') - metric(before, opens, '{path="passthrough"}') == 1
    assert metric(after, "viperfs_versions_total") - metric(before, "viperfs_versions_total") == 1
    w = 'viperfs_fuse_request_duration_seconds_count'
    assert metric(after, w, '{op="write"}') >= 5          # 1 MiB writes at most
    assert metric(after, w, '{op="create"}') - metric(before, w, '{op="create"}') == 1
    assert metric(after, "viperfs_flush_queue_bytes") == 0
    assert metric(after, "viperfs_cache_bytes", '{tier="ram"}') >= len(data)

    # warm: the PFS-only file is read into the cache (misses), then served from it (hits)
    r = m.ctl("warm", m.path("cold.bin"))
    assert "1 files" in r.stdout and "5.0 MiB in the cache" in r.stdout
    _, warmed = scrape(port)
    hits0 = metric(warmed, "viperfs_cache_hits_total")
    miss0 = metric(warmed, "viperfs_cache_misses_total")
    with open(m.path("cold.bin"), "rb") as f:
        assert f.read() == cold
    _, read_back = scrape(port)
    assert metric(read_back, "viperfs_cache_misses_total") == miss0
    assert metric(read_back, "viperfs_cache_hits_total") >= hits0 + 5
    # bytes loaded from the PFS are chunks: the daemon serves them, and counts them
    assert metric(read_back, "viperfs_read_bytes_total") - metric(warmed, "viperfs_read_bytes_total") == len(cold)
    assert metric(read_back, opens, '{path="daemon"}') - metric(warmed, opens, '{path="daemon"}') == 1
    assert scrape(port, path="/nothing")[0] == 404
    assert m.ctl("warm", m.path("nope"), check=False).returncode == 1


# ---- Slurm -------------------------------------------------------------------

def test_slurm_launcher_roles_with_srun_environment(world):
    """The launcher under the environment srun gives each task, nodes as namespaces."""
    env = dict(HELPER_ENV, SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="gpu[01-02],cpu[1-3]")
    env.pop("SLURM_CONF", None)
    r = subprocess.run([SLURM_LAUNCHER, "roles", "--producers", "2"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:5] == ["gpu01 listen", "gpu02 train", "cpu1 consume",
                                        "cpu2 consume", "cpu3 consume"]
    r = subprocess.run([SLURM_LAUNCHER, "up", "--pfs", "/nonexistent", "--mnt", "/x"],
                       env=dict(HELPER_ENV), capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "not inside a Slurm job" in r.stderr

    net = world.net(2)
    hosts = os.path.join(world.base, "hosts")
    with open(hosts, "w") as f:
        f.write("%s node1\n%s node2\n" % (net.addr(0), net.addr(1)))
    pfs = world.dir("pfs")
    secret = os.path.join(world.base, "job.secret")
    with open(secret, "w") as f:
        f.write(os.urandom(16).hex())
    port = 7900 + os.getpid() % 50
    mnts, procs = [], []
    for i in range(2):
        mnt = os.path.join(world.base, "node%d" % (i + 1))     # the launcher makes it
        sock_path = os.path.join(world.base, "notify%d.sock" % i)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(sock_path)
        sock.settimeout(60)
        task_env = dict(env, SLURM_JOB_NODELIST="node[1-2]", SLURMD_NODENAME="node%d" % (i + 1),
                        SLURM_NODEID=str(i), SLURM_PROCID=str(i), SLURM_STEP_ID="0",
                        NOTIFY_SOCKET=sock_path)
        metrics_port = 9300 + i
        p = world.spawn([*net.prefix(i), SLURM_LAUNCHER, "node", "--pfs", pfs, "--mnt", mnt,
                         "--port", str(port), "--hosts", hosts, "--secret", secret,
                         "--opts", "peer_timeout=3,metrics=%d,log_file=%s,control=%s" % (
                             metrics_port, os.path.join(world.base, "n%d.log" % i),
                             os.path.join(world.base, "n%d.sock" % i))],
                        env=task_env, stderr=subprocess.PIPE)
        try:
            assert "READY=1" in sock.recv(256).decode()
        finally:
            sock.close()
        mnts.append(mnt)
        procs.append(p)
    wait_for(lambda: any(pe["active"] for pe in status_json(mnts[0])["repl"]["peers"]),
             what="the consumer to subscribe")
    data = os.urandom(3 << 20)
    write(os.path.join(mnts[0], "ckpt.pt"), data)
    wait_version(os.path.join(mnts[1], "ckpt.pt"), 0)
    assert read(os.path.join(mnts[1], "ckpt.pt")) == data

    # status and metrics of both roles
    prod = status_json(mnts[0])
    assert prod["repl"]["role"] == "producer" and prod["repl"]["provider"] == "tcp;ofi_rxm"
    wait_for(lambda: status_json(mnts[0])["repl"]["peers"][0]["bytes_out"] == len(data),
             what="the producer to hear DONE")
    peer = status_json(mnts[0])["repl"]["peers"][0]
    assert peer["state"] == "active" and peer["lag"] == 0
    cons = status_json(mnts[1])
    assert cons["repl"]["role"] == "consumer" and cons["repl"]["producer"] == "%s:%d" % (net.addr(0), port)
    assert cons["repl"]["state"] == "subscribed" and cons["repl"]["bytes_in"] == len(data)
    _, ptext = scrape(9300, prefix=net.prefix(0))
    _, ctext = scrape(9301, prefix=net.prefix(1))
    promtool_ok(ptext)
    promtool_ok(ctext)
    assert metric(ptext, "viperfs_replicated_bytes_total", '{direction="out"}') == len(data)
    assert metric(ptext, "viperfs_peer_lag_versions", '{peer="%d"}' % peer["id"]) == 0
    assert metric(ptext, "viperfs_peer_sent_bytes_total", '{peer="%d"}' % peer["id"]) == len(data)
    assert metric(ctext, "viperfs_replicated_bytes_total", '{direction="in"}') == len(data)
    assert metric(ctext, "viperfs_notify_latency_seconds_count") == 1
    assert metric(ctext, "viperfs_producer_up") == 1

    # job end: Slurm sends SIGTERM to each task; each daemon unmounts and drains
    for p in reversed(procs):
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=120) == 0
    assert not any(is_mounted(x) for x in mnts)
    assert read(os.path.join(pfs, "ckpt.pt")) == data
    assert b"node1 is a listen node" in procs[0].stderr.read()
    assert b"node2 is a consume node" in procs[1].stderr.read()


class Slurm:
    """A private single-node Slurm (munged, slurmctld, slurmd) on unused ports."""

    def __init__(self, world):
        self.dir = world.dir("slurm")
        self.procs = []
        for sub in ("state", "spool", "log"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        key = os.path.join(self.dir, "munge.key")
        with open(key, "wb") as f:
            f.write(os.urandom(128))
        os.chmod(key, 0o600)
        self.munge_sock = os.path.join(self.dir, "munge.sock")
        host = socket.gethostname().split(".")[0]
        self.host = host
        p1, p2 = free_port(), free_port()
        self.conf = os.path.join(self.dir, "slurm.conf")
        with open(self.conf, "w") as f:
            f.write("""ClusterName=viperfstest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={p1}
SlurmdPort={p2}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={sock}
CredType=cred/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""".format(host=host, p1=p1, p2=p2, sock=self.munge_sock, d=self.dir, cpus=os.cpu_count()))
        self.env = dict(HELPER_ENV, SLURM_CONF=self.conf)
        self.start(["munged", "-F", "--force", "--socket=" + self.munge_sock, "--key-file=" + key,
                    "--pid-file=" + os.path.join(self.dir, "munged.pid"),
                    "--seed-file=" + os.path.join(self.dir, "munge.seed"),
                    "--log-file=" + os.path.join(self.dir, "log", "munged.log")])
        wait_for(lambda: os.path.exists(self.munge_sock), what="munged")
        self.start(["slurmctld", "-D", "-i", "-f", self.conf])
        self.start(["slurmd", "-D", "-f", self.conf])
        # no readiness event in Slurm: ask the controller, with a deadline
        wait_for(lambda: subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True,
                                        text=True).stdout.strip() == "idle", timeout=60, what="slurmd idle")

    def start(self, argv):
        self.procs.append(subprocess.Popen(argv, env=self.env, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL))

    def logs(self):
        out = []
        for name in ("slurmctld.log", "slurmd.log"):
            try:
                with open(os.path.join(self.dir, "log", name)) as f:
                    out.append(f.read()[-3000:])
            except OSError:
                pass
        return "\n".join(out)

    def stop(self):
        subprocess.run(["scancel", "--user=root"], env=self.env, capture_output=True)
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


@pytest.fixture
def slurm(world):
    missing = [b for b in ("munged", "slurmctld", "slurmd", "salloc") if not shutil.which(b)]
    if missing:
        pytest.skip("Slurm is not installed here (%s); make deps installs slurmd slurmctld slurm-client munge"
                    % ", ".join(missing))
    s = Slurm(world)
    try:
        yield s
    finally:
        s.stop()


def test_slurm_launcher_in_a_real_job(world, slurm):
    pfs, mnt = world.dir("pfs"), os.path.join(world.base, "job-mnt")
    job = os.path.join(world.base, "job.sh")
    with open(job, "w") as f:
        f.write("""#!/bin/bash
set -e
L={launcher}
export VIPERFS_SECRET_DIR={base}
$L up --pfs {pfs} --mnt {mnt} --opts log_file={base}/job-viperfs.log,control={base}/job.sock
findmnt -n -o FSTYPE {mnt} > {base}/fstype
echo "from the job" > {mnt}/ckpt.pt
{viperctl} status {mnt} --json > {base}/status.json
$L down
findmnt {mnt} >/dev/null && echo still-mounted > {base}/after || echo unmounted > {base}/after
""".format(launcher=SLURM_LAUNCHER, pfs=pfs, mnt=mnt, base=world.base, viperctl=VIPERCTL))
    os.chmod(job, 0o755)
    r = subprocess.run(["salloc", "-N1", "--time=5", job], env=slurm.env, capture_output=True,
                       text=True, timeout=240)
    try:
        assert r.returncode == 0, r.stdout + r.stderr + slurm.logs()
        with open(os.path.join(world.base, "fstype")) as f:
            assert f.read().strip() == "fuse.viperfs"
        with open(os.path.join(world.base, "status.json")) as f:
            st = json.load(f)
        assert st["repl"]["role"] == "producer" and st["repl"]["listen"].endswith(":7650")
        assert st["repl"]["sealed"]     # up made the job a secret, and down removed it
        assert not [n for n in os.listdir(world.base) if n.startswith(".viperfs-job-")]
        with open(os.path.join(world.base, "after")) as f:
            assert f.read().strip() == "unmounted"
        assert read(os.path.join(pfs, "ckpt.pt")) == b"from the job\n"
        assert "%s is a listen node" % slurm.host in r.stderr
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-uz", mnt], capture_output=True)
