"""experiments.kd_study: method naming, which run folders are reused, and the --quick study end to end."""

import dataclasses
import json
import os
import struct
import subprocess
import sys

import pytest

from experiments import kd_study
from experiments.kd_study import HEADLINE, MAIN_METHODS, Method

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    """(width, height) of a PNG file; fails unless it starts with the PNG signature and IHDR."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR", path
    return struct.unpack(">II", head[16:24])


def test_methods_ignore_settings_they_do_not_read():
    assert Method("response", fusion="mean", heads=2) == Method("response")
    assert Method("relation", "mean", heads=8) == Method("relation", "mean")
    assert Method("relation", temperature=1.0) == HEADLINE
    assert Method("relation", heads=2).name == "relation-attention-h2"
    assert Method("response,relation", temperature=2.0).name == "response+relation-attention-T2"
    assert len({m.name for m in MAIN_METHODS}) == len(MAIN_METHODS) == 7


def _study(tmp_path, **overrides):
    fields = dict(dataset="synthetic", data_dir=None, split_file=None, folds=[0], crop_border=False,
                  seeds=[0, 1], ablation_seeds=[0], epochs=1, teacher_epochs=1, teachers=["tiny_resnet"],
                  image_size=32, batch_size=32, teacher_views=1, data_seed=0, teacher_seed=0,
                  heads_grid=[2, 4], temperature_grid=[1.0, 4.0], temperature_kd="response,relation",
                  latency_runs=5, representative=100, output_dir=str(tmp_path),
                  teacher_dir=str(tmp_path / "teachers"), verbose=0, quick=True, keep_caches=False)
    return kd_study.Study(**{**fields, **overrides})


def test_jobs_share_runs_between_tables(tmp_path):
    jobs = _study(tmp_path).jobs()
    assert len(jobs) == len(set(jobs)) == 7 * 2 + 1 + 2  # heads=4 is the headline run, reused
    assert (HEADLINE, 0, 0) in jobs and (Method("relation", heads=2), 0, 0) in jobs
    seeds = [seed for _, seed, _ in jobs]
    assert seeds == sorted(seeds)  # seed by seed: a seed's caches can go once its runs are done
    folds = _study(tmp_path, dataset="hyper_kvasir", folds=[0, 1]).jobs()
    assert len(folds) == 2 * len(jobs)
    assert _study(tmp_path, folds=[0, 1]).run_dir(HEADLINE, 1, 1).endswith("relation-attention-seed1-fold1")


def test_finished_run_is_reused_only_with_the_same_config(tmp_path):
    from keras_endokd import io

    study = _study(tmp_path)
    cfg = study.run_config(HEADLINE, 0, 0)
    assert kd_study.prepare(cfg) == (cfg, None)  # nothing there: a fresh run
    io.write_json(os.path.join(cfg.output_dir, "config.json"), dataclasses.asdict(cfg))
    resumed, metrics = kd_study.prepare(cfg)  # started, never finished: continue it
    assert metrics is None and resumed.resume and not resumed.overwrite
    io.write_json(os.path.join(cfg.output_dir, "metrics.json"), {"student": {"accuracy": 0.5}})
    assert kd_study.prepare(dataclasses.replace(cfg, verbose=2)) == (dataclasses.replace(cfg, verbose=2),
                                                                     {"student": {"accuracy": 0.5}})
    changed, metrics = kd_study.prepare(dataclasses.replace(cfg, epochs=2))
    assert metrics is None and changed.overwrite and not changed.resume


def test_a_method_row_is_the_mean_and_sample_std_over_seeds():
    from experiments.kd_study_report import METRICS, _cell, summarize

    records = [{"method": "none", "seed": seed, "student": {**{k: value for k in METRICS}, "params": 51_640}}
               for seed, value in ((0, 0.8), (1, 0.9), (2, 0.5))]  # seed 2 is not asked for
    row = summarize(records, Method("none"), [0, 1])
    assert row["mean"]["accuracy"] == pytest.approx(0.85)
    assert row["std"]["accuracy"] == pytest.approx(0.0707107)  # sample std: sqrt(0.005 / 1)
    assert _cell(row, "accuracy") == "85.0 ± 7.1" and _cell(row, "mcc") == "0.850 ± 0.071"
    alone = summarize(records, Method("none"), [2])
    assert alone["std"]["accuracy"] is None and _cell(alone, "accuracy") == "50.0"


def _run_quick(out):
    """--quick with one seed, one epoch and one temperature: the tables are the same code with more.

    The heads ablation trains one run of its own (2 heads); the temperature ablation's one row is
    the main table's response+feature+relation run (temperature 4), so it trains none."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "experiments.kd_study", "--quick", "--seeds=0", "--epochs=1",
                           "--heads_grid=2,4", "--temperature_grid=4", "--temperature_kd=response,feature,relation",
                           f"--output_dir={out}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)


@pytest.mark.slow
def test_quick_study_writes_tables_plots_and_reuses_runs(tmp_path):
    out = tmp_path / "study"
    first = _run_quick(out)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert summary["reused_runs"] == 0 and summary["fresh_runs"] == summary["runs"] == len(MAIN_METHODS) + 1

    table = (out / "results.md").read_text()
    rows = {line.split("|")[1].strip().strip("*"): line for line in table.splitlines() if line.startswith("| ")}
    for method in MAIN_METHODS:
        assert method.label in rows, method.label
        cells = [c.strip() for c in rows[method.label].split("|")[1:-1]]
        assert len(cells) == 9, cells  # 5 metrics, size, latency
        percents, mcc, deploy = [float(c) for c in cells[2:6]], float(cells[6]), [float(c) for c in cells[7:]]
        assert all(0 <= p <= 100 for p in percents) and -1 <= mcc <= 1 and all(d > 0 for d in deploy), cells
    assert "Teacher tiny_resnet" in rows and "Teacher small_plaincnn" in rows
    assert "## Ablation: attention heads" in table and "## Ablation: temperature" in table
    assert "python -m experiments.kd_study --quick" in table

    results = json.loads((out / "results.json").read_text())
    for method in MAIN_METHODS:
        seeds = sorted(r["seed"] for r in results["runs"] if r["method"] == method.name)
        assert seeds == [0], method.name
    assert [row["value"] for row in results["heads"]] == [2, 4]
    assert [row["value"] for row in results["temperature"]] == [4.0]
    assert results["deploy"]["student"]["kind"] == "int8" and results["deploy"]["student"]["bytes"] > 0
    assert not os.listdir(out / "teachers" / "cache")  # each seed's caches are deleted after its runs

    for name in ("accuracy_vs_params.png", "accuracy_vs_latency.png"):
        width, height = _png_size(out / name)
        assert width >= 400 and height >= 300, name
    names = {r["method"] for r in results["runs"]} | {f"teacher_{t['name']}" for t in results["teachers"]}
    assert sorted(os.listdir(out / "confusion_matrices")) == sorted(f"{n}.png" for n in names)
    for name in names:
        _png_size(out / "confusion_matrices" / f"{name}.png")

    second = _run_quick(out)
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads(second.stdout.strip().splitlines()[-1])
    assert again["fresh_runs"] == 0 and again["reused_runs"] == summary["runs"]
    reused = [line for line in second.stdout.splitlines() if line.startswith("[kd_study]") and "(reused)" in line]
    assert len(reused) == summary["runs"]
    assert again["minutes"] < summary["minutes"]
    assert again["accuracy"] == summary["accuracy"]
