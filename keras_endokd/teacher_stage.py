"""The teachers of a run: `.keras` files, the package's shipped teachers, or trained and stored.

A registry teacher is trained with cross-entropy alone, through the same `Distiller` the student
uses (the one training path `tf.distribute` needs), and kept in a `TeacherStore` under a key of its
data and `teacher_settings`, so that runs differing only in the student's losses share it.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from typing import Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

from keras_endokd import run_folder
from keras_endokd.data.source import DatasetSource
from keras_endokd.distill.distiller import Distiller
from keras_endokd.distill.registry import parse_kd
from keras_endokd.distill.teacher_store import SHIPPED_DIR, TeacherStore, data_fingerprint
from keras_endokd.distribute import predict_locally
from keras_endokd.models.teachers import build_teacher
from keras_endokd.run_config import (RunConfig, jit_compile, log, make_datasets, optimizer,
                                     predict_labels, verbosity)


def train_teacher(name: str, cfg: RunConfig, source: DatasetSource, datasets: dict,
                  backup_dir: Optional[str] = None) -> Tuple[keras.Model, dict]:
    """Trains one registry teacher with cross-entropy; returns it and its test scores.

    With `backup_dir`, every epoch is checkpointed there and training continues from it; a
    loss that becomes NaN or infinite removes it (`run_folder.NonFiniteLossError` propagates).
    The scores say whether the teacher is near chance (`chance_check`).
    """
    if cfg.resolved_teacher_seed() != cfg.seed:
        cfg = dataclasses.replace(cfg, seed=cfg.resolved_teacher_seed())
        datasets = make_datasets(cfg, source)
    log(f"teacher {name}: training for {cfg.teacher_epochs} epochs (none stored for these data and settings)")
    keras.utils.set_random_seed(cfg.seed)
    model = build_teacher(name, source.num_classes, cfg.image_size, weights=cfg.teacher_weights)
    trainer = Distiller(student=model)  # cross-entropy alone; the one training path tf.distribute needs
    trainer.compile(optimizer=optimizer(cfg.teacher_learning_rate, cfg.teacher_epochs, len(datasets["train"])),
                    metrics=["accuracy"], jit_compile=jit_compile(cfg))
    start = time.time()
    callbacks = run_folder.checkpoint_callbacks(backup_dir) if backup_dir else []
    try:
        trainer.fit(datasets["train"], validation_data=datasets["val"], epochs=cfg.teacher_epochs,
                    callbacks=callbacks, shuffle=False, verbose=verbosity(cfg))  # the tf.data pipeline shuffles
    except run_folder.NonFiniteLossError:
        if backup_dir:  # a diverged teacher leaves nothing a later run with its key would continue
            shutil.rmtree(backup_dir, ignore_errors=True)
        raise
    predict_locally(model, tf.distribute.get_strategy())
    accuracy = float(np.mean(predict_labels(model, datasets["test"]) == source.splits["test"].labels))
    return model, {"test_accuracy": accuracy, "params": int(model.count_params()), "train_seconds": time.time() - start,
                   **chance_check(accuracy, source)}


# A teacher within this many points of always answering the most frequent class has learnt
# (nearly) nothing: flagged, and never stored for reuse.
NEAR_CHANCE_MARGIN = 0.05


def chance_check(accuracy: float, source: DatasetSource) -> dict:
    """{"chance_accuracy": the majority class's share of the test split, "near_chance": bool}."""
    counts = np.bincount(source.splits["test"].labels, minlength=source.num_classes)
    chance = float(counts.max() / max(1, counts.sum()))
    return {"chance_accuracy": chance, "near_chance": bool(accuracy <= chance + NEAR_CHANCE_MARGIN)}


def load_saved_teacher(path: str, num_classes: int, image_size: int) -> keras.Model:
    """A user's `.keras` teacher, its layers named anything: the Distiller checks the layers the
    losses read (--teacher_taps); here, that it sees the run's images and predicts its classes."""
    model = keras.saving.load_model(path, safe_mode=True, compile=False)
    got_classes, got_size = model.outputs[0].shape[-1], tuple(model.inputs[0].shape[1:3])
    if got_classes != num_classes or got_size != (image_size, image_size):
        raise ValueError(
            f"Teacher '{path}' takes {got_size} images and predicts {got_classes} classes; this run "
            f"needs ({image_size}, {image_size}) (--image_size) and {num_classes} (the dataset's classes)."
        )
    return model


def teacher_settings(cfg: RunConfig) -> dict:
    """The settings a registry teacher's training depends on (its store key, with the data)."""
    settings = {k: getattr(cfg, k) for k in ("image_size", "crop_border", "teacher_epochs",
                                             "teacher_learning_rate", "teacher_weights", "batch_size")}
    settings["seed"] = cfg.resolved_teacher_seed()
    return settings


def obtain_teachers(cfg: RunConfig, source: DatasetSource, datasets: dict) -> Tuple[list, list]:
    """Teachers from `.keras` paths, or from the store, training those it lacks."""
    if parse_kd(cfg.kd) == ["none"]:
        return [], []
    store = TeacherStore(cfg.resolved_teacher_dir(), shipped_dir=SHIPPED_DIR if cfg.shipped_teachers else None)
    fingerprint = data_fingerprint(source)
    teachers, infos = [], []
    for name in cfg.teachers:
        if name.endswith(".keras"):
            model = load_saved_teacher(name, source.num_classes, cfg.image_size)
            labels = predict_labels(model, datasets["test"])
            accuracy = float(np.mean(labels == source.splits["test"].labels))
            info = {"name": name, "path": name, "params": int(model.count_params()),
                    "test_accuracy": accuracy, **chance_check(accuracy, source)}
            reused = True
        else:
            model, info, reused = store.load_or_train(
                name, fingerprint, teacher_settings(cfg),
                lambda backup, n=name: train_teacher(n, cfg, source, datasets, backup),
            )
        how = ("shipped with the package" if info.get("shipped") else "reused " + info["path"]) if reused \
            else "trained in %.0fs" % info["train_seconds"] + ("" if info.get("stored", True) else ", not stored")
        log(f"teacher {name}: {info['params']:,} params, test accuracy {info['test_accuracy']:.3f} ({how})")
        if info.get("near_chance"):
            log(f"WARNING: teacher {name} is at or near chance (test accuracy {info['test_accuracy']:.3f}, "
                f"always answering the most frequent class scores {info['chance_accuracy']:.3f}): it was "
                "not stored for reuse, and distilling from it teaches the student nothing useful. Check "
                "--teacher_learning_rate and --teacher_epochs, or drop it from --teachers.")
        predict_locally(model, tf.distribute.get_strategy())
        teachers.append(model)
        infos.append(info)
    return teachers, infos
