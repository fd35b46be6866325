"""python -m keras_endokd.export: a trained run's student -> pruned, int8 TFLite deployment files.

Reads the run folder that `python -m keras_endokd.train` wrote (config.json, student.keras),
reuses its stored teachers for distillation while pruning, and writes the files listed in
`keras_endokd.deploy.deployment` into the same folder. Every setting comes from the run's
config.json (the image size, seed, batch size, temperature, border crop, --sparsity,
--per_tensor, --int8_max_bytes, --min_agreement); a flag given on the command line overrides the
run's value. A failed check leaves the folder's earlier export as it was and writes
export_failed.json.

    python -m keras_endokd.export --run_dir=runs/latest
    python -m keras_endokd.export --run_dir=runs/latest --sparsity=0.8 --qat
    python -m keras_endokd.export --run_dir=runs/latest --sparsity=0      # no pruning
    python -m keras_endokd.export --run_dir=runs/latest --int8_max_bytes=0  # per-channel int8 (84 KB)
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

from absl import flags
from keras_endokd.cli import UsageError, fail, parse_flags

# Flags live in this module's own FlagValues: the CLIs define flags of the same name
# (--model, --dataset), and tests import several of them into one process.
FLAGS = flags.FlagValues()
flags.DEFINE_string("run_dir", None, "The run folder written by keras_endokd.train.",
                    flag_values=FLAGS)
flags.DEFINE_float("sparsity", None, "Target pruning sparsity in [0, 1); 0 skips pruning. "
                   "Default: the run's --sparsity.", flag_values=FLAGS)
flags.DEFINE_boolean("qat", False, "Quantization-aware training (pruning-preserving) before "
                     "the int8 conversion, instead of post-training quantization alone.",
                     flag_values=FLAGS)
flags.DEFINE_boolean("per_tensor", False, "One weight scale per tensor in the integer models, not "
                     "one per output channel: the int8 student shrinks from ~84 KB to ~60 KB (a 64 KB "
                     "flash budget) and agrees a little less with the float model. Not with --qat. "
                     "Default: the run's --per_tensor.", flag_values=FLAGS)
flags.DEFINE_integer("int8_max_bytes", None, "Flash budget of student_int8.tflite in bytes: when "
                     "per-channel weight scales do not fit, only the layers that gain most keep them; "
                     "0: per-channel everywhere. Default: the run's --int8_max_bytes (64000).",
                     flag_values=FLAGS)
flags.DEFINE_integer("fine_tune_epochs", 3, "Epochs of fine-tuning while pruning (and of QAT).",
                     flag_values=FLAGS)
flags.DEFINE_float("min_agreement", 0.99, "Least top-1 agreement of each .tflite model with its "
                   "Keras model, measured on up to 1024 images of all splits: the export fails when "
                   "the upper bound of the agreement's 95% (Wilson) interval is below it. Default: "
                   "the run's --min_agreement.", flag_values=FLAGS)
# The export's own flags; each one not given on the command line takes the run's config.json value
# (flags the train command lacks, --qat and --fine_tune_epochs, take their defaults).
EXPORT_SETTINGS = ("sparsity", "qat", "per_tensor", "int8_max_bytes", "fine_tune_epochs",
                   "min_agreement")



def _run_folder(run_dir) -> str:
    if not run_dir:
        raise UsageError("--run_dir is required: the folder python -m keras_endokd.train wrote.")
    if not os.path.isdir(run_dir):
        raise UsageError(f"--run_dir={run_dir}: no such folder.")
    if not os.path.isfile(os.path.join(run_dir, "student.keras")):
        raise UsageError(f"{run_dir} has no student.keras: run python -m keras_endokd.train "
                         f"--output_dir={run_dir} first.")
    if not os.path.isfile(os.path.join(run_dir, "config.json")):
        raise UsageError(f"{run_dir} has no config.json: it is not a run folder written by "
                         "python -m keras_endokd.train.")
    return run_dir


def check_flags() -> str:
    """Validates the flags before anything heavy is imported; returns the run folder."""
    run_dir = _run_folder(FLAGS.run_dir)
    if FLAGS.sparsity is not None and not 0.0 <= FLAGS.sparsity < 1.0:
        raise UsageError(f"--sparsity={FLAGS.sparsity} is outside [0, 1).")
    if FLAGS.fine_tune_epochs < 1:
        raise UsageError(f"--fine_tune_epochs must be at least 1, got {FLAGS.fine_tune_epochs}.")
    if FLAGS.qat and FLAGS.per_tensor:
        raise UsageError("--per_tensor and --qat do not combine: quantization-aware training "
                         "learns per-channel weight ranges. Choose one.")
    if FLAGS.int8_max_bytes is not None and FLAGS.int8_max_bytes < 0:
        raise UsageError(f"--int8_max_bytes must be 0 (no budget) or a byte count, got "
                         f"{FLAGS.int8_max_bytes}.")
    if FLAGS.qat and not FLAGS["per_tensor"].present and _run_values(run_dir).get("per_tensor"):
        raise UsageError("--qat does not combine with the run's per_tensor (one weight scale per "
                         "tensor): add --noper_tensor to export with per-channel scales.")
    if not 0.0 <= FLAGS.min_agreement <= 1.0:
        raise UsageError(f"--min_agreement={FLAGS.min_agreement} is outside [0, 1]: it is the least "
                         "fraction of images on which each .tflite model must agree with the "
                         "Keras model.")
    return run_dir


def _run_values(run_dir: str) -> dict:
    """The run's config.json as a dict, read without TensorFlow ({} when unreadable:
    load_config reports it)."""
    try:
        with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as f:
            values = json.load(f)
        return values if isinstance(values, dict) else {}
    except (OSError, ValueError):
        return {}


def export_settings(run_values: dict) -> dict:
    """{setting: (value, "flag" | "run" | "default")} for `EXPORT_SETTINGS`: the flag when given
    on the command line, else the run's value, else the flag's default."""
    out = {}
    for name in EXPORT_SETTINGS:
        if FLAGS[name].present:
            out[name] = (FLAGS[name].value, "flag")
        elif run_values.get(name) is not None:
            out[name] = (run_values[name], "run")
        else:
            out[name] = (FLAGS[name].default, "default")
    return out


def flag_warnings(run_dir: str) -> list:
    """One line for each flag the user gave that has no effect with the others (not an error)."""
    out, settings = [], export_settings(_run_values(run_dir))
    qat, per_tensor = settings["qat"][0], settings["per_tensor"][0]
    if FLAGS["int8_max_bytes"].present and (qat or per_tensor):
        why = ("--qat converts with the per-channel ranges it learned" if qat else
               "--per_tensor gives every layer one weight scale, whatever the size"
               if FLAGS["per_tensor"].present else
               "the run's per_tensor gives every layer one weight scale, whatever the size")
        out.append(f"--int8_max_bytes={FLAGS.int8_max_bytes} has no effect: {why}.")
    sparsity, origin = settings["sparsity"]
    if FLAGS["fine_tune_epochs"].present and sparsity == 0 and not qat:
        given = "--sparsity=0" if origin == "flag" else "the run's sparsity is 0"
        out.append(f"--fine_tune_epochs={FLAGS.fine_tune_epochs} has no effect: {given} and no --qat, "
                   "so nothing is fine-tuned.")
    return out


def export(argv) -> dict:
    """Runs the export the flags describe; returns export_report.json's content."""
    run_dir = check_flags()

    import keras

    from keras_endokd.data import load_dataset
    from keras_endokd.deploy.deployment import export_student
    from keras_endokd.run_config import load_config, log, make_datasets
    from keras_endokd.teacher_stage import obtain_teachers

    cfg = load_config(run_dir)
    # Where the run folder is now, not where it was trained from: the teachers are found beside it.
    cfg = dataclasses.replace(cfg, output_dir=run_dir)
    settings = export_settings(dataclasses.asdict(cfg))
    student = keras.saving.load_model(os.path.join(run_dir, "student.keras"), safe_mode=True)
    source = load_dataset(cfg.dataset, cfg.data_dir, cfg.split_file, cfg.fold, cfg.resolved_data_seed(),
                          cfg.image_size, on_bad_image=cfg.on_bad_image)
    log(f"export {run_dir}: dataset {source.name}; " + ", ".join(
        f"{name} {value} ({origin})" for name, (value, origin) in settings.items()))
    teachers, _ = obtain_teachers(cfg, source, make_datasets(cfg, source))
    report = export_student(
        run_dir, student, source, teachers, image_size=cfg.image_size,
        temperature=cfg.temperature, seed=cfg.seed, batch_size=cfg.batch_size,
        crop_border=cfg.crop_border, command=" ".join(["python -m keras_endokd.export", *argv[1:]]),
        **{name: value for name, (value, _) in settings.items()})
    if os.path.isfile(os.path.join(run_dir, "metrics.json")):  # the run's page shows the new deployment
        from keras_endokd.clinical.html_report import write_report

        log(f"report: {write_report(run_dir)}")
    return report


def main(argv=None) -> int:
    argv = list(sys.argv if argv is None else argv)
    _, code = parse_flags(FLAGS, argv, __doc__)
    if code is not None:
        return code
    try:
        run_dir = check_flags()
    except UsageError as err:
        return fail(err)
    for line in flag_warnings(run_dir):
        print(f"warning: {line}", file=sys.stderr)
    from keras_endokd.data.source import DatasetLayoutError
    from keras_endokd.deploy.export_checks import ExportCheckError

    try:
        export(argv)
    except (UsageError, DatasetLayoutError, FileNotFoundError) as err:
        return fail(err)
    except ExportCheckError as err:
        print(f"error: {err}\nThe folder's earlier export, if any, is untouched; details in "
              f"{os.path.join(FLAGS.run_dir, 'export_failed.json')}.", file=sys.stderr)
        return 1
    return 0



if __name__ == "__main__":
    sys.exit(main())
