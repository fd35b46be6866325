"""python -m experiments.schedule_study: does the distillation gain grow with a longer schedule?

Beyer et al. 2022 ("Knowledge distillation: a good teacher is patient and consistent") find that
distillation gains grow with the number of epochs, while a student trained alone stops improving
(or overfits). With the teacher cache an epoch of distillation costs about what an epoch of the
student alone costs, so a longer schedule is affordable. This script measures it on the embedded
data: the student alone and `--methods` (default: the headline, relation with attention fusion)
over `--seeds`, at each schedule of `--epochs_grid`, every arm of a seed on the same input stream
(the study's protocol, experiments/README.md), each paired by seed with the better of the
student alone on the views and on fresh augmentation (by validation accuracy) at each schedule.
`python -m experiments.kd_study --epochs=40` measures one schedule with every method and the int8
exports; this script compares schedules.

It reuses experiments.kd_study's run settings and resume logic: finished runs in
`--output_dir/runs/` are reused, interrupted ones resumed.

    python -m experiments.schedule_study [--epochs_grid=20,40] [--seeds=0,1,2]
        [--methods=relation-attention,relation-mean]

Prints a Markdown table and writes `--output_dir/schedule.json`.
"""

from __future__ import annotations

import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from keras_endokd.cli import UsageError, fail, parse_flags  # noqa: E402

FLAGS = flags.FlagValues()
flags.DEFINE_list("epochs_grid", ["20", "40"], "Student schedules (epochs) to compare.", flag_values=FLAGS)
flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds.", flag_values=FLAGS)
flags.DEFINE_list("methods", ["relation-attention"], "Distillation methods (kd_study run names: "
                  "relation-attention, relation-mean, feature, response, ...) paired with the student alone.",
                  flag_values=FLAGS)
flags.DEFINE_string("output_dir", "runs/schedule_study", "Study folder.", flag_values=FLAGS)
flags.DEFINE_string("teacher_dir", None, "Teachers and caches (default OUTPUT_DIR/teachers).",
                    flag_values=FLAGS)


def summarize(results: dict, methods: list) -> tuple:
    """(schedule.json's content, the Markdown table's lines) from `results`: {epochs: run records
    as kd_study keeps them ({"method": run name, "seed", "fold", "student": {"accuracy",
    "val_accuracy"}})}.

    At each schedule the baseline is kd_study's (`kd_study_report.baseline_by_validation`: the
    better student-alone arm by validation); each method is paired by seed against it
    (`paired_vs_none`, accuracy points), and against both arms (`paired_vs_baselines`)."""
    import statistics

    from experiments.kd_study_report import baseline_by_validation, paired
    from experiments.study_methods import BASELINES

    def mean(d):
        return 100 * statistics.fmean(d.values())

    summary = {}
    lines = ["| epochs | method | test, % (baseline) | validation, % (baseline) | "
             "paired test gain over the baseline, points (95% CI; wins) |", "|---|---|---|---|---|"]
    for epochs, records in results.items():
        def per_seed(name, key):
            return {r["seed"]: r["student"][key] for r in records if r["method"] == name}

        baseline = baseline_by_validation(records, sorted({r["seed"] for r in records}))
        b, b_val = per_seed(baseline, "accuracy"), per_seed(baseline, "val_accuracy")
        summary[epochs] = {"baseline": baseline,
                           **{m.name: {"test": per_seed(m.name, "accuracy"), "val": per_seed(m.name, "val_accuracy")}
                              for m in BASELINES}}
        for name in methods:
            a, a_val = per_seed(name, "accuracy"), per_seed(name, "val_accuracy")
            both = {m.name: paired(a, per_seed(m.name, "accuracy")) for m in BASELINES}
            p = both[baseline]
            summary[epochs][name] = {"test": a, "val": a_val, "paired_vs_none": p, "paired_vs_baselines": both}
            ci = "n/a" if p["gain_ci95"] is None else f"[{p['gain_ci95'][0]:+.1f}, {p['gain_ci95'][1]:+.1f}]"
            lines.append(f"| {epochs} | {name} | {mean(a):.1f} ({baseline} {mean(b):.1f}) | {mean(a_val):.1f} "
                         f"({mean(b_val):.1f}) | {p['gain_mean']:+.1f} {ci}; {p['wins']}/{p['n']} |")
    return summary, lines


def main(argv=None) -> int:
    _, code = parse_flags(FLAGS, argv, __doc__)
    if code is not None:
        return code
    try:
        grid = [int(v) for v in FLAGS.epochs_grid]
        seeds = [int(v) for v in FLAGS.seeds]
        if not grid or min(grid) < 1 or not seeds:
            raise ValueError("need at least one schedule of >= 1 epoch and one seed")
    except ValueError as err:
        return fail(UsageError(f"--epochs_grid and --seeds take comma-separated integers: {err}"))
    from experiments.study_methods import ABLATIONS, BASELINES, MAIN_METHODS

    known = {m.name: m for m in (*MAIN_METHODS, *ABLATIONS.values()) if m.kd != "none"}
    if not FLAGS.methods or any(m not in known for m in FLAGS.methods):
        return fail(UsageError(f"--methods={','.join(FLAGS.methods)}: expected some of {', '.join(known)}."))
    methods = [known[m] for m in FLAGS.methods]

    import keras

    from experiments.kd_study import Study, prepare
    from keras_endokd import atomic_files
    from keras_endokd.models.teachers import DEFAULT_TEACHERS
    from keras_endokd.pipeline import run
    from keras_endokd.run_config import RunConfig

    results = {}
    for epochs in grid:
        study = Study(dataset="synthetic", data_dir=None, split_file=None, folds=[0], crop_border=False,
                      seeds=seeds, ablation_seeds=[], epochs=epochs, teacher_epochs=RunConfig.teacher_epochs,
                      teachers=list(DEFAULT_TEACHERS), image_size=128, batch_size=32, teacher_views=4,
                      data_seed=0, teacher_seed=0, heads_grid=[4], temperature_grid=[4.0],
                      temperature_kd="relation", latency_runs=1, representative=256,
                      output_dir=os.path.join(FLAGS.output_dir, f"epochs{epochs}"),
                      teacher_dir=FLAGS.teacher_dir or os.path.join(FLAGS.output_dir, "teachers"),
                      verbose=0, quick=False, keep_caches=True)
        for method in (*BASELINES, *methods):
            for seed in seeds:
                cfg, metrics = prepare(study.run_config(method, seed, 0))
                if metrics is None:
                    keras.backend.clear_session()
                    metrics = run(dataclasses.replace(cfg, export=False))
                results.setdefault(epochs, []).append({"method": method.name, "seed": seed, "fold": 0,
                                                       "student": metrics["student"]})
                print(f"[schedule] {epochs} epochs, {method.name}, seed {seed}: test "
                      f"{metrics['student']['accuracy']:.3f}", flush=True)
    summary, lines = summarize(results, [m.name for m in methods])
    atomic_files.write_json(os.path.join(FLAGS.output_dir, "schedule.json"), summary)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
