"""-o publish=schedule: the daemon follows the job's loss log and flushes
only the checkpoint versions the planner's schedule selects."""
import json
import math
import os
import random
import re
import time

from conftest import status, wait_for


def train(m, iters, every):
    """A stand-in job: ~2 ms per iteration, a loss line each, a checkpoint every `every`."""
    random.seed(5)
    last = None
    with open(m.path("loss.csv"), "w", buffering=1) as log:
        log.write("iter,loss\n")
        for it in range(1, iters + 1):
            t_end = time.perf_counter() + 0.002          # the iteration's compute
            while time.perf_counter() < t_end:
                pass
            log.write("%d,%.5f\n" % (it, 0.5 * math.exp(-0.01 * it) + 0.3 + random.gauss(0, 0.01)))
            if it % every == 0:
                log.flush()
                last = b"checkpoint at %d\n" % it + bytes(4096)
                with open(m.path("model.bin"), "wb") as f:
                    f.write(last)
    return last


def test_publish_schedule_flushes_selected_versions(world):
    m = world.mount("publish=schedule,loss_log=loss.csv,plan_warmup=100,plan_refit=100,"
                    "plan_t_infer=0.002,plan_inferences=5000,plan_lambda=20000,log_level=debug")
    last = train(m, 600, 10)
    # every version stays readable on the producer
    with open(m.path("model.bin"), "rb") as f:
        assert f.read() == last
    assert os.getxattr(m.path("model.bin"), "user.viperfs.version") == b"60"
    # the schedule is where a training loop can read it.  Re-plans run on the
    # planner thread, not in the writer's close(): the one the last versions asked
    # for lands a moment after the job is done.  Re-planned as the run went on;
    # late in the run, when the curve is flat, the best plan for what is left may
    # be "no more checkpoints".  A slow daemon (a sanitizer's) may take past the
    # 10 s the 5000 inferences last: then there is nothing left to plan for, and
    # it says so
    def schedule():
        with open(m.path(".viperfs-schedule.json")) as f:
            return json.load(f)
    wait_for(lambda: schedule()["planned_at_iteration"] >= 500 or "inferences are served" in m.read_log(),
             what="the re-plan of the run's last versions")
    sched = schedule()
    assert all(i > sched["planned_at_iteration"] for i in sched["iterations"])
    assert sched["fit"]["family"] in ("exp+c", "saturating", "exp", "linear")
    assert sched["t_iter"] > 0.001

    log = m.read_log()
    decisions = re.findall(r"'model.bin' version (\d+) at iteration (\d+): (published|kept on this node only) \(([^)]*)\)", log)
    assert len(decisions) == 60
    published = [(int(v), int(i), why) for v, i, what, why in decisions if what == "published"]
    kept = [(int(v), int(i)) for v, i, what, _ in decisions if what != "published"]
    assert kept, "the schedule kept nothing back"
    assert any(why == "scheduled" for _, _, why in published)
    # warm-up versions are all published; after it, only scheduled ones
    assert all(why in ("warm-up", "end of warm-up", "scheduled") for _, _, why in published)
    assert all(i >= 100 for _, i in kept)
    plans = [int(n) for n in re.findall(r"re-planned at iteration \d+: (\d+) checkpoints", log)]
    # one at warm-up's end, and at least one later (a re-plan asked for while one
    # is under way replaces any other still waiting: only the latest is planned)
    assert len(plans) >= 2 and max(plans) >= 1
    st = status(m)
    assert st["flush"]["skipped_versions"] >= len(kept)
    # at unmount the latest version still reaches the PFS: nothing is lost
    assert m.stop() == 0
    with open(m.pfs_path("model.bin"), "rb") as f:
        assert f.read() == last


def test_publish_schedule_needs_its_options(world):
    from conftest import VIPERFS
    import subprocess
    r = subprocess.run([VIPERFS, "-f", "-o", "publish=schedule", world.dir("p"), world.dir("m")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert "plan_t_infer" in r.stderr and "plan_inferences" in r.stderr
