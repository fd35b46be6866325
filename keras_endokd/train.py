"""python -m keras_endokd.train: distil a student from teachers, evaluate it and export it.

With no flags it runs on the embedded synthetic dataset: trains two small teachers (or reuses
them from an earlier run), distils the student with --kd=relation (multi-head-attention fusion of
the teachers), writes metrics and the deployment files into --output_dir.

    python -m keras_endokd.train --kd=relation
    python -m keras_endokd.train --kd=none               # the student alone: the baseline
    python -m keras_endokd.train --kd=response,feature --teachers=resnet50,densenet121 \\
        --teacher_weights=imagenet --dataset=kvasir_v2 --data_dir=/data/kvasir-dataset-v2
"""

from __future__ import annotations

import os

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notes) buries the progress lines.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import math  # noqa: E402
import sys  # noqa: E402

from absl import flags  # noqa: E402
from keras_endokd import distill_flags  # noqa: E402
from keras_endokd.cli import UsageError, fail, parse_flags  # noqa: E402

# The command's own FlagValues, as every command keeps them (see cli.parse_flags): tests run it
# in one process beside modules that define absl's global flags.
FLAGS = flags.FlagValues()
_F = {"flag_values": FLAGS}

flags.DEFINE_string("kd", "relation", "Distillation: none | response | feature | relation (or "
                    "fitnets | attention_transfer | rkd), comma-separated to combine, e.g. response,relation.", **_F)
flags.DEFINE_enum("fusion", "attention", ["attention", "mean", "confidence"],
                  "How --kd=relation fuses the teachers: multi-head attention, the mean (AVER), or "
                  "confidence-weighted by each teacher's loss on the label (CA-MKD).", **_F)
flags.DEFINE_integer("heads", 4, "Attention heads of the teacher fusion.", **_F)
flags.DEFINE_integer("fusion_warmup_epochs", 0, "--kd=relation: epochs that train the fusion and its "
                     "classification head alone on the teachers' outputs (student frozen) before the "
                     "student starts, so that it does not chase a randomly initialised target.", **_F)
flags.DEFINE_boolean("relation_centre", True, "--kd=relation: subtract the batch's mean feature from the "
                     "fused target and the student's adapted features before matching them, so that a "
                     "direction every image shares is not matched for free.", **_F)
flags.DEFINE_enum("dataset", "synthetic", ["synthetic", "kvasir_v2", "hyper_kvasir", "folder"],
                  "Dataset: the embedded synthetic one, Kvasir-v2, Hyper-Kvasir labelled images, or "
                  "any <root>/<class>/<image> folder.", **_F)
flags.DEFINE_string("data_dir", None, "Dataset folder (not needed for --dataset=synthetic).", **_F)
flags.DEFINE_string("split_file", None, "Hyper-Kvasir official split CSV (2_fold_split.csv or "
                    "5_fold_split.csv); without it the folds are regenerated the official way.", **_F)
flags.DEFINE_integer("fold", 0, "Held-out test fold of k-fold datasets (Kvasir-v2, Hyper-Kvasir).", **_F)
flags.DEFINE_enum("on_bad_image", "skip", ["skip", "error"],
                  "Image files that cannot be decoded (truncated, corrupt, empty, missing from a split "
                  "file): skip them and list them in metrics.json, or stop before training.", **_F)
flags.DEFINE_boolean("crop_border", False, "Crop the endoscope's black border before resizing.", **_F)
flags.DEFINE_list("teachers", None, "Teachers: registry names (mobile_x3, mobile_x2, mobile_hr, small_resnet, small_plaincnn, "
                  "small_deepresnet, tiny_resnet, resnet50, densenet121, mobilenetv2, efficientnetb0) "
                  "or paths of saved .keras teachers. Default: mobile_x3,mobile_x2,small_resnet.", **_F)
flags.DEFINE_string("teacher_weights", None, "Initial teacher weights: none (offline) or imagenet "
                    "(keras.applications teachers; downloads).", **_F)
flags.DEFINE_string("teacher_dir", None, "Where trained teachers are kept and reused "
                    "(default: teachers/ beside --output_dir).", **_F)
flags.DEFINE_integer("image_size", 128, "Square input size of student and teachers, in pixels.", **_F)
flags.DEFINE_integer("epochs", 20, "Student epochs.", **_F)
flags.DEFINE_integer("teacher_epochs", 48, "Epochs of each teacher trained here.", **_F)
flags.DEFINE_integer("batch_size", 32, "Batch size.", **_F)
flags.DEFINE_float("learning_rate", 3e-3, "Student's peak learning rate (Adam, cosine decay).", **_F)
flags.DEFINE_float("teacher_learning_rate", 2e-3, "Teachers' peak learning rate.", **_F)
flags.DEFINE_float("temperature", 4.0, "Softening temperature of the logit terms (--kd=response, and "
                   "relation's loss_relation_kd, weight 0 unless --relation_kd_weight) and of the "
                   "export's pruning fine-tune.", **_F)
distill_flags.define(FLAGS)  # --student_loss_weight, --ce_weight, --teacher_taps, --student_taps
for _term, _help in [
    ("response", "Hinton KD"), ("feature", "FitNets hints"), ("attention", "attention transfer"),
    ("relation", "fused-target matching"), ("relation_rkd", "RKD against the fused target"),
    ("relation_kd", "Hinton KD from the teachers weighted as the fusion weighs them"),
    ("fusion_ce", "fusion head's cross-entropy"), ("rkd", "RKD against each teacher"),
]:
    flags.DEFINE_float(f"{_term}_weight", None, f"Weight of the {_help} term (loss_{_term}); "
                       "default: the loss's own.", **_F)
flags.DEFINE_integer("seed", 0, "Random seed (data split, initialisation, augmentation).", **_F)
flags.DEFINE_string("output_dir", "runs/latest", "The run folder to write.", **_F)
flags.DEFINE_enum("teacher_cache", "auto", ["auto", "memory", "disk", "off"],
                  "Precompute the teachers' outputs on --teacher_views augmented views of each training "
                  "image and reuse them every epoch: in memory, memory-mapped on disk (kept for later "
                  "runs), auto (memory up to 2 GiB), or off (teachers run every step).", **_F)
flags.DEFINE_enum("train_inputs", "views", ["views", "fresh"],
                  "The training input stream. views: --teacher_views augmented views of each training "
                  "image, rendered once, one drawn per image each epoch in a seeded order; every --kd "
                  "(none included) with the same --seed trains on identical batches. fresh: new "
                  "augmentation every batch (teachers then run live on each batch).", **_F)
flags.DEFINE_boolean("shipped_teachers", True, "Use the default teachers shipped in the package when "
                     "they were trained on exactly these data and teacher settings (the embedded "
                     "default); --noshipped_teachers trains them here.", **_F)
flags.DEFINE_integer("teacher_views", 4, "Augmented views per training image in the teacher cache.", **_F)
flags.DEFINE_boolean("export", True, "Prune, quantize and convert the student to TFLite at the end.", **_F)
flags.DEFINE_boolean("report", True, "Write the figures (reliability, ROC/PR, Grad-CAM) and report.html; "
                     "--noreport keeps every metric and skips the drawing.", **_F)
flags.DEFINE_float("sparsity", 0.5, "Target pruning sparsity of the export, in [0, 1).", **_F)
flags.DEFINE_boolean("per_tensor", False, "One weight scale per tensor in the exported integer models "
                     "instead of one per output channel: the int8 student fits a 64 KB flash budget "
                     "(~60 KB instead of ~84 KB) and agrees a little less with the float model.", **_F)
flags.DEFINE_integer("int8_max_bytes", 64000, "Flash budget of student_int8.tflite in bytes (the 64 KB microcontroller "
                     "target). When one weight scale per output channel does not fit, the layers that "
                     "gain most from it keep it and the others get one per tensor; 0: per-channel "
                     "everywhere, whatever the size.", **_F)
flags.DEFINE_boolean("overwrite", False, "Replace the run already in --output_dir (its outputs are "
                     "deleted first). Without it, a folder holding a run is refused.", **_F)
flags.DEFINE_boolean("resume", False, "Continue the run in --output_dir from its last completed epoch "
                     "(after a crash or a kill); the flags must be those it was started with.", **_F)
flags.DEFINE_boolean("deterministic", True, "TensorFlow op determinism: the same seed and flags on the "
                     "same machine give the same metrics (see README for the cost).", **_F)
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker"],
                  "tf.distribute strategy: one device, MirroredStrategy (all local GPUs, else all "
                  "logical CPUs), or MultiWorkerMirroredStrategy configured by TF_CONFIG.", **_F)
flags.DEFINE_integer("cpu_devices", 1, "Split the CPU into this many logical devices (for "
                     "--strategy=mirrored without GPUs).", **_F)
flags.DEFINE_float("min_agreement", 0.99, "Least top-1 agreement of each exported .tflite model with "
                   "the Keras student on the test split; below it the export fails.", **_F)



# Copies of library constants, so that every flag is checked before TensorFlow is imported (the
# modules that define them import it; ~7 s of CPU on 2 cores). test_flag_checks keeps them equal.
KD_METHODS = ("none", "response", "feature", "relation", "fitnets", "attention_transfer", "rkd")
# The loss terms (`--<term>_weight`, `loss_<term>`) of each --kd method: distill.registry.
KD_TERMS = {
    "none": (), "response": ("response",), "feature": ("feature", "attention"),
    "relation": ("relation", "relation_rkd", "relation_kd", "fusion_ce"),
    "fitnets": ("feature",), "attention_transfer": ("attention",), "rkd": ("rkd",),
}
WEIGHT_TERMS = ("response", "feature", "attention", "relation", "relation_rkd", "relation_kd", "fusion_ce", "rkd")
TEACHER_NAMES = ("densenet121", "efficientnetb0", "mobile_hr", "mobile_x2", "mobile_x3", "mobilenetv2",
                 "resnet50", "small_deepresnet", "small_plaincnn", "small_resnet", "tiny_resnet")
IMAGENET_TEACHERS = ("densenet121", "efficientnetb0", "mobilenetv2", "resnet50")  # keras.applications
DEFAULT_TEACHERS = ("mobile_x3", "mobile_x2", "small_resnet")
FUSION_WIDTH = 64  # distill.fusion_distillation.FusionDistillation's width: --heads must divide it
# Folds of the k-fold datasets without a split file (data.kvasir.load, data.hyper_kvasir.load).
DEFAULT_FOLDS = {"kvasir_v2": 2, "hyper_kvasir": 2}
DATA_DIR_HINT = {
    "kvasir_v2": "the kvasir-dataset-v2 folder or the folder holding it",
    "hyper_kvasir": "the labeled-images folder of Hyper-Kvasir or the folder holding it",
    "folder": "a folder of <class>/<image> sub-folders",
}
MAX_SEED = 2**32 - 1  # numpy's legacy seed range, which keras.utils.set_random_seed uses


def kd_names(kd) -> list:
    """--kd -> its method names, checked as distill.registry.parse_kd checks them (same messages),
    and no loss term named twice (the Distiller refuses that, but only after the teachers trained)."""
    names = [n.strip() for n in kd.split(",") if n.strip()]
    unknown = [n for n in names if n not in KD_METHODS]
    if unknown or not names:
        raise UsageError(
            f"Unknown --kd method(s) {unknown or names!r}. Expected one or more of "
            f"{', '.join(KD_METHODS)}, comma-separated (e.g. --kd=response,relation).")
    if "none" in names and len(names) > 1:
        raise UsageError(f"--kd=none cannot be combined with other methods, got {names}.")
    terms = [t for n in names for t in KD_TERMS[n]]
    twice = sorted({t for t in terms if terms.count(t) > 1})
    if twice:
        hint = " (feature already holds fitnets and attention_transfer)" if "feature" in names else ""
        raise UsageError(f"--kd={kd} names the loss term(s) {', '.join('loss_' + t for t in twice)} twice: "
                         f"name each method once{hint}.")
    return names


def _given(name: str) -> bool:
    return bool(FLAGS[name].present)


def _value(name: str) -> str:
    """The flag as given: --heads=3, --teachers=a,b, --norelation_centre."""
    return FLAGS[name].serialize()


def _positive(name: str, what: str) -> None:
    value = getattr(FLAGS, name)
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"{_value(name)} is impossible: the {what} must be a number > 0.")


def _split_file_folds(path: str) -> int:
    """The number of folds of a Hyper-Kvasir split file (reading it takes milliseconds)."""
    from keras_endokd.data.hyper_kvasir import read_split_file  # numpy only, no TensorFlow

    if not os.path.isfile(path):
        raise UsageError(f"--split_file={path}: no such file; expected Hyper-Kvasir's 2_fold_split.csv "
                         "or 5_fold_split.csv.")
    from keras_endokd.data.source import DatasetLayoutError

    try:
        return read_split_file(path)[1]
    except DatasetLayoutError as err:  # names the file, the line and what was expected
        raise UsageError(f"--split_file: {err}") from None


def check_flags() -> list:
    """Checks every flag's value, without importing TensorFlow; returns the --kd method names.

    Raises UsageError: one paragraph naming the flag, the value given and what is expected. Only
    --split_file is read here (a CSV, milliseconds): its folds bound --fold.
    """
    names = kd_names(FLAGS.kd)
    teachers = tuple(FLAGS.teachers or DEFAULT_TEACHERS)
    for name in teachers:
        if name.endswith(".keras"):
            if not os.path.isfile(name):
                raise UsageError(f"--teachers: the file '{name}' does not exist.")
        elif name not in TEACHER_NAMES:
            raise UsageError(f"--teachers: unknown teacher '{name}'; expected one of "
                             f"{', '.join(TEACHER_NAMES)} or the path of a .keras file.")
    if FLAGS.teacher_weights not in (None, "none", "imagenet"):
        raise UsageError(f"--teacher_weights must be none or imagenet, got {FLAGS.teacher_weights!r}.")
    if FLAGS.teacher_weights == "imagenet" and names != ["none"]:
        scratch = [n for n in teachers if not n.endswith(".keras") and n not in IMAGENET_TEACHERS]
        if scratch:
            given = _value("teachers") if _given("teachers") else "the default teachers"
            raise UsageError(f"--teacher_weights=imagenet: the teacher(s) {', '.join(scratch)} have no ImageNet "
                             f"weights ({given}); only {', '.join(IMAGENET_TEACHERS)} do. Name those with "
                             "--teachers, or drop --teacher_weights.")
    if not 32 <= FLAGS.image_size <= 1024:
        raise UsageError(f"--image_size={FLAGS.image_size} is impossible: the student needs 32 to 1024 pixels.")
    if not 0.0 <= FLAGS.sparsity < 1.0:
        raise UsageError(f"--sparsity={FLAGS.sparsity} is outside [0, 1).")
    if FLAGS.int8_max_bytes < 0:
        raise UsageError(f"--int8_max_bytes must be 0 (no budget) or a byte count, got {FLAGS.int8_max_bytes}.")
    for name in ("epochs", "teacher_epochs", "batch_size", "heads", "teacher_views", "cpu_devices"):
        if getattr(FLAGS, name) < 1:
            raise UsageError(f"--{name} must be at least 1, got {getattr(FLAGS, name)}.")
    if FLAGS.fusion_warmup_epochs < 0:
        raise UsageError(f"--fusion_warmup_epochs must be 0 (no warm-up) or more, got {FLAGS.fusion_warmup_epochs}.")
    if "relation" in names and FUSION_WIDTH % FLAGS.heads:
        works = ", ".join(str(h) for h in range(1, FUSION_WIDTH + 1) if FUSION_WIDTH % h == 0)
        raise UsageError(f"--heads={FLAGS.heads} cannot split --kd=relation's fusion width of {FUSION_WIDTH} "
                         f"channels into equal heads: expected a divisor of {FUSION_WIDTH} ({works}).")
    _positive("learning_rate", "student's learning rate")
    _positive("teacher_learning_rate", "teachers' learning rate")
    _positive("temperature", "softening temperature (logits are divided by it)")
    for name in (f"{t}_weight" for t in WEIGHT_TERMS):
        value = getattr(FLAGS, name)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise UsageError(f"{_value(name)} is impossible: a loss weight must be a number >= 0 "
                             "(0 switches the term off).")
    distill_flags.config_fields(FLAGS, names, teachers)
    if not 0.0 <= FLAGS.min_agreement <= 1.0:
        raise UsageError(f"--min_agreement={FLAGS.min_agreement} is outside [0, 1]: it is the least fraction "
                         "of test images on which each .tflite model must agree with the Keras student.")
    if not 0 <= FLAGS.seed <= MAX_SEED:
        raise UsageError(f"--seed={FLAGS.seed} is impossible: expected an integer from 0 to {MAX_SEED}.")
    if not FLAGS.output_dir:
        raise UsageError("--output_dir is empty: expected the run folder to write (default runs/latest).")
    if FLAGS.overwrite and FLAGS.resume:
        raise UsageError("--overwrite and --resume contradict each other: pick one.")
    if FLAGS.train_inputs == "fresh" and FLAGS.teacher_cache in ("memory", "disk"):
        raise UsageError(f"--train_inputs=fresh draws new augmentation every batch, so no cache can hold "
                         f"the teachers' outputs: --teacher_cache={FLAGS.teacher_cache} cannot apply. Use "
                         "--train_inputs=views (the default) to cache them, or drop --teacher_cache.")
    _check_data_flags()
    return names


def _check_data_flags() -> None:
    dataset = FLAGS.dataset
    if FLAGS.fold < 0:
        raise UsageError(f"--fold={FLAGS.fold} is impossible: the held-out test fold is counted from 0.")
    if dataset == "synthetic":
        return
    if not FLAGS.data_dir:
        raise UsageError(f"--dataset={dataset} needs --data_dir: {DATA_DIR_HINT[dataset]}.")
    if not os.path.isdir(FLAGS.data_dir):
        raise UsageError(f"--data_dir={FLAGS.data_dir}: no such folder; --dataset={dataset} expects "
                         f"{DATA_DIR_HINT[dataset]}.")
    if FLAGS.split_file and dataset != "hyper_kvasir":
        raise UsageError(f"--split_file applies to --dataset=hyper_kvasir only, not --dataset={dataset}.")
    if dataset == "folder":
        return
    if FLAGS.split_file:
        folds, source = _split_file_folds(FLAGS.split_file), f"--split_file={FLAGS.split_file} has"
    else:
        folds = DEFAULT_FOLDS[dataset]
        without = " without --split_file" if dataset == "hyper_kvasir" else ""
        source = f"--dataset={dataset}{without} is split into"
    if FLAGS.fold >= folds:
        allowed = "0 or 1" if folds == 2 else f"0 to {folds - 1}"
        raise UsageError(f"--fold={FLAGS.fold} does not exist: {source} {folds} folds, so --fold must be "
                         f"{allowed}.")


def flag_warnings(names: list) -> list:
    """One line for each flag the user gave that has no effect with the others (not an error)."""
    given = [n for n in FLAGS if _given(n)]  # FLAGS iterates over the flag names
    kd = FLAGS.kd
    out = []

    def unused(flag_names, reason):
        flag_names = [n for n in flag_names if n in given]
        if flag_names:
            listed = ", ".join(_value(n) for n in flag_names)
            one = len(flag_names) == 1
            reason = reason.replace("{it}", "it" if one else "them")
            out.append(f"{listed} {'has' if one else 'have'} no effect: {reason}.")

    if "temperature" in given and not {"response", "relation"} & set(names):
        if names == ["none"]:
            unused(["temperature"], "--kd=none has no teachers whose logits it would soften")
        else:
            out.append(f"{_value('temperature')}: --kd={kd} has no logit term (response or relation); the "
                       "temperature then only softens the teachers' logits while the export prunes the student.")
    if "relation" not in names:
        unused(["fusion", "heads", "relation_centre", "fusion_warmup_epochs"],
               f"--kd={kd} does not include relation, the only method that reads {{it}}")
    elif FLAGS.fusion != "attention":
        unused(["heads"], f"--fusion={FLAGS.fusion} has no attention heads (only --fusion=attention does)")
    terms = {t for n in names for t in KD_TERMS[n]}
    for term in WEIGHT_TERMS:
        if term not in terms:
            unused([f"{term}_weight"], f"--kd={kd} has no loss_{term} term")
    teacher_flags = ["teachers", "teacher_weights", "teacher_dir", "teacher_epochs", "teacher_learning_rate",
                     "shipped_teachers", "teacher_cache"]
    if names == ["none"]:
        # --teacher_views still sets the views of --train_inputs=views without teachers, and
        # --teacher_cache=disk keeps them on disk under --teacher_dir, shared with distilled runs.
        views_on_disk = FLAGS.train_inputs == "views" and FLAGS.teacher_cache == "disk"
        unused([f for f in teacher_flags if not (views_on_disk and f in ("teacher_cache", "teacher_dir"))]
               + (["teacher_views"] if FLAGS.train_inputs == "fresh" else []),
               "--kd=none trains the student alone, without teachers")
    else:
        if FLAGS.teachers and all(n.endswith(".keras") for n in FLAGS.teachers):
            unused(["teacher_weights", "teacher_dir", "teacher_epochs", "teacher_learning_rate", "shipped_teachers"],
                   "every --teachers entry is a saved .keras teacher, so none is trained or stored here")
        if FLAGS.train_inputs == "fresh":
            unused(["teacher_cache", "teacher_views"],
                   "--train_inputs=fresh runs the teachers on each new batch, with no cached views")
    if FLAGS.dataset == "synthetic":
        unused(["data_dir", "split_file"], "--dataset=synthetic is embedded (give --dataset=kvasir_v2, "
               "hyper_kvasir or folder to read --data_dir)")
    if FLAGS.dataset in ("synthetic", "folder"):
        unused(["fold"], f"--dataset={FLAGS.dataset} has a fixed split, not folds")
    if not FLAGS.export:
        unused(["per_tensor", "min_agreement"], "--noexport writes no .tflite model (python -m "
               "keras_endokd.export takes its own --per_tensor and --min_agreement)")
    return out + distill_flags.flag_warnings(FLAGS, names)


def config_from_flags():
    names = check_flags()
    for line in flag_warnings(names):
        print(f"warning: {line}", file=sys.stderr)
    from keras_endokd.distill.registry import parse_kd
    from keras_endokd.run_config import RunConfig

    parse_kd(FLAGS.kd)  # the library's own check, behind the copy above
    teachers = tuple(FLAGS.teachers or DEFAULT_TEACHERS)
    loss_weights = {
        f"loss_{t}": getattr(FLAGS, f"{t}_weight")
        for t in WEIGHT_TERMS
        if getattr(FLAGS, f"{t}_weight") is not None
    }
    return RunConfig(
        kd=FLAGS.kd, fusion=FLAGS.fusion, heads=FLAGS.heads, relation_centre=FLAGS.relation_centre,
        fusion_warmup_epochs=FLAGS.fusion_warmup_epochs,
        dataset=FLAGS.dataset,
        data_dir=FLAGS.data_dir, split_file=FLAGS.split_file, fold=FLAGS.fold,
        crop_border=FLAGS.crop_border, on_bad_image=FLAGS.on_bad_image, teachers=teachers,
        teacher_weights=None if FLAGS.teacher_weights in (None, "none") else FLAGS.teacher_weights,
        teacher_dir=FLAGS.teacher_dir, image_size=FLAGS.image_size, epochs=FLAGS.epochs,
        teacher_epochs=FLAGS.teacher_epochs, batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate, teacher_learning_rate=FLAGS.teacher_learning_rate,
        temperature=FLAGS.temperature, loss_weights=loss_weights,
        **distill_flags.config_fields(FLAGS, names, teachers),
        seed=FLAGS.seed, output_dir=FLAGS.output_dir, export=FLAGS.export, report=FLAGS.report,
        sparsity=FLAGS.sparsity,
        per_tensor=FLAGS.per_tensor, int8_max_bytes=FLAGS.int8_max_bytes,
        teacher_cache=FLAGS.teacher_cache, teacher_views=FLAGS.teacher_views,
        train_inputs=FLAGS.train_inputs, shipped_teachers=FLAGS.shipped_teachers,
        min_agreement=FLAGS.min_agreement, deterministic=FLAGS.deterministic,
        strategy=FLAGS.strategy, cpu_devices=FLAGS.cpu_devices, overwrite=FLAGS.overwrite,
        resume=FLAGS.resume,
    )


def main(argv=None) -> int:
    _, code = parse_flags(FLAGS, argv, __doc__)
    if code is not None:
        return code
    try:
        cfg = config_from_flags()  # every flag checked before it imports TensorFlow
    except ValueError as err:  # UsageError and the registries' own flag checks
        return fail(err)
    from keras_endokd.data.source import DatasetLayoutError
    from keras_endokd.deploy.export_checks import ExportCheckError
    from keras_endokd.pipeline import run
    from keras_endokd.distribute import StrategyError
    from keras_endokd.run_folder import NonFiniteLossError, RunFolderError

    try:
        run(cfg)
    except (DatasetLayoutError, FileNotFoundError, NonFiniteLossError, RunFolderError, StrategyError) as err:
        return fail(err)
    except ExportCheckError as err:  # student.keras and metrics.json are written by then
        return fail(f"{err}\nThe student and its metrics are saved in {cfg.output_dir}; only the "
                    "deployment files are missing.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
