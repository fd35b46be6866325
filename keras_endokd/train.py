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

import sys  # noqa: E402

from absl import flags  # noqa: E402
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
                  "or paths of saved .keras teachers. Default: mobile_x3,mobile_x2.", **_F)
flags.DEFINE_string("teacher_weights", None, "Initial teacher weights: none (offline) or imagenet "
                    "(keras.applications teachers; downloads).", **_F)
flags.DEFINE_string("teacher_dir", None, "Where trained teachers are kept and reused "
                    "(default: teachers/ beside --output_dir).", **_F)
flags.DEFINE_integer("image_size", 128, "Square input size of student and teachers, in pixels.", **_F)
flags.DEFINE_integer("epochs", 20, "Student epochs.", **_F)
flags.DEFINE_integer("teacher_epochs", 24, "Epochs of each teacher trained here.", **_F)
flags.DEFINE_integer("batch_size", 32, "Batch size.", **_F)
flags.DEFINE_float("learning_rate", 3e-3, "Student's peak learning rate (Adam, cosine decay).", **_F)
flags.DEFINE_float("teacher_learning_rate", 2e-3, "Teachers' peak learning rate.", **_F)
flags.DEFINE_float("temperature", 4.0, "Softening temperature of the logit terms (--kd=response, and "
                   "relation's loss_relation_kd).", **_F)
flags.DEFINE_float("ce_weight", 1.0, "Weight of the student's cross-entropy on the labels.", **_F)
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



def config_from_flags():
    from keras_endokd.distill.registry import parse_kd
    from keras_endokd.models.teachers import DEFAULT_TEACHERS, TEACHER_NAMES
    from keras_endokd.run import RunConfig

    parse_kd(FLAGS.kd)
    teachers = tuple(FLAGS.teachers or DEFAULT_TEACHERS)
    for name in teachers:
        if name.endswith(".keras"):
            if not os.path.isfile(name):
                raise UsageError(f"--teachers: the file '{name}' does not exist.")
        elif name not in TEACHER_NAMES:
            raise UsageError(f"--teachers: unknown teacher '{name}'; expected one of "
                             f"{', '.join(TEACHER_NAMES)} or the path of a .keras file.")
    if not 32 <= FLAGS.image_size <= 1024:
        raise UsageError(f"--image_size={FLAGS.image_size} is impossible: the student needs 32 to 1024 pixels.")
    if not 0.0 <= FLAGS.sparsity < 1.0:
        raise UsageError(f"--sparsity={FLAGS.sparsity} is outside [0, 1).")
    if FLAGS.int8_max_bytes < 0:
        raise UsageError(f"--int8_max_bytes must be 0 (no budget) or a byte count, got {FLAGS.int8_max_bytes}.")
    for name in ("epochs", "teacher_epochs", "batch_size", "heads", "teacher_views", "cpu_devices"):
        if getattr(FLAGS, name) < 1:
            raise UsageError(f"--{name} must be at least 1, got {getattr(FLAGS, name)}.")
    if FLAGS.train_inputs == "fresh" and FLAGS.teacher_cache in ("memory", "disk"):
        raise UsageError(f"--train_inputs=fresh draws new augmentation every batch, so no cache can hold "
                         f"the teachers' outputs: --teacher_cache={FLAGS.teacher_cache} cannot apply. Use "
                         "--train_inputs=views (the default) to cache them, or drop --teacher_cache.")
    if FLAGS.teacher_weights not in (None, "none", "imagenet"):
        raise UsageError(f"--teacher_weights must be none or imagenet, got {FLAGS.teacher_weights!r}.")
    loss_weights = {
        f"loss_{t}": getattr(FLAGS, f"{t}_weight")
        for t in ("response", "feature", "attention", "relation", "relation_rkd", "relation_kd", "fusion_ce", "rkd")
        if getattr(FLAGS, f"{t}_weight") is not None
    }
    return RunConfig(
        kd=FLAGS.kd, fusion=FLAGS.fusion, heads=FLAGS.heads, relation_centre=FLAGS.relation_centre,
        dataset=FLAGS.dataset,
        data_dir=FLAGS.data_dir, split_file=FLAGS.split_file, fold=FLAGS.fold,
        crop_border=FLAGS.crop_border, on_bad_image=FLAGS.on_bad_image, teachers=teachers,
        teacher_weights=None if FLAGS.teacher_weights in (None, "none") else FLAGS.teacher_weights,
        teacher_dir=FLAGS.teacher_dir, image_size=FLAGS.image_size, epochs=FLAGS.epochs,
        teacher_epochs=FLAGS.teacher_epochs, batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate, teacher_learning_rate=FLAGS.teacher_learning_rate,
        temperature=FLAGS.temperature, ce_weight=FLAGS.ce_weight, loss_weights=loss_weights,
        seed=FLAGS.seed, output_dir=FLAGS.output_dir, export=FLAGS.export, sparsity=FLAGS.sparsity,
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
    from keras_endokd.data.source import DatasetLayoutError
    from keras_endokd.deploy.export import ExportCheckError
    from keras_endokd.run import run
    from keras_endokd.distribute import StrategyError
    from keras_endokd.run_folder import NonFiniteLossError, RunFolderError

    try:
        cfg = config_from_flags()
    except ValueError as err:  # UsageError and the registries' own flag checks
        return fail(err)
    try:
        run(cfg)
    except (DatasetLayoutError, FileNotFoundError, NonFiniteLossError, RunFolderError, StrategyError) as err:
        return fail(err)
    except ExportCheckError as err:  # student.keras and metrics.json are written by then
        return fail(f"{err}\nThe student is saved; re-export with python -m keras_endokd.export "
                     f"--run_dir={cfg.output_dir}.")
    return 0



if __name__ == "__main__":
    sys.exit(main())
