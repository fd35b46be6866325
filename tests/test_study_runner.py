"""experiments.study_runner: which runs start together, and when a seed's caches go."""

import json
import os
import time
import types

import pytest

from experiments.study_runner import run_jobs


def fake_train(cfg, log_path):
    """Stands in for a run: records when it ran; a cache builder adds its cache folder."""
    start = time.time()
    if cfg.meet:  # wait (60 s at most) until the other run of the pair has started too
        open(os.path.join(cfg.meet, os.path.basename(cfg.output_dir)), "w").close()
        while len(os.listdir(cfg.meet)) < 2:
            assert time.time() - start < 60, "the other run never started alongside this one"
            time.sleep(0.05)
    if cfg.builds:
        os.makedirs(os.path.join(cfg.cache_root, cfg.builds))
        if getattr(cfg, "completes", False):  # the cache is complete; the run trains on
            open(os.path.join(cfg.cache_root, cfg.builds, "complete.json"), "w").close()
    time.sleep(cfg.sleep)
    if cfg.reads:  # a run with teachers finds its seed's cache built
        assert os.path.isdir(os.path.join(cfg.cache_root, cfg.reads)), cfg.reads
    with open(os.path.join(cfg.output_dir, "ran.json"), "w") as f:
        json.dump({"start": start, "end": time.time(), "pid": os.getpid(), "log": log_path}, f)
    return {"student": {"accuracy": 0.5}}, time.time() - start


def _jobs(tmp_path, plan):
    """plan: (seed, uses teachers, reused) per job."""
    cache_root = tmp_path / "cache"
    cache_root.mkdir()
    configs = []
    for i, (seed, teachers, reused) in enumerate(plan):
        out = tmp_path / f"run{i}"
        out.mkdir()
        first = teachers and not any(p[0] == seed and p[1] and not p[2] for p in plan[:i])
        configs.append(None if reused else types.SimpleNamespace(
            output_dir=str(out), cache_root=str(cache_root), sleep=0.3, meet=None,
            builds=f"cache-seed{seed}" if first else None, reads=f"cache-seed{seed}" if teachers else None))
    return configs, [p[1] for p in plan], [p[0] for p in plan], str(cache_root)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_seeds_cache_is_built_once_before_its_other_runs_and_deleted_after_its_last(tmp_path, workers):
    plan = [(0, False, False), (0, True, False), (0, True, False), (0, True, True), (0, False, False),
            (1, False, False), (1, True, False), (1, True, False)]
    configs, teachers, seeds, cache_root = _jobs(tmp_path, plan)
    if workers == 2:  # the first two runs (a run alone, seed 0's cache builder) train side by side
        (tmp_path / "meet").mkdir()
        configs[0].meet = configs[1].meet = str(tmp_path / "meet")
    done, caches_seen = [], []

    def on_done(i, metrics, seconds):
        done.append(i)
        caches_seen.append(sorted(os.listdir(cache_root)))
        assert metrics["student"]["accuracy"] == 0.5 and seconds > 0.2

    run_jobs(configs, teachers, seeds, cache_root, keep_caches=False, workers=workers,
             log_dir=str(tmp_path / "logs"), on_done=on_done, train=fake_train)
    assert sorted(done) == [0, 1, 2, 4, 5, 6, 7]  # job 3 was reused: not trained
    assert os.listdir(cache_root) == []  # every seed's cache deleted once its runs were done
    ran = {i: json.loads((tmp_path / f"run{i}" / "ran.json").read_text()) for i in done}
    for builder, readers in ((1, [2]), (6, [7])):
        assert all(ran[r]["start"] >= ran[builder]["end"] for r in readers)
    assert not (ran[6]["start"] < ran[1]["end"] and ran[1]["start"] < ran[6]["end"])  # one builder at a time
    # Seed 0's cache stays until seed 0's last run (job 4 or 2) is reported.
    last_of_seed0 = max(done.index(i) for i in (0, 1, 2, 4))
    assert all("cache-seed0" in seen for seen in caches_seen[done.index(1):last_of_seed0])
    if workers == 2:
        assert ran[0]["pid"] != ran[1]["pid"] and all(r["log"] for r in ran.values())
    else:
        assert {r["pid"] for r in ran.values()} == {os.getpid()}


def test_a_failed_run_stops_the_study_and_names_its_log(tmp_path):
    configs, teachers, seeds, cache_root = _jobs(tmp_path, [(0, True, False), (0, True, False)])
    configs[0].reads = "no-such-cache"
    with pytest.raises(RuntimeError, match="run0 failed.*run0.log"):
        run_jobs(configs, teachers, seeds, cache_root, keep_caches=False, workers=2,
                 log_dir=str(tmp_path / "logs"), on_done=lambda *a: None, train=fake_train)


def test_the_student_alone_on_the_views_waits_for_the_builder_whose_views_it_reads(tmp_path):
    """Listed first, seed 0's student alone on the views (job 0) starts once the seed's builder
    (job 2) has stored the views; seed 1 has no run with teachers, so its student alone (job 4)
    stores the views itself, as that seed's builder (one builder at a time; deleted after)."""
    plan = [(0, False, False), (0, False, False), (0, True, False), (0, True, False), (1, False, False)]
    configs, teachers, seeds, cache_root = _jobs(tmp_path, plan)
    configs[0].reads, configs[4].builds = "cache-seed0", "cache-seed1"
    done = []
    run_jobs(configs, teachers, seeds, cache_root, keep_caches=False, workers=2,
             log_dir=str(tmp_path / "logs"), on_done=lambda i, *a: done.append(i), train=fake_train,
             reads_views=[True, False, False, False, True])
    ran = {i: json.loads((tmp_path / f"run{i}" / "ran.json").read_text()) for i in done}
    assert sorted(done) == [0, 1, 2, 3, 4] and ran[0]["start"] >= ran[2]["end"]
    assert ran[4]["start"] >= ran[2]["end"] or ran[4]["end"] <= ran[2]["start"]
    assert os.listdir(cache_root) == []


def test_a_seeds_runs_start_once_its_cache_is_complete_not_when_its_builder_ends(tmp_path):
    plan = [(0, True, False), (0, True, False), (1, True, False)]
    configs, teachers, seeds, cache_root = _jobs(tmp_path, plan)
    configs[0].completes, configs[0].sleep = True, 4.0
    done = []
    run_jobs(configs, teachers, seeds, cache_root, keep_caches=False, workers=2,
             log_dir=str(tmp_path / "logs"), on_done=lambda i, *a: done.append(i), train=fake_train)
    ran = {i: json.loads((tmp_path / f"run{i}" / "ran.json").read_text()) for i in done}
    assert ran[1]["start"] < ran[0]["end"] - 1  # read seed 0's finished cache while job 0 trained
    assert ran[2]["start"] < ran[0]["end"] or ran[2]["start"] >= ran[1]["end"]
    assert sorted(done) == [0, 1, 2] and os.listdir(cache_root) == []


def _hold(cfg, log_path):
    with open(cfg.pid_file, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(120)


def test_the_workers_of_a_killed_study_stop_with_it(tmp_path):
    """SIGKILL to the study's process: its worker, in the middle of a run, is gone within seconds."""
    import signal
    import subprocess
    import sys

    pid_file = tmp_path / "worker.pid"
    script = (
        "import types; from experiments.study_runner import run_jobs; from tests.test_study_runner import _hold\n"
        f"cfg = types.SimpleNamespace(output_dir='{tmp_path}/run0', pid_file='{pid_file}')\n"
        f"run_jobs([cfg, None], [False, False], [0, 0], '{tmp_path}/cache', False, 2, '{tmp_path}/logs',"
        " lambda *a: None, train=_hold)\n")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    study = subprocess.Popen([sys.executable, "-c", script], cwd=repo)
    deadline = time.time() + 60
    while not pid_file.is_file() or not pid_file.read_text():
        assert time.time() < deadline and study.poll() is None, "the worker never started"
        time.sleep(0.1)
    worker = int(pid_file.read_text())
    os.kill(study.pid, signal.SIGKILL)
    study.wait()
    deadline = time.time() + 15
    while time.time() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(worker, signal.SIGKILL)
    pytest.fail("the worker outlived the study by 15 s")
