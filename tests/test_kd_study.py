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
    assert Method("feature", temperature=1.0) == Method("feature")
    assert Method("relation", heads=2).name == "relation-attention-h2"
    assert Method("response,relation", temperature=2.0).name == "response+relation-attention-T2"
    assert len({m.name for m in MAIN_METHODS}) == len(MAIN_METHODS) == 6
    assert Method("none", inputs="fresh").name == "none-fresh"
    assert Method("relation", temperature=2.0).name == "relation-attention-T2"  # relation_kd reads T


def test_paired_gain_ci_and_wins_by_hand():
    from experiments.kd_study_report import paired

    a = {0: 0.90, 1: 0.86, 2: 0.88}
    b = {0: 0.85, 1: 0.87, 2: 0.84, 3: 0.5}  # seed 3 has no pair: left out
    p = paired(a, b)
    gains = [5.0, -1.0, 4.0]
    assert p["n"] == 3 and p["wins"] == 2
    assert p["gain_mean"] == pytest.approx(8.0 / 3)
    # t(0.975, 2) = 4.302653; sample std of the gains = 3.21455
    half = 4.302653 * 3.2145503 / 3 ** 0.5
    assert p["gain_ci95"] == pytest.approx([8.0 / 3 - half, 8.0 / 3 + half], rel=1e-5)
    assert p["per_seed"] == pytest.approx(dict(zip([0, 1, 2], gains)))
    assert paired({0: 0.9}, {0: 0.8})["gain_ci95"] is None


def _study(tmp_path, **overrides):
    fields = dict(dataset="synthetic", data_dir=None, split_file=None, folds=[0], crop_border=False,
                  seeds=[0, 1], ablation_seeds=[0], epochs=1, teacher_epochs=1, teachers=["tiny_resnet"],
                  image_size=32, batch_size=32, teacher_views=1, data_seed=0, teacher_seed=0,
                  heads_grid=[2, 4], temperature_grid=[1.0, 4.0], temperature_kd="response,relation",
                  latency_runs=5, representative=100, output_dir=str(tmp_path),
                  teacher_dir=str(tmp_path / "teachers"), verbose=0, quick=True, keep_caches=False,
                  export_seeds=[])
    return kd_study.Study(**{**fields, **overrides})


def test_jobs_share_runs_between_tables(tmp_path):
    jobs = _study(tmp_path).jobs()
    assert len(jobs) == len(set(jobs)) == 6 * 2 + 2 + 4 + 1 + 2  # 2 other methods, 4 recipe ablations; heads=4 is the headline run
    chosen = _study(tmp_path, ablations=["relation-mean-withkd"]).jobs()
    assert len(chosen) == 6 * 2 + 1 + 1 + 2 and (Method("relation", "mean", variant="withkd"), 0, 0) in chosen
    assert (HEADLINE, 0, 0) in jobs and (Method("relation", heads=2), 0, 0) in jobs
    seeds = [seed for _, seed, _ in jobs]
    assert seeds == sorted(seeds)  # seed by seed: a seed's caches can go once its runs are done
    folds = _study(tmp_path, dataset="hyper_kvasir", folds=[0, 1]).jobs()
    assert len(folds) == 2 * len(jobs)
    assert _study(tmp_path, folds=[0, 1]).run_dir(HEADLINE, 1, 1).endswith("relation-attention-seed1-fold1")
    # --methods=relation-mean: the two student-alone arms and the headline run as well
    subset = _study(tmp_path, methods=["relation-mean"], ablation_seeds=[]).jobs()
    assert [m.name for m, seed, _ in subset if seed == 0] == ["none", "none-fresh", "relation-mean",
                                                             "relation-attention"]
    assert len(subset) == 4 * 2


def test_an_unknown_main_method_is_refused_before_training(capsys):
    assert kd_study.main(["kd_study", "--methods=relation-avg"]) == 2
    err = capsys.readouterr().err
    assert "--methods: unknown method(s) relation-avg" in err and "relation-mean" in err


def test_finished_run_is_reused_only_with_the_same_config(tmp_path):
    from keras_endokd import atomic_files

    study = _study(tmp_path)
    cfg = study.run_config(HEADLINE, 0, 0)
    assert kd_study.prepare(cfg) == (cfg, None)  # nothing there: a fresh run
    atomic_files.write_json(os.path.join(cfg.output_dir, "config.json"), dataclasses.asdict(cfg))
    resumed, metrics = kd_study.prepare(cfg)  # started, never finished: continue it
    assert metrics is None and resumed.resume and not resumed.overwrite
    atomic_files.write_json(os.path.join(cfg.output_dir, "metrics.json"), {"student": {"accuracy": 0.5}})
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


def test_a_fresh_input_arm_is_paired_against_its_method_on_the_views():
    """`relation-attention-fresh` changes the input stream only: its `paired_vs_recipe` is against
    `relation-attention` (views) of the same seeds, its `paired_vs_none` against the baseline."""
    from experiments.kd_study_report import METRICS, add_ablation_pairing, summarize

    def run(method, seed, accuracy):
        return {"method": method, "seed": seed, "fold": 0,
                "student": {**{k: accuracy for k in METRICS}, "params": 51_640}}

    records = [run("relation-attention-fresh", 0, 0.86), run("relation-attention-fresh", 1, 0.84),
               run("relation-attention", 0, 0.85), run("relation-attention", 1, 0.85),
               run("none-fresh", 0, 0.80), run("none-fresh", 1, 0.82)]
    fresh = Method("relation", "attention", inputs="fresh")
    row = add_ablation_pairing(summarize(records, fresh, [0, 1]), records, [0, 1], "none-fresh")
    assert row["paired_vs_recipe"]["per_seed"] == {0: pytest.approx(1.0), 1: pytest.approx(-1.0)}
    assert row["paired_vs_recipe"]["wins"] == 1 and row["paired_vs_none"]["gain_mean"] == pytest.approx(4.0)


def results_json(out):
    return json.loads((out / "results.json").read_text())


def results_baseline(out):
    return json.loads((out / "results.json").read_text())["baseline"]


def _run_quick(out):
    """--quick with one seed and one epoch: the tables are the same code with more.

    One recipe ablation (the fusion warm-up); the heads and temperature grids hold the headline's
    values only, so they train nothing of their own (their tables: test_ablation_tables_mark_the_default)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "experiments.kd_study", "--quick", "--seeds=0", "--epochs=1",
                           "--ablations=relation-attention-warmup",
                           "--heads_grid=4", "--temperature_grid=4",
                           f"--output_dir={out}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)


@pytest.mark.slow
def test_quick_study_writes_tables_plots_and_reuses_runs(tmp_path):
    out = tmp_path / "study"
    first = _run_quick(out)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert summary["reused_runs"] == 0 and summary["fresh_runs"] == summary["runs"] == len(MAIN_METHODS) + 1
    assert set(summary["paired_vs_none"]) == {m.name for m in MAIN_METHODS} - {summary["baseline"]}
    # Runs of a study compute every metric but draw no figure of their own (report=False).
    run = out / "runs" / f"{HEADLINE.name}-seed0"
    assert "ece" in json.loads((run / "metrics.json").read_text())["student"]
    assert not (run / "report.html").exists() and not (run / "roc_pr_curves.png").exists()

    table = (out / "results.md").read_text()
    rows = {}  # the main table's row of each label (the per-seed table repeats the labels below it)
    for line in table.splitlines():
        if line.startswith("| "):
            rows.setdefault(line.split("|")[1].strip().replace("**", ""), line)
    for method in MAIN_METHODS:
        assert method.label in rows, method.label
        label = method.label + (" (baseline)" if method.name == results_baseline(out) else "")
        cells = [c.strip() for c in rows[label].split("|")[1:-1]]
        assert len(cells) == 12, cells  # 5 metrics, gain, int8 accuracy and gain, size, latency
        percents, mcc, deploy = [float(c) for c in cells[2:6]], float(cells[6]), [float(c) for c in cells[10:]]
        assert all(0 <= p <= 100 for p in percents) and -1 <= mcc <= 1 and all(d > 0 for d in deploy), cells
        # one seed: a gain and a win count, no interval; the baseline has no gain of its own
        assert (cells[7] == "") == (method.name == results_baseline(out)), cells
        if cells[7]:
            assert cells[7].endswith("/1") and "[" not in cells[7], cells
    assert "Teacher tiny_resnet" in rows and "Teacher small_plaincnn" in rows
    assert "## Ablation: attention heads" not in table  # a grid of one value has no table
    assert "## Other methods and ablations of the headline recipe" in table
    recipe = results_json(out)["recipe"]
    assert [r["name"] for r in recipe] == ["relation-attention-warmup"]
    assert recipe[0]["paired_vs_recipe"]["n"] == 1 and recipe[0]["paired_vs_none"]["n"] == 1
    warmed = json.loads((out / "runs" / "relation-attention-warmup-seed0" / "metrics.json").read_text())
    assert warmed["training"]["fusion_warmup"]["epochs"] == 2
    assert "python -m experiments.kd_study --quick" in table

    results = json.loads((out / "results.json").read_text())
    for method in MAIN_METHODS:
        seeds = sorted(r["seed"] for r in results["runs"] if r["method"] == method.name)
        assert seeds == [0], method.name
    assert results["baseline"] in ("none", "none-fresh")
    for row in results["main"]:
        assert set(row["paired_vs_none"]) == {"gain_mean", "gain_ci95", "wins", "n", "per_seed"}
        assert row["paired_vs_none"]["n"] == 1 and "0" in row["per_seed"]
    headline = next(r for r in results["main"] if r["name"] == HEADLINE.name)
    assert headline["paired_vs_mean_fusion"]["n"] == 1
    # the fair protocol: every views arm of seed 0 trained on one input stream
    assert results["settings"]["protocol"]["identical_streams_per_seed"] == {"0/0": True}
    assert results["settings"]["protocol"]["identical_fresh_streams_per_seed"] == {"0/0": True}
    assert [row["value"] for row in results["heads"]] == [4]
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


def test_ablation_tables_mark_the_default():
    from experiments.kd_study_report import ablation_table

    row = {"mean": {k: 0.5 for k in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "mcc")},
           "std": {k: None for k in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "mcc")}}
    lines = ablation_table([{"value": 2, **row}, {"value": 4, **row}], "Heads", 4).splitlines()
    assert lines[0].startswith("| Heads | Acc. (%)") and len(lines) == 4
    assert lines[2].startswith("| 2 | 50.0 |") and lines[3].startswith("| **4** | 50.0 |")


def test_schedule_study_refuses_an_unknown_method_before_training(capsys):
    from experiments import schedule_study

    assert schedule_study.main(["schedule_study", "--methods=relation-attention,relation-avg"]) == 2
    err = capsys.readouterr().err
    assert "--methods=relation-attention,relation-avg" in err and "relation-mean" in err


def test_the_schedule_study_pairs_against_the_better_student_alone_by_validation():
    from experiments.schedule_study import summarize

    def arm(name, test, val):
        return [{"method": name, "seed": seed, "fold": 0, "student": {"accuracy": t, "val_accuracy": v}}
                for seed, (t, v) in enumerate(zip(test, val))]

    results = {40: [*arm("none", [0.80, 0.82], [0.85, 0.85]),
                    *arm("none-fresh", [0.84, 0.86], [0.86, 0.88]),  # better by validation
                    *arm("relation-mean", [0.85, 0.85], [0.87, 0.87])]}
    summary, lines = summarize(results, ["relation-mean"])
    row = summary[40]["relation-mean"]
    assert summary[40]["baseline"] == "none-fresh"
    assert row["paired_vs_none"]["per_seed"] == {0: pytest.approx(1.0), 1: pytest.approx(-1.0)}
    assert row["paired_vs_baselines"]["none"]["gain_mean"] == pytest.approx(4.0)
    assert lines[-1].startswith("| 40 | relation-mean | 85.0 (none-fresh 85.0) | 87.0 (87.0) | +0.0 [")
