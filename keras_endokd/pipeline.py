"""One distillation run, end to end: data, teachers, student, evaluation, export.

`python -m keras_endokd.train` parses flags into a `RunConfig` and calls `run`; the experiment
scripts call `run` directly with many configs that share their teachers. Everything a run writes
goes into its run folder (`run_folder` keeps its life cycle):

    config.json            the resolved configuration
    history.csv, logs/     per-epoch metrics (CSV, TensorBoard)
    student.keras          the student alone (no teacher inside)
    metrics.json           test-split metrics of the student and of each teacher, calibration, OOD
    confusion_matrix.png, reliability_diagram*.png, roc_pr_curves.png, explanations.png
    report.html            all of it on one self-contained page
    + the deployment files (see keras_endokd.deploy)
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from keras_endokd import atomic_files, run_folder
from keras_endokd.clinical.html_report import write_report
from keras_endokd.clinical.probability_metrics import merge_probability_metrics
from keras_endokd.clinical.run_outputs import clinical_outputs
from keras_endokd.data import load_dataset
from keras_endokd.deploy.export_images import preprocessed
from keras_endokd.distribute import is_chief, make_strategy, predict_locally
from keras_endokd.models.student import trainable_param_count
from keras_endokd.run_config import RunConfig, log, make_datasets, predict_labels
from keras_endokd.student_stage import evaluate_student, protocol, train_student
from keras_endokd.teacher_stage import obtain_teachers


def run(cfg: RunConfig) -> dict:
    """Runs the whole job and returns metrics.json's content."""
    start = time.time()
    strategy = make_strategy(cfg.strategy, cfg.cpu_devices)  # before TensorFlow's first operation
    if cfg.deterministic:
        # Same seed, same flags, same machine: same metrics. Costs parallelism in a few kernels.
        tf.config.experimental.enable_op_determinism()
    chief = is_chief(strategy)
    if not chief:  # every worker computes, one writes
        scratch = tempfile.mkdtemp(prefix="keras-endokd-worker-")
        cfg = dataclasses.replace(cfg, output_dir=os.path.join(scratch, "run"),
                                  teacher_dir=os.path.join(scratch, "teachers"), export=False)
    if cfg.strategy != "default":
        log(f"strategy {cfg.strategy}: {strategy.num_replicas_in_sync} replicas in sync"
            + ("" if chief else " (this worker writes to a scratch folder)"))
    run_dir = cfg.output_dir
    run_folder.claim(run_dir, dataclasses.asdict(cfg), overwrite=cfg.overwrite, resume=cfg.resume,
                     defaults=dataclasses.asdict(RunConfig()))
    os.makedirs(run_dir, exist_ok=True)
    if not cfg.resume:
        atomic_files.write_json(os.path.join(run_dir, "config.json"), dataclasses.asdict(cfg))
    keras.utils.set_random_seed(cfg.seed)

    source = load_dataset(cfg.dataset, cfg.data_dir, cfg.split_file, cfg.fold, cfg.resolved_data_seed(),
                          cfg.image_size, on_bad_image=cfg.on_bad_image)
    sizes = {k: len(v) for k, v in source.splits.items()}
    log(f"data {source.name}: {source.num_classes} classes, {sizes} images ({time.time() - start:.0f}s)")
    if source.skipped:
        log(f"data: {len(source.skipped)} files left out (unreadable, empty, not images...), each listed "
            "with its reason under dataset.skipped in metrics.json")
    datasets = make_datasets(cfg, source)

    with strategy.scope():
        teachers, teacher_infos = obtain_teachers(cfg, source, datasets)
        student, training = train_student(cfg, source, datasets, teachers)
    predict_locally(student, strategy)

    metrics = evaluate_student(student, datasets["test"], source, run_dir)
    # Validation accuracy too: a recipe is chosen on it, never on the test split.
    metrics["student"]["val_accuracy"] = float(
        np.mean(predict_labels(student, datasets["val"]) == source.splits["val"].labels))
    metrics["student"]["params"] = trainable_param_count(student)
    metrics["teachers"] = teacher_infos
    metrics["config"] = {"kd": cfg.kd, "fusion": cfg.fusion, "dataset": cfg.dataset, "seed": cfg.seed}
    metrics["protocol"] = protocol(cfg, training.pop("input_stream_sha256"))
    metrics["training"] = training
    # Decoded once: the clinical figures read them here, the export again below.
    decoded = {s: preprocessed(source.splits[s], cfg.image_size, cfg.crop_border) for s in ("val", "test")}
    clinical = clinical_outputs(student, (decoded["val"].images, decoded["val"].labels),
                                (decoded["test"].images, decoded["test"].labels), source.class_names,
                                run_dir, plots=cfg.report)
    merge_probability_metrics(metrics["student"], clinical["student"])
    metrics["calibration"], metrics["ood"] = clinical["calibration"], clinical["ood"]
    atomic_files.write_json(os.path.join(run_dir, "metrics.json"), metrics)
    log(f"student test accuracy {metrics['student']['accuracy']:.3f}, macro F1 "
        f"{metrics['student']['macro_f1']:.3f}, MCC {metrics['student']['mcc']:.3f}, ECE "
        f"{metrics['student']['ece']:.3f} ({clinical['calibration']['after']['ece']:.3f} at the fitted "
        f"temperature {clinical['calibration']['temperature']:.2f}), macro ROC-AUC "
        f"{metrics['student']['macro_roc_auc']:.3f}")

    if cfg.export:
        from keras_endokd.deploy.deployment import export_student

        export_student(run_dir, student, source, teachers, image_size=cfg.image_size,
                       sparsity=cfg.sparsity, per_tensor=cfg.per_tensor,
                       int8_max_bytes=cfg.int8_max_bytes,
                       temperature=cfg.temperature, seed=cfg.seed,
                       batch_size=cfg.batch_size, crop_border=cfg.crop_border,
                       min_agreement=cfg.min_agreement, preprocessed=decoded,
                       command=" ".join(["python -m keras_endokd.train", *sys.argv[1:]]))
    if chief and cfg.report:
        write_report(run_dir)
    log(f"run finished in {time.time() - start:.0f}s: {os.path.abspath(run_dir)}")
    if chief:
        print(next_steps(run_dir), flush=True)
    return metrics


def next_steps(run_dir: str) -> str:
    """The run's key files that exist, and the commands a user runs next."""
    files = [("report.html", "the run on one page (open it in a browser)"),
             ("student.keras", "the student (Keras)"), ("metrics.json", "test metrics"),
             ("confusion_matrix.png", "confusion matrix"),
             ("student_android.tflite", "Android model, labels in its metadata"),
             ("student_int8.tflite", "int8 model for TensorFlow Lite Micro"),
             ("model_data.cc", "the int8 model as a C array (+ model_data.h, micro_op_resolver.h)"),
             ("export_report.json", "every export check")]
    lines = [f"  {os.path.join(run_dir, name):<44} {what}" for name, what in files
             if os.path.exists(os.path.join(run_dir, name))]
    model = os.path.join(run_dir, "student_android.tflite")
    if not os.path.exists(model):
        model = os.path.join(run_dir, "student.keras")
    commands = [f"python -m keras_endokd.predict --model={model} FRAME.jpg",
                f"python -m keras_endokd.evaluate --model={os.path.join(run_dir, 'student.keras')}",
                f"python -m keras_endokd.export --run_dir={run_dir}     # prune, quantize, convert again"]
    return "\n".join(["Files:", *lines, "Next:", *(f"  {c}" for c in commands)])
