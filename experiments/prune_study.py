"""python -m experiments.prune_study: what the pruning fine-tune should distil from.

The export prunes the student to 50% sparsity while it fine-tunes for 3 epochs
(`keras_endokd.deploy.prune`). The fine-tune's target can be:

- `teachers`: CE + T^2 KL(teachers' mean logits || student), the export's target;
- `student`: CE + T^2 KL(the unpruned student's own logits || student): the function the student
  learned from its whole training objective (for a relation student: the fused-target and RKD
  terms), kept while it loses weights;
- `labels`: CE alone, the student-alone run's own objective.

For every finished run of a `kd_study` folder named by `--methods` and `--seeds`, the run's
student is pruned with each target (same seed, same schedule, same images: only the target
differs) and the pruned Keras model scored on the validation and test splits; the int8 model the
export converts from it agrees with it on about 99.7% of images (docs/results.md). Each target is
paired by seed against `teachers`. Choose by validation accuracy.

    python -m experiments.prune_study [--study_dir=runs/kd_study] [--methods=none-fresh,none,relation-attention]
        [--seeds=0,1,2,3,4] [--targets=teachers,student,labels]
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from keras_endokd.cli import parse_flags  # noqa: E402

FLAGS = flags.FlagValues()
_F = {"flag_values": FLAGS}
flags.DEFINE_string("study_dir", "runs/kd_study", "A kd_study output folder (its runs/ are read).", **_F)
flags.DEFINE_list("methods", ["none-fresh", "none", "relation-attention"], "Run names (kd_study methods).", **_F)
flags.DEFINE_list("seeds", ["0", "1", "2", "3", "4"], "Seeds of the runs.", **_F)
flags.DEFINE_list("targets", ["teachers", "student", "labels"], "Fine-tuning targets.", **_F)
flags.DEFINE_float("sparsity", 0.5, "Target sparsity of the pruned kernels (the export's default).", **_F)
flags.DEFINE_integer("fine_tune_epochs", 3, "Fine-tuning epochs (the export's default).", **_F)
TARGETS = ("teachers", "student", "labels")


def fine_tune_targets(target: str, student, teachers, train, batch_size: int):
    """The logits the fine-tune distils from, [N, C], or None (CE alone)."""
    from keras_endokd.deploy.prune import teacher_logits

    if target == "teachers":
        return teacher_logits(teachers, train, batch_size)
    if target == "student":
        return teacher_logits([student], train, batch_size)
    return None


# The run settings every run of one study shares: its data and its teachers.
SHARED = ("dataset", "data_dir", "split_file", "fold", "image_size", "crop_border", "teachers", "teacher_dir")


def _shared(cfg) -> tuple:
    return (*(getattr(cfg, k) for k in SHARED), cfg.resolved_data_seed(), cfg.resolved_teacher_seed())


def study_inputs(cfg):
    """(the splits preprocessed once, uint8 in memory; the study's teachers) from a run's config.

    Every run of the study shares them (`_shared`); a student-alone run's config names the
    teachers too, but has none of its own, so they are obtained as a distilled run would."""
    import dataclasses

    from keras_endokd.data import load_dataset
    from keras_endokd.deploy.export_images import preprocessed_splits
    from keras_endokd.run_config import make_datasets
    from keras_endokd.teacher_stage import obtain_teachers

    source = load_dataset(cfg.dataset, cfg.data_dir, cfg.split_file, cfg.fold, cfg.resolved_data_seed(),
                          cfg.image_size, on_bad_image=cfg.on_bad_image)
    with_teachers = dataclasses.replace(cfg, kd="response")
    teachers, _ = obtain_teachers(with_teachers, source, make_datasets(with_teachers, source))
    return preprocessed_splits(source, cfg.image_size, cfg.crop_border), teachers


def prune_run(cfg, splits: dict, teachers, targets, sparsity: float, epochs: int) -> dict:
    """{target: {"val", "test"}} accuracies of the run's student (`cfg`: its config) pruned with
    each target, and of the dense student ("dense")."""
    import keras

    from keras_endokd.deploy.prune import accuracy, prune_student

    student = keras.saving.load_model(os.path.join(cfg.output_dir, "student.keras"), safe_mode=True)
    out = {"dense": {"val": accuracy(student, splits["val"]), "test": accuracy(student, splits["test"])}}
    for target in targets:
        logits = fine_tune_targets(target, student, teachers, splits["train"], cfg.batch_size)
        pruned, _ = prune_student(student, splits["train"], splits["val"], sparsity=sparsity,
                                  teacher_logits=logits, temperature=cfg.temperature, epochs=epochs,
                                  batch_size=cfg.batch_size, seed=cfg.seed)
        out[target] = {"val": accuracy(pruned, splits["val"]), "test": accuracy(pruned, splits["test"])}
    return out


def summarize(per_seed: dict, targets) -> dict:
    """Per target: mean val / test accuracy (%), and the paired test and val gains over `teachers`."""
    from experiments.kd_study_report import paired

    out = {}
    for target in ("dense", *targets):
        row = {split: 100 * statistics.fmean(r[target][split] for r in per_seed.values())
               for split in ("val", "test")}
        if target not in ("dense", "teachers") and "teachers" in targets:
            for split in ("val", "test"):
                row[f"{split}_paired_vs_teachers"] = paired(
                    {s: r[target][split] for s, r in per_seed.items()},
                    {s: r["teachers"][split] for s, r in per_seed.items()})
        out[target] = row
    return out


def main(argv=None) -> int:
    argv = list(sys.argv if argv is None else argv)
    _, code = parse_flags(FLAGS, argv, __doc__)
    if code is not None:
        return code
    from keras_endokd.cli import fail
    from keras_endokd.run_config import load_config

    targets = list(dict.fromkeys(FLAGS.targets))
    if not targets or set(targets) - set(TARGETS):
        return fail(ValueError(f"--targets: expected some of {', '.join(TARGETS)}, got {FLAGS.targets}"))
    seeds = [int(s) for s in FLAGS.seeds]
    runs = os.path.join(FLAGS.study_dir, "runs")
    missing = [f"{m}-seed{s}" for m in FLAGS.methods for s in seeds
               if not os.path.isfile(os.path.join(runs, f"{m}-seed{s}", "student.keras"))]
    if missing:
        return fail(ValueError(f"no finished run {', '.join(missing)} in {runs}: run "
                               "python -m experiments.kd_study first, or name other --methods/--seeds."))
    import dataclasses

    configs = {(m, s): dataclasses.replace(load_config(os.path.join(runs, f"{m}-seed{s}")),
                                           output_dir=os.path.join(runs, f"{m}-seed{s}"))
               for m in FLAGS.methods for s in seeds}
    first = next(iter(configs.values()))
    differ = [f"{m}-seed{s}" for (m, s), c in configs.items() if _shared(c) != _shared(first)]
    if differ:
        return fail(ValueError(f"{', '.join(differ)} use other data or teachers than the first run: "
                               "name runs of one study."))
    start, results = time.time(), {}
    splits, teachers = study_inputs(first)
    for method in FLAGS.methods:
        per_seed = {}
        for seed in seeds:
            per_seed[seed] = prune_run(configs[method, seed], splits, teachers, targets, FLAGS.sparsity,
                                       FLAGS.fine_tune_epochs)
            print(f"[prune_study] {method} seed {seed}: " + ", ".join(
                f"{t} val {100 * v['val']:.1f} test {100 * v['test']:.1f}" for t, v in per_seed[seed].items()),
                flush=True)
        results[method] = {"per_seed": per_seed, "summary": summarize(per_seed, targets)}
    print(json.dumps({"sparsity": FLAGS.sparsity, "fine_tune_epochs": FLAGS.fine_tune_epochs, "targets": targets,
                      "seeds": seeds, "minutes": round((time.time() - start) / 60, 1), "methods": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
